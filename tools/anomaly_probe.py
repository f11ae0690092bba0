"""The purchase anomaly detector on River's trees and on the array forest, on Online Retail.

``python -m tools.anomaly_probe [--events N]`` replays the first N Online Retail
purchases (default 100,000) through the engine, recording the features it hands
:class:`~models.alerts.BehaviourAnomaly` (the engine's own feature function), then
replays those features through

* the detector on River's ``HalfSpaceTrees`` (numpy scaling and River's trees
  walked once per event for score and learn, as the detector was before the
  array forest), and
* :class:`~models.alerts.BehaviourAnomaly` on :class:`~models.halfspace.HalfSpaceForest`,

alternately, ``--repeats`` times each, and prints the CPU microseconds per
purchase of each (best of the repeats), whether their scores are equal, their
alert counts, and the detection AUC of outliers injected into a copy of the
stream (1% of the purchases after warm-up, quantity times 20-500). Last, the
forest alone per event and per batch (``score_learn_many``, batches of
``--batch``) on the same scaled features.
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from river import anomaly, stats

from models.alerts import BehaviourAnomaly
from models.engine import EngineConfig, FeedbackEngine
from models.halfspace import HalfSpaceForest
from models.river_internals import score_then_learn
from stream.contract import event_from_dict
from tools import datasets


class RiverTreesAnomaly:
    """The detector on River's ``HalfSpaceTrees``: the baseline the forest replaces."""

    def __init__(self, warmup: int, quantile: float, min_score: float) -> None:
        self.trees = anomaly.HalfSpaceTrees(n_trees=10, height=6, window_size=250, seed=0)
        self.score_quantile = stats.Quantile(quantile)
        self.min_score = min_score
        self.warmup = warmup
        self.low: np.ndarray | None = None
        self.high: np.ndarray | None = None
        self.n = 0

    def threshold(self) -> float:
        q = self.score_quantile.get()
        return max(self.min_score, q if q is not None else self.min_score)

    def score_learn_one(self, features: list[float]) -> float | None:
        values = np.asarray(features, dtype=float)
        raw = np.sign(values) * np.log1p(np.abs(values))
        if self.low is None or self.high is None:
            self.low, self.high = raw.copy(), raw.copy()
        span = np.maximum(self.high - self.low, 1e-9)
        x = dict(enumerate(np.clip((raw - self.low) / span, 0.0, 1.0).tolist()))
        score = score_then_learn(self.trees, x, self.n >= self.warmup)
        self.low = np.minimum(self.low, raw)
        self.high = np.maximum(self.high, raw)
        self.n += 1
        if score is not None:
            self.score_quantile.update(score)
        return score


def engine_features(n_events: int, data_dir: Path | None, seed: int) -> list[list[float]]:
    """The features the engine scores for each purchase of the first ``n_events``."""
    engine = FeedbackEngine(EngineConfig(seed=seed))
    recorded: list[list[float]] = []
    score = engine.anomaly.score_learn_one

    def record(features: Sequence[float]) -> float | None:
        recorded.append(list(features))
        return score(features)

    engine.anomaly.score_learn_one = record  # type: ignore[method-assign]
    for raw in itertools.islice(datasets.events("online-retail", data_dir), n_events):
        engine.process(event_from_dict(raw))
    return recorded


