"""The phases of a bench run, in order, each one function over the shared :class:`Bench`.

1. :func:`ceilings`, 2. :func:`throughput`, 3. :func:`latency` (then
:func:`peak_memory`), 4. :func:`memory_users`, 5. :func:`memory_bound`, and
:func:`checkpoints` read from the workers' last scrape.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from stream.contract import format_timestamp, parse_timestamp
from stream.settings import Settings
from tools.bench.processes import (
    SAMPLE_SECONDS,
    WorkerProcess,
    cpu_seconds,
    faust_env,
    log,
    rss_now,
    rss_peak,
    run_reference,
    start_workers,
    stop,
    wait_counts,
    wait_item_models,
    wait_item_owners,
)
from tools.bench.report import fmt_rate
from tools.bench.stats import (
    WINDOW,
    Window,
    checkpoint_span,
    combined,
    completed,
    per_cpu_second,
    percentile,
    rounded,
    split_by_spans,
    whole_window,
    window,
)
from tools.bench.workload import (
    Record,
    bench_settings,
    distinct_users,
    encode,
    preload,
    produce,
)
from tools.pull_bench import measure_pulls, pull_targets

# The report keys of the reference loops' rates.
REFERENCE_KEYS = {
    "raw": "raw_aiokafka_events_per_second",
    "faust-decode": "faust_decode_only_events_per_second",
    "faust-send": "faust_per_event_send_events_per_second",
}


@dataclass
class Bench:
    """What the phases share: the arguments, the events, the workers and the report."""

    args: argparse.Namespace
    state: Path
    bootstrap: str
    run_id: str
    events: list[dict[str, Any]]
    report: dict[str, Any]
    stack: contextlib.ExitStack
    workers: list[WorkerProcess] = field(default_factory=list)
    # The workers' settings (topics, retention), set by the throughput phase.
    settings: Settings = field(init=False)
    done: float = 0.0  # events the workers have been given so far
    latest: float = 0.0  # the latest event time given so far

    @property
    def faust_env(self) -> dict[str, str]:
        """The ``--faust-setting`` values, for the reference loops and the workers alike."""
        return faust_env(self.args.faust_setting)

    @property
    def n(self) -> int:
        return int(self.args.events)

    @property
    def timeout(self) -> float:
        return float(self.args.timeout)

    def phase_settings(self, name: str, **extra: Any) -> Settings:
        """Settings whose topics and app id belong to phase ``name`` of this run alone."""
        return bench_settings(
            self.bootstrap, f"{self.run_id}.{name}.", self.args.partitions,
            state_dir=str(self.state), **extra,
        )


def ceilings(b: Bench) -> None:
    """Phase 1: every reference loop on the same ``n`` events, pre-loaded into its own topics."""
    n = b.n
    for kind in b.args.references:
        s = b.phase_settings(kind)
        records = encode(b.events[:n], s.topic_of)
        secs = preload(s, records)
        log(f"{kind}: pre-loaded {n:,} events in {secs:.1f} s; running")
        rate, per_cpu = run_reference(kind, s, n, b.state, b.timeout, b.faust_env)
        key = REFERENCE_KEYS[kind]
        b.report[key] = rounded(rate, 1)
        b.report[key.replace("_per_second", "_per_cpu_second")] = rounded(per_cpu, 1)
        log(f"{kind}: {fmt_rate(rate)}")


def throughput(b: Bench) -> None:
    """Phase 2: the real workers read the same ``n`` events; sustained rates in the window.

    With ``--workers`` above 1, one worker alone reads them first (on topics of
    its own, same partitions): the same-run baseline of each worker's events per
    CPU-second (``single_worker_events_per_cpu_second``).
    """
    args, n, report = b.args, b.n, b.report
    env_extra = {"FEEDBACK_LOG_LEVEL": "WARNING", **b.faust_env, **dict(args.worker_env)}
    if args.worker_env:
        report["worker_env"] = dict(args.worker_env)
    if args.workers > 1:
        s1 = b.phase_settings("single")
        preload(s1, encode(b.events[:n], s1.topic_of))
        log(f"single worker: pre-loaded {n:,} events")
        single = start_workers(s1, 1, b.state, b.timeout, env_extra)
        try:
            wait_counts(single, n, b.timeout)
            wait_item_owners(single, b.timeout)
        finally:
            for w in single:
                stop(w.proc)
        win1 = whole_window(single[0].events, whole(single, n), n)
        if win1 is not None:
            rate1 = whole_rate(win1, n)
            report["single_worker_events_per_second"] = rounded(rate1, 1)
            report["single_worker_events_per_cpu_second"] = rounded(per_cpu_second(
                rate1, win1.rate(single[0].cpu)), 1)
        log(f"single worker: {fmt_rate(report.get('single_worker_events_per_cpu_second'))} "
            "per CPU-second")
    s = b.settings = b.phase_settings("worker")
    preload(s, encode(b.events[:n], s.topic_of))
    log(f"worker: pre-loaded {n:,} events; starting {args.workers} worker(s)")
    workers = b.workers = start_workers(s, args.workers, b.state, b.timeout, env_extra)
    for w in workers:
        b.stack.callback(stop, w.proc)
    got = wait_counts(workers, n, b.timeout)
    # The item owners apply the events' item-side increments after the inputs
    # (on a pre-loaded backlog, well after): the events are processed whole,
    # and the next phase starts on an idle worker, only once they have.
    catch_up = wait_item_owners(workers, b.timeout)
    # ...and the latency phase starts only once the owners' last publications
    # have been read by the replicas too.
    period = float(dict(args.worker_env).get(
        "FEEDBACK_ITEM_MODEL_PERIOD_SECONDS", s.item_model_period_seconds))
    settled = wait_item_models(workers, b.timeout, quiet=max(2.0, 3 * period))
    if settled is not None:
        report["item_models_settle_seconds"] = rounded(settled, 1)
    b.done = n
    ev = combined([w.events for w in workers])
    done = whole(workers, n)
    recs = combined([w.recommendations for w in workers])
    win_in = window(ev, n)
    if win_in is not None:
        report["input_events_per_second"] = rounded(win_in.rate(ev), 1)
        report["recommendations_per_second"] = rounded(win_in.rate(recs), 1)
    if catch_up is None:
        log(f"worker: the item owners did not catch up within {b.timeout:.0f} s")
    else:
        report["item_owner_catch_up_seconds"] = rounded(catch_up, 1)
    win = whole_window(ev, done, n)
    if win is None or catch_up is None:
        log(f"worker: only {got:,.0f}/{n:,} events within {b.timeout:.0f} s")
    else:
        report["events_per_second"] = rounded(whole_rate(win, n), 1)
        report["window_seconds"] = rounded(win.seconds)
        cores = win.rate(combined([w.cpu for w in workers]))
        report["worker_cpu_cores"] = rounded(cores, 2)
        report["events_per_cpu_second"] = rounded(
            per_cpu_second(report["events_per_second"], cores), 1
        )
        if args.workers > 1:
            report["per_worker"] = [
                {
                    "events_per_second": rounded(win.rate(w.events), 1),
                    "recommendations_per_second": rounded(win.rate(w.recommendations), 1),
                    "events_per_cpu_second": rounded(
                        per_cpu_second(win.rate(w.events), win.rate(w.cpu)), 1
                    ),
                }
                for w in workers
            ]
    log(
        f"worker: {fmt_rate(report.get('events_per_second'))} in, "
        f"{fmt_rate(report.get('recommendations_per_second'))} recommendations"
    )


def whole(workers: Sequence[WorkerProcess], n: int) -> list[tuple[float, float]]:
    """The workers' events processed whole (:func:`~tools.bench.stats.completed`)."""
    done = combined([w.item_updates_done for w in workers])
    sent = sum(w.item_updates_sent[-1][1] for w in workers if w.item_updates_sent)
    return completed(combined([w.events for w in workers]), done, sent, n)


