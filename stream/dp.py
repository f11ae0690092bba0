"""Differential privacy for what the service publishes about items and segments.

Popularity lists, "bought together" counts (and the reasons that quote them),
item summaries and segment sizes and centres are released through mechanisms of
the OpenDP library (``opendp``: a maintained, peer-reviewed Rust core with
proofs for each mechanism and samplers that are exact, not floating-point
approximations that leak through their low bits). This module is pure: no
Faust, no Kafka, no metrics; the worker reads the ledger into a gauge.

**Privacy unit: one user**, every event they sent (add/remove neighbours). Each
release is ε-DP for that unit, with ε per release from the settings:

* popularity list: the top-k items by the number of distinct users who bought
  or reviewed them. A user adds at most 1 to each item (clipping in L∞) and
  only upwards, so report-noisy-max with exponential noise (OpenDP's
  ``make_noisy_top_k``, monotonic; permute-and-flip, the better-utility
  sibling of the exponential mechanism) selects k items, noise scale ``k / ε``.
* item summaries and "bought together" counts: distinct-user counts per item
  (buyers, reviewers, viewers) and per unordered pair of items used one after
  the other; each user contributes to at most ``max_items_per_user`` items of
  each kind and ``max_pairs_per_user`` pairs (chosen by a hash of (user, item):
  an even sample of their items, not their first ones), so the L1 sensitivity
  is that bound and the Laplace noise scale is ``bound / ε``. Every key of the
  domain (any item id, any pair) gets its noise once per release, drawn when
  first asked for: the same distribution as noising the whole (public) domain
  at once, and an unknown item answers like a known one with count 0.
* segment sizes and centres: a user is in one segment; sizes get Laplace noise
  of scale ``2 / ε`` (L1 sensitivity 1, half the budget), and the sums of
  the members' feature vectors, each feature clipped to its bounds and scaled to
  [0, 1], get Laplace noise of scale ``2 d / ε`` (d features, the other half);
  a centre is the noisy sum over the noisy size (post-processing).

Releases are recomputed at most once per interval and answered from the cached
release in between (post-processing costs no budget); :class:`BudgetLedger`
adds up what the releases spent (basic composition).

>>> counts = {"a": 900, "b": 500, "c": 3}
>>> top = noisy_top_k(counts, k=2, epsilon=50.0)
>>> sorted(top)
['a', 'b']
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from hashlib import blake2b
from typing import Any, Final, Generic, TypeVar

import numpy as np
import opendp.prelude as dp

dp.enable_features("contrib")

__all__ = [
    "RELEASES",
    "SEGMENT_BOUNDS",
    "BudgetExhausted",
    "BudgetLedger",
    "DPConfig",
    "DPPublisher",
    "LaplaceCounts",
    "SegmentRelease",
    "UserContribution",
    "bound_keys",
    "distinct_counts",
    "laplace_floats",
    "noisy_top_k",
    "release_segments",
    "release_threshold",
    "threshold_counts",
    "user_pairs",
]

#: What the service releases, each with its own ε per release and ledger line.
RELEASES: Final = (
    "popularity", "items", "pairs", "neighbours", "segments", "segment_items",
)
#: Item-count kinds of an item summary, each a distinct-user count.
ITEM_KINDS: Final = ("buyers", "reviewers", "viewers")

K = TypeVar("K", bound=Hashable)
#: Keys one release noises at most (each draw costs ~0.1 ms and 100 bytes).
MAX_NOISED_KEYS: Final = 200_000
# Noise draws fetched from OpenDP at once by LaplaceCounts (its cost is per call).
NOISE_BLOCK: Final = 256

#: Clipping bounds of the segment features (the units of
#: ``UserProfile.segment_vector``, plus recency in days).
SEGMENT_BOUNDS: Final[dict[str, tuple[float, float]]] = {
    "log_orders": (0.0, math.log1p(200.0)),
    "log_order_value": (0.0, math.log1p(20_000.0)),
    "log_clicks": (0.0, math.log1p(2_000.0)),
    "log_reviews": (0.0, math.log1p(200.0)),
    "rating_mean": (1.0, 5.0),
    "sentiment_mean": (0.0, 1.0),
    "return_rate": (0.0, 1.0),
    "log_purchase_gap_days": (0.0, math.log1p(365.0)),
    "log_expected_spend": (0.0, math.log1p(20_000.0)),
    "recency_days": (0.0, 365.0),
}


class BudgetExhausted(RuntimeError):
    """A release would take the total ε past the ledger's limit."""


