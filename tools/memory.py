"""``python -m tools.memory``: per-user memory and the eviction bound, in process.

No broker and no Faust: the worker's :class:`~stream.processor.Processor` with
an in-memory profile store (:class:`~stream.processor.DictStore`, which holds
the same profile objects as Faust's memory table store) is fed

1. ``--events`` demo events (warm-up: catalogue, models, the dataset's users),
   with the eviction step every ``--tick-events``: the users it evicted and the
   models' hit rate (top-10, before learning) over the replay;
2. ``--users`` new distinct users, one event each, all at the latest event time
   (nobody expires): RSS per user, and with ``--trace`` where it goes
   (tracemalloc by source line; tracemalloc itself inflates RSS);
3. with ``--eviction-users``, that many more new users whose event times are
   spread evenly over ``--span`` retention horizons after it, with
   :meth:`Processor.evict` called every ``--tick-events`` events as the worker's
   tick would: RSS and users held at every tenth of the users, the users
   evicted, and the longest and mean eviction step (the tick's pause).

The figures are this process's RSS (psutil); ``feedback-stream bench`` measures
the real worker through the broker. Usage::

    python -m tools.memory [--events 20000] [--users 50000] [--eviction-users 100000]
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import tracemalloc
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from stream.contract import format_timestamp, parse_timestamp
from stream.processor import DictStore, InputMessage, Processor
from stream.settings import Settings

WALL = 1.9e9  # the injected wall clock: later than any dataset event
ROOT = str(Path(__file__).resolve().parents[1]) + "/"


def _short(filename: str) -> str:
    """A traced file's path inside the repository (others' as they are)."""
    return filename.removeprefix(ROOT)


def rss() -> int:
    import psutil

    gc.collect()
    return int(psutil.Process().memory_info().rss)


def _messages(settings: Settings, events: Sequence[dict[str, Any]]) -> list[InputMessage]:
    return [
        InputMessage(
            settings.topic_of(e["type"]), 0, i, str(e["user_id"]).encode(), orjson.dumps(e), WALL
        )
        for i, e in enumerate(events)
    ]


def _feed(
    proc: Processor, events: Sequence[dict[str, Any]], batch: int = 500
) -> Iterator[int]:
    """Hand ``events`` to the processor in batches; yields the count after each."""
    for i in range(0, len(events), batch):
        proc.handle(_messages(proc.settings, events[i : i + batch]))
        yield min(i + batch, len(events))


def run(args: argparse.Namespace) -> dict[str, Any]:
    from prometheus_client import CollectorRegistry

    from models.engine import FeedbackEngine
    from stream.metrics import Metrics
    from tools.bench.workload import distinct_users, load_events

    overrides: dict[str, Any] = {}
    if args.retention_seconds is not None:
        overrides["user_retention_seconds"] = args.retention_seconds
    if args.evictions_per_tick is not None:
        overrides["evictions_per_tick"] = args.evictions_per_tick
    settings = Settings.from_env({}, **overrides)
    registry = CollectorRegistry()
    proc = Processor(
        settings, FeedbackEngine(), DictStore(), Metrics(registry), clock=lambda: WALL
    )
    events = load_events(args.dataset, args.data_dir, args.events)
    # The replay itself runs the eviction step too: what eviction costs the models
    # (the hit rate of returning users who were forgotten) on real data.
    warm_evicted = 0
    next_tick = args.tick_events
    for done in _feed(proc, events):
        if done >= next_tick:
            warm_evicted += proc.evict()
            next_tick += args.tick_events
    latest = max(parse_timestamp(e["timestamp"]) for e in events)

    def sample(name: str) -> float:
        return registry.get_sample_value(name) or 0.0

    positives = sample("feedback_model_positive_events_total")
    report: dict[str, Any] = {
        "events": args.events,
        "users_after_warmup": len(proc.engine.profiles),
        "retention_seconds": settings.user_retention_seconds,
        "evictions_per_tick": settings.evictions_per_tick,
        "warmup_evicted_users": warm_evicted,
        "warmup_hit_rate": (
            round(sample("feedback_model_hits_total") / positives, 5) if positives else None
        ),
    }

    # 2. per-user cost, nobody expiring
    if args.users > 0:
        extra = list(distinct_users(events, args.users, args.seed, at=latest, prefix="m"))
        before = rss()
        if args.trace:
            tracemalloc.start(1)
            snap0 = tracemalloc.take_snapshot()
        t0 = time.process_time()
        for _ in _feed(proc, extra):
            pass
        cpu = time.process_time() - t0
        after = rss()
        report["users"] = args.users
        report["rss_before_users_bytes"] = before
        report["rss_users_bytes"] = after
        report["memory_bytes_per_user"] = round((after - before) / args.users, 1)
        report["cpu_seconds_per_user"] = round(cpu / args.users, 7)
        if args.trace:
            snap1 = tracemalloc.take_snapshot()
            tracemalloc.stop()
            stats = snap1.compare_to(snap0, "lineno")
            report["traced_bytes_per_user"] = round(sum(s.size_diff for s in stats) / args.users)
            report["traced_top"] = [
                [f"{_short(s.traceback[0].filename)}:{s.traceback[0].lineno}",
                 round(s.size_diff / args.users)]
                for s in stats[:15]
            ]

    # 3. users arriving over several retention horizons, evicted on a simulated tick
    horizon = settings.user_retention_seconds
    if args.eviction_users > 0 and horizon > 0:
        n = args.eviction_users
        span = args.span * horizon
        start = latest + 1.0
        arrivals = list(distinct_users(events, n, args.seed + 1, prefix="e"))
        for i, e in enumerate(arrivals):
            e["timestamp"] = format_timestamp(start + span * (i + 1) / n)
        pauses: list[float] = []
        evicted = 0
        samples: list[dict[str, Any]] = []
        next_tick = args.tick_events
        rss_start = rss()
        for done in _feed(proc, arrivals):
            while done >= next_tick:
                t0 = time.perf_counter()
                evicted += proc.evict()
                pauses.append(time.perf_counter() - t0)
                next_tick += args.tick_events
            if done * 10 // n != (done - 500) * 10 // n or done == n:
                samples.append({
                    "users_arrived": done,
                    "users_held": len(proc.engine.profiles),
                    "profiles_held": len(proc.profiles),
                    "rss_bytes": rss(),
                })
        report["eviction_users"] = n
        report["eviction_span_seconds"] = span
        report["eviction_rss_start_bytes"] = rss_start
        report["eviction_samples"] = samples
        report["evicted_users"] = evicted
        report["eviction_ticks"] = len(pauses)
        report["eviction_pause_max_seconds"] = round(max(pauses), 4) if pauses else None
        report["eviction_pause_mean_seconds"] = (
            round(sum(pauses) / len(pauses), 4) if pauses else None
        )
        report["eviction_seconds_per_user"] = (
            round(sum(pauses) / evicted, 7) if evicted else None
        )
        # Growth per arriving user once the horizon is full (the last 2/3 of the span).
        settled = [s for s in samples if s["users_arrived"] >= n / args.span]
        if len(settled) >= 2:
            a, b = settled[0], settled[-1]
            report["eviction_rss_growth_bytes_per_user"] = round(
                (b["rss_bytes"] - a["rss_bytes"]) / max(1, b["users_arrived"] - a["users_arrived"]),
                1,
            )
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.memory", description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=20_000, help="warm-up demo events")
    p.add_argument("--users", type=int, default=50_000,
                   help="new users at the latest event time, for the per-user figure (0: skip)")
    p.add_argument("--eviction-users", type=int, default=100_000,
                   help="new users spread over --span retention horizons (0: skip)")
    p.add_argument("--span", type=float, default=3.0,
                   help="event-time span of the eviction phase, in retention horizons")
    p.add_argument("--tick-events", type=int, default=1_000,
                   help="events between two eviction steps (the worker's 0.5 s eviction "
                        "tick at its ~2,000 new-user events/s)")
    p.add_argument("--retention-seconds", type=float, default=None,
                   help="FEEDBACK_USER_RETENTION_SECONDS (default: the setting's)")
    p.add_argument("--evictions-per-tick", type=int, default=None,
                   help="FEEDBACK_EVICTIONS_PER_TICK (default: the setting's)")
    p.add_argument("--trace", action="store_true", help="tracemalloc breakdown of phase 2")
    p.add_argument("--dataset", default="demo")
    p.add_argument("--data-dir", type=Path, default=None, help="datasets folder")
    p.add_argument("--seed", type=int, default=7)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report = run(args)
    sys.stdout.write(orjson.dumps(report).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
