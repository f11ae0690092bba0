"""Alert records, cooldowns and the detectors behind each kind of alert."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from river import drift, stats

from models.halfspace import HalfSpaceForest
from models.river_internals import forest_from_river

ALERT_KINDS: tuple[str, ...] = (
    "negative_review_spike",
    "anomalous_behaviour",
    "model_drift",
    "churn_risk",
    "behaviour_shift",
)


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert: what, about whom, how bad, measured against which threshold."""

    kind: str
    severity: str
    subject: str
    message: str
    value: float
    threshold: float
    timestamp: float


class Cooldown:
    """At most one alert per ``(kind, subject)`` every ``seconds`` of event time.

    ``per_kind`` overrides the duration for some kinds. Keys whose cooldown has
    expired are dropped by :meth:`prune`, so memory is bounded by the number of
    subjects alerted on within one cooldown.

    >>> cd = Cooldown(60.0, per_kind={"slow": 600.0})
    >>> cd.allow("k", "s", 0.0), cd.allow("k", "s", 30.0), cd.allow("k", "s", 61.0)
    (True, False, True)
    >>> cd.allow("slow", "s", 0.0), cd.allow("slow", "s", 61.0)
    (True, False)
    """

    def __init__(self, seconds: float, per_kind: dict[str, float] | None = None) -> None:
        self.seconds = seconds
        self.per_kind = dict(per_kind) if per_kind else {}
        self.last: dict[tuple[str, str], float] = {}

    def allow(self, kind: str, subject: str, now: float) -> bool:
        """True (and the clock restarted) if this subject may be alerted on at ``now``."""
        key = (kind, subject)
        last = self.last.get(key)
        if last is not None and now - last < self.per_kind.get(kind, self.seconds):
            return False
        self.last[key] = now
        return True

    def prune(self, now: float) -> None:
        """Forget keys whose cooldown has expired."""
        self.last = {
            k: t for k, t in self.last.items() if now - t < self.per_kind.get(k[0], self.seconds)
        }


class BehaviourAnomaly:
    """Half-space trees over a purchase's features squashed into [0, 1].

    Half-space trees assume features in [0, 1], so each feature is
    log-compressed and min-max scaled with running bounds. The alert threshold
    is the larger of ``min_score`` and the running ``quantile`` of past scores,
    so that only the most unusual fraction of events raise alerts whatever the
    data's score distribution. Scores are produced only after ``warmup``
    events (the trees need a full reference window).

    The trees are :class:`~models.halfspace.HalfSpaceForest`, River's
    ``HalfSpaceTrees`` as arrays: with the same seed, the same trees and the
    same scores as River's, at a fraction of the cost per event.

    Parameters
    ----------
    n_trees, height, window_size
        Half-space trees' parameters (height 6 rather than River's default 8:
        64 leaves per tree are plenty for five features, at 60% of the cost).
    quantile
        Scores above this running quantile are anomalous.
    min_score
        Floor of the threshold.
    warmup
        Events learnt before any score is given.
    seed
        Seeds the trees.

    Examples
    --------
    >>> import numpy as np
    >>> det = BehaviourAnomaly(window_size=50, warmup=100, seed=1)
    >>> rng = np.random.default_rng(0)
    >>> for _ in range(300):
    ...     _ = det.score_learn_one([rng.normal(1.0, 0.1), rng.normal(1.0, 0.1), 0.0])
    >>> normal = det.score_learn_one([1.0, 1.0, 0.0])
    >>> odd = det.score_learn_one([8.0, 9.0, 1.0])
    >>> odd > normal
    True
    """

    def __init__(
        self,
        n_trees: int = 10,
        height: int = 6,
        window_size: int = 250,
        quantile: float = 0.999,
        min_score: float = 0.8,
        warmup: int = 1000,
        seed: int = 0,
    ) -> None:
        self.n_trees = n_trees
        self.height = height
        self.window_size = window_size
        self.quantile = quantile
        self.min_score = min_score
        self.warmup = warmup
        self.seed = seed
        # Built on the first event, which tells the number of features.
        self.forest: HalfSpaceForest | None = None
        self.score_quantile = stats.Quantile(quantile)
        self.low: list[float] | None = None
        self.high: list[float] | None = None
        self.n = 0

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "trees" in state:  # pickled with River's HalfSpaceTrees: carry its trees over
            state = dict(state)
            state["forest"] = forest_from_river(state.pop("trees"))
            for bound in ("low", "high"):
                if state[bound] is not None:
                    state[bound] = [float(v) for v in state[bound]]
        self.__dict__.update(state)

    def threshold(self) -> float:
        """Current alert threshold."""
        q = self.score_quantile.get()
        return max(self.min_score, q if q is not None else self.min_score)

    def scale_learn_one(self, features: Sequence[float]) -> list[float]:
        """``features`` log-compressed and squashed into [0, 1] by the bounds so far,
        then the bounds widened to take them in.

        The features must be finite (the event contract rejects NaN and infinities).
        """
        # One Python loop, not numpy: five values are too few for numpy's per-call cost.
        if self.low is None or self.high is None:
            raw = [math.copysign(math.log1p(abs(v)), v) for v in features]
            self.low, self.high = list(raw), list(raw)
        low, high = self.low, self.high
        if len(features) != len(low):
            raise ValueError(f"expected {len(low)} features, got {len(features)}")
        x = []
        for i, v in enumerate(features):
            r = math.copysign(math.log1p(abs(v)), v)
            lo, hi = low[i], high[i]
            span = hi - lo
            s = (r - lo) / (span if span > 1e-9 else 1e-9)
            x.append(0.0 if s < 0.0 else 1.0 if s > 1.0 else s)
            if r < lo:
                low[i] = r
            elif r > hi:
                high[i] = r
        return x

    def score_learn_one(self, features: Sequence[float]) -> float | None:
        """Anomaly score of ``features`` in [0, 1] (``None`` during warm-up), then learn."""
        x = self.scale_learn_one(features)
        if self.forest is None:
            self.forest = HalfSpaceForest(
                len(x), self.n_trees, self.height, self.window_size, self.seed
            )
        score = self.forest.score_learn_one(x, self.n >= self.warmup)
        self.n += 1
        if score is not None:
            self.score_quantile.update(score)
        return score


class QualityDrift:
    """ADWIN over a model's per-event quality (hit or absolute error).

    Reports a drift only when quality got *worse*: for a ``higher_is_better``
    stream (hits), when the mean of the window after the change is lower than
    before it; for errors, when it is higher.

    >>> qd = QualityDrift(higher_is_better=True)
    >>> flags = [qd.learn_one(1.0 if i < 1000 else 0.0) for i in range(2000)]
    >>> any(f is not None for f in flags[:1000]), any(f is not None for f in flags[1000:])
    (False, True)
    """

    def __init__(self, higher_is_better: bool, delta: float = 0.002) -> None:
        self.higher_is_better = higher_is_better
        self.delta = delta
        self.detector = drift.ADWIN(delta=delta)

    def learn_one(self, value: float) -> tuple[float, float] | None:
        """Learn one value; on a worsening drift returns ``(new mean, old mean)``."""
        before = self.detector.estimation
        self.detector.update(value)
        if not self.detector.drift_detected:
            return None
        after = self.detector.estimation
        worse = after < before if self.higher_is_better else after > before
        if not worse or math.isclose(after, before):
            return None
        return after, before