@dataclass(frozen=True)
class Charge:
    release: str
    epsilon: float
    delta: float
    at: float


class BudgetLedger:
    """The privacy budget spent by the releases, added up (basic composition).

    ``limit`` > 0 refuses a release that would take the total ε past it
    (:class:`BudgetExhausted`); the publisher then keeps answering from its
    last releases. 0 only keeps the account. Thread-safe: HTTP handlers and
    the metrics refresh read it concurrently.

    >>> ledger = BudgetLedger(limit=2.0)
    >>> ledger.charge("popularity", 1.0)
    >>> ledger.charge("segments", 1.0)
    >>> ledger.spent_epsilon, ledger.by_release()
    (2.0, {'popularity': 1.0, 'segments': 1.0})
    >>> ledger.charge("pairs", 0.5)
    Traceback (most recent call last):
    ...
    stream.dp.BudgetExhausted: release 'pairs' needs epsilon 0.5, 0 of 2 left
    """

    def __init__(self, limit: float = 0.0) -> None:
        if limit < 0 or not math.isfinite(limit):
            raise ValueError(f"the budget limit must be a finite number >= 0, got {limit}")
        self.limit = limit
        self._lock = threading.Lock()
        self._epsilon: dict[str, float] = {}
        self._delta: dict[str, float] = {}
        self._count: Counter[str] = Counter()
        self.last: Charge | None = None

    def charge(self, release: str, epsilon: float, delta: float = 0.0, at: float = 0.0) -> None:
        """Record one release of ``release`` costing ``(epsilon, delta)``."""
        if not (epsilon > 0 and math.isfinite(epsilon)) or not 0 <= delta < 1:
            raise ValueError(
                f"a release costs epsilon > 0 and 0 <= delta < 1, got {epsilon}, {delta}"
            )
        with self._lock:
            spent = sum(self._epsilon.values())
            if self.limit and spent + epsilon > self.limit * (1 + 1e-12):
                left = max(self.limit - spent, 0.0)
                raise BudgetExhausted(
                    f"release {release!r} needs epsilon {epsilon:g}, "
                    f"{left:g} of {self.limit:g} left"
                )
            self._epsilon[release] = self._epsilon.get(release, 0.0) + epsilon
            self._delta[release] = self._delta.get(release, 0.0) + delta
            self._count[release] += 1
            self.last = Charge(release, epsilon, delta, at)

    @property
    def spent_epsilon(self) -> float:
        with self._lock:
            return float(sum(self._epsilon.values()))

    @property
    def spent_delta(self) -> float:
        with self._lock:
            return float(sum(self._delta.values()))

    @property
    def remaining(self) -> float | None:
        """ε left under the limit, ``None`` without one."""
        return max(self.limit - self.spent_epsilon, 0.0) if self.limit else None

    def by_release(self) -> dict[str, float]:
        """ε spent by each kind of release."""
        with self._lock:
            return dict(self._epsilon)

    def releases(self) -> dict[str, int]:
        """Number of releases of each kind."""
        with self._lock:
            return dict(self._count)


# -- contribution bounding ------------------------------------------------------------


def _rank(user_id: str, key: object) -> bytes:
    return blake2b(f"{user_id}\x00{key}".encode("utf-8", "surrogatepass"), digest_size=8).digest()


