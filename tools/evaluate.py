"""``feedback-stream evaluate``: replay a contract JSONL file through the engine.

Every event goes through exactly :class:`models.engine.FeedbackEngine` (predict
first, then learn), and a plain baseline for each model is computed on the
same events in the same run:

* ``hr_at_10_popularity``: a plain all-time popularity ranking (interaction
  counts; ties broken by first appearance), excluding the user's seen items;
* ``rmse_biased_mf`` / ``mae_biased_mf``: River's ``reco.BiasedMF`` with the
  settings of River's MovieLens tutorial, clipped to the rating range seen;
* ``sentiment_macro_f1_lexicon``: VADER alone (compound >= 0.05 is positive);
* ``segmentation_silhouette_offline_kmeans``: k-means++ / Lloyd (the segmentation
  model's fit, run offline to convergence) with the same k on the same final
  (standardised) per-user features;
* ``churn_auc_recency``: days since the last order alone.

With clicks or purchases in the file, ``attribution`` reports what each
strategy's recommendations would have earned in the replay (users split over
``--variants`` by the worker's keyed hash; see :mod:`tools.attribution_replay`).

``--bench-items N`` instead times the model path on a synthetic, seeded stream
over a catalogue of N items.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Collection, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, cast

import numpy as np
import orjson
from sklearn import metrics as sklearn_metrics

from models.engine import EngineConfig, FeedbackEngine
from models.events import Event
from models.information import ListInformation
from models.recommender import FEATURES
from models.segmentation import kmeans_fit, nearest_centre
from models.sentiment import label_of, lexicon_compound_whole
from tools.attribution_replay import AttributionReplay
from tools.clv_holdout import HoldoutReplay, customer_value_only
from tools.next_click import BASELINES as NEXT_CLICK_BASELINES
from tools.next_click import K as NEXT_K
from tools.next_click import NextClick
from tools.scaleout import PARTS, Cluster, parse_share

DAY = 86_400.0
CHURN_HORIZON_DAYS = 90.0
TICK_EVERY = 500  # events between engine.tick() calls, as the worker does every few seconds


# -- reading -------------------------------------------------------------------
def read_events(path: Path, limit: int | None = None) -> tuple[list[Event], int]:
    """Events of a contract JSONL file, in file order, and the count of rejected lines.

    Uses the stream layer's strict validator, so a file is read exactly as the
    worker would read its messages.
    """
    from stream.contract import Rejected, decode_event

    events: list[Event] = []
    rejected = 0
    with path.open("rb") as f:
        for line in f:
            if limit is not None and len(events) >= limit:
                break
            line = line.strip()
            if not line:
                continue
            try:
                events.append(decode_event(line))
            except Rejected:
                rejected += 1
    return events, rejected


# -- metrics -------------------------------------------------------------------
def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve (ties averaged); ``None`` if one class.

    >>> roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
    0.75
    """
    labels = np.asarray(labels).astype(bool)
    if labels.all() or not labels.any():
        return None  # undefined with one class; scikit-learn would raise
    return float(sklearn_metrics.roc_auc_score(labels, scores))


def macro_f1(pred: Sequence[bool], truth: Sequence[bool]) -> float | None:
    """Mean of the F1 scores of the positive and the negative class.

    A class that is never predicted scores 0, even when it is also absent.

    >>> macro_f1([True, True, False, False], [True, False, False, False])
    0.7333333333333334
    """
    if not truth:
        return None
    return float(
        sklearn_metrics.f1_score(
            np.asarray(truth, dtype=bool), np.asarray(pred, dtype=bool),
            labels=[True, False], average="macro", zero_division=0.0,
        )
    )


def silhouette(x: np.ndarray, labels: np.ndarray) -> float | None:
    """Mean silhouette coefficient (Euclidean) of every row; ``None`` with fewer than 2 clusters.

    The caller samples the rows, so the figure does not depend on scikit-learn's sampler.

    >>> x = np.array([[0.0], [0.1], [5.0], [5.1]])
    >>> round(silhouette(x, np.array([0, 0, 1, 1])), 3)
    0.98
    """
    n_labels = len(np.unique(labels))
    if n_labels < 2 or len(x) < 3:
        return None
    if n_labels == len(x):
        return 0.0  # every point alone: the coefficient of a singleton is 0 by definition
    return float(sklearn_metrics.silhouette_score(x, labels, metric="euclidean"))


