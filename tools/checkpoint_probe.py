"""``python -m tools.checkpoint_probe``: what a model checkpoint costs the event loop.

No broker and no Faust: the worker's :class:`~stream.processor.Processor` on an
in-memory profile store learns ``--events`` demo events and ``--users`` new
users (one event each), then handles the next demo events in batches of
``--batch``, timing each batch (wall clock), in four rounds of ``--rounds-events``:

* ``idle``: no checkpoint;
* ``fork``: the worker's checkpoint (:func:`stream.checkpoint._fork_snapshot`:
  a forked child at nice 19 pickles the models and writes the file) started at
  the round's first batch, with the worker's collections free to walk the
  whole heap while the child lives;
* ``fork+freeze``: the same with the heap frozen (``gc.freeze``) while the
  child lives, as the worker does;
* ``idle`` again.

It prints, per round, the batch times (p50, p99, max; wall clock and CPU time)
while a child was alive, the minor page faults per batch, the fork's own wall
and CPU time, and the child's duration. Every batch's time includes everything the batch
does: learning, ranking, the forked child's competition for the cores, and the
copy-on-write faults the parent takes on the pages it writes after the fork.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from stream.processor import DictStore, InputMessage, Processor
from stream.settings import Settings

WALL = 1.9e9  # the injected wall clock: later than any dataset event


def _messages(settings: Settings, events: Sequence[dict[str, Any]]) -> list[InputMessage]:
    return [
        InputMessage(
            settings.topic_of(e["type"]), 0, i, str(e["user_id"]).encode(), orjson.dumps(e), WALL
        )
        for i, e in enumerate(events)
    ]


def _minor_faults() -> int:
    """This process's minor page faults so far (copy-on-write ones among them)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _round(
    proc: Processor, events: Sequence[dict[str, Any]], batch: int, mode: str, folder: Path
) -> dict[str, Any]:
    from stream import checkpoint

    models = checkpoint.Models(proc.engine)
    pid = None
    started = time.perf_counter()
    child_s = None
    fork: dict[str, Any] = {"fork_ms": None, "fork_cpu_ms": None}
    if mode != "idle":
        cpu, faults = time.thread_time(), _minor_faults()
        pid = checkpoint._fork_snapshot(models, folder / f"{mode}.pkl")
        fork = {"fork_ms": round(1000 * (time.perf_counter() - started), 1),
                "fork_cpu_ms": round(1000 * (time.thread_time() - cpu), 1),
                "fork_minor_faults": _minor_faults() - faults}
        if mode == "fork":
            gc.unfreeze()  # the walk the freeze spares the worker
    during: list[float] = []
    after: list[float] = []
    cpu_ms: list[float] = []
    faults0 = _minor_faults()
    for i in range(0, len(events), batch):
        msgs = _messages(proc.settings, events[i : i + batch])
        t, c = time.perf_counter(), time.thread_time()
        proc.handle(msgs)
        (during if pid is not None else after).append(time.perf_counter() - t)
        if pid is not None or mode == "idle":
            cpu_ms.append(1000 * (time.thread_time() - c))
        if pid is not None and os.waitpid(pid, os.WNOHANG)[0] == pid:
            child_s = time.perf_counter() - started
            pid = None
    if pid is not None:
        os.waitpid(pid, 0)
        child_s = time.perf_counter() - started
    gc.unfreeze()
    times = np.array(during if mode != "idle" else after) * 1000.0
    cpu_arr = np.array(cpu_ms)
    return {
        "round": mode,
        "batches": int(times.size),
        "batch_ms_p50": round(float(np.percentile(times, 50)), 1) if times.size else None,
        "batch_ms_p99": round(float(np.percentile(times, 99)), 1) if times.size else None,
        "batch_ms_max": round(float(times.max()), 1) if times.size else None,
        # CPU time of the batches timed: copy-on-write faults are the worker's own
        # (kernel) time, which the machine's other jobs do not inflate as they do
        # the wall clock.
        "batch_cpu_ms_p50": round(float(np.percentile(cpu_arr, 50)), 2) if cpu_arr.size else None,
        "batch_cpu_ms_p99": round(float(np.percentile(cpu_arr, 99)), 2) if cpu_arr.size else None,
        "minor_faults_per_batch": (
            round((_minor_faults() - faults0) / max(1, len(during) + len(after)), 1)),
        **fork,
        "child_seconds": round(child_s, 2) if child_s is not None else None,
        "checkpoint_mb": (
            round((folder / f"{mode}.pkl").stat().st_size / 1e6, 1) if mode != "idle" else None
        ),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from prometheus_client import CollectorRegistry

    from models.engine import FeedbackEngine
    from stream.contract import parse_timestamp
    from stream.metrics import Metrics
    from tools.bench.workload import distinct_users, load_events

    settings = Settings.from_env({})
    proc = Processor(
        settings, FeedbackEngine(), DictStore(), Metrics(CollectorRegistry()), clock=lambda: WALL
    )
    total = args.events + 4 * args.round_events
    events = load_events(args.dataset, args.data_dir, total)
    if len(events) < total:
        raise SystemExit(
            f"checkpoint_probe: {args.dataset} has {len(events)} events, {total} needed"
        )
    warm, rest = events[: args.events], events[args.events :]
    for i in range(0, len(warm), 500):
        proc.handle(_messages(settings, warm[i : i + 500]))
    latest = max(parse_timestamp(e["timestamp"]) for e in warm)
    users = list(distinct_users(warm, args.users, args.seed, at=latest, prefix="c"))
    for i in range(0, len(users), 500):
        proc.handle(_messages(settings, users[i : i + 500]))
    del users
    gc.collect()
    out: dict[str, Any] = {"users": len(proc.engine.profiles), "rounds": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r, mode in enumerate(("idle", "fork", "fork+freeze", "idle")):
            chunk = rest[r * args.round_events : (r + 1) * args.round_events]
            out["rounds"].append(_round(proc, chunk, args.batch, mode, Path(tmp)))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=20_000, help="demo events learnt first")
    p.add_argument("--users", type=int, default=100_000, help="new users, one event each")
    p.add_argument("--round-events", type=int, default=20_000, help="demo events per round")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--dataset", default="demo")
    p.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    result = run(args)
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
