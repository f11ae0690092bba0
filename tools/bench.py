"""``feedback-stream bench``: what the worker sustains, measured against reference loops.

One run, one broker, the same pre-encoded events for every contestant:

1. **Ceilings.** Three reference consumers, each in its own process, read the
   same N events (pre-loaded into their own topics) and report progress:
   ``raw`` (a plain aiokafka loop: consume, ``orjson.loads``, one produce per
   event), ``faust-decode`` (a trivial Faust agent that only decodes) and
   ``faust-send`` (a trivial Faust agent that sends one output per event with
   ``topic.send``).
2. **Throughput.** The real worker (``python -m tools.cli worker``, all models
   on) reads the same N events pre-loaded into its own topics; sustained input
   events/s and recommendations/s are the rates between the moments 10 % and
   90 % of the events were processed (read from ``/metrics``), so start-up and
   the last partial batch do not count.
3. **Latency.** The warm worker then gets the *next* events of the replay at a
   fixed offered load (half the measured maximum); the bench stamps each record
   with its produce time and reads ``feedback.recommendations``: latency = the
   bench's receive time of a recommendation - the produce time of the event that
   triggered it (``trigger_event_id``).
4. **Memory.** Peak RSS of the worker (``VmHWM``, psutil samples as a fallback)
   over phases 2-3, then its RSS after events of ``--users`` (default 100,000)
   new distinct users: real Online Retail / demo events whose user ids are
   replaced by synthetic ones, one event per user.

Every rate is also given as a ratio to the raw loop measured in the same run:
absolute numbers drift on shared machines, ratios much less. ``--workers 2``
runs phases 2-4 with two workers in one consumer group (combined and per-worker
figures). Everything is seeded and every wait has a deadline.

Usage: ``python -m tools.bench [--events 100000] [--workers 1] [--json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from stream.contract import format_timestamp, parse_timestamp
from stream.settings import Settings
from tools.pull_bench import measure_pulls, pull_targets

REPO = Path(__file__).resolve().parents[1]
REFERENCES = ("raw", "faust-decode", "faust-send")
# Sustained rates are measured between these fractions of the events processed.
WINDOW = (0.1, 0.9)
SAMPLE_SECONDS = 0.2

Record = tuple[str, bytes, bytes]  # topic, key, value


# -- pure helpers (tested in tests/tools/test_bench.py) ------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation (numpy's default).

    >>> percentile([1.0, 2.0, 3.0, 4.0], 50)
    2.5
    """
    if not values:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in 0..100, got {q}")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def time_at(samples: Sequence[tuple[float, float]], count: float) -> float | None:
    """When a monotone counter sampled as ``(time, value)`` first reached ``count``
    (linear interpolation between samples); None if it never did."""
    prev: tuple[float, float] | None = None
    for t, v in samples:
        if v >= count:
            if prev is None or v == prev[1]:
                return t
            t0, v0 = prev
            return t0 + (t - t0) * (count - v0) / (v - v0)
        prev = (t, v)
    return None


def value_at(samples: Sequence[tuple[float, float]], when: float) -> float:
    """A counter's value at time ``when``, interpolated between samples."""
    if not samples:
        return 0.0
    prev = samples[0]
    if when <= prev[0]:
        return prev[1]
    for t, v in samples[1:]:
        if t >= when:
            t0, v0 = prev
            return v0 + (v - v0) * (when - t0) / (t - t0) if t > t0 else v
        prev = (t, v)
    return prev[1]


@dataclass(frozen=True)
class Window:
    """The measuring window of a run: from ``start`` to ``end`` (monotonic seconds)."""

    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start

    def rate(self, samples: Sequence[tuple[float, float]]) -> float:
        """Average rate of a counter over the window."""
        if self.seconds <= 0:
            return math.nan
        return (value_at(samples, self.end) - value_at(samples, self.start)) / self.seconds


def window(
    samples: Sequence[tuple[float, float]], total: int, lo: float = WINDOW[0], hi: float = WINDOW[1]
) -> Window | None:
    """The window between the moments ``lo`` and ``hi`` of ``total`` were counted."""
    start, end = time_at(samples, lo * total), time_at(samples, hi * total)
    if start is None or end is None or end <= start:
        return None
    return Window(start, end)


def ratio(value: float | None, reference: float | None) -> float | None:
    """``value / reference``, None when either is missing or the reference is not positive."""
    if value is None or reference is None or not reference > 0 or math.isnan(value):
        return None
    return value / reference


# Rates reported as a fraction of the raw aiokafka loop.
RATIO_KEYS = (
    "events_per_second",
    "recommendations_per_second",
    "faust_decode_only_events_per_second",
    "faust_per_event_send_events_per_second",
)


