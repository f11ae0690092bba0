"""The ``feedback-stream simulate`` command line."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import orjson

from stream.settings import Settings
from tools.simulate.behaviour import Behaviour, Simulation
from tools.simulate.drivers import drive_broker, drive_in_process
from tools.simulate.metrics import Samples, subtract, wait_drained
from tools.simulate.population import Population
from tools.simulate.report import print_table, report

DEFAULT_VARIANTS = "blend,popularity,explore"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="feedback-stream simulate",
        description="Simulated MovieLens users react to the service's recommendations "
        "through the broker; prints per-variant CTR and conversion with 95 percent intervals.",
    )
    p.add_argument("--duration", type=float, default=120.0,
                   help="seconds of organic traffic (default 120; 0 = until --events)")
    p.add_argument("--events", type=int, default=0,
                   help="stop after this many organic events (default: no limit)")
    p.add_argument("--rate", type=float, default=150.0, help="organic events per second")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--bandit", action="store_true",
                   help="start the worker with FEEDBACK_BANDIT=1 and report best_variant_share")
    p.add_argument("--variants", default=DEFAULT_VARIANTS,
                   help=f"FEEDBACK_EXPERIMENT_VARIANTS of the started worker "
                        f"(default {DEFAULT_VARIANTS})")
    p.add_argument("--fatigue", type=int, default=3,
                   help="FEEDBACK_FATIGUE_IMPRESSIONS of the started worker (default 3; 0: off)")
    p.add_argument("--fatigue-strategies", default=Settings.fatigue_strategies,
                   help="FEEDBACK_FATIGUE_STRATEGIES of the started worker (default "
                        f"{Settings.fatigue_strategies}: not the popularity control)")
    p.add_argument("--users", type=int, help="simulate only the first N MovieLens users")
    p.add_argument("--id-share", type=float, default=0.9,
                   help="share of clicks that carry their recommendation_id (default 0.9)")
    p.add_argument("--warmup-cap", type=int, default=30,
                   help="past reviews replayed per user before measuring (default 30; 0: none)")
    p.add_argument("--intent-horizon", type=float, default=30.0,
                   help="scale a rated movie's appeal by how soon the user really watched it "
                        "(exp(-positions ahead / horizon)); default 30, 0 = off")
    p.add_argument("--data-dir", type=Path, help="datasets folder (default ../shared/data)")
    p.add_argument("--bootstrap-servers",
                   help="use this broker and its running worker instead of starting both")
    p.add_argument("--metrics-url", help="the running worker's /metrics (with --bootstrap-servers)")
    p.add_argument("--in-process", action="store_true",
                   help="no broker: feed a Processor directly (fast, for tuning)")
    p.add_argument("--drain", type=float, default=8.0,
                   help="after the organic traffic, wait until no recommendation came for "
                        "this many seconds (default 8)")
    p.add_argument("--state-dir", default="", help="worker state and logs (default: a temp dir)")
    p.add_argument("--run-id", help="prefix of the event ids (default: from seed and time)")
    p.add_argument("--workers", type=int, default=1,
                   help="workers in the consumer group, through the embedded broker "
                        "(partitions: a multiple of it, at least 4)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulation; ``0`` on success."""
    args = build_parser().parse_args(argv)
    if not args.duration and not args.events:
        print("simulate: give --duration or --events", file=sys.stderr)
        return 2
    if args.workers < 1 or (args.workers > 1 and (args.in_process or args.bootstrap_servers)):
        print("simulate: --workers must be >= 1, and above 1 only with the embedded broker",
              file=sys.stderr)
        return 2
    started = time.monotonic()
    run_id = args.run_id or f"s{args.seed}-{int(time.time()) % 1_000_000}"
    population = Population.from_movielens(args.data_dir, max_users=args.users)
    behaviour = Behaviour(
        id_share=args.id_share, warmup_cap=args.warmup_cap, intent_horizon=args.intent_horizon
    )
    sim = Simulation(population, behaviour, args.seed, run_id)
    config = {
        "seed": args.seed, "rate": args.rate, "duration": args.duration,
        "events_limit": args.events, "bandit": args.bandit, "variants": args.variants,
        "users": len(population.users), "items": len(population.items),
        "id_share": args.id_share, "run_id": run_id, "warmup_cap": args.warmup_cap,
        "intent_horizon": args.intent_horizon, "fatigue_impressions": args.fatigue,
        "fatigue_strategies": args.fatigue_strategies, "workers": args.workers,
    }
    env_overrides = {
        "FEEDBACK_EXPERIMENT_VARIANTS": args.variants,
        "FEEDBACK_BANDIT": "1" if args.bandit else "0",
        "FEEDBACK_BANDIT_SEED": str(args.seed),
        "FEEDBACK_FATIGUE_IMPRESSIONS": str(args.fatigue),
        "FEEDBACK_FATIGUE_STRATEGIES": args.fatigue_strategies,
    }
    samples: Samples | None
    if args.in_process:
        settings = Settings.from_env(
            {**os.environ, **env_overrides}, bootstrap_servers="127.0.0.1:1"
        )
        limit = args.events or int(args.duration * args.rate)
        warm, final = drive_in_process(sim, settings, limit)
        samples = subtract(final, warm)
        config["mode"] = "in-process"
    elif args.bootstrap_servers:
        settings = Settings.from_env(bootstrap_servers=args.bootstrap_servers)
        baseline = asyncio.run(drive_broker(
            sim, settings, args.rate, args.duration, args.events, args.drain, not args.json,
            args.metrics_url,
        ))
        samples = (
            subtract(wait_drained(args.metrics_url, 0), baseline) if args.metrics_url else None
        )
        config["mode"] = "external broker"
    else:
        samples = _run_embedded(args, sim, env_overrides)
        config["mode"] = "embedded broker"
    result = report(sim, samples, args.bandit, time.monotonic() - started, config)
    if args.json:
        print(orjson.dumps(result).decode(), flush=True)
    else:
        print_table(result)
    return 0


def _run_embedded(
    args: argparse.Namespace, sim: Simulation, env_overrides: dict[str, str]
) -> Samples:
    """Start the embedded broker and one worker, simulate through them, read the metrics."""
    from tools.local import local_stack

    with local_stack(
        args.state_dir, env_overrides, prefix="feedback-simulate-", quiet=args.json,
        workers=args.workers,
    ) as stack:
        url = stack.metrics_url
        try:
            baseline = asyncio.run(drive_broker(
                sim, stack.settings, args.rate, args.duration, args.events, args.drain,
                not args.json, url,
            ))
            return subtract(wait_drained(url, sim.produced), baseline)
        except OSError:
            # A dead worker's /metrics refuses the connection: say which worker
            # died, in one line (the command line's handler prints it).
            stack.check_workers()
            raise
