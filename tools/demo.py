"""``feedback-stream run`` (``make run``): the whole service on real data, on one laptop.

Starts the embedded broker, creates the topics, starts a worker process, replays
the demo stream (Online Retail purchases, clicks simulated from them, clothing
reviews with text) at ``--rate`` with a small share of deliberately malformed
events, prints what is happening every few seconds, and with ``--duration``
stops by itself, shuts everything down and prints one JSON summary line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from stream.settings import Settings
from tools.local import local_stack


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--duration", type=float, default=0.0,
        help="stop after this many seconds (default: run until Ctrl-C)",
    )
    parser.add_argument("--rate", type=float, default=1000.0, help="events per second replayed")
    parser.add_argument("--bad-rate", type=float, default=0.005,
                        help="share of events sent malformed on purpose")
    parser.add_argument("--dataset", default="demo", help="dataset to replay (default demo)")
    parser.add_argument("--data-dir", type=Path, help="datasets folder (default ../shared/data)")
    parser.add_argument("--broker-port", type=int, default=0, help="default: a free port")
    parser.add_argument("--web-port", type=int, default=0, help="default: a free port")
    parser.add_argument("--state-dir", default="", help="default: a temporary folder")


def scrape(url: str) -> dict[str, float]:
    """Sum every sample of the worker's /metrics by metric name and labels we use."""
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        try:
            v = float(value)
        except ValueError:
            continue
        totals[name] = totals.get(name, 0.0) + v
        if name == "feedback_events_total":
            outcome = name_labels.split('outcome="', 1)[1].split('"', 1)[0]
            totals[f"events:{outcome}"] = totals.get(f"events:{outcome}", 0.0) + v
    return totals


def summary(totals: dict[str, float], produced: int, seconds: float) -> dict[str, Any]:
    return {
        "events_produced": produced,
        "events_in": int(totals.get("feedback_events_total", 0)),
        "events_processed": int(totals.get("events:processed", 0)),
        "duplicates": int(totals.get("events:duplicate", 0)),
        "recommendations_out": int(totals.get("feedback_recommendations_emitted_total", 0)),
        "alerts_out": int(totals.get("feedback_alerts_emitted_total", 0)),
        "dead_letter": int(totals.get("feedback_deadletter_total", 0)),
        "seconds": round(seconds, 1),
    }


def run(args: argparse.Namespace) -> int:
    log = sys.stderr
    started = time.monotonic()
    produced = 0
    totals: dict[str, float] = {}
    with local_stack(
        args.state_dir or None, broker_port=args.broker_port, web_port=args.web_port
    ) as stack:
        web_url = stack.settings.web_url
        print(
            f"worker up: metrics {stack.metrics_url}, profiles {web_url}/users/<user_id>",
            file=log, flush=True,
        )
        try:
            produced = asyncio.run(
                _replay_and_watch(args, stack.settings, stack.metrics_url, stack.worker)
            )
        except KeyboardInterrupt:
            print("interrupted", file=log)
        # The final count, before the worker is stopped.
        with contextlib.suppress(OSError):
            totals = scrape(stack.metrics_url)
    print(orjson.dumps(summary(totals, produced, time.monotonic() - started)).decode(), flush=True)
    return 0


async def _replay_and_watch(
    args: argparse.Namespace,
    settings: Settings,
    metrics_url: str,
    worker_proc: subprocess.Popen[bytes],
) -> int:
    from tools.produce import Producer, dataset_events

    producer = Producer(settings, rate=args.rate, progress=False, bad_rate=args.bad_rate)
    events = dataset_events(args.dataset, args.data_dir, None)
    task = asyncio.create_task(producer.send_events(events))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.duration if args.duration else None
    last: dict[str, float] = {}
    begin = last_t = loop.time()
    while not task.done():
        await asyncio.sleep(min(5.0, max(0.1, (deadline - loop.time()))) if deadline else 5.0)
        if worker_proc.poll() is not None:
            producer.stop.set()
            raise RuntimeError(f"worker exited with code {worker_proc.returncode}")
        now = loop.time()
        with contextlib.suppress(OSError):
            totals = await loop.run_in_executor(None, scrape, metrics_url)
            s = summary(totals, producer.stats.sent, 0)
            rate = (s["events_in"] - last.get("events_in", 0)) / max(now - last_t, 1e-9)
            print(
                f"[{now - begin:5.0f} s] "
                f"produced {producer.stats.sent:,} | in {s['events_in']:,} ({rate:,.0f}/s) | "
                f"recommendations {s['recommendations_out']:,} | alerts {s['alerts_out']:,} | "
                f"dead-lettered {s['dead_letter']:,}",
                file=sys.stderr, flush=True,
            )
            last, last_t = {"events_in": s["events_in"]}, now
        if deadline and now >= deadline:
            producer.stop.set()
            break
    await task
    # Let the worker drain what was already produced (bounded) before the final count.
    drain_until = loop.time() + 15.0
    while loop.time() < drain_until:
        totals = await loop.run_in_executor(None, scrape, metrics_url)
        if totals.get("feedback_events_total", 0) >= producer.stats.sent:
            break
        await asyncio.sleep(0.5)
    return producer.stats.sent