def kmeans(x: np.ndarray, k: int, seed: int, restarts: int = 5, iters: int = 100) -> np.ndarray:
    """Offline k-means: the labels of :func:`models.segmentation.kmeans_fit`'s best restart.

    >>> x = np.array([[0.0], [0.2], [9.0], [9.2]])
    >>> labels = kmeans(x, 2, seed=0)
    >>> bool(labels[0] == labels[1] != labels[2] == labels[3])
    True
    """
    centres, _ = kmeans_fit(x, k, np.random.default_rng(seed), restarts=restarts, iters=iters)
    return nearest_centre(x, centres)


# -- baselines -----------------------------------------------------------------
class PopularityBaseline:
    """All-time interaction counts; HR@k with the user's seen items excluded."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.counts = np.zeros(1024)
        self.seen: dict[str, set[int]] = defaultdict(set)

    def hit(self, user: str, item_id: str, k: int) -> bool:
        idx = self.index.get(item_id)
        seen = self.seen[user]
        if idx is None:
            return False  # never seen before: count 0, ranked after every known item
        if idx in seen:
            return False
        n = len(self.index)
        c = self.counts[:n]
        target = c[idx]
        ahead = int(np.count_nonzero(c > target)) + int(np.count_nonzero(c[:idx] == target))
        if seen:
            s = np.fromiter(seen, dtype=np.int64, count=len(seen))
            cs = c[s]
            ahead -= int(np.count_nonzero(cs > target)) + int(
                np.count_nonzero((cs == target) & (s < idx))
            )
        return ahead < k

    def learn_one(self, event: Event) -> None:
        idx = self.index.get(event.item_id)
        if idx is None:
            idx = len(self.index)
            self.index[event.item_id] = idx
            if idx >= len(self.counts):
                self.counts = np.concatenate([self.counts, np.zeros(len(self.counts))])
        if not (event.type == "purchase" and event.quantity < 0):
            self.counts[idx] += 1
        self.seen[event.user_id].add(idx)


def biased_mf() -> Any:
    """River's BiasedMF with the settings of River's MovieLens tutorial."""
    from river import optim, reco

    return reco.BiasedMF(
        n_factors=10,
        bias_optimizer=optim.SGD(0.025),
        latent_optimizer=optim.SGD(0.05),
        weight_initializer=optim.initializers.Zeros(),
        latent_initializer=optim.initializers.Normal(mu=0.0, sigma=0.1, seed=73),
        l2_bias=0.0,
        l2_latent=0.0,
    )


# -- the replay ----------------------------------------------------------------
def _progress(done: int, total: int, started: float) -> None:
    width = 30
    frac = done / max(total, 1)
    rate = done / max(time.perf_counter() - started, 1e-9)
    bar = "#" * int(width * frac)
    sys.stderr.write(f"\r[{bar:<{width}}] {frac:6.1%} {done:,}/{total:,} events  {rate:,.0f}/s")
    sys.stderr.flush()


def evaluate(
    events: list[Event],
    config: EngineConfig | None = None,
    progress: bool = False,
    series: dict[str, Any] | None = None,
    variants: str | None = "blend,popularity,explore",
    workers: int | None = None,
    period: float = 1.0,
    share: Collection[str] = frozenset(PARTS),
    every: int | None = None,
    changelog: bool = False,
    warmup_until: float | None = None,
    predictions: IO[bytes] | None = None,
    holdout_from: float | None = None,
) -> dict[str, Any]:
    """Replay ``events`` through a fresh engine and the baselines; the metrics dict.

    ``variants`` (``None``: off) are the strategies of the attribution report,
    which needs clicks or purchases in ``events``. With ``workers``, the events
    go through that many user-partitioned engines sharing the ``share`` parts
    of their item-side knowledge every ``period`` seconds of event time
    (or every ``every`` events; :class:`tools.scaleout.Cluster`); the result
    gains a ``scaleout`` entry. With clicks in ``events``,
    the next-click figures (:mod:`tools.next_click`) score only lists made at
    or after ``warmup_until``, and each scored engine list is written to
    ``predictions`` as a JSON line. ``holdout_from`` (event time) adds the
    customer-value holdout of :mod:`tools.clv_holdout`; its churn figures
    replace the 90-day ones. ``changelog`` adds the item owners' changelog
    volume to ``scaleout``.
    """
    cluster = (Cluster(workers, config, period, share, every, changelog)
               if workers is not None else None)
    # The cluster routes each call to the user's worker: an engine to the replay.
    engine = cast(FeedbackEngine, cluster) if cluster is not None else FeedbackEngine(config)
    k = engine.config.top_k
    pop = PopularityBaseline()
    mf = biased_mf()
    rating_low, rating_high = math.inf, -math.inf
    hits: list[bool] = []
    pop_hits: list[bool] = []
    err: list[float] = []
    mf_err: list[float] = []
    sent_pred: list[bool] = []
    lex_pred: list[bool] = []
    sent_truth: list[bool] = []
    alerts: Counter[str] = Counter()
    alert_times: list[tuple[float, str]] = []
    # For the plots: how many events had been replayed at each entry of the lists above.
    hit_at: list[int] = []
    err_at: list[int] = []
    sent_at: list[int] = []
    alert_at: list[tuple[int, str]] = []
    has_purchases = any(e.type == "purchase" for e in events)
    # Outside the timed model path: its rankings are what the worker publishes.
    information = ListInformation()
    replay = (
        AttributionReplay(variants, seed=engine.config.seed, on_list=information.on_list)
        if variants and any(e.type != "review" for e in events) else None
    )
    next_click = (
        NextClick(
            lambda e: [r.item_id for r in engine.recommend(e.user_id, NEXT_K)],
            warmup_until,
            predictions,
        )
        if any(e.type == "click" for e in events) else None
    )
    t_end = max((e.timestamp for e in events), default=0.0)
    holdout = HoldoutReplay(holdout_from, t_end) if holdout_from is not None else None
    cutoff = t_end - CHURN_HORIZON_DAYS * DAY
    churn_snapshot: dict[str, tuple[float, float]] | None = None
    bought_after: set[str] = set()
    engine_seconds = 0.0
    engine_cpu = 0.0
    last_segment: dict[str, int] = {}
    left_segment: dict[str, int] = {}
    segment_steps = segment_switches = segment_flip_backs = 0
    started = time.perf_counter()
    step = max(len(events) // 200, 1)

    for n, event in enumerate(events):
        if has_purchases and churn_snapshot is None and event.timestamp > cutoff:
            churn_snapshot = {
                u: (risk, (cutoff - p.last_order_time) / DAY)
                for u, p in engine.profiles.items()
                if p.last_order_time is not None
                and (risk := engine.churn_risk(u, cutoff)) is not None
            }
        if churn_snapshot is not None and event.type == "purchase" and event.quantity > 0:
            bought_after.add(event.user_id)

        # baselines: predict first, then learn
        if event.is_positive:
            pop_hits.append(pop.hit(event.user_id, event.item_id, k))
        if event.type == "review" and event.rating is not None:
            if rating_low <= rating_high:
                y = min(rating_high, max(rating_low, mf.predict_one(event.user_id, event.item_id)))
            else:
                y = mf.predict_one(event.user_id, event.item_id)
            mf_err.append(y - event.rating)
            mf.learn_one(event.user_id, event.item_id, event.rating)
            rating_low, rating_high = min(rating_low, event.rating), max(rating_high, event.rating)
        label = label_of(event.rating) if event.type == "review" and event.text else None
        if label is not None and event.text:
            lex_pred.append(lexicon_compound_whole(event.text) >= 0.05)
        pop.learn_one(event)
        if replay is not None:
            replay.before(engine, event)
        if next_click is not None:
            next_click.before(event)
        if holdout is not None:
            holdout.before(engine, event)

        t0, c0 = time.perf_counter(), time.process_time()
        out = engine.process(event)
        ticked = engine.tick(event.timestamp) if n % TICK_EVERY == TICK_EVERY - 1 else []
        engine_seconds += time.perf_counter() - t0
        engine_cpu += time.process_time() - c0
        if replay is not None:
            replay.after(engine, event)
        if next_click is not None:
            next_click.after(event)

        if out.segment is not None:
            before = last_segment.get(event.user_id)
            if before is not None:
                segment_steps += 1
                if before != out.segment:
                    segment_switches += 1
                    # back to the segment left at this user's previous switch: a flip-flop
                    segment_flip_backs += left_segment.get(event.user_id) == out.segment
                    left_segment[event.user_id] = before
            last_segment[event.user_id] = out.segment
        if out.hit is not None:
            hits.append(out.hit)
            hit_at.append(n + 1)
        if out.rating_error is not None:
            err.append(out.rating_error)
            err_at.append(n + 1)
        if label is not None and out.sentiment is not None:
            sent_pred.append(out.sentiment >= 0.5)
            sent_truth.append(label)
            sent_at.append(n + 1)
        for alert in [*out.alerts, *ticked]:
            alerts[alert.kind] += 1
            alert_times.append((alert.timestamp, alert.kind))
            alert_at.append((n + 1, alert.kind))
        if progress and n % step == 0:
            _progress(n + 1, len(events), started)
    if progress:
        _progress(len(events), len(events), started)
        sys.stderr.write("\n")

    result: dict[str, Any] = {
        "events": len(events),
        "positives": len(hits),
        "hr_at_10": float(np.mean(hits)) if hits else None,
        "hr_at_10_popularity": float(np.mean(pop_hits)) if pop_hits else None,
        "ratings": len(err),
        "rmse": float(np.sqrt(np.mean(np.square(err)))) if err else None,
        "mae": float(np.mean(np.abs(err))) if err else None,
        "rmse_biased_mf": float(np.sqrt(np.mean(np.square(mf_err)))) if mf_err else None,
        "mae_biased_mf": float(np.mean(np.abs(mf_err))) if mf_err else None,
        "sentiment_reviews": len(sent_truth),
        "sentiment_macro_f1": macro_f1(sent_pred, sent_truth),
        "sentiment_macro_f1_lexicon": macro_f1(lex_pred, sent_truth),
    }
    result.update(_segmentation_metrics(engine))
    # stability: how often a user's event moves them to another segment
    result["segment_switch_rate"] = segment_switches / segment_steps if segment_steps else None
    result["segment_flip_back_rate"] = (
        segment_flip_backs / segment_switches if segment_switches else None
    )
    result.update(_churn_metrics(churn_snapshot, bought_after))
    result.update(next_click.report() if next_click is not None else {"next_click_predictions": 0})
    if holdout is not None:
        result.update(holdout.report(engine))
    result["attribution"] = replay.report() if replay is not None else None
    result["information"] = (
        information.report(len(engine.catalogue)) if replay is not None else None
    )
    result["alerts_by_kind"] = dict(sorted(alerts.items()))
    result["events_per_second"] = len(events) / engine_seconds if engine_seconds > 0 else None
    result["events_per_cpu_second"] = len(events) / engine_cpu if engine_cpu > 0 else None
    result["blend_weights"] = dict(
        zip(FEATURES, [round(w, 3) for w in engine.recommender.weights.tolist()], strict=True)
    )
    if cluster is not None:
        result["scaleout"] = cluster.report()
    if series is not None:
        series.update(
            hits=hits, pop_hits=pop_hits, err=err, mf_err=mf_err,
            sent_pred=sent_pred, sent_truth=sent_truth, lex_pred=lex_pred,
            alert_times=alert_times, segment_profiles=engine.segment_profiles(),
            hit_at=hit_at, err_at=err_at, sent_at=sent_at, alert_at=alert_at,
            events=len(events),
        )  # fmt: skip
    return result


def _segmentation_metrics(engine: FeedbackEngine, sample: int = 4000) -> dict[str, Any]:
    users, x, labels = engine.segmentation.snapshot()
    if len(users) < 3:
        return {"segmentation_silhouette": None, "segmentation_silhouette_offline_kmeans": None}
    offline = kmeans(x, engine.config.n_segments, seed=engine.config.seed)
    rng = np.random.default_rng(engine.config.seed)
    pick = rng.choice(len(x), size=min(sample, len(x)), replace=False)
    return {
        "segment_users": len(users),
        "segmentation_silhouette": silhouette(x[pick], labels[pick]),
        "segmentation_silhouette_offline_kmeans": silhouette(x[pick], offline[pick]),
    }


def _churn_metrics(
    snapshot: dict[str, tuple[float, float]] | None, bought_after: set[str]
) -> dict[str, Any]:
    if not snapshot:
        return {"churn_customers": 0, "churn_auc": None, "churn_auc_recency": None}
    users = list(snapshot)
    churned = np.array([u not in bought_after for u in users])
    risk = np.array([snapshot[u][0] for u in users])
    recency = np.array([snapshot[u][1] for u in users])
    return {
        "churn_customers": len(users),
        "churn_rate": float(churned.mean()),
        "churn_auc": roc_auc(risk, churned),
        "churn_auc_recency": roc_auc(recency, churned),
    }


# -- plots ---------------------------------------------------------------------
def plot_window(n: int, preferred: int) -> int:
    """The rolling window for a series of ``n`` values: ``preferred``, or a fifth of
    the series when that is shorter; a series under 50 values gets its cumulative mean.

    >>> [plot_window(n, 2000) for n in (50_000, 3000, 400, 13)]
    [2000, 600, 80, 13]
    """
    return max(1, min(preferred, max(n // 5, min(n, 50))))


def rolling(
    values: Sequence[float], at: Sequence[int], window: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mean of the last ``window`` values at every point (fewer at the start, so the
    curve begins with the first value), and the event count ``at`` each point.

    >>> x, y = rolling([1, 0, 1, 1], [2, 5, 6, 9], 2)
    >>> x.tolist(), y.tolist()
    ([2, 5, 6, 9], [1.0, 0.5, 0.5, 1.0])
    """
    v = np.asarray(values, dtype=float)
    c = np.cumsum(np.insert(v, 0, 0.0))
    end = np.arange(1, len(v) + 1)
    begin = np.maximum(end - max(window, 1), 0)
    return np.asarray(at, dtype=int), (c[end] - c[begin]) / (end - begin)


