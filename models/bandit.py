"""Thompson sampling over recommendation strategies, per customer segment.

Each (segment, strategy) arm has a Beta-Bernoulli posterior of its
click-through rate: ``Beta(a0 + clicks, b0 + exposures - clicks)``. To choose,
one CTR is drawn from each arm's posterior and the largest wins, so traffic
flows towards the strategy most likely to be best, while an uncertain arm
still gets tried.

Feedback in a stream is delayed: the exposure happens now, the click (if any)
later. So an exposure counts as a trial at once (:meth:`SegmentedThompson.expose`,
i.e. provisionally a miss) and an attributed click later turns one miss into a
hit (:meth:`SegmentedThompson.reward`); a click never attributed stays a miss.
River's ``bandit.ThompsonSampling`` couples one pull to one reward update
(``Policy.update`` counts a pull per reward), which would count a clicked
exposure twice, and it draws from one shared generator; here a draw is seeded by
the decision's key (the triggering event id), so re-processing an event after a
crash makes the same choice.

A segment's posterior borrows the pooled (all-segment) evidence, shrunk to at
most ``pool_strength`` pseudo-trials, so that a new or small segment starts
from what works overall rather than from nothing. With ``horizon``, an arm's
counts are halved whenever its trials exceed it: old evidence fades, so the
bandit follows a recommender that keeps learning.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from hashlib import blake2b

__all__ = ["ArmStats", "SegmentedThompson"]

#: Key of the pooled statistics (all segments together).
POOLED = "__all__"


@dataclass(slots=True)
class ArmStats:
    """Trials (exposures) and successes (clicked exposures) of one arm."""

    trials: float = 0.0
    successes: float = 0.0


def segment_key(segment: Hashable | None) -> str:
    """Label of a segment: its ``str``, ``"none"`` before segmentation warms up."""
    return "none" if segment is None else str(segment)


class SegmentedThompson:
    """Beta-Bernoulli Thompson sampling per segment, with delayed binary rewards.

    Parameters
    ----------
    arms
        The strategies to choose among, in a fixed order.
    prior_alpha, prior_beta
        The Beta prior of every arm's rate.
    pool_strength
        At most this many pseudo-trials of pooled evidence join each segment's
        own (0 for fully separate segments).
    horizon
        When an arm's trials in a segment exceed this, its counts are halved
        (``None``: never forget).
    seed
        Seeds every draw, together with the decision's key.

    Examples
    --------
    >>> bandit = SegmentedThompson(["blend", "popularity"], seed=7)
    >>> rng = random.Random(0)
    >>> true_ctr = {"blend": 0.3, "popularity": 0.1}
    >>> chosen = []
    >>> for i in range(2000):
    ...     arm = bandit.choose(segment=0, key=f"event-{i}")
    ...     bandit.expose(0, arm)
    ...     if rng.random() < true_ctr[arm]:
    ...         bandit.reward(0, arm)
    ...     chosen.append(arm)
    >>> chosen[-500:].count("blend") / 500 > 0.9
    True
    >>> 0.27 < bandit.mean(0, "blend") < 0.33
    True
    """

    def __init__(
        self,
        arms: Sequence[str],
        prior_alpha: float = 1.0,
        prior_beta: float = 1.0,
        pool_strength: float = 20.0,
        horizon: float | None = None,
        seed: int = 0,
    ) -> None:
        if not arms:
            raise ValueError("a bandit needs at least one arm")
        if prior_alpha <= 0 or prior_beta <= 0 or pool_strength < 0:
            raise ValueError("prior_alpha and prior_beta must be > 0, pool_strength >= 0")
        if horizon is not None and horizon < 2:
            raise ValueError("horizon must be >= 2")
        self.arms = list(arms)
        self.prior_alpha = prior_alpha
        self.prior_beta = prior_beta
        self.pool_strength = pool_strength
        self.horizon = horizon
        self.seed = seed
        self.stats: dict[str, dict[str, ArmStats]] = {}
        self.choices: dict[str, dict[str, int]] = {}
        self._rng = random.Random(seed)

    # -- state -----------------------------------------------------------------
    def _arm(self, segment: str, arm: str) -> ArmStats:
        if arm not in self.arms:
            raise KeyError(f"unknown arm {arm!r}")
        per_segment = self.stats.get(segment)
        if per_segment is None:
            per_segment = self.stats[segment] = {a: ArmStats() for a in self.arms}
        return per_segment[arm]

    def expose(self, segment: Hashable | None, arm: str) -> None:
        """Count an exposure of ``arm`` in ``segment`` (a trial, provisionally a miss)."""
        for key in (segment_key(segment), POOLED):
            stats = self._arm(key, arm)
            stats.trials += 1
            if self.horizon is not None and stats.trials > self.horizon:
                stats.trials /= 2
                stats.successes /= 2

    def reward(self, segment: Hashable | None, arm: str, value: float = 1.0) -> None:
        """Turn ``value`` (in [0, 1]) of a previous exposure's miss into a hit."""
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"reward must be in [0, 1], got {value}")
        for key in (segment_key(segment), POOLED):
            stats = self._arm(key, arm)
            stats.successes = min(stats.trials, stats.successes + value)

    # -- decisions -------------------------------------------------------------
    def posterior(self, segment: Hashable | None, arm: str) -> tuple[float, float]:
        """``(alpha, beta)`` of the arm's CTR in ``segment``, pooled evidence included."""
        own = self._arm(segment_key(segment), arm)
        alpha = self.prior_alpha + own.successes
        beta = self.prior_beta + own.trials - own.successes
        if self.pool_strength > 0:
            pooled = self._arm(POOLED, arm)
            others_trials = pooled.trials - own.trials
            if others_trials > 0:
                w = min(1.0, self.pool_strength / others_trials)
                others_successes = pooled.successes - own.successes
                alpha += w * others_successes
                beta += w * (others_trials - others_successes)
        return alpha, beta

    def mean(self, segment: Hashable | None, arm: str) -> float:
        """Posterior mean CTR of ``arm`` in ``segment``."""
        a, b = self.posterior(segment, arm)
        return a / (a + b)

    def choose(self, segment: Hashable | None = None, key: str | None = None) -> str:
        """The arm with the largest posterior draw; ``key`` makes the draw reproducible.

        Counts the choice (see :attr:`choices`) but not the exposure: call
        :meth:`expose` once the recommendation is actually published.
        """
        if key is None:
            rng = self._rng
        else:
            digest = blake2b(f"{self.seed}:{key}".encode(), digest_size=8).digest()
            rng = random.Random(int.from_bytes(digest, "big"))
        best, best_draw = self.arms[0], -1.0
        for arm in self.arms:
            draw = rng.betavariate(*self.posterior(segment, arm))
            if draw > best_draw:
                best, best_draw = arm, draw
        per_segment = self.choices.setdefault(segment_key(segment), dict.fromkeys(self.arms, 0))
        per_segment[best] += 1
        return best

    def best(self, segment: Hashable | None = None) -> str:
        """The arm with the highest posterior mean in ``segment``."""
        return max(self.arms, key=lambda arm: self.mean(segment, arm))

    def snapshot(self) -> dict[str, dict[str, dict[str, float]]]:
        """Per segment and arm: trials, successes and posterior mean (JSON-able)."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        for seg, arms in self.stats.items():
            if seg == POOLED:
                continue
            segment: Hashable | None = None if seg == "none" else seg
            out[seg] = {
                arm: {
                    "trials": s.trials,
                    "successes": s.successes,
                    "mean": self.mean(segment, arm),
                }
                for arm, s in arms.items()
            }
        return out