def bound_keys(user_id: str, keys: Iterable[K], limit: int) -> list[K]:
    """At most ``limit`` distinct ``keys`` of one user: each counted once, a fixed
    pseudo-random choice among more (the smallest hashes of (user, key)), so that
    heavy users contribute an even sample of their items, not their oldest ones.

    >>> bound_keys("u1", ["a", "b", "a"], 5)
    ['a', 'b']
    >>> len(bound_keys("u1", [f"i{n}" for n in range(100)], 3))
    3
    """
    distinct = list(dict.fromkeys(keys))
    if len(distinct) <= limit:
        return distinct
    return sorted(distinct, key=lambda k: _rank(user_id, k))[: max(limit, 0)]


def pair_key(a: str, b: str) -> tuple[str, str]:
    """The unordered pair ``(a, b)``, smaller id first."""
    return (a, b) if a <= b else (b, a)


def user_pairs(user_id: str, sequence: Sequence[str], limit: int) -> list[tuple[str, str]]:
    """Distinct unordered pairs of different items used one after the other by a
    user, at most ``limit`` of them (chosen as in :func:`bound_keys`).

    >>> user_pairs("u", ["a", "b", "a", "c", "c"], 10)
    [('a', 'b'), ('a', 'c')]
    """
    pairs = (pair_key(a, b) for a, b in itertools.pairwise(sequence) if a != b)
    return bound_keys(user_id, pairs, limit)


def distinct_counts(contributions: Iterable[Iterable[K]]) -> Counter[K]:
    """How many contributions (users) hold each key, each key once per user."""
    counts: Counter[K] = Counter()
    for keys in contributions:
        counts.update(set(keys))
    return counts


@dataclass(frozen=True, slots=True)
class UserContribution:
    """What one user's state contributes to the releases (before bounding).

    ``bought``, ``reviewed``, ``viewed``: distinct items by how the user used
    them; ``sequence``: their recent items in order (for pairs); ``segment`` and
    ``features`` (named as :data:`SEGMENT_BOUNDS`): their segment membership.
    """

    user_id: str
    bought: Sequence[str] = ()
    reviewed: Sequence[str] = ()
    viewed: Sequence[str] = ()
    sequence: Sequence[str] = ()
    segment: int | None = None
    features: Mapping[str, float] | None = None


# -- mechanisms -----------------------------------------------------------------------


def _check_epsilon(epsilon: float) -> None:
    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise ValueError(f"epsilon must be a finite number > 0, got {epsilon}")


@lru_cache(maxsize=64)
def _top_k_measurement(k: int, epsilon: float) -> Any:
    space = dp.vector_domain(dp.atom_domain(T=int)), dp.linf_distance(T=int, monotonic=True)
    return dp.m.make_noisy_top_k(*space, dp.max_divergence(), k=k, scale=k / epsilon)


def noisy_top_k(counts: Mapping[K, int], k: int, epsilon: float) -> list[K]:
    """The ``k`` keys with the largest distinct-user counts, chosen ε-DP.

    Each user adds at most 1 to each count, only upwards (monotonic L∞
    sensitivity 1): OpenDP's report-noisy-max with exponential noise
    (permute-and-flip), scale ``k / ε``. Keys come out best first; ties of the data never
    matter, the noise decides. Fewer than ``k`` keys: all of them, noisily ordered.
    """
    _check_epsilon(epsilon)
    keys = sorted(counts, key=repr)
    if not keys or k <= 0:
        return []
    k = min(k, len(keys))
    measurement = _top_k_measurement(k, float(epsilon))
    spent = measurement.map(1)
    if spent > epsilon * (1 + 1e-9):  # the library's own privacy map is the proof
        raise AssertionError(f"top-k mechanism spends {spent} > {epsilon}")
    return [keys[i] for i in measurement([int(counts[key]) for key in keys])]


@lru_cache(maxsize=64)
def _laplace_int(scale: float) -> Any:
    space = dp.vector_domain(dp.atom_domain(T=int)), dp.l1_distance(T=int)
    return dp.m.make_laplace(*space, scale=scale)


@lru_cache(maxsize=64)
def _laplace_float(scale: float) -> Any:
    space = dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.l1_distance(T=float)
    return dp.m.make_laplace(*space, scale=scale)


