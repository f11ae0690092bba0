"""``feedback-stream run`` (``make run``): the whole service on real data, on one laptop.

Starts the embedded broker, creates the topics, starts a worker process, replays
the demo stream (Online Retail purchases, clicks simulated from them, clothing
reviews with text) at ``--rate`` with a small share of deliberately malformed
events, prints what is happening every few seconds, and with ``--duration``
stops by itself, shuts everything down and prints one JSON summary line.
SIGINT (Ctrl-C) and SIGTERM do the same: every child stops, the temporary
folder is removed and the summary holds the true counts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from tools.local import (
    LocalStack,
    LocalStackError,
    last_log_line,
    local_stack,
    terminate_as_interrupt,
)


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


def summary(
    totals: dict[str, float], produced: int, seconds: float, **extra: Any
) -> dict[str, Any]:
    return {
        "events_produced": produced,
        **extra,
        "events_in": int(totals.get("feedback_events_total", 0)),
        "events_processed": int(totals.get("events:processed", 0)),
        "duplicates": int(totals.get("events:duplicate", 0)),
        "recommendations_out": int(totals.get("feedback_recommendations_emitted_total", 0)),
        "alerts_out": int(totals.get("feedback_alerts_emitted_total", 0)),
        "dead_letter": int(totals.get("feedback_deadletter_total", 0)),
        "seconds": round(seconds, 1),
    }


@dataclass
class Outcome:
    """What the replay did, kept up to date so an interruption still reports it."""

    produced: int = 0
    # How the replay ended: "duration", "end_of_data", "SIGINT" or "SIGTERM".
    stopped: str = ""


def run(args: argparse.Namespace) -> int:
    """Run the stack and the replay; SIGINT and SIGTERM stop it with the same summary.

    The summary's ``events_produced`` counts the events the broker acknowledged
    and the rest is the worker's last scrape, after a bounded wait for the
    worker to read what was produced.
    """
    from tools.datasets import check_available

    # Before anything starts: a wrong --data-dir is one line, not a dead stack.
    check_available(args.dataset, args.data_dir)
    log = sys.stderr
    started = time.monotonic()
    outcome = Outcome()
    totals: dict[str, float] = {}
    extra: dict[str, Any] = {}
    with terminate_as_interrupt():
        try:
            with local_stack(
                args.state_dir or None, broker_port=args.broker_port, web_port=args.web_port
            ) as stack:
                web_url = stack.settings.web_url
                print(
                    f"worker up: metrics {stack.metrics_url}, profiles {web_url}/users/<user_id>"
                    " (Ctrl-C to stop)",
                    file=log, flush=True,
                )
                try:
                    asyncio.run(_replay_and_watch(args, stack, outcome))
                except KeyboardInterrupt:
                    outcome.stopped = outcome.stopped or "SIGINT"
                # The final counts, before the worker and the broker stop.
                with contextlib.suppress(OSError):
                    totals = scrape(stack.metrics_url)
                if outcome.stopped.startswith("SIG"):
                    print(f"{outcome.stopped}: stopping the worker and the broker",
                          file=log, flush=True)
        except KeyboardInterrupt:  # a signal during start-up or a second one at the end
            outcome.stopped = outcome.stopped or "SIGINT"
    extra["stopped"] = outcome.stopped
    result = summary(totals, outcome.produced, time.monotonic() - started, **extra)
    print(orjson.dumps(result).decode(), flush=True)
    return 0


async def _replay_and_watch(args: argparse.Namespace, stack: LocalStack, outcome: Outcome) -> None:
    from tools.produce import Producer, dataset_events

    settings, metrics_url, worker_proc = stack.settings, stack.metrics_url, stack.worker
    producer = Producer(settings, rate=args.rate, progress=False, bad_rate=args.bad_rate)
    events = dataset_events(args.dataset, args.data_dir, None)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(signum: signal.Signals) -> None:
        outcome.stopped = outcome.stopped or signum.name
        producer.stop.set()
        stop.set()

    # Inside the loop a signal only sets a flag: the replay flushes what it sent
    # and the counts stay true (a KeyboardInterrupt here would cancel the tasks).
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        loop.add_signal_handler(sig, on_signal, sig)
    task = asyncio.create_task(producer.send_events(events))
    try:
        deadline = loop.time() + args.duration if args.duration else None
        last_in, begin = 0, loop.time()
        last_t = begin
        while not task.done():
            wait = min(5.0, max(0.1, deadline - loop.time())) if deadline else 5.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
            if stop.is_set():
                break
            if worker_proc.poll() is not None:
                producer.stop.set()
                await task
                reason = last_log_line(stack.state_dir / "worker.log")
                raise LocalStackError(
                    f"worker exited with code {worker_proc.returncode}"
                    f"{': ' + reason if reason else ''} (logs in {stack.state_dir})"
                )
            now = loop.time()
            with contextlib.suppress(OSError):
                totals = await loop.run_in_executor(None, scrape, metrics_url)
                s = summary(totals, producer.stats.sent, 0)
                rate = (s["events_in"] - last_in) / max(now - last_t, 1e-9)
                print(
                    f"[{now - begin:5.0f} s] "
                    f"produced {producer.stats.sent:,} | in {s['events_in']:,} ({rate:,.0f}/s) | "
                    f"recommendations {s['recommendations_out']:,} | alerts {s['alerts_out']:,} | "
                    f"dead-lettered {s['dead_letter']:,}",
                    file=sys.stderr, flush=True,
                )
                last_in, last_t = s["events_in"], now
            if deadline and now >= deadline:
                outcome.stopped = "duration"
                producer.stop.set()
                break
        # The producer stops at its next event and waits for the acknowledgements.
        await task
        outcome.produced = producer.stats.sent
        outcome.stopped = outcome.stopped or "end_of_data"
        # Let the worker drain what was already produced (bounded; shorter when
        # stopped by a signal) before the final count.
        drain_until = loop.time() + (3.0 if stop.is_set() else 15.0)
        while loop.time() < drain_until:
            with contextlib.suppress(OSError):
                totals = await loop.run_in_executor(None, scrape, metrics_url)
                if totals.get("feedback_events_total", 0) >= producer.stats.sent:
                    break
            await asyncio.sleep(0.5)
    finally:
        outcome.produced = producer.stats.sent
        for sig, handler in previous.items():
            loop.remove_signal_handler(sig)
            signal.signal(sig, handler)
