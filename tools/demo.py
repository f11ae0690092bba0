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
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from stream import broker
from stream.settings import Settings


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


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with code {proc.returncode} during start-up")
        with contextlib.suppress(OSError):
            urllib.request.urlopen(url, timeout=1).close()
            return
        time.sleep(0.25)
    raise TimeoutError(f"worker did not answer {url} within {timeout:.0f} s")


def run(args: argparse.Namespace) -> int:
    broker_port = args.broker_port or broker.free_port()
    web_port = args.web_port or broker.free_port()
    state_dir = args.state_dir or tempfile.mkdtemp(prefix="feedback-stream-")
    bootstrap = f"127.0.0.1:{broker_port}"
    settings = Settings.from_env(
        bootstrap_servers=bootstrap, web_port=web_port, web_host="127.0.0.1", state_dir=state_dir
    )
    log = sys.stderr
    print(f"starting the embedded broker on {bootstrap}", file=log, flush=True)
    broker_proc = broker.start(broker_port, log_path=Path(state_dir) / "broker.log")
    worker_proc: subprocess.Popen[bytes] | None = None
    started = time.monotonic()
    produced = 0
    totals: dict[str, float] = {}
    try:
        env = {
            **os.environ,
            "FEEDBACK_BOOTSTRAP_SERVERS": bootstrap,
            "FEEDBACK_WEB_PORT": str(web_port),
            "FEEDBACK_WEB_HOST": "127.0.0.1",
            "FEEDBACK_STATE_DIR": state_dir,
        }
        worker_log = open(Path(state_dir) / "worker.log", "ab")  # noqa: SIM115
        worker_proc = subprocess.Popen(
            [sys.executable, "-m", "tools.cli", "worker"],
            env=env, stdout=worker_log, stderr=subprocess.STDOUT,
        )
        metrics_url = f"{settings.web_url}/metrics"
        wait_http(f"{settings.web_url}/healthz", worker_proc)
        print(
            f"worker up: metrics {metrics_url}, profiles {settings.web_url}/users/<user_id>, "
            f"logs in {state_dir}",
            file=log, flush=True,
        )
        produced = asyncio.run(_replay_and_watch(args, settings, metrics_url, worker_proc))
        totals = scrape(metrics_url)
    except KeyboardInterrupt:
        print("interrupted", file=log)
    finally:
        if worker_proc is not None and worker_proc.poll() is None:
            with contextlib.suppress(Exception):
                totals = scrape(f"{settings.web_url}/metrics") or totals
            worker_proc.send_signal(signal.SIGTERM)
            try:
                worker_proc.wait(30)
            except subprocess.TimeoutExpired:
                worker_proc.kill()
        broker.stop(broker_proc)
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