def laplace_counts(values: Sequence[int], sensitivity: int, epsilon: float) -> list[int]:
    """Integer counts plus (discrete) Laplace noise of scale ``sensitivity / ε``:
    ε-DP when one user changes the vector by at most ``sensitivity`` in L1."""
    _check_epsilon(epsilon)
    measurement = _laplace_int(sensitivity / epsilon)
    assert measurement.map(sensitivity) <= epsilon * (1 + 1e-9)
    return list(measurement([int(v) for v in values]))


def laplace_floats(values: Sequence[float], sensitivity: float, epsilon: float) -> list[float]:
    """Real values plus Laplace noise of scale ``sensitivity / ε``: ε-DP when one
    user changes the vector by at most ``sensitivity`` in L1."""
    _check_epsilon(epsilon)
    measurement = _laplace_float(sensitivity / epsilon)
    assert measurement.map(sensitivity) <= epsilon * (1 + 1e-9)
    return list(measurement([float(v) for v in values]))


@lru_cache(maxsize=64)
def _threshold_measurement(keys_per_user: int, epsilon: float, delta: float) -> tuple[Any, int]:
    """OpenDP's thresholded Laplace over integer-keyed counts and its threshold: the
    smallest for which one user (``keys_per_user`` keys, each +-1) costs at most
    ``(epsilon, delta)`` by the library's own privacy map."""
    space = (
        dp.map_domain(dp.atom_domain(T=int), dp.atom_domain(T=int)),
        dp.l01inf_distance(dp.absolute_distance(T=int)),
    )
    scale = keys_per_user / epsilon
    d_in = (keys_per_user, keys_per_user, 1)

    def cost(threshold: int) -> tuple[float, float]:
        m = dp.m.make_laplace_threshold(*space, scale=scale, threshold=threshold)
        eps, dlt = m.map(d_in)
        return float(eps), float(dlt)

    low, high = 1, 1
    while cost(high)[1] > delta:  # the threshold grows like scale * ln(keys / delta)
        low, high = high, high * 2
        if high > 1 << 40:
            raise ValueError(f"no threshold reaches delta {delta:g}")
    while low < high:
        mid = (low + high) // 2
        if cost(mid)[1] <= delta:
            high = mid
        else:
            low = mid + 1
    eps, dlt = cost(high)
    if eps > epsilon * (1 + 1e-9) or dlt > delta:  # the library's map is the proof
        raise AssertionError(f"thresholded Laplace spends ({eps}, {dlt}) > ({epsilon}, {delta})")
    return dp.m.make_laplace_threshold(*space, scale=scale, threshold=high), high


def threshold_counts(
    counts: Mapping[K, int], keys_per_user: int, epsilon: float, delta: float
) -> dict[K, int]:
    """Counts over an unknown domain, ``(epsilon, delta)``-DP: each present key gets
    Laplace noise of scale ``keys_per_user / epsilon`` and only the keys whose
    noisy count reaches the threshold are released (OpenDP's
    ``make_laplace_threshold``; δ bounds the chance that a key only one user
    holds comes out). One user adds 1 to at most ``keys_per_user`` keys.

    >>> out = threshold_counts({"big": 10_000, "rare": 1}, 1, epsilon=1.0, delta=1e-9)
    >>> sorted(out), abs(out["big"] - 10_000) < 100
    (['big'], True)
    """
    _check_epsilon(epsilon)
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    measurement, _ = _threshold_measurement(keys_per_user, float(epsilon), float(delta))
    keys = list(counts)
    noisy = measurement({i: int(counts[key]) for i, key in enumerate(keys)})
    return {keys[i]: int(v) for i, v in noisy.items()}


def release_threshold(keys_per_user: int, epsilon: float, delta: float) -> int:
    """The smallest noisy count :func:`threshold_counts` releases."""
    _check_epsilon(epsilon)
    return _threshold_measurement(keys_per_user, float(epsilon), float(delta))[1]