def whole_rate(win: Window, n: int) -> float:
    """Events per second processed whole over a :func:`whole_window`."""
    return (WINDOW[1] - WINDOW[0]) * n / win.seconds


def offered_rate(measured: float | None, fraction: float, fixed: float | None) -> float | None:
    """The latency phase's events per second: ``fixed`` when given, else
    ``fraction`` of the measured maximum (None: nothing measured).

    The measured maximum moves by half between runs of the same code (the
    machine, and the read order's share of rankings), and the latency with it:
    two codes are compared at one fixed rate.

    >>> offered_rate(600.0, 0.5, None), offered_rate(600.0, 0.5, 250.0)
    (300.0, 250.0)
    """
    if fixed is not None:
        return fixed
    return measured * fraction if measured else None


def latency(b: Bench) -> None:
    """Phase 3: the next events of the replay at a fixed fraction of the measured maximum."""
    args, n, report = b.args, b.n, b.report
    offered = offered_rate(report.get("events_per_second"), args.load_fraction, args.offered_rate)
    if not offered or args.latency_seconds <= 0:
        return
    m = min(n, int(offered * args.latency_seconds))
    batch = b.events[n : n + m]
    log(f"latency: offering {m:,} new events at {offered:,.0f}/s and {args.pull_rate:g} pulls/s")

    async def both() -> tuple[list[tuple[float, float]], dict[str, Any]]:
        # The pull API is timed while the worker takes the same load.
        return await asyncio.gather(
            measure_latency(
                b.settings, encode(batch, b.settings.topic_of), [e["event_id"] for e in batch],
                offered, b.timeout,
            ),
            measure_pulls(
                b.workers[0].settings.web_url, pull_targets(b.events[:n]), args.pull_rate,
                m / offered,
            ),
        )

    # What the worker's waits cost at a live rate (idle fetches and polls
    # included), which the throughput phase's backlog does not show.
    cpu0, t0 = [cpu_seconds(w.proc.pid) or 0.0 for w in b.workers], time.monotonic()
    # The checkpoint each worker was last taking, from its last scrape.
    spans = {checkpoint_span(w.totals, time.time()) for w in b.workers}
    timed, pulls = asyncio.run(both())
    lat = [latency for _, latency in timed]
    report["pull_requests_per_second"] = args.pull_rate
    report["pull_samples"] = len(pulls["latencies"])
    report["pull_failures"] = pulls["failures"]
    for p in (50, 99):
        report[f"pull_latency_p{p}_seconds"] = rounded(percentile(pulls["latencies"], p), 4)
    wait_counts(b.workers, n + m, 10.0)
    used = sum((cpu_seconds(w.proc.pid) or 0.0) - c for w, c in zip(b.workers, cpu0, strict=True))
    report["latency_worker_cpu_cores"] = rounded(used / (time.monotonic() - t0), 3)
    report["latency_worker_cpu_ms_per_event"] = rounded(1000 * used / m, 3) if m else None
    report["latency_offered_events_per_second"] = rounded(offered, 1)
    report["latency_samples"] = len(lat)
    for p in (50, 95, 99):
        report[f"latency_p{p}_seconds"] = rounded(percentile(lat, p), 4)
    report["latency_max_seconds"] = rounded(max(lat), 4) if lat else None
    # Which recommendations a model checkpoint (its fork, then its child pickling
    # beside the worker) lived through, from the workers' scrapes before and
    # after the phase (at most one checkpoint starts per interval, 30 s by default).
    spans |= {checkpoint_span(w.totals, time.time()) for w in b.workers}
    first = min((sent for sent, _ in timed), default=0.0)
    last = max((sent + latency for sent, latency in timed), default=0.0)
    live = sorted(x for x in spans if x is not None and x[1] >= first and x[0] <= last)
    during, outside = split_by_spans(timed, live)
    report["latency_checkpoints"] = len(live)
    # Each recommendation's send time and latency, and the checkpoints: where the
    # tail sits in the phase (one episode, or spread) is read from here.
    (b.state / "latency-samples.json").write_bytes(
        orjson.dumps({"sent_at_and_latency": timed, "checkpoints": live}))
    report["latency_samples_during_checkpoints"] = len(during)
    for name, part in (("during", during), ("outside", outside)):
        report[f"latency_p99_{name}_checkpoints_seconds"] = (
            rounded(percentile(part, 99), 4) if part else None)
    b.done = n + m