def _window_label(w: int, n: int, unit: str) -> str:
    return "cumulative mean" if w >= n else f"mean of the last {w:,} {unit}"


def write_plots(series: dict[str, Any], directory: Path) -> list[Path]:
    """PNG plots of the metrics over the stream; returns the files written.

    The x axis of every plot is the number of events replayed; each rolling
    window adapts to the length of its series (:func:`plot_window`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    thousands = FuncFormatter(lambda x, _: f"{x:,.0f}")
    xlabel = "events replayed"

    def save(fig: Any, ax: Any, name: str) -> None:
        ax.xaxis.set_major_formatter(thousands)
        ax.set_xlim(0, series["events"])
        ax.grid(alpha=0.3)
        ax.legend()
        path = directory / name
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)

    def curves(ax: Any, named: dict[str, Sequence[float]], at: Sequence[int],
               preferred: int) -> int:
        w = plot_window(len(at), preferred)
        for label, values in named.items():
            x, y = rolling(values, at, w)
            # Markers where there are few points: each one is a measurement.
            ax.plot(x, y, label=label, marker="o" if len(x) < 30 else None, markersize=3)
        return w

    if series["hits"]:
        fig, ax = plt.subplots(figsize=(8, 4))
        w = curves(ax, {"blend": series["hits"], "all-time popularity": series["pop_hits"]},
                   series["hit_at"], 2000)
        ax.set(xlabel=xlabel, ylabel=f"HR@10, {_window_label(w, len(series['hits']), 'positives')}",
               title=f"Hit rate ({len(series['hits']):,} positive events)")
        save(fig, ax, "hit_rate.png")
    if series["err"]:
        fig, ax = plt.subplots(figsize=(8, 4))
        w = curves(ax, {"engine": np.abs(series["err"]),
                        "River BiasedMF": np.abs(series["mf_err"])}, series["err_at"], 2000)
        ax.set(xlabel=xlabel, ylabel=f"MAE, {_window_label(w, len(series['err']), 'ratings')}",
               title=f"Rating error ({len(series['err']):,} rated reviews)")
        save(fig, ax, "rating_error.png")
    if series["sent_truth"]:
        truth = np.asarray(series["sent_truth"])
        fig, ax = plt.subplots(figsize=(8, 4))
        w = curves(ax, {"engine": np.asarray(series["sent_pred"]) == truth,
                        "VADER alone": np.asarray(series["lex_pred"]) == truth},
                   series["sent_at"], 1000)
        ax.set(xlabel=xlabel, ylabel=f"accuracy, {_window_label(w, len(truth), 'reviews')}",
               title=f"Sentiment ({len(truth):,} labelled reviews)")
        save(fig, ax, "sentiment.png")
    if series["alert_at"]:
        fig, ax = plt.subplots(figsize=(8, 4))
        by_kind: dict[str, list[int]] = defaultdict(list)
        for at, kind in series["alert_at"]:
            by_kind[kind].append(at)
        for kind, ats in sorted(by_kind.items()):
            # From 0 at the start of the replay to the total at its end.
            x = [0, *ats, series["events"]]
            y = [0, *range(1, len(ats) + 1), len(ats)]
            ax.step(x, y, where="post", label=f"{kind} ({len(ats):,})")
        ax.set(xlabel=xlabel, ylabel="alerts (cumulative)",
               title=f"Alerts ({len(series['alert_at']):,})")
        save(fig, ax, "alerts.png")
    return written


# -- benchmark -----------------------------------------------------------------
WORDS = [
    "love",
    "great",
    "fits",
    "perfect",
    "soft",
    "cheap",
    "broke",
    "returned",
    "small",
    "large",
    "fabric",
    "colour",
    "quality",
    "awful",
    "nice",
    "comfortable",
    "disappointed",
    "beautiful",
    "thin",
    "itchy",
    "recommend",
]


def synthetic_events(
    n_items: int, n_events: int, seed: int, n_users: int = 5000
) -> Iterator[Event]:
    """A seeded mixed stream: 60% clicks, 30% purchases, 10% reviews, Zipf-like items."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_items + 1) ** 0.8
    weights /= weights.sum()
    items = rng.choice(n_items, size=n_events, p=weights)
    users = rng.integers(0, n_users, size=n_events)
    kinds = rng.random(n_events)
    t = 1_700_000_000.0
    for i in range(n_events):
        t += float(rng.exponential(2.0))
        user, item = f"u{users[i]}", f"i{items[i]}"
        if kinds[i] < 0.6:
            yield Event("click", f"e{i}", user, item, t, session_id=f"s{users[i]}-{int(t) // 1800}")
        elif kinds[i] < 0.9:
            qty = int(rng.integers(1, 4)) if rng.random() > 0.03 else -1
            yield Event("purchase", f"e{i}", user, item, t, quantity=qty, price=9.99)
        else:
            rating = float(rng.integers(1, 6))
            text = " ".join(rng.choice(WORDS, size=12).tolist())
            yield Event("review", f"e{i}", user, item, t, rating=rating, text=text)


