"""The processes a bench run starts and samples: reference loops and workers."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stream.settings import Settings
from tools.bench.stats import per_cpu_second, unchanged_for, window

REPO = Path(__file__).resolve().parents[2]
SAMPLE_SECONDS = 0.2


def faust_env(pairs: Sequence[tuple[str, str]]) -> dict[str, str]:
    """The environment that gives a Faust app (reference loop or worker) the
    settings ``NAME=VALUE``, named as ``faust.App`` options; raises ValueError
    naming a setting that cannot be given.

    Faust reads each setting's own environment variable (``stream_buffer_maxsize``:
    ``STREAM_BUFFER_MAXSIZE``) before the app's arguments, so the same variable
    sets the same value in both. ``Monitor`` (``faust`` or ``lean``,
    stream/faust/monitor.py) has no variable of Faust's:
    ``FEEDBACK_FAUST_MONITOR``, which the worker's settings and the reference
    loops read.
    """
    from faust.types.settings import Settings as FaustSettings

    from stream.settings import FAUST_MONITORS

    env: dict[str, str] = {}
    for name, value in pairs:
        if name == "Monitor":
            if value not in FAUST_MONITORS:
                raise ValueError(f"Monitor must be one of {', '.join(FAUST_MONITORS)}")
            env["FEEDBACK_FAUST_MONITOR"] = value
            continue
        param = FaustSettings.SETTINGS.get(name)
        if param is None or param.env_name is None:
            raise ValueError(f"{name} is not a Faust setting with an environment variable")
        env[param.env_name] = value
    return env


def log(message: str) -> None:
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


def stop(proc: subprocess.Popen[Any], timeout: float = 20.0) -> None:
    from tools import broker

    broker.stop(proc, timeout)


def run_reference(
    kind: str, settings: Settings, total: int, state_dir: Path, timeout: float,
    env_extra: dict[str, str] | None = None,
) -> tuple[float | None, float | None]:
    """Start one reference loop on pre-loaded topics; returns its sustained events/s
    and its events per CPU-second (robust to other load on the machine).
    ``env_extra``: Faust settings (:func:`faust_env`)."""
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
    log_file = open(state_dir / f"{kind}.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=log_file, text=True,
                            env={**os.environ, **(env_extra or {})})
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
        stop(proc)
        log_file.close()
    w = window(ref.samples, total)
    if w is None:
        log(
            f"{kind}: only {ref.count():,.0f}/{total:,} events in {timeout:.0f} s; "
            f"see {log_file.name}"
        )
        return None, None
    rate = w.rate(ref.samples)
    return rate, per_cpu_second(rate, w.rate(cpu))


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
    # Item-update entries sent by this worker, and applied (or skipped as
    # duplicates) by it as an item owner.
    item_updates_sent: list[tuple[float, float]] = field(default_factory=list)
    item_updates_done: list[tuple[float, float]] = field(default_factory=list)
    # Item models published by this worker as an owner plus those its replica applied.
    item_models: list[tuple[float, float]] = field(default_factory=list)
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
        self.item_updates_sent.append(
            (t, totals.get("feedback_item_update_entries_sent_total", 0.0))
        )
        self.item_updates_done.append((t, (
            totals.get("feedback_item_update_entries_applied_total", 0.0)
            + totals.get("feedback_item_update_entries_duplicate_total", 0.0)
        )))
        self.item_models.append((t, (
            totals.get("feedback_item_models_published_total", 0.0)
            + totals.get("feedback_item_models_applied_total", 0.0)
        )))
        self.totals = totals
        rss = rss_now(self.proc.pid) or 0
        self.peak_rss = max(self.peak_rss, rss_peak(self.proc.pid) or rss)
        return totals

    def count(self) -> float:
        return self.events[-1][1] if self.events else 0.0


def start_workers(
    settings: Settings, n: int, state_dir: Path, timeout: float, env_extra: dict[str, str]
) -> list[WorkerProcess]:
    from tools import broker
    from tools.local import wait_http

    workers = []
    for i in range(n):
        s = Settings.from_env({}, **{**vars(settings), "web_port": broker.free_port()})
        env = {
            **os.environ,
            **{f"FEEDBACK_{k.upper()}": str(v) for k, v in vars(s).items()},
            **env_extra,
        }
        log_file = open(state_dir / f"worker-{i}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "tools.cli", "worker"],
            cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT,
        )
        workers.append(WorkerProcess(s, proc))
    # Ready (partitions assigned, table recovered): /healthz answers before Faust starts.
    for w in workers:
        wait_http(f"{w.settings.web_url}/readyz", w.proc, timeout=timeout)
    return workers


def wait_item_owners(workers: Sequence[WorkerProcess], timeout: float) -> float | None:
    """Sample every worker until the item owners have applied every item-update
    entry sent so far (the worker's share of an event's work that trails its
    input); the seconds it took, None past ``timeout``."""
    def caught_up() -> bool:
        sent = sum(w.item_updates_sent[-1][1] for w in workers if w.item_updates_sent)
        done = sum(w.item_updates_done[-1][1] for w in workers if w.item_updates_done)
        return done >= sent

    return _sample_until(workers, timeout, caught_up)


def _sample_until(workers: Sequence[WorkerProcess], timeout: float,
                  done: Callable[[], bool]) -> float | None:
    """Sample every worker until ``done()``; the seconds it took, None past ``timeout``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        for w in workers:
            if w.proc.poll() is not None:
                raise RuntimeError(f"worker exited with code {w.proc.returncode}")
            w.sample()
        if done():
            return time.monotonic() - start
        time.sleep(SAMPLE_SECONDS)
    return None


def wait_item_models(workers: Sequence[WorkerProcess], timeout: float,
                     quiet: float) -> float | None:
    """Sample every worker until none has published or applied an item model for
    ``quiet`` seconds (a few item-model periods): the owners' last publications
    after their catch-up, and the replicas' reading of them (while an owner lags,
    a replica's chunks re-apply this worker's pending entries: 0.1 s and more of
    the event loop each), are over. The seconds it took, None past ``timeout``."""
    return _sample_until(
        workers, timeout, lambda: all(unchanged_for(w.item_models) >= quiet for w in workers))


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