def peak_memory(b: Bench) -> None:
    """The workers' peak RSS over phases 2-3."""
    for w in b.workers:
        w.sample()
    b.report["peak_rss_bytes"] = sum(w.peak_rss for w in b.workers)
    if b.args.workers > 1:
        for info, w in zip(b.report.get("per_worker") or [], b.workers, strict=False):
            info["peak_rss_bytes"] = w.peak_rss
    # Every synthetic user of phases 4-5 is at or after the latest event time so far.
    b.latest = max(parse_timestamp(e["timestamp"]) for e in b.events[: int(b.done)])


def memory_users(b: Bench) -> None:
    """Phase 4: ``--users`` new distinct users, none older than the retention horizon."""
    args, report, workers = b.args, b.report, b.workers
    if args.users <= 0:
        return
    before = sum(rss_now(w.proc.pid) or 0 for w in workers)
    extra = list(distinct_users(b.events[: b.n], args.users, args.seed, at=b.latest))
    log(f"memory: {args.users:,} new distinct users")
    asyncio.run(produce(b.settings, encode(extra, b.settings.topic_of), timeout=b.timeout))
    # New users cost a changelog record each: this phase is the slowest.
    got = wait_counts(workers, b.done + len(extra), 2 * b.timeout)
    after = sum(rss_now(w.proc.pid) or 0 for w in workers)
    report["memory_users"] = int(min(args.users, max(0.0, got - b.done)))
    if report["memory_users"] < args.users:
        log(f"memory: only {report['memory_users']:,} users processed in time")
    report["rss_before_users_bytes"] = before
    report["rss_users_bytes"] = after
    report["memory_bytes_per_user"] = rounded(
        max(0, after - before) / max(1, report["memory_users"]), 1
    )
    report["peak_rss_after_users_bytes"] = sum(rss_peak(w.proc.pid) or 0 for w in workers)
    b.done += report["memory_users"]