def add_ratios(report: dict[str, Any]) -> dict[str, Any]:
    """Every rate as a fraction of the raw loop, and the worker against the Faust agents."""
    raw = report.get("raw_aiokafka_events_per_second")
    out = dict(report)
    for key in RATIO_KEYS:
        out[f"{key.removesuffix('_per_second')}_vs_raw"] = _round(ratio(report.get(key), raw))
    events = report.get("events_per_second")
    out["events_vs_faust_per_event_send"] = _round(
        ratio(events, report.get("faust_per_event_send_events_per_second"))
    )
    out["events_vs_faust_decode_only"] = _round(
        ratio(events, report.get("faust_decode_only_events_per_second"))
    )
    # The same per CPU-second: what each loop costs, whatever else the machine runs.
    raw_cpu = report.get("raw_aiokafka_events_per_cpu_second")
    for key in ("events", "faust_decode_only_events", "faust_per_event_send_events"):
        out[f"{key}_per_cpu_second_vs_raw"] = _round(
            ratio(report.get(f"{key}_per_cpu_second"), raw_cpu)
        )
    return out


def _round(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(x, digits)


BARS = {
    "events_per_second": (">=", 10_000.0),
    "events_vs_faust_per_event_send": (">=", 2.5),
    "latency_p99_seconds": ("<=", 0.25),
    "pull_latency_p99_seconds": ("<=", 0.05),
}


def bars(report: dict[str, Any]) -> dict[str, bool | None]:
    """Which of issue 6's bars the report meets (None: not measured)."""
    met: dict[str, bool | None] = {}
    for key, (op, limit) in BARS.items():
        value = report.get(key)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            met[key] = None
        else:
            met[key] = value >= limit if op == ">=" else value <= limit
    return met


def _fmt_rate(x: float | None) -> str:
    return "n/a" if x is None else f"{x:,.0f}/s"


def _fmt_ratio(x: float | None) -> str:
    return "" if x is None else f"  ({x:.2f}x raw)"


def _fmt_bytes(x: float | None) -> str:
    return "n/a" if x is None else f"{x / 2**20:,.0f} MiB"


def format_report(report: dict[str, Any]) -> str:
    """The human-readable report: rates with their ratio to the raw loop."""
    r = report
    lines = [
        f"feedback-stream bench: {r.get('events') or 0:,} events, "
        f"{r.get('partitions')} partitions, {r.get('workers')} worker(s), "
        f"dataset {r.get('dataset')}",
        "ceilings (same events, same run)",
        f"  raw aiokafka loop            {_fmt_rate(r.get('raw_aiokafka_events_per_second'))}",
        f"  Faust agent, decode only     "
        f"{_fmt_rate(r.get('faust_decode_only_events_per_second'))}"
        f"{_fmt_ratio(r.get('faust_decode_only_events_vs_raw'))}",
        f"  Faust agent, per-event send  "
        f"{_fmt_rate(r.get('faust_per_event_send_events_per_second'))}"
        f"{_fmt_ratio(r.get('faust_per_event_send_events_vs_raw'))}",
        "worker, all models on",
        f"  input events                 {_fmt_rate(r.get('events_per_second'))}"
        f"{_fmt_ratio(r.get('events_vs_raw'))}",
        f"  recommendations              {_fmt_rate(r.get('recommendations_per_second'))}"
        f"{_fmt_ratio(r.get('recommendations_vs_raw'))}",
    ]
    vs_send = r.get("events_vs_faust_per_event_send")
    if vs_send is not None:
        lines.append(f"  vs Faust per-event send      {vs_send:.2f}x")
    for i, w in enumerate(r.get("per_worker") or []):
        lines.append(
            f"  worker {i}: {_fmt_rate(w.get('events_per_second'))} in, "
            f"{_fmt_rate(w.get('recommendations_per_second'))} recommendations, "
            f"peak RSS {_fmt_bytes(w.get('peak_rss_bytes'))}"
        )
    if r.get("raw_aiokafka_events_per_cpu_second") or r.get("events_per_cpu_second"):
        lines.append(
            "per CPU-second (what each loop costs, whatever else the machine runs): "
            f"raw {_fmt_rate(r.get('raw_aiokafka_events_per_cpu_second'))}, "
            f"Faust decode-only {_fmt_rate(r.get('faust_decode_only_events_per_cpu_second'))}, "
            "Faust per-event send "
            f"{_fmt_rate(r.get('faust_per_event_send_events_per_cpu_second'))}, "
            f"worker {_fmt_rate(r.get('events_per_cpu_second'))}"
            + _fmt_ratio(r.get("events_per_cpu_second_vs_raw"))
        )
    lat = [r.get(f"latency_p{p}_seconds") for p in (50, 95, 99)]
    if all(isinstance(x, float | int) and not math.isnan(x) for x in lat):
        lines.append(
            f"latency at {_fmt_rate(r.get('latency_offered_events_per_second'))} offered "
            f"({r.get('latency_samples', 0):,} recommendations): "
            + ", ".join(
                f"p{p} {float(x or 0) * 1000:.0f} ms"
                for p, x in zip((50, 95, 99), lat, strict=True)
            )
        )
    if r.get("pull_samples"):
        lines.append(
            f"pull API at {r['pull_requests_per_second']:g} requests/s during that load "
            f"({r['pull_samples']:,} answers, {r.get('pull_failures', 0)} failed): "
            f"p50 {float(r['pull_latency_p50_seconds']) * 1000:.0f} ms, "
            f"p99 {float(r['pull_latency_p99_seconds']) * 1000:.0f} ms"
        )
    if r.get("checkpoint_mean_seconds"):
        lines.append(
            f"model checkpoints: {r.get('checkpoints')}, "
            f"{r['checkpoint_mean_seconds'] * 1000:.0f} ms each on average (the loop waits)"
        )
    lines.append(f"peak RSS {_fmt_bytes(r.get('peak_rss_bytes'))}")
    users = r.get("memory_users")
    if users:
        per_user = r.get("memory_bytes_per_user")
        lines.append(
            f"RSS after {users:,} more distinct users {_fmt_bytes(r.get('rss_users_bytes'))}"
            + (f" (~{per_user:,.0f} bytes per user)" if per_user else "")
        )
    bound = r.get("eviction_users")
    if bound:
        growth = r.get("eviction_rss_growth_bytes_per_user")
        lines.append(
            f"memory bound: {bound:,} users over {r.get('eviction_span_seconds', 0) / 86_400:,.0f}"
            f" days (retention {r.get('eviction_retention_seconds', 0) / 86_400:,.0f} days): "
            f"RSS {_fmt_bytes(r.get('rss_eviction_start_bytes'))} -> "
            f"{_fmt_bytes(r.get('rss_eviction_end_bytes'))}, "
            f"{r.get('users_evicted', 0):,} users evicted, "
            f"{r.get('users_tracked_after_eviction', 0):,} held"
            + (f", {growth:,.0f} bytes per user after the first horizon" if growth is not None
               else "")
        )
    met = bars(r)
    lines.append(
        "bars: "
        + ", ".join(
            f"{k} {'met' if v else 'NOT met' if v is not None else 'not measured'}"
            for k, v in met.items()
        )
    )
    return "\n".join(lines)


# -- events ---------------------------------------------------------------------


def load_events(dataset: str, data_dir: Path | None, count: int) -> list[dict[str, Any]]:
    """The first ``count`` events of a shared-dataset replay (deterministic)."""
    from tools.produce import dataset_events

    events = list(dataset_events(dataset, data_dir, count))
    if len(events) < count:
        raise SystemExit(f"dataset {dataset} has only {len(events)} events, {count} needed")
    return events


def encode(events: Sequence[dict[str, Any]], topic_of: Callable[[str], str]) -> list[Record]:
    """Route and encode once, before any clock starts."""
    return [
        (topic_of(e["type"]), str(e["user_id"]).encode(), orjson.dumps(e)) for e in events
    ]


def distinct_users(
    events: Sequence[dict[str, Any]],
    users: int,
    seed: int,
    at: float | None = None,
    prefix: str = "",
) -> Iterator[dict[str, Any]]:
    """One event per synthetic user: real events (items, types, times) with the
    user id replaced, shuffled by ``seed``; ``users`` may exceed ``len(events)``.

    ``at`` (Unix seconds) replaces every event time, e.g. by the latest one so
    that no synthetic user is older than the retention horizon; ``prefix`` keeps
    the ids of two calls apart."""
    rng = random.Random(seed)
    order = list(range(len(events)))
    rng.shuffle(order)
    stamp = None if at is None else format_timestamp(at)
    for i in range(users):
        e = events[order[i % len(order)]]
        user = f"{prefix}u{i}"
        out = {**e, "user_id": f"bench-{prefix}u{i:06d}", "event_id": f"{e['event_id']}~{user}"}
        if stamp is not None:
            out["timestamp"] = stamp
        yield out


# -- Kafka helpers (bench side) ---------------------------------------------------


def _settings(bootstrap: str, prefix: str, partitions: int, **extra: Any) -> Settings:
    return Settings.from_env(
        {},
        bootstrap_servers=bootstrap,
        partitions=partitions,
        app_id=f"{prefix}app",
        topic_clicks=f"{prefix}clicks",
        topic_purchases=f"{prefix}purchases",
        topic_reviews=f"{prefix}reviews",
        topic_recommendations=f"{prefix}recommendations",
        topic_alerts=f"{prefix}alerts",
        topic_deadletter=f"{prefix}deadletter",
        **extra,
    )


async def _produce(
    settings: Settings,
    records: Sequence[Record],
    rate: float | None = None,
    sent_at: dict[str, float] | None = None,
    ids: Sequence[str] | None = None,
    timeout: float = 300.0,
) -> float:
    """Send records (paced at ``rate`` if given) and wait for every ack; returns seconds.

    With ``sent_at``, the wall-clock produce time of each record (also its Kafka
    timestamp) is kept under its event id (``ids``)."""
    from stream.kafka import producer

    prod = producer(settings, linger_ms=2, max_batch_size=256 * 1024)
    await prod.start()
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        pending = []
        for i, (topic, key, value) in enumerate(records):
            if rate:
                ahead = i / rate - (loop.time() - start)
                if ahead > 0.002:
                    await asyncio.sleep(ahead)
            now = time.time()
            if sent_at is not None and ids is not None:
                sent_at[ids[i]] = now
            pending.append(
                await prod.send(topic, value, key=key, timestamp_ms=int(now * 1000))
            )
            if len(pending) >= 2000:
                await asyncio.wait_for(asyncio.gather(*pending), timeout)
                pending.clear()
            if loop.time() - start > timeout:
                raise TimeoutError(f"producing took more than {timeout:.0f} s")
        await asyncio.wait_for(asyncio.gather(*pending), timeout)
    finally:
        await prod.stop()
    return loop.time() - start


def preload(settings: Settings, records: Sequence[Record]) -> float:
    from stream.kafka import create_topics

    async def go() -> float:
        await create_topics(settings)
        return await _produce(settings, records)

    return asyncio.run(go())


# -- processes --------------------------------------------------------------------


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def rss_peak(pid: int) -> int | None:
    """The kernel's high-water mark of a process's resident memory (Linux), else None."""
    with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time a process has used so far."""
    import psutil

    with contextlib.suppress(psutil.Error):
        t = psutil.Process(pid).cpu_times()
        return float(t.user + t.system)
    return None


def rss_now(pid: int) -> int | None:
    import psutil

    with contextlib.suppress(psutil.Error):
        return int(psutil.Process(pid).memory_info().rss)
    return None


@dataclass
class RefProcess:
    """A reference loop in its own process; it prints ``P <monotonic> <count>`` lines."""

    proc: subprocess.Popen[str]
    samples: list[tuple[float, float]] = field(default_factory=list)
    thread: threading.Thread | None = None

    def start_reader(self) -> None:
        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                parts = line.split()
                if len(parts) == 3 and parts[0] == "P":
                    self.samples.append((float(parts[1]), float(parts[2])))

        self.thread = threading.Thread(target=read, daemon=True)
        self.thread.start()

    def count(self) -> float:
        return self.samples[-1][1] if self.samples else 0.0


def _stop(proc: subprocess.Popen[Any], timeout: float = 20.0) -> None:
    from stream import broker

    broker.stop(proc, timeout)


def run_reference(
    kind: str, settings: Settings, total: int, state_dir: Path, timeout: float
) -> tuple[float | None, float | None]:
    """Start one reference loop on pre-loaded topics; returns its sustained events/s
    and its events per CPU-second (robust to other load on the machine)."""
    cmd = [
        sys.executable, "-m", "tools.bench", "_reference", kind,
        "--bootstrap-servers", settings.bootstrap_servers,
        "--topics", ",".join(settings.input_topics),
        "--output", settings.topic_recommendations,
        "--app-id", settings.app_id,
        "--partitions", str(settings.partitions),
        "--events", str(total),
        "--state-dir", str(state_dir),
    ]
    log = open(state_dir / f"{kind}.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True)
    ref = RefProcess(proc)
    ref.start_reader()
    deadline = time.monotonic() + timeout
    cpu: list[tuple[float, float]] = []
    try:
        while ref.count() < total and time.monotonic() < deadline and proc.poll() is None:
            used = cpu_seconds(proc.pid)
            if used is not None:
                cpu.append((time.monotonic(), used))
            time.sleep(SAMPLE_SECONDS)
    finally:
        _stop(proc)
        log.close()
    w = window(ref.samples, total)
    if w is None:
        _log(f"{kind}: only {ref.count():,.0f}/{total:,} events in {timeout:.0f} s; see {log.name}")
        return None, None
    rate = w.rate(ref.samples)
    return rate, per_cpu_second(rate, w.rate(cpu))


def per_cpu_second(rate: float | None, cores: float | None) -> float | None:
    """Events per CPU-second from events/s and the cores the process kept busy."""
    if rate is None or cores is None or math.isnan(cores) or cores <= 0:
        return None
    return rate / cores


def scrape(url: str) -> dict[str, float]:
    from tools.demo import scrape as demo_scrape

    return demo_scrape(url)


@dataclass
class WorkerProcess:
    settings: Settings
    proc: subprocess.Popen[bytes]
    events: list[tuple[float, float]] = field(default_factory=list)
    recommendations: list[tuple[float, float]] = field(default_factory=list)
    cpu: list[tuple[float, float]] = field(default_factory=list)
    peak_rss: int = 0
    totals: dict[str, float] = field(default_factory=dict)

    @property
    def metrics_url(self) -> str:
        return f"{self.settings.web_url}/metrics"

    def sample(self) -> dict[str, float]:
        t = time.monotonic()
        try:
            totals = scrape(self.metrics_url)
        except OSError:
            return {}
        self.events.append((t, totals.get("feedback_events_total", 0.0)))
        self.recommendations.append(
            (t, totals.get("feedback_recommendations_emitted_total", 0.0))
        )
        self.cpu.append((t, cpu_seconds(self.proc.pid) or 0.0))
        self.totals = totals
        rss = rss_now(self.proc.pid) or 0
        self.peak_rss = max(self.peak_rss, rss_peak(self.proc.pid) or rss)
        return totals

    def count(self) -> float:
        return self.events[-1][1] if self.events else 0.0


def start_workers(
    settings: Settings, n: int, state_dir: Path, timeout: float, env_extra: dict[str, str]
) -> list[WorkerProcess]:
    from stream import broker
    from tools.local import wait_http

    workers = []
    for i in range(n):
        s = Settings.from_env({}, **{**vars(settings), "web_port": broker.free_port()})
        env = {
            **os.environ,
            **{f"FEEDBACK_{k.upper()}": str(v) for k, v in vars(s).items()},
            **env_extra,
        }
        log = open(state_dir / f"worker-{i}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "tools.cli", "worker"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        workers.append(WorkerProcess(s, proc))
    for w in workers:
        wait_http(f"{w.settings.web_url}/healthz", w.proc, timeout=timeout)
    return workers


def wait_counts(
    workers: Sequence[WorkerProcess],
    total: float,
    timeout: float,
    on_sample: Callable[[], None] | None = None,
) -> float:
    """Sample every worker until their event counts add up to ``total``; returns the sum."""
    deadline = time.monotonic() + timeout
    done = 0.0
    while time.monotonic() < deadline:
        for w in workers:
            if w.proc.poll() is not None:
                raise RuntimeError(f"worker exited with code {w.proc.returncode}")
            w.sample()
        done = sum(w.count() for w in workers)
        if on_sample is not None:
            on_sample()
        if done >= total:
            break
        time.sleep(SAMPLE_SECONDS)
    return done


def combined(series: Sequence[Sequence[tuple[float, float]]]) -> list[tuple[float, float]]:
    """Several workers' counters, sampled in the same rounds, added up per round."""
    return [
        (max(t for t, _ in row), sum(v for _, v in row))
        for row in zip(*series, strict=False)
    ]


# -- latency ----------------------------------------------------------------------


async def measure_latency(
    settings: Settings,
    records: Sequence[Record],
    ids: Sequence[str],
    rate: float,
    timeout: float,
) -> list[float]:
    """Offer ``records`` at ``rate`` and time each recommendation they trigger."""
    from aiokafka import AIOKafkaConsumer

    from stream.kafka import client_kwargs

    sent_at: dict[str, float] = {}
    latencies: list[float] = []
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
                        latencies.append(now - t0)

    reader = asyncio.create_task(read())
    try:
        # Let the reader get past the earlier recommendations before offering load.
        await asyncio.sleep(2.0)
        await _produce(settings, records, rate=rate, sent_at=sent_at, ids=ids, timeout=timeout)
        # Whatever has not come back within 5 s after the last send is not waited for.
        await asyncio.sleep(5.0)
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(reader, 5)
        await consumer.stop()
    return latencies


# -- the memory bound ---------------------------------------------------------------


def memory_bound(
    workers: Sequence[WorkerProcess],
    settings: Settings,
    events: Sequence[dict[str, Any]],
    args: argparse.Namespace,
    latest: float,
    retention: float,
    done: float,
    timeout: float,
) -> dict[str, Any]:
    """Phase 5: ``--eviction-users`` new users, one event each, their event times
    spread evenly over ``--eviction-span`` retention horizons after ``latest``.

    Once the horizon is full, each arriving user should be matched by one
    evicted, so the workers' RSS should stop growing: RSS and users tracked are
    sampled at every tenth of the users processed, and the growth per user is
    taken over the samples after the first horizon (the plateau).
    """
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

    _log(f"memory bound: {n:,} new users over {span / 86_400:,.0f} days of event time "
         f"({args.eviction_span:g} retention horizons of {retention / 86_400:,.0f} days)")
    asyncio.run(_produce(settings, encode(arrivals, topic_of), timeout=timeout))
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
        out["eviction_rss_growth_bytes_per_user"] = _round(
            (settled[-1][1] - settled[0][1]) / (settled[-1][0] - settled[0][0]), 1
        )
    return out


# -- the run ----------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    n = args.events
    timeout = args.timeout
    state = Path(args.state_dir or tempfile.mkdtemp(prefix="feedback-bench-"))
    state.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "events": n,
        "partitions": args.partitions,
        "workers": args.workers,
        "dataset": args.dataset,
        "seed": args.seed,
    }
    _log(f"loading {2 * n:,} events from the {args.dataset} replay")
    events = load_events(args.dataset, args.data_dir, 2 * n)
    with contextlib.ExitStack() as stack:
        if args.bootstrap_servers:
            bootstrap = args.bootstrap_servers
        else:
            from stream import broker

            port = broker.free_port()
            proc = broker.start(port, log_path=state / "broker.log")
            stack.callback(broker.stop, proc)
            bootstrap = f"127.0.0.1:{port}"
            _log(f"embedded broker on {bootstrap}")
        run_id = f"b{os.getpid()}{int(time.time()) % 100000}"

        def phase(name: str, **extra: Any) -> Settings:
            return _settings(
                bootstrap, f"{run_id}.{name}.", args.partitions, state_dir=str(state), **extra
            )

        # 1. ceilings
        names = {
            "raw": "raw_aiokafka_events_per_second",
            "faust-decode": "faust_decode_only_events_per_second",
            "faust-send": "faust_per_event_send_events_per_second",
        }
        for kind in args.references:
            s = phase(kind)
            records = encode(events[:n], s.topic_of)
            secs = preload(s, records)
            _log(f"{kind}: pre-loaded {n:,} events in {secs:.1f} s; running")
            rate, per_cpu = run_reference(kind, s, n, state, timeout)
            report[names[kind]] = _round(rate, 1)
            report[names[kind].replace("_per_second", "_per_cpu_second")] = _round(per_cpu, 1)
            _log(f"{kind}: {_fmt_rate(rate)}")

        # 2. the worker's throughput
        s = phase("worker")
        topic_of = s.topic_of
        preload(s, encode(events[:n], topic_of))
        _log(f"worker: pre-loaded {n:,} events; starting {args.workers} worker(s)")
        env_extra = {"FEEDBACK_LOG_LEVEL": "WARNING", **dict(args.worker_env)}
        if args.worker_env:
            report["worker_env"] = dict(args.worker_env)
        workers = start_workers(s, args.workers, state, timeout, env_extra)
        for w in workers:
            stack.callback(_stop, w.proc)
        got = wait_counts(workers, n, timeout)
        ev = combined([w.events for w in workers])
        recs = combined([w.recommendations for w in workers])
        win = window(ev, n)
        if win is None:
            _log(f"worker: only {got:,.0f}/{n:,} events within {timeout:.0f} s")
        else:
            report["events_per_second"] = _round(win.rate(ev), 1)
            report["recommendations_per_second"] = _round(win.rate(recs), 1)
            report["window_seconds"] = _round(win.seconds)
            cores = win.rate(combined([w.cpu for w in workers]))
            report["worker_cpu_cores"] = _round(cores, 2)
            report["events_per_cpu_second"] = _round(
                per_cpu_second(report["events_per_second"], cores), 1
            )
            if args.workers > 1:
                report["per_worker"] = [
                    {
                        "events_per_second": _round(win.rate(w.events), 1),
                        "recommendations_per_second": _round(win.rate(w.recommendations), 1),
                    }
                    for w in workers
                ]
        _log(
            f"worker: {_fmt_rate(report.get('events_per_second'))} in, "
            f"{_fmt_rate(report.get('recommendations_per_second'))} recommendations"
        )

        # 3. latency at a fixed offered load
        max_rate = report.get("events_per_second")
        if max_rate and args.latency_seconds > 0:
            offered = max_rate * args.load_fraction
            m = min(n, int(offered * args.latency_seconds))
            batch = events[n : n + m]
            _log(f"latency: offering {m:,} new events at {offered:,.0f}/s"
                 f" and {args.pull_rate:g} pulls/s")

            async def both() -> tuple[list[float], dict[str, Any]]:
                # The pull API is timed while the worker takes the same load.
                return await asyncio.gather(
                    measure_latency(
                        s, encode(batch, topic_of), [e["event_id"] for e in batch],
                        offered, timeout,
                    ),
                    measure_pulls(
                        workers[0].settings.web_url, pull_targets(events[:n]),
                        args.pull_rate, m / offered,
                    ),
                )

            lat, pulls = asyncio.run(both())
            report["pull_requests_per_second"] = args.pull_rate
            report["pull_samples"] = len(pulls["latencies"])
            report["pull_failures"] = pulls["failures"]
            for p in (50, 99):
                report[f"pull_latency_p{p}_seconds"] = _round(
                    percentile(pulls["latencies"], p), 4
                )
            wait_counts(workers, n + m, 10.0)
            report["latency_offered_events_per_second"] = _round(offered, 1)
            report["latency_samples"] = len(lat)
            for p in (50, 95, 99):
                report[f"latency_p{p}_seconds"] = _round(percentile(lat, p), 4)
            report["latency_max_seconds"] = _round(max(lat), 4) if lat else None
            done = n + m
        else:
            done = n
        for w in workers:
            w.sample()
        report["peak_rss_bytes"] = sum(w.peak_rss for w in workers)
        if args.workers > 1:
            for info, w in zip(report.get("per_worker") or [], workers, strict=False):
                info["peak_rss_bytes"] = w.peak_rss

        # Every synthetic user below is at or after the latest event time so far.
        latest = max(parse_timestamp(e["timestamp"]) for e in events[:done])
        # 4. memory with many distinct users, none older than the retention horizon
        if args.users > 0:
            before = sum(rss_now(w.proc.pid) or 0 for w in workers)
            extra = list(distinct_users(events[:n], args.users, args.seed, at=latest))
            _log(f"memory: {args.users:,} new distinct users")
            asyncio.run(_produce(s, encode(extra, topic_of), timeout=timeout))
            # New users cost a changelog record each: this phase is the slowest.
            got = wait_counts(workers, done + len(extra), 2 * timeout)
            after = sum(rss_now(w.proc.pid) or 0 for w in workers)
            report["memory_users"] = int(min(args.users, max(0.0, got - done)))
            if report["memory_users"] < args.users:
                _log(f"memory: only {report['memory_users']:,} users processed in time")
            report["rss_before_users_bytes"] = before
            report["rss_users_bytes"] = after
            report["memory_bytes_per_user"] = _round(
                max(0, after - before) / max(1, report["memory_users"]), 1
            )
            report["peak_rss_after_users_bytes"] = sum(
                rss_peak(w.proc.pid) or 0 for w in workers
            )
            done += report["memory_users"]
        # 5. the bound: users arriving over several retention horizons of event time
        retention = float(
            dict(args.worker_env).get("FEEDBACK_USER_RETENTION_SECONDS", s.user_retention_seconds)
        )
        if args.eviction_users > 0 and retention > 0:
            report.update(
                memory_bound(workers, s, events[:n], args, latest, retention, done, timeout)
            )
        count = sum(w.totals.get("feedback_model_checkpoint_seconds_count", 0) for w in workers)
        total_s = sum(w.totals.get("feedback_model_checkpoint_seconds_sum", 0) for w in workers)
        report["checkpoints"] = int(count)
        # The event loop is blocked while the engine is pickled: a latency outlier.
        report["checkpoint_mean_seconds"] = _round(total_s / count, 3) if count else None
        report["state_dir"] = str(state)
    return add_ratios(report)