def bench(n_items: int, n_events: int, seed: int) -> dict[str, Any]:
    """Events per second of ``process`` (+ ``tick``) with ``n_items`` in the catalogue."""
    engine = FeedbackEngine(EngineConfig(seed=seed))
    t = 1_600_000_000.0
    for i in range(n_items):  # fill the catalogue first (not timed)
        engine.process(Event("click", f"w{i}", f"w{i % 997}", f"i{i}", t + i))
    events = list(synthetic_events(n_items, n_events, seed))
    started, cpu_started = time.perf_counter(), time.process_time()
    for n, event in enumerate(events):
        engine.process(event)
        if n % TICK_EVERY == 0:
            engine.tick(event.timestamp)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    return {
        "catalogue_items": len(engine.catalogue),
        "events": n_events,
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "events_per_second": n_events / elapsed,
        # CPU time of this process: what one core delivers when the machine is shared
        "events_per_cpu_second": n_events / cpu if cpu > 0 else None,
    }


# -- command line --------------------------------------------------------------
def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def print_table(result: dict[str, Any]) -> None:
    """The human-readable report: each metric beside its same-run baseline."""
    rows = [
        (f"HR@10 (positives: {result['positives']})", "hr_at_10", "hr_at_10_popularity",
         "popularity"),
        ("rating RMSE", "rmse", "rmse_biased_mf", "River BiasedMF"),
        ("rating MAE", "mae", "mae_biased_mf", "River BiasedMF"),
        ("sentiment macro-F1", "sentiment_macro_f1", "sentiment_macro_f1_lexicon", "VADER"),
        ("segmentation silhouette", "segmentation_silhouette",
         "segmentation_silhouette_offline_kmeans", "offline k-means"),
        ("churn ROC AUC", "churn_auc", "churn_auc_recency", "recency"),
    ]  # fmt: skip
    print(f"{'metric':<28} {'engine':>10} {'baseline':>10}  baseline is")
    for name, key, base, what in rows:
        print(f"{name:<28} {_fmt(result.get(key)):>10} {_fmt(result.get(base)):>10}  {what}")
    if result.get("next_click_predictions"):
        n_lists = result["next_click_predictions"]
        print(f"next click ({n_lists:,} predictions, session-rec protocol):")
        print(f"  {'ranker':<18} {'HR@20':>8} {'MRR@20':>8}")
        for name in ("engine", *NEXT_CLICK_BASELINES):
            suffix = "" if name == "engine" else f"_{name}"
            print(f"  {name:<18} {_fmt(result[f'next_click_hr_at_20{suffix}']):>8} "
                  f"{_fmt(result[f'next_click_mrr_at_20{suffix}']):>8}")
    print(f"{'alerts':<28} {result['alerts_by_kind']}")
    attribution = result.get("attribution") or {}
    strategies = {k: v for k, v in attribution.items() if k != "blend_vs_popularity"}
    if strategies:
        print("attributed in the replay (item within the window; nobody saw these lists):")
        print(f"  {'strategy':<12} {'lists':>8} {'CTR [95%]':>24} {'conversion [95%]':>24}"
              f" {'revenue':>10}")
        for name, r in strategies.items():
            ctr, conv = r["ctr"], r["conversion"]
            print(f"  {name:<12} {r['exposures']:>8,} "
                  f"{ctr['value']:>7.4f} [{ctr['lower']:.4f}, {ctr['upper']:.4f}] "
                  f"{conv['value']:>7.4f} [{conv['lower']:.4f}, {conv['upper']:.4f}] "
                  f"{r['revenue']:>10,.2f}")
        versus = attribution.get("blend_vs_popularity")
        if versus:
            print(f"  {versus['ctr']['statement']}")
    print(f"{'events/s (model path)':<28} {_fmt(result['events_per_second'])}")
    print(f"{'events per CPU second':<28} {_fmt(result['events_per_cpu_second'])}")