class LaplaceCounts(Generic[K]):
    """Distinct-user counts over a public domain, each key noised once when first read.

    ``exact`` holds the bounded counts (one user adds 1 to at most
    ``sensitivity`` keys); :meth:`get` answers any key, present or not, with
    its count plus Laplace noise of scale ``sensitivity / ε`` drawn on first
    read and kept for the life of this release: the same as noising every key
    of the domain at once (ε-DP), without materialising it.

    >>> counts = LaplaceCounts({"a": 100}, sensitivity=1, epsilon=100.0)
    >>> abs(counts.get("a") - 100) <= 1, counts.get("a") == counts.get("a")
    (True, True)
    """

    def __init__(self, exact: Mapping[K, int], sensitivity: int, epsilon: float) -> None:
        _check_epsilon(epsilon)
        self.exact = exact
        self.sensitivity = sensitivity
        self.epsilon = epsilon
        self.scale = sensitivity / epsilon
        self._noisy: dict[K, int] = {}
        self._noise: list[int] = []
        self._lock = threading.Lock()

    def get(self, key: K) -> int | None:
        """The noisy count of ``key``; ``None`` once ``MAX_NOISED_KEYS`` keys have been
        noised in this release (an answer that depends on no one's data)."""
        with self._lock:
            value = self._noisy.get(key)
            if value is None:
                if len(self._noisy) >= MAX_NOISED_KEYS:
                    return None
                if not self._noise:
                    # One OpenDP call per key cost ~1 ms, a fifth of the worker's batch
                    # time in reasons. The discrete Laplace mechanism adds noise drawn
                    # independently of the input, so the library's mechanism applied to
                    # zeros gives a block of draws; count + draw has the same law.
                    self._noise = laplace_counts(
                        [0] * NOISE_BLOCK, self.sensitivity, self.epsilon
                    )
                value = self.exact.get(key, 0) + self._noise.pop()
                self._noisy[key] = value
            return value

    def __len__(self) -> int:
        return len(self._noisy)


@dataclass(frozen=True)
class SegmentRelease:
    """Noisy segment sizes and centres (features in :data:`SEGMENT_BOUNDS` units)."""

    sizes: dict[int, int]
    centres: dict[int, dict[str, float]]


def release_segments(
    members: Iterable[tuple[int, Mapping[str, float]]],
    n_segments: int,
    epsilon: float,
    bounds: Mapping[str, tuple[float, float]] = SEGMENT_BOUNDS,
) -> SegmentRelease:
    """Segment sizes and centres, ε-DP for one user (who is in one segment).

    Half of ε goes to the sizes (L1 sensitivity 1), half to the sums of the
    members' features, each clipped to its bounds and scaled to [0, 1] (L1
    sensitivity ``len(bounds)``). A centre is its noisy sum over its noisy
    size (at least 1), clipped back into the bounds.
    """
    _check_epsilon(epsilon)
    names = list(bounds)
    d = len(names)
    lo = np.array([bounds[n][0] for n in names])
    width = np.array([bounds[n][1] - bounds[n][0] for n in names])
    segments: list[int] = []
    rows: list[list[float]] = []
    for segment, features in members:
        if 0 <= segment < n_segments:
            segments.append(segment)
            rows.append([features.get(n, bounds[n][0]) for n in names])
    x = np.nan_to_num(np.array(rows, dtype=float).reshape(len(rows), d), nan=0.0,
                      posinf=0.0, neginf=0.0)
    scaled = np.clip((x - lo) / width, 0.0, 1.0)  # the clipping that bounds a user's L1
    seg = np.array(segments, dtype=np.int64)
    sizes = np.bincount(seg, minlength=n_segments)
    sums = np.zeros((n_segments, d))
    np.add.at(sums, seg, scaled)
    noisy_sizes = laplace_counts(sizes.tolist(), 1, epsilon / 2)
    noisy_sums = np.array(laplace_floats(sums.ravel().tolist(), float(d), epsilon / 2))
    centres: dict[int, dict[str, float]] = {}
    for j in range(n_segments):
        mean = np.clip(noisy_sums[j * d : (j + 1) * d] / max(noisy_sizes[j], 1), 0.0, 1.0)
        centres[j] = dict(zip(names, (lo + mean * width).tolist(), strict=True))
    return SegmentRelease({j: max(int(s), 0) for j, s in enumerate(noisy_sizes)}, centres)