def memory_bound(b: Bench) -> None:
    """Phase 5, the memory bound: ``--eviction-users`` new users, one event each, their event times
    spread evenly over ``--eviction-span`` retention horizons after ``latest``.

    Once the horizon is full, each arriving user should be matched by one
    evicted, so the workers' RSS should stop growing: RSS and users tracked are
    sampled at every tenth of the users processed, and the growth per user is
    taken over the samples after the first horizon (the plateau).
    """
    args, settings, workers, done, timeout = b.args, b.settings, b.workers, b.done, b.timeout
    retention = float(
        dict(args.worker_env).get(
            "FEEDBACK_USER_RETENTION_SECONDS", settings.user_retention_seconds
        )
    )
    if args.eviction_users <= 0 or retention <= 0:
        return
    events, latest = b.events[: b.n], b.latest
    n = args.eviction_users
    span = args.eviction_span * retention
    arrivals = list(distinct_users(events, n, args.seed + 1, prefix="e"))
    for i, e in enumerate(arrivals):
        e["timestamp"] = format_timestamp(latest + span * (i + 1) / n)
    topic_of = settings.topic_of
    start_rss = sum(rss_now(w.proc.pid) or 0 for w in workers)
    samples: list[list[float]] = []

    def on_sample() -> None:
        got = sum(w.count() for w in workers) - done
        if not samples or got >= samples[-1][0] + n / 10 or got >= n:
            samples.append([
                max(0.0, got),
                float(sum(rss_now(w.proc.pid) or 0 for w in workers)),
                sum(w.totals.get("feedback_users_tracked", 0.0) for w in workers),
            ])

    log(f"memory bound: {n:,} new users over {span / 86_400:,.0f} days of event time "
         f"({args.eviction_span:g} retention horizons of {retention / 86_400:,.0f} days)")
    asyncio.run(produce(settings, encode(arrivals, topic_of), timeout=timeout))
    got = wait_counts(workers, done + n, 2 * timeout, on_sample) - done
    # Let the eviction ticks work off what fell due with the last arrivals: until
    # the evicted count has not moved for 6 s (the users-tracked gauge follows
    # on the 5 s tick), at most 120 s.
    def evicted() -> float:
        return sum(w.totals.get("feedback_users_evicted_total", 0.0) for w in workers)

    deadline = time.monotonic() + 120.0
    last, since = evicted(), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < 6.0:
        time.sleep(SAMPLE_SECONDS)
        for w in workers:
            w.sample()
        if evicted() != last:
            last, since = evicted(), time.monotonic()
    on_sample()
    out: dict[str, Any] = {
        "eviction_users": int(min(n, max(0.0, got))),
        "eviction_retention_seconds": retention,
        "eviction_span_seconds": span,
        "rss_eviction_start_bytes": start_rss,
        "rss_eviction_end_bytes": int(samples[-1][1]),
        "peak_rss_after_eviction_bytes": sum(rss_peak(w.proc.pid) or 0 for w in workers),
        "users_evicted": int(
            sum(w.totals.get("feedback_users_evicted_total", 0.0) for w in workers)
        ),
        "users_tracked_after_eviction": int(samples[-1][2]),
        # [users of this phase processed, RSS bytes, users tracked by the models]
        "eviction_rss_samples": [[int(a), int(b), int(c)] for a, b, c in samples],
    }
    settled = [x for x in samples if x[0] >= n / args.eviction_span]
    if len(settled) >= 2 and settled[-1][0] > settled[0][0]:
        out["eviction_rss_growth_bytes_per_user"] = rounded(
            (settled[-1][1] - settled[0][1]) / (settled[-1][0] - settled[0][0]), 1
        )
    b.report.update(out)