# -- reference loops (run in their own process by run_reference) -------------------


def _progress_printer(counter: Callable[[], int]) -> Callable[[], None]:
    # Straight to file descriptor 1: Faust's worker redirects sys.stdout to its logger.
    def emit() -> None:
        os.write(1, f"P {time.monotonic():.4f} {counter()}\n".encode())

    return emit


async def _raw_loop(args: argparse.Namespace) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    servers = args.bootstrap_servers.split(",")
    consumer = AIOKafkaConsumer(
        *args.topics.split(","), bootstrap_servers=servers, group_id=args.app_id,
        auto_offset_reset="earliest", session_timeout_ms=6000, heartbeat_interval_ms=1000,
    )
    producer = AIOKafkaProducer(bootstrap_servers=servers, acks="all")
    await consumer.start()
    await producer.start()
    count = 0
    emit = _progress_printer(lambda: count)

    async def ticker() -> None:
        while True:
            emit()
            await asyncio.sleep(SAMPLE_SECONDS / 2)

    task = asyncio.create_task(ticker())
    try:
        while count < args.events:
            batches = await consumer.getmany(timeout_ms=200, max_records=1000)
            futures = []
            for recs in batches.values():
                for rec in recs:
                    event = orjson.loads(rec.value)
                    out = orjson.dumps({"event_id": event["event_id"]})
                    futures.append(await producer.send(args.output, out, key=rec.key))
            if futures:
                await asyncio.gather(*futures)
            count += len(futures)
        emit()
    finally:
        task.cancel()
        await producer.stop()
        await consumer.stop()