# -- the publisher --------------------------------------------------------------------


@dataclass(frozen=True)
class DPConfig:
    """The privacy knobs (``FEEDBACK_DP_*`` in the settings)."""

    #: ε of each release (every kind of :data:`RELEASES`).
    epsilon: float = 1.0
    #: Items of each kind (bought, reviewed, viewed) one user adds to item counts.
    max_items_per_user: int = 20
    #: Item pairs one user adds to the "bought together" counts.
    max_pairs_per_user: int = 10
    #: Items in the published popularity list.
    top_k: int = 20
    #: A release is recomputed at most this often (seconds).
    interval_seconds: float = 300.0
    #: A "bought together with X" reason needs this many customers (noisy count).
    min_pair_support: int = 20
    #: Total ε the releases may spend, 0: no limit (account only).
    budget: float = 0.0
    #: δ of the thresholded neighbour release (the only one that is not pure ε-DP).
    delta: float = 1e-6
    #: Items per segment in the segments' top-item lists.
    segment_top_k: int = 5

    def validate(self) -> None:
        _check_epsilon(self.epsilon)
        names = ("max_items_per_user", "max_pairs_per_user", "top_k", "min_pair_support",
                 "segment_top_k")
        for name in names:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.interval_seconds < 0 or self.budget < 0:
            raise ValueError("interval_seconds and budget must be >= 0")
        if not 0 < self.delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {self.delta}")


@dataclass
class _Cached:
    value: Any
    at: float