def checkpoints(b: Bench) -> None:
    """The model checkpoints the workers took, from their last scrape."""
    count = sum(w.totals.get("feedback_model_checkpoint_seconds_count", 0) for w in b.workers)
    total_s = sum(w.totals.get("feedback_model_checkpoint_seconds_sum", 0) for w in b.workers)
    b.report["checkpoints"] = int(count)
    # From the snapshot to the file written; a forked child pickles the models,
    # the event loop waits for the fork only.
    b.report["checkpoint_mean_seconds"] = rounded(total_s / count, 3) if count else None


async def measure_latency(
    settings: Settings,
    records: Sequence[Record],
    ids: Sequence[str],
    rate: float,
    timeout: float,
) -> list[tuple[float, float]]:
    """Offer ``records`` at ``rate`` and time each recommendation they trigger:
    ``(sent at, latency)``, in Unix time and seconds."""
    from aiokafka import AIOKafkaConsumer

    from stream.kafka import client_kwargs

    sent_at: dict[str, float] = {}
    latencies: list[tuple[float, float]] = []
    consumer = AIOKafkaConsumer(
        settings.topic_recommendations, **client_kwargs(settings),
        group_id=None, auto_offset_reset="earliest", enable_auto_commit=False,
        # Tansu holds a fetch for its whole max wait even when data arrives.
        fetch_max_wait_ms=20,
    )
    await consumer.start()
    stop = asyncio.Event()

    async def read() -> None:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=100, max_records=2000)
            now = time.time()
            for recs in batches.values():
                for rec in recs:
                    # Older recommendations (the throughput phase) have no entry.
                    if rec.value is None or b'"trigger_event_id"' not in rec.value:
                        continue
                    trigger = orjson.loads(rec.value).get("trigger_event_id")
                    t0 = sent_at.pop(trigger, None) if trigger else None
                    if t0 is not None:
                        latencies.append((t0, now - t0))

    reader = asyncio.create_task(read())
    try:
        # Let the reader get past the earlier recommendations before offering load.
        await asyncio.sleep(2.0)
        await produce(settings, records, rate=rate, sent_at=sent_at, ids=ids, timeout=timeout)
        # Whatever has not come back within 5 s after the last send is not waited for.
        await asyncio.sleep(5.0)
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(reader, 5)
        await consumer.stop()
    return latencies