def _parse_date(text: str) -> float | None:
    """Event time of ``YYYY-MM-DD`` (00:00 UTC) or an RFC 3339 timestamp; ``None`` if neither."""
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``feedback-stream evaluate``."""
    parser = argparse.ArgumentParser(
        prog="feedback-stream evaluate",
        description="Replay a contract JSONL file through the models, predicting before "
        "learning, and report each metric beside a baseline computed in the same run.",
    )
    parser.add_argument("path", nargs="?", type=Path, help="contract JSONL file, one event a line")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--plot", type=Path, metavar="DIR", help="write PNG plots into DIR")
    parser.add_argument("--limit", type=int, help="replay only the first N events")
    parser.add_argument("--seed", type=int, default=EngineConfig().seed, help="engine seed")
    parser.add_argument(
        "--bench-items",
        type=int,
        metavar="N",
        help="instead of a file, time the model path on a synthetic stream with N items",
    )
    parser.add_argument(
        "--bench-events", type=int, default=50_000, help="events timed by --bench-items"
    )
    parser.add_argument(
        "--variants",
        default="blend,popularity,explore",
        help="strategies of the attribution report, name[:weight],... ('' turns it off)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        metavar="W",
        help="replay through W user-partitioned workers sharing item-side knowledge "
        "(events routed as Kafka's default partitioner does, W partitions)",
    )
    parser.add_argument(
        "--item-model-period",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="with --workers: event time between two deliveries of the item models",
    )
    parser.add_argument(
        "--item-model-events",
        type=int,
        metavar="N",
        help="with --workers: deliver the item models every N events of the stream "
        "instead (the staleness of a deployment processing N events per period)",
    )
    parser.add_argument(
        "--share",
        default="all",
        help=f"with --workers: what is shared, 'all', 'none' or some of {','.join(PARTS)}",
    )
    parser.add_argument(
        "--changelog",
        action="store_true",
        help="with --workers: also measure the bytes the item owners write to their "
        "changelog (neighbour snapshots and changed-only records, and whole records)",
    )
    parser.add_argument(
        "--warmup-until",
        metavar="ISO_TIME",
        help="learn from every event, but score only next-click lists made at or after this "
        "RFC 3339 time (e.g. where a validation part starts)",
    )
    parser.add_argument(
        "--predictions",
        type=Path,
        metavar="FILE",
        help="write each scored next-click list of the engine as a JSON line "
        '{"event_id", "user_id", "session_id", "items"}',
    )
    parser.add_argument(
        "--holdout-from",
        metavar="DATE",
        help="freeze customer value at DATE (YYYY-MM-DD, UTC, or RFC 3339) and compare it "
        "with what each customer did from DATE to the end of the file",
    )
    parser.add_argument(
        "--clv-only",
        action="store_true",
        help="with --holdout-from: only the customer-value model (it learns from nothing "
        "else), in seconds instead of the whole replay",
    )
    parser.add_argument(
        "--clv-poisson",
        action="store_true",
        help="customer value: Poisson purchase-days (the MBG/NBD, k = 1) instead of the "
        "MBG/CNBD-k whose regularity k is chosen by likelihood (docs/models.md)",
    )
    parser.add_argument(
        "--pmi",
        action="store_true",
        help="score co-occurrence by positive PMI instead of the cosine-like normalisation",
    )
    args = parser.parse_args(argv)
    warmup_until = None
    if args.warmup_until is not None:
        from stream.contract import Rejected, parse_timestamp

        try:
            warmup_until = parse_timestamp(args.warmup_until)
        except Rejected:
            parser.error(
                f"--warmup-until must be an RFC 3339 time with a zone, e.g. "
                f"2014-04-06T00:19:07Z; got {args.warmup_until!r}"
            )
    holdout_from = None
    if args.holdout_from is not None:
        holdout_from = _parse_date(args.holdout_from)
        if holdout_from is None:
            parser.error(f"--holdout-from: not a date: {args.holdout_from!r} (use YYYY-MM-DD)")
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers must be at least 1, not {args.workers}")
    if args.item_model_period <= 0:
        parser.error(f"--item-model-period must be positive, not {args.item_model_period}")
    if args.changelog and args.workers is None:
        parser.error("--changelog needs --workers")
    if args.item_model_events is not None and args.item_model_events < 1:
        parser.error(f"--item-model-events must be at least 1, not {args.item_model_events}")
    try:
        share = parse_share(args.share)
    except ValueError as exc:
        parser.error(f"--share: {exc}")

    if args.bench_items is not None:
        result = bench(args.bench_items, args.bench_events, args.seed)
        if args.json:
            print(orjson.dumps(result).decode())
        else:
            print(
                f"{result['events']:,} events over {result['catalogue_items']:,} items: "
                f"{result['events_per_second']:,.0f} events/s wall clock, "
                f"{result['events_per_cpu_second']:,.0f} events per CPU second"
            )
        return 0
    if args.path is None:
        parser.error("a JSONL path is needed (or --bench-items N)")
    # A wrong file is one line (no usage text): the arguments were fine.
    if not args.path.is_file():
        print(f"feedback-stream evaluate: {args.path}: no such file", file=sys.stderr)
        return 2
    events, rejected = read_events(args.path, args.limit)
    if not events:
        print(f"feedback-stream evaluate: no valid event in {args.path} "
              f"({rejected} rejected lines)", file=sys.stderr)
        return 2
    if args.clv_only:
        if holdout_from is None:
            parser.error("--clv-only needs --holdout-from DATE")
        clv = customer_value_only(
            events, holdout_from, EngineConfig(seed=args.seed, clv_regularity=not args.clv_poisson)
        )
        print(orjson.dumps({**clv, "rejected_lines": rejected}).decode())
        return 0
    series: dict[str, Any] | None = {} if args.plot else None
    try:
        predictions = args.predictions.open("wb") if args.predictions else None
    except OSError as exc:
        parser.error(f"cannot write --predictions {args.predictions}: {exc.strerror}")
    try:
        result = evaluate(
            events,
            EngineConfig(
                seed=args.seed, cooccurrence_pmi=args.pmi, clv_regularity=not args.clv_poisson
            ),
            progress=sys.stderr.isatty() and not args.json,
            series=series,
            variants=args.variants or None,
            warmup_until=warmup_until,
            predictions=predictions,
            holdout_from=holdout_from,
            workers=args.workers,
            period=args.item_model_period,
            share=share,
            every=args.item_model_events,
            changelog=args.changelog,
        )
    finally:
        if predictions is not None:
            predictions.close()
    result["rejected_lines"] = rejected
    if args.json:
        print(orjson.dumps(result).decode())
    else:
        print(f"{args.path}: {len(events):,} events ({rejected} rejected lines)")
        print_table(result)
    if args.plot and series is not None:
        for path in write_plots(series, args.plot):
            print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