@dataclass
class DPPublisher:
    """Every published item and segment statistic, through the mechanisms above.

    ``source`` returns the current users' contributions (the worker reads them
    from its engine); each kind of release is recomputed from it at most every
    ``config.interval_seconds`` and charged to ``ledger``; in between, and
    once the budget is spent, the last release answers. ``clock`` is the wall
    clock, replaceable in tests. ``domain`` returns the public item catalogue
    the top-k selections choose from (every item, with 0 when nobody holds
    it, so that which items can be chosen depends on no one's data); without
    it they choose among the items the users hold.
    """

    source: Callable[[], Iterable[UserContribution]]
    config: DPConfig = field(default_factory=DPConfig)
    n_segments: int = 5
    ledger: BudgetLedger | None = None
    clock: Callable[[], float] = time.monotonic
    domain: Callable[[], Iterable[str]] | None = None

    def __post_init__(self) -> None:
        self.config.validate()
        if self.ledger is None:
            self.ledger = BudgetLedger(self.config.budget)
        self._cache: dict[str, _Cached] = {}
        self._lock = threading.Lock()

    def _release(
        self, kind: str, build: Callable[[list[UserContribution]], Any], delta: float = 0.0
    ) -> Any:
        now = self.clock()
        with self._lock:
            cached = self._cache.get(kind)
            if cached is not None and now - cached.at < self.config.interval_seconds:
                return cached.value
            assert self.ledger is not None
            try:
                self.ledger.charge(kind, self.config.epsilon, delta, at=now)
            except BudgetExhausted:
                if cached is not None:
                    return cached.value
                raise
            value = build(list(self.source()))
            self._cache[kind] = _Cached(value, now)
            return value

    def popular(self, k: int | None = None) -> list[str]:
        """The published popularity list (best first), at most ``config.top_k`` items."""
        ranked: list[str] = self._release("popularity", self._build_popularity)
        return ranked[: self.config.top_k if k is None else min(k, self.config.top_k)]

    def _build_popularity(self, users: list[UserContribution]) -> list[str]:
        counts = self._over_domain(distinct_counts([*u.bought, *u.reviewed] for u in users))
        return noisy_top_k(counts, self.config.top_k, self.config.epsilon)

    def _over_domain(self, counts: Counter[str]) -> Counter[str]:
        if self.domain is not None:
            for item in self.domain():
                counts.setdefault(item, 0)
        return counts

    def item_summary(self, item_id: str) -> dict[str, Any]:
        """Noisy distinct-user counts of one item (any id: unknown ones count 0 + noise)."""
        return self.item_summaries([item_id])[0]

    def item_summaries(self, item_ids: Iterable[str]) -> list[dict[str, Any]]:
        """:meth:`item_summary` of each of ``item_ids``, from one release."""
        counts: dict[str, LaplaceCounts[str]] = self._release("items", self._build_items)
        out = []
        for item in item_ids:
            noisy = {kind: c.get(item) for kind, c in counts.items()}
            out.append({"item_id": item, **{k: None if v is None else max(v, 0)
                                             for k, v in noisy.items()}})
        return out

    def _build_items(self, users: list[UserContribution]) -> dict[str, LaplaceCounts[str]]:
        limit = self.config.max_items_per_user
        # Three counts, each ε/3: one user moves each by at most ``limit`` in L1.
        share = self.config.epsilon / len(ITEM_KINDS)
        per_kind = {
            "buyers": [bound_keys(u.user_id, u.bought, limit) for u in users],
            "reviewers": [bound_keys(u.user_id, u.reviewed, limit) for u in users],
            "viewers": [bound_keys(u.user_id, u.viewed, limit) for u in users],
        }
        return {
            kind: LaplaceCounts(distinct_counts(keys), limit, share)
            for kind, keys in per_kind.items()
        }

    def bought_together(self, a: str, b: str) -> int | None:
        """The noisy number of customers who used ``a`` and ``b`` one after the other,
        ``None`` below ``config.min_pair_support`` (a reason must not quote it)."""
        pairs: LaplaceCounts[tuple[str, str]] = self._release("pairs", self._build_pairs)
        count = pairs.get(pair_key(a, b))
        return count if count is not None and count >= self.config.min_pair_support else None

    def _build_pairs(self, users: list[UserContribution]) -> LaplaceCounts[tuple[str, str]]:
        limit = self.config.max_pairs_per_user
        counts = distinct_counts(user_pairs(u.user_id, u.sequence, limit) for u in users)
        return LaplaceCounts(counts, limit, self.config.epsilon)

    def neighbours(self, item_id: str, k: int) -> list[tuple[str, int]]:
        """The items most often used one after the other with ``item_id``, by noisy
        number of customers, best first: at most ``k``, only pairs whose noisy count
        reached the release's threshold (:func:`threshold_counts`). Any id answers,
        an unknown one (almost surely) with nothing."""
        return self.all_neighbours().get(item_id, [])[:k]

    def all_neighbours(self) -> dict[str, list[tuple[str, int]]]:
        """The neighbour release: each item's released pairs (as :meth:`neighbours`)."""
        release: dict[str, list[tuple[str, int]]] = self._release(
            "neighbours", self._build_neighbours, self.config.delta
        )
        return release

    def neighbour_threshold(self) -> int:
        """The smallest noisy count the neighbour release shows."""
        return release_threshold(
            self.config.max_pairs_per_user, self.config.epsilon, self.config.delta
        )

    def _build_neighbours(self, users: list[UserContribution]) -> dict[str, list[tuple[str, int]]]:
        limit = self.config.max_pairs_per_user
        counts = distinct_counts(user_pairs(u.user_id, u.sequence, limit) for u in users)
        noisy = threshold_counts(counts, limit, self.config.epsilon, self.config.delta)
        rows: dict[str, list[tuple[str, int]]] = {}
        for (a, b), count in noisy.items():  # post-processing: both directions of a pair
            rows.setdefault(a, []).append((b, count))
            rows.setdefault(b, []).append((a, count))
        for row in rows.values():
            row.sort(key=lambda pair: (-pair[1], pair[0]))
        return rows

    def segment_items(self) -> dict[int, list[str]]:
        """Each segment's ``config.segment_top_k`` most popular items (distinct buyers
        or reviewers among its members), chosen ε-DP, best first."""
        release: dict[int, list[str]] = self._release("segment_items", self._build_segment_items)
        return release

    def _build_segment_items(self, users: list[UserContribution]) -> dict[int, list[str]]:
        # A user is in one segment: the per-segment selections compose in parallel,
        # each is report-noisy-max at the full ε.
        members: dict[int, list[UserContribution]] = {}
        for u in users:
            if u.segment is not None and 0 <= u.segment < self.n_segments:
                members.setdefault(u.segment, []).append(u)
        out: dict[int, list[str]] = {}
        for j in range(self.n_segments):
            counts = distinct_counts([*u.bought, *u.reviewed] for u in members.get(j, []))
            out[j] = noisy_top_k(
                self._over_domain(counts), self.config.segment_top_k, self.config.epsilon
            )
        return out

    def segments(self) -> SegmentRelease:
        """Noisy sizes and centres of the segments."""
        release: SegmentRelease = self._release("segments", self._build_segments)
        return release

    def _build_segments(self, users: list[UserContribution]) -> SegmentRelease:
        members = (
            (u.segment, u.features)
            for u in users
            if u.segment is not None and u.features is not None
        )
        return release_segments(members, self.n_segments, self.config.epsilon)


