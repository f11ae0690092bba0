"""Fixtures for tests against a real Kafka-compatible broker (embedded Tansu).

Each test gets its own topic names and consumer group, so tests sharing the
session's broker cannot see each other's events.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from stream.kafka import client_kwargs, create_topics, producer
from stream.settings import Settings
from tools import broker as embedded

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address ``127.0.0.1:PORT`` of a Tansu broker started for the session."""
    port = embedded.free_port()
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    proc = embedded.start(port, log_path=log)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        embedded.stop(proc)


def isolated_settings(bootstrap: str, state_dir: Path, **overrides: Any) -> Settings:
    tag = uuid.uuid4().hex[:8]
    values: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "app_id": f"fs-test-{tag}",
        "state_dir": str(state_dir),
        "web_port": embedded.free_port(),
        "topic_clicks": f"t{tag}.clicks",
        "topic_purchases": f"t{tag}.purchases",
        "topic_reviews": f"t{tag}.reviews",
        "topic_recommendations": f"t{tag}.recommendations",
        "topic_alerts": f"t{tag}.alerts",
        "topic_deadletter": f"t{tag}.deadletter",
        "topic_item_updates": f"t{tag}.item-updates",
        "topic_item_model": f"t{tag}.item-model",
        "topic_globals": f"t{tag}.globals",
        "topic_erasure": f"t{tag}.erasure",
        "topic_erasure_done": f"t{tag}.erasure.done",
        "checkpoint_interval_seconds": 2.0,
        "tick_interval_seconds": 1.0,
        # The tests read every profile back as fast as they can: no rate limit
        # unless a test sets one (tests/integration/test_erasure.py does).
        "rate_limit_per_second": 1e6,
        "rate_limit_burst": 1_000_000,
    }
    # FEEDBACK_RECOVERY_GUARDS=0 runs every test worker on Faust's own recovery:
    # the tests of stream/faust/ then fail (they build the cases it guards).
    # FEEDBACK_TRACE_OFFSETS=1 logs every test worker's offset trace, for loss hunts.
    env = {k: os.environ[k] for k in ("FEEDBACK_RECOVERY_GUARDS", "FEEDBACK_TRACE_OFFSETS")
           if k in os.environ}
    values.update(overrides)
    return Settings.from_env(env, **values)


def settings_env(settings: Settings) -> dict[str, str]:
    return {f"FEEDBACK_{k.upper()}": str(v) for k, v in vars(settings).items()}


@dataclass
class Worker:
    settings: Settings
    process: subprocess.Popen[bytes]
    log_path: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def web_url(self) -> str:
        return self.settings.web_url

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.web_url + path, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"worker exited ({self.process.returncode}); log:\n{self.excerpt()}"
                )
            try:
                if self.get("/readyz", timeout=1)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready in {timeout} s; log:\n{self.excerpt()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def excerpt(self) -> str:
        """The log's first error with what follows it (its traceback), then its
        end: what a failed run needs, since CI keeps no worker log."""
        text = self.log()
        first = min((i for i in (text.find("] [ERROR] "), text.find("] [CRITICAL] "),
                                 text.find("Traceback (most recent call last)")) if i >= 0),
                    default=-1)
        head = "" if first < 0 or first >= len(text) - 3000 else (
            text[text.rfind("\n", 0, first) + 1:][:3000] + "\n[...]\n")
        return head + text[-3000:]

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        _, body = self.get("/metrics")
        total = 0.0
        for line in body.decode().splitlines():
            if line.startswith("#") or not line.startswith(name):
                continue
            head, _, value = line.rpartition(" ")
            metric, _, label_text = head.partition("{")
            if metric != name:
                continue
            if all(f'{k}="{v}"' in label_text for k, v in labels.items()):
                total += float(value)
        return total


@pytest.fixture
def worker_factory(broker: str, tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """Start ``feedback-stream worker`` subprocesses; all are stopped at teardown."""
    workers: list[Worker] = []

    def start(settings: Settings | None = None, wait: bool = True, **overrides: Any) -> Worker:
        s = settings or isolated_settings(broker, tmp_path / "state", **overrides)
        log_path = tmp_path / f"worker-{len(workers)}-{s.web_port}.log"
        env = {**os.environ, **settings_env(s)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "tools.cli", "worker"],
            cwd=REPO, env=env, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
        )
        w = Worker(s, proc, log_path)
        workers.append(w)
        if wait:
            w.wait_ready()
        return w

    yield start
    for w in workers:
        w.stop(signal.SIGKILL if w.process.poll() is None else signal.SIGTERM, timeout=10)


def produce_events(
    settings: Settings,
    records: Iterable[tuple[str, bytes | None, bytes]],
    timestamps_ms: Iterable[int] | None = None,
    sent: list[Any] | None = None,
) -> int:
    """Send (topic, key, value) records and wait for every acknowledgement.

    ``timestamps_ms`` gives each record its Kafka timestamp; ``sent`` receives each
    record's metadata (topic, partition, offset, timestamp), in order.
    """

    async def send() -> int:
        prod = producer(settings, linger_ms=5)
        await prod.start()
        n = 0
        stamps = iter(timestamps_ms) if timestamps_ms is not None else None
        try:
            futures = []
            for topic, key, value in records:
                ts = next(stamps) if stamps is not None else None
                futures.append(await prod.send(topic, value, key=key, timestamp_ms=ts))
                n += 1
            metadata = await asyncio.gather(*futures)
            if sent is not None:
                sent.extend(metadata)
        finally:
            await prod.stop()
        return n

    return asyncio.run(send())


def event_records(
    settings: Settings, events: Iterable[dict[str, Any]]
) -> list[tuple[str, bytes | None, bytes]]:
    return [
        (settings.topic_of(e["type"]), str(e["user_id"]).encode(), orjson.dumps(e))
        for e in events
    ]


def consume(
    settings: Settings,
    topic: str,
    until: Callable[[list[Any]], bool],
    timeout: float = 60.0,
) -> list[Any]:
    """Read ``topic`` from the beginning until ``until(records)`` or the timeout."""

    async def read() -> list[Any]:
        consumer = AIOKafkaConsumer(
            topic, **client_kwargs(settings), auto_offset_reset="earliest",
            enable_auto_commit=False, group_id=None,
        )
        await consumer.start()
        records: list[Any] = []
        try:
            deadline = asyncio.get_running_loop().time() + timeout
            while asyncio.get_running_loop().time() < deadline and not until(records):
                batch = await consumer.getmany(timeout_ms=500)
                for msgs in batch.values():
                    records.extend(msgs)
        finally:
            await consumer.stop()
        return records

    return asyncio.run(read())


def ensure_topics(settings: Settings) -> None:
    asyncio.run(create_topics(settings))


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0, interval: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