def replay(
    make: Callable[[], RiverTreesAnomaly | BehaviourAnomaly], rows: list[list[float]]
) -> tuple[float, list[float | None], int]:
    """CPU seconds, scores and alert count of a fresh detector over ``rows``."""
    det = make()
    scores: list[float | None] = []
    alerts = 0
    start = time.process_time()
    for row in rows:
        s = det.score_learn_one(row)
        scores.append(s)
        alerts += s is not None and s > det.threshold()
    return time.process_time() - start, scores, alerts


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC (Mann-Whitney, ties counted half)."""
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # Average ranks over ties.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    pos = labels.sum()
    neg = len(labels) - pos
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def inject(rows: list[list[float]], warmup: int, seed: int) -> tuple[list[list[float]], np.ndarray]:
    """A copy of ``rows`` with 1% of the purchases after warm-up made 20-500 times bigger."""
    rng = np.random.default_rng(seed)
    out = [list(r) for r in rows]
    labels = np.zeros(len(rows), dtype=bool)
    at = rng.choice(np.arange(warmup, len(rows)), size=max(1, (len(rows) - warmup) // 100))
    for i in at:
        k = float(np.exp(rng.uniform(np.log(20.0), np.log(500.0))))
        out[i][0] *= k  # quantity
        out[i][2] *= k  # revenue
        labels[i] = True
    return out, labels


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=100_000, help="Online Retail events replayed")
    p.add_argument("--repeats", type=int, default=3, help="timed replays of each detector")
    p.add_argument("--batch", type=int, default=500, help="events per score_learn_many call")
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--seed", type=int, default=EngineConfig().seed)
    args = p.parse_args(argv)
    try:
        datasets.check_available("online-retail", args.data_dir)
    except datasets.DatasetError as exc:
        p.exit(2, f"anomaly_probe: {exc}\n")
    c = EngineConfig(seed=args.seed)
    rows = engine_features(args.events, args.data_dir, args.seed)
    print(f"{len(rows):,} purchases among the first {args.events:,} Online Retail events")

    def river() -> RiverTreesAnomaly:
        return RiverTreesAnomaly(c.anomaly_warmup, c.anomaly_quantile, c.anomaly_min_score)

    def forest() -> BehaviourAnomaly:
        return BehaviourAnomaly(
            quantile=c.anomaly_quantile, min_score=c.anomaly_min_score, warmup=c.anomaly_warmup
        )

    best = {"river": float("inf"), "forest": float("inf")}
    results = {}
    for _ in range(args.repeats):
        for name, make in (("river", river), ("forest", forest)):
            seconds, scores, alerts = replay(make, rows)
            best[name] = min(best[name], seconds)
            results[name] = (scores, alerts)
    (old, old_alerts), (new, new_alerts) = results["river"], results["forest"]
    scored = [(a, b) for a, b in zip(old, new, strict=True) if a is not None and b is not None]
    diff = max((abs(a - b) for a, b in scored), default=0.0)
    print(f"{'':24}{'River trees':>14}{'array forest':>14}")
    print(
        f"{'us per purchase (CPU)':24}{1e6 * best['river'] / len(rows):14.2f}"
        f"{1e6 * best['forest'] / len(rows):14.2f}   "
        f"x{best['river'] / best['forest']:.2f} (best of {args.repeats})"
    )
    print(f"{'alerts':24}{old_alerts:14,}{new_alerts:14,}")
    same = sum(a == b for a, b in scored)
    print(f"scores: {same:,} of {len(scored):,} equal, largest difference {diff:.3g}")

    injected, labels = inject(rows, c.anomaly_warmup, args.seed)
    aucs = []
    for make in (river, forest):
        _, scores, _ = replay(make, injected)
        s = np.array([np.nan if v is None else v for v in scores])
        keep = ~np.isnan(s)
        aucs.append(auc(s[keep], labels[keep]))
    print(
        f"{'injected outliers AUC':24}{aucs[0]:14.4f}{aucs[1]:14.4f}"
        f"   ({int(labels.sum()):,} outliers, quantity x20-500)"
    )

    # The forest alone, on the scaled features the detector hands it.
    scaler = forest()
    scaled = [scaler.scale_learn_one(row) for row in rows]
    shape = (len(scaled[0]), scaler.n_trees, scaler.height, scaler.window_size)
    one = HalfSpaceForest(*shape, seed=scaler.seed)
    start = time.process_time()
    per_event = [one.score_learn_one(r) for r in scaled]
    t_one = time.process_time() - start
    many = HalfSpaceForest(*shape, seed=scaler.seed)
    x = np.array(scaled)
    start = time.process_time()
    batched = np.concatenate(
        [many.score_learn_many(x[i : i + args.batch]) for i in range(0, len(x), args.batch)]
    )
    t_many = time.process_time() - start
    print(
        f"forest alone: {1e6 * t_one / len(x):.2f} us per event one at a time, "
        f"{1e6 * t_many / len(x):.2f} in batches of {args.batch} "
        f"(scores equal: {batched.tolist() == per_event})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
