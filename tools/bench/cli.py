"""The ``feedback-stream bench`` command line: the arguments and the run of every phase."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from tools.bench.phases import (
    Bench,
    ceilings,
    checkpoints,
    latency,
    memory_bound,
    memory_users,
    peak_memory,
    throughput,
)
from tools.bench.processes import faust_env, log
from tools.bench.references import REFERENCES
from tools.bench.report import add_ratios, format_report
from tools.bench.workload import load_events


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every phase in order, on one broker (embedded unless ``--bootstrap-servers``)."""
    n = args.events
    state = Path(args.state_dir or tempfile.mkdtemp(prefix="feedback-bench-"))
    state.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "events": n,
        "partitions": args.partitions,
        "workers": args.workers,
        "dataset": args.dataset,
        "seed": args.seed,
    }
    if args.faust_setting:
        report["faust_settings"] = dict(args.faust_setting)
    log(f"loading {2 * n:,} events from the {args.dataset} replay")
    events = load_events(args.dataset, args.data_dir, 2 * n)
    with contextlib.ExitStack() as stack:
        if args.bootstrap_servers:
            bootstrap = args.bootstrap_servers
        else:
            from tools import broker

            port = broker.free_port()
            proc = broker.start(port, log_path=state / "broker.log")
            stack.callback(broker.stop, proc)
            bootstrap = f"127.0.0.1:{port}"
            log(f"embedded broker on {bootstrap}")
        run_id = f"b{os.getpid()}{int(time.time()) % 100000}"
        b = Bench(args, state, bootstrap, run_id, events, report, stack)
        ceilings(b)
        if not args.workers:
            report["state_dir"] = str(state)
            return add_ratios(report)
        throughput(b)
        latency(b)
        peak_memory(b)
        memory_users(b)
        memory_bound(b)
        checkpoints(b)
        report["state_dir"] = str(state)
    return add_ratios(report)


def _env_pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a rate above 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="feedback-stream bench",
        description="Worker throughput, latency and memory, with reference loops as ceilings.",
    )
    p.add_argument("--events", type=int, default=100_000, help="events per contestant")
    p.add_argument("--workers", type=int, default=1,
                   help="workers in one consumer group (0: the reference loops alone)")
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
    p.add_argument("--offered-rate", type=_positive,
                   help="offer this many events/s instead of --load-fraction of the measured "
                   "maximum (to compare two codes at one load)")
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
    p.add_argument(
        "--faust-setting", action="append", default=[], type=_env_pair, metavar="NAME=VALUE",
        help="a faust.App setting for the Faust reference loops and the workers alike, "
        "through Faust's environment variable for it, e.g. stream_buffer_maxsize=1024, "
        "broker_max_poll_records=500, Monitor=lean (repeatable)",
    )
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--timeout", type=float, default=300.0, help="deadline of every phase, s")
    p.add_argument("--state-dir", help="logs and worker state (default: a temporary folder)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "_reference":
        from tools.bench.references import reference_main

        return reference_main(argv[1:])
    args = build_parser().parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the broker and workers started here are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args.references = [r for r in args.references.split(",") if r]
    unknown = set(args.references) - set(REFERENCES)
    if unknown:
        print(f"unknown reference loop(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    try:
        faust_env(args.faust_setting)
    except ValueError as exc:
        print(f"--faust-setting: {exc}", file=sys.stderr)
        return 2
    if args.events < 100 or args.workers < 0:
        print("need --events >= 100 and --workers >= 0", file=sys.stderr)
        return 2
    report = run(args)
    if args.json:
        print(orjson.dumps(report).decode(), flush=True)
    else:
        print(format_report(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