def _faust_reference(args: argparse.Namespace, send: bool) -> None:
    import faust

    app = faust.App(
        args.app_id,
        broker=[f"kafka://{s}" for s in args.bootstrap_servers.split(",")],
        store="memory://",
        autodiscover=False,
        web_enabled=False,
        topic_partitions=args.partitions,
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.0,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        datadir=str(Path(args.state_dir) / f"faust-{args.app_id}"),
    )
    source = app.topic(
        *args.topics.split(","), key_type=bytes, key_serializer="raw", value_serializer="raw"
    )
    output = app.topic(args.output, key_serializer="raw", value_serializer="raw")
    count = 0
    emit = _progress_printer(lambda: count)

    @app.agent(source)
    async def agent(stream: Any) -> None:
        nonlocal count
        async for key, value in stream.items():
            event = orjson.loads(value)
            if send:
                await output.send(key=key, value=orjson.dumps({"event_id": event["event_id"]}))
            count += 1

    @app.timer(SAMPLE_SECONDS / 2)
    async def progress() -> None:
        emit()

    faust.Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()


def reference_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="tools.bench _reference")
    p.add_argument("kind", choices=REFERENCES)
    p.add_argument("--bootstrap-servers", required=True)
    p.add_argument("--topics", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--app-id", required=True)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--events", type=int, required=True)
    p.add_argument("--state-dir", required=True)
    args = p.parse_args(argv)
    if args.kind == "raw":
        asyncio.run(_raw_loop(args))
    else:
        _faust_reference(args, send=args.kind == "faust-send")
    return 0