# -- reasons --------------------------------------------------------------------------

#: Reasons that quote an item pair statistic, by their fixed prefix (models/recommender.py,
#: models/session.py).
PAIR_REASONS: Final = (
    "bought together with ",
    "viewed together with ",
    "liked by people who liked ",
    "often chosen right after ",
    "often viewed next after ",
)
#: What a pair reason becomes when the DP count does not support it.
FALLBACK_REASON: Final = "related to your recent activity"


def private_reason(item_id: str, reason: str, publisher: DPPublisher) -> str:
    """``reason`` if it quotes no pair, or a pair whose DP count reaches the support;
    otherwise the generic reason (a rare pair could be one customer's basket).

    The other item named is the recipient's own, so only the pair's support
    is a statistic about other customers. A figure the reason adds after the
    item id (`` (3.2x more often than chance)``) comes from exact counts and
    is dropped.

    >>> pub = DPPublisher(lambda: [], DPConfig(min_pair_support=1_000_000))
    >>> private_reason("y", "bought together with x (4.0x)", pub)
    'related to your recent activity'
    """
    for prefix in PAIR_REASONS:
        if reason.startswith(prefix):
            other = reason[len(prefix):].partition(" (")[0]
            supported = publisher.bought_together(other, item_id) is not None
            return prefix + other if supported else FALLBACK_REASON
    return reason


def engine_contributions(engine: Any) -> Iterable[UserContribution]:
    """Each user's contribution, read from a ``models.engine.FeedbackEngine``'s state.

    Only users the engine still holds contribute: an erased or evicted user is
    absent from every later release.
    """
    from models.profiles import DAY, SEGMENT_FEATURES

    ids = engine.catalogue.ids
    rows, vectors = engine.segmentation.index, engine.segmentation.vectors
    for user_id, profile in list(engine.profiles.items()):
        by_kind: dict[str, list[str]] = {"purchase": [], "review": [], "click": []}
        for item, kind in profile.seen.items():
            by_kind[kind].append(ids[item])
        segment = engine.segment_of(user_id)
        features = None
        if segment is not None:
            # The coordinates the segmentation holds (with the expected spend of
            # the user's latest event), else the profile's own.
            row = rows.get(user_id)
            vector = vectors[row] if row is not None else profile.segment_vector()
            features = dict(zip(SEGMENT_FEATURES, vector.tolist(), strict=True))
            now = engine.clock if engine.clock is not None else profile.last_seen
            features["recency_days"] = max(0.0, now - profile.last_seen) / DAY
        yield UserContribution(
            user_id,
            bought=by_kind["purchase"],
            reviewed=by_kind["review"],
            viewed=by_kind["click"],
            sequence=[ids[item] for item, _ in profile.history],
            segment=segment,
            features=features,
        )
