"""Experiments: which variant a user sees, and whether one variant does better.

Assignment is a keyed hash of the user id (BLAKE2b keyed with the experiment's
salt), mapped onto the variants' cumulative weights: the same user gets the
same variant in every process, on every worker and after every restart, with
no shared state; changing the salt reshuffles everybody (a new experiment).

The analysis is on proportions (a recommendation clicked or not, converted or
not): a Wilson score interval per variant, and a two-sided two-proportion
z-test (pooled standard error) between two variants, with a Bonferroni
correction when one control is compared with several variants. The ratio of two
rates gets a Katz log interval, which is what "at least 1.5 times the CTR"
needs. Caveat, stated in every summary: trials are recommendations, and one
user sees many, so the trials are not independent; with a strong per-user
effect the true intervals are wider than these.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from hashlib import blake2b

__all__ = [
    "KNOWN_STRATEGIES",
    "Comparison",
    "Experiment",
    "Rate",
    "compare",
    "compare_with_control",
    "parse_strategies",
    "parse_variants",
    "rate_ratio",
    "wilson",
]

#: The recommendation strategies :mod:`models.strategies` implements; an
#: experiment's variants are named after them (kept here, import-light, so that
#: settings can validate names without importing the models).
KNOWN_STRATEGIES: tuple[str, ...] = ("blend", "popularity", "explore")

#: Two-sided 95% normal quantile.
Z95 = 1.959963984540054


def parse_variants(text: str) -> dict[str, float]:
    """``"blend:2,popularity:1"`` -> ``{"blend": 2.0, "popularity": 1.0}`` (weight 1 if omitted).

    Raises :class:`ValueError` on an unknown strategy, a duplicate, or a weight <= 0.

    >>> parse_variants("blend, popularity:0.5")
    {'blend': 1.0, 'popularity': 0.5}
    >>> parse_variants("blend,telepathy")
    Traceback (most recent call last):
    ...
    ValueError: unknown variant 'telepathy' (known: blend, popularity, explore)
    """
    out: dict[str, float] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, _, weight_text = part.partition(":")
        name = name.strip()
        if name not in KNOWN_STRATEGIES:
            raise ValueError(f"unknown variant {name!r} (known: {', '.join(KNOWN_STRATEGIES)})")
        if name in out:
            raise ValueError(f"variant {name!r} listed twice")
        try:
            weight = float(weight_text) if weight_text.strip() else 1.0
        except ValueError:
            raise ValueError(
                f"weight of variant {name!r} is not a number: {weight_text!r}"
            ) from None
        if not weight > 0 or math.isinf(weight):
            raise ValueError(f"weight of variant {name!r} must be > 0, got {weight_text!r}")
        out[name] = weight
    if not out:
        raise ValueError("no variant given")
    return out


def parse_strategies(text: str) -> frozenset[str]:
    """``"blend, explore"`` -> the set of those strategy names; ``""`` is the empty set.

    Raises :class:`ValueError` on an unknown name.

    >>> sorted(parse_strategies("blend, explore"))
    ['blend', 'explore']
    >>> parse_strategies("blend,psychic")
    Traceback (most recent call last):
    ...
    ValueError: unknown strategy 'psychic' (known: blend, popularity, explore)
    """
    names = frozenset(part.strip() for part in text.split(",") if part.strip())
    unknown = sorted(names - set(KNOWN_STRATEGIES))
    if unknown:
        known = ", ".join(KNOWN_STRATEGIES)
        raise ValueError(f"unknown strategy {unknown[0]!r} (known: {known})")
    return names


class Experiment:
    """Deterministic assignment of users to weighted variants.

    Parameters
    ----------
    variants
        Variant name -> weight (relative share of users), in a fixed order.
    salt
        Key of the hash. Same salt, same assignment everywhere; a new salt is
        a new, independent assignment.

    Examples
    --------
    >>> exp = Experiment({"blend": 1.0, "popularity": 1.0, "explore": 1.0}, salt="exp-1")
    >>> exp.variant_of("alice") == Experiment(exp.variants, salt="exp-1").variant_of("alice")
    True
    >>> shares = exp.shares(f"u{i}" for i in range(3000))
    >>> all(0.3 < s < 0.37 for s in shares.values())
    True
    """

    def __init__(self, variants: Mapping[str, float], salt: str = "feedback-experiment") -> None:
        if not variants:
            raise ValueError("an experiment needs at least one variant")
        if any(not w > 0 for w in variants.values()):
            raise ValueError("variant weights must be > 0")
        self.variants = dict(variants)
        self.salt = salt
        self._key = blake2b(salt.encode(), digest_size=32).digest()
        total = float(sum(self.variants.values()))
        edges: list[float] = []
        acc = 0.0
        for w in self.variants.values():
            acc += w / total
            edges.append(acc)
        edges[-1] = 1.0
        self._edges = edges
        self._names = list(self.variants)

    def bucket(self, user_id: str) -> float:
        """The user's position in [0, 1): a keyed BLAKE2b hash of the user id."""
        digest = blake2b(user_id.encode(), digest_size=8, key=self._key).digest()
        return int.from_bytes(digest, "big") / 2.0**64

    def variant_of(self, user_id: str) -> str:
        """The variant ``user_id`` is assigned to; the same in every process."""
        u = self.bucket(user_id)
        for name, edge in zip(self._names, self._edges, strict=True):
            if u < edge:
                return name
        return self._names[-1]

    def shares(self, user_ids: Iterable[str]) -> dict[str, float]:
        """Share of ``user_ids`` assigned to each variant (a check of the weights)."""
        counts = dict.fromkeys(self._names, 0)
        n = 0
        for user in user_ids:
            counts[self.variant_of(user)] += 1
            n += 1
        return {k: v / n for k, v in counts.items()} if n else dict.fromkeys(self._names, 0.0)