# -- CLI --------------------------------------------------------------------------


def _env_pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="feedback-stream bench",
        description="Worker throughput, latency and memory, with reference loops as ceilings.",
    )
    p.add_argument("--events", type=int, default=100_000, help="events per contestant")
    p.add_argument("--workers", type=int, default=1, help="workers in one consumer group")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--dataset", default="demo", help="shared dataset replayed (default demo)")
    p.add_argument("--data-dir", type=Path, help="datasets folder (default ../shared/data)")
    p.add_argument("--bootstrap-servers", help="use this broker instead of an embedded one")
    p.add_argument(
        "--references", default=",".join(REFERENCES),
        help=f"reference loops to run, comma-separated (default {','.join(REFERENCES)}; "
        "'' for none)",
    )
    p.add_argument("--latency-seconds", type=float, default=15.0,
                   help="how long the fixed load is offered (0: skip)")
    p.add_argument("--load-fraction", type=float, default=0.5,
                   help="offered load as a fraction of the measured maximum")
    p.add_argument("--pull-rate", type=float, default=20.0,
                   help="GET /recommendations requests per second during the fixed load "
                   "(0: skip)")
    p.add_argument("--users", type=int, default=100_000,
                   help="distinct new users for the memory figure (0: skip)")
    p.add_argument("--eviction-users", type=int, default=100_000,
                   help="new users spread over --eviction-span retention horizons of event "
                   "time, for the memory bound (0: skip)")
    p.add_argument("--eviction-span", type=float, default=3.0,
                   help="event-time span of the memory-bound phase, in retention horizons")
    p.add_argument(
        "--worker-env", action="append", default=[], type=_env_pair, metavar="NAME=VALUE",
        help="extra environment for the workers, e.g. "
        "FEEDBACK_CHECKPOINT_INTERVAL_SECONDS=600 (repeatable)",
    )
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--timeout", type=float, default=300.0, help="deadline of every phase, s")
    p.add_argument("--state-dir", help="logs and worker state (default: a temporary folder)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "_reference":
        return reference_main(argv[1:])
    args = build_parser().parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the broker and workers started here are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args.references = [r for r in args.references.split(",") if r]
    unknown = set(args.references) - set(REFERENCES)
    if unknown:
        print(f"unknown reference loop(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    if args.events < 100 or args.workers < 1:
        print("need --events >= 100 and --workers >= 1", file=sys.stderr)
        return 2
    report = run(args)
    if args.json:
        print(orjson.dumps(report).decode(), flush=True)
    else:
        print(format_report(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "Window",
    "add_ratios",
    "bars",
    "format_report",
    "percentile",
    "ratio",
    "time_at",
    "value_at",
    "window",
]