@dataclass(frozen=True, slots=True)
class Rate:
    """A proportion with its Wilson score interval."""

    successes: int
    trials: int
    value: float
    lower: float
    upper: float

    def as_dict(self) -> dict[str, float | int]:
        """JSON form: ``value``, ``lower``, ``upper``, ``count`` (trials), ``successes``."""
        return {
            "value": round(self.value, 6),
            "lower": round(self.lower, 6),
            "upper": round(self.upper, 6),
            "count": self.trials,
            "successes": self.successes,
        }


def wilson(successes: int, trials: int, z: float = Z95) -> Rate:
    """Proportion ``successes / trials`` with its Wilson score interval.

    Unlike the normal (Wald) interval it stays inside [0, 1] and behaves with
    few trials or rates near 0; with no trials the interval is [0, 1].

    >>> r = wilson(30, 100)
    >>> round(r.value, 3), round(r.lower, 3), round(r.upper, 3)
    (0.3, 0.219, 0.396)
    >>> wilson(0, 0).upper
    1.0
    """
    if trials < 0 or successes < 0 or successes > trials:
        raise ValueError(f"need 0 <= successes <= trials, got {successes}/{trials}")
    if trials == 0:
        return Rate(0, 0, 0.0, 0.0, 1.0)
    p = successes / trials
    z2 = z * z
    denom = 1.0 + z2 / trials
    centre = (p + z2 / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / denom
    lower = 0.0 if successes == 0 else max(0.0, centre - half)
    upper = 1.0 if successes == trials else min(1.0, centre + half)
    return Rate(successes, trials, p, lower, upper)


def rate_ratio(
    successes_a: int, trials_a: int, successes_b: int, trials_b: int, z: float = Z95
) -> tuple[float, float, float]:
    """``rate_a / rate_b`` with a Katz log-scale interval: ``(ratio, lower, upper)``.

    ``nan`` when either side has no trials or no successes (no finite ratio).

    >>> ratio, lo, hi = rate_ratio(60, 200, 30, 200)
    >>> round(ratio, 2), round(lo, 2), round(hi, 2)
    (2.0, 1.35, 2.96)
    """
    if min(successes_a, trials_a, successes_b, trials_b) <= 0:
        return (math.nan, math.nan, math.nan)
    ratio = (successes_a / trials_a) / (successes_b / trials_b)
    se = math.sqrt(1 / successes_a - 1 / trials_a + 1 / successes_b - 1 / trials_b)
    return ratio, ratio * math.exp(-z * se), ratio * math.exp(z * se)


@dataclass(frozen=True, slots=True)
class Comparison:
    """Two-sided two-proportion z-test of variant ``a`` against variant ``b``."""

    a: str
    b: str
    rate_a: Rate
    rate_b: Rate
    difference: float
    ratio: float
    ratio_lower: float
    ratio_upper: float
    z: float
    p_value: float
    alpha: float
    significant: bool
    statement: str

    def as_dict(self) -> dict[str, object]:
        """JSON form."""

        def num(x: float) -> float | None:
            return None if math.isnan(x) else round(x, 6)

        return {
            "a": self.a,
            "b": self.b,
            "rate_a": self.rate_a.as_dict(),
            "rate_b": self.rate_b.as_dict(),
            "difference": num(self.difference),
            "ratio": {
                "value": num(self.ratio), "lower": num(self.ratio_lower),
                "upper": num(self.ratio_upper),
            },
            "z": num(self.z),
            "p_value": num(self.p_value),
            "alpha": self.alpha,
            "significant": self.significant,
            "statement": self.statement,
        }


#: Below this many trials per side, or this many successes/failures, no verdict.
MIN_TRIALS = 30
MIN_EVENTS = 5


def compare(
    a: str,
    successes_a: int,
    trials_a: int,
    b: str,
    successes_b: int,
    trials_b: int,
    alpha: float = 0.05,
    what: str = "rate",
) -> Comparison:
    """Is ``a``'s rate different from ``b``'s? Two-sided pooled two-proportion z-test.

    The difference is called significant when ``p < alpha`` *and* both sides
    have at least :data:`MIN_TRIALS` trials and :data:`MIN_EVENTS` successes
    and failures (where the normal approximation holds); otherwise the
    statement says there are too few data.

    Examples
    --------
    >>> c = compare("blend", 300, 1000, "popularity", 150, 1000, what="CTR")
    >>> c.significant, round(c.z, 2), c.p_value < 1e-10
    (True, 8.03, True)
    >>> print(c.statement)  # doctest: +NORMALIZE_WHITESPACE
    blend CTR 0.3000 [0.2724, 0.3291] vs popularity 0.1500 [0.1292, 0.1735] (n=1000 / 1000):
    ratio 2.00 [1.68, 2.38], difference +0.1500, z=8.03, p=9.57e-16: significant at
    alpha=0.05 (two-sided two-proportion z-test).
    >>> compare("blend", 3, 10, "popularity", 1, 10).significant
    False
    """
    ra, rb = wilson(successes_a, trials_a), wilson(successes_b, trials_b)
    ratio, lo, hi = rate_ratio(successes_a, trials_a, successes_b, trials_b)
    if trials_a == 0 or trials_b == 0:
        z, p = math.nan, math.nan
    else:
        pooled = (successes_a + successes_b) / (trials_a + trials_b)
        se = math.sqrt(pooled * (1 - pooled) * (1 / trials_a + 1 / trials_b))
        diff = ra.value - rb.value
        if se > 0:
            z = diff / se
            p = math.erfc(abs(z) / math.sqrt(2.0))
        else:
            z, p = 0.0, 1.0
    enough = all(
        n >= MIN_TRIALS and s >= MIN_EVENTS and n - s >= MIN_EVENTS
        for s, n in ((successes_a, trials_a), (successes_b, trials_b))
    )
    significant = bool(enough and not math.isnan(p) and p < alpha)
    head = (
        f"{a} {what} {ra.value:.4f} [{ra.lower:.4f}, {ra.upper:.4f}] vs {b} {rb.value:.4f} "
        f"[{rb.lower:.4f}, {rb.upper:.4f}] (n={trials_a} / {trials_b})"
    )
    if not enough:
        verdict = (
            f"too few data for a verdict (need >= {MIN_TRIALS} trials and >= {MIN_EVENTS} "
            "successes and failures per side)"
        )
    else:
        ratio_text = "n/a" if math.isnan(ratio) else f"{ratio:.2f} [{lo:.2f}, {hi:.2f}]"
        verdict = (
            f"ratio {ratio_text}, difference {ra.value - rb.value:+.4f}, z={z:.2f}, "
            f"p={p:.3g}: {'significant' if significant else 'not significant'} at "
            f"alpha={alpha:g} (two-sided two-proportion z-test)."
        )
    return Comparison(
        a, b, ra, rb, ra.value - rb.value, ratio, lo, hi, z, p, alpha, significant,
        f"{head}: {verdict}",
    )


def compare_with_control(
    counts: Mapping[str, tuple[int, int]],
    control: str,
    alpha: float = 0.05,
    what: str = "rate",
) -> dict[str, Comparison]:
    """Each variant against ``control``, Bonferroni-corrected (``alpha / comparisons``).

    ``counts`` maps a variant to ``(successes, trials)``.

    >>> out = compare_with_control(
    ...     {"popularity": (100, 1000), "blend": (200, 1000), "explore": (110, 1000)},
    ...     control="popularity")
    >>> sorted(out), out["blend"].significant, out["explore"].significant, out["blend"].alpha
    (['blend', 'explore'], True, False, 0.025)
    """
    if control not in counts:
        raise KeyError(f"control variant {control!r} has no counts")
    others = [v for v in counts if v != control]
    corrected = alpha / max(1, len(others))
    sc, nc = counts[control]
    return {
        v: compare(v, counts[v][0], counts[v][1], control, sc, nc, corrected, what)
        for v in others
    }
