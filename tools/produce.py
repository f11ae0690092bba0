"""Replay events into the input topics: a contract JSONL file or a shared dataset.

Each event goes to the topic of its type with key = user_id, so one partition
owns one user. ``--rate`` paces the replay; a progress line goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from stream.settings import Settings
from tools import datasets
from tools.datasets import DATASETS


@dataclass
class ProduceStats:
    sent: int = 0
    bad_injected: int = 0
    unroutable: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "bad_injected": self.bad_injected,
            "unroutable": self.unroutable,
            "seconds": round(self.seconds, 3),
        }


def dataset_events(name: str, data_dir: Path | None, limit: int | None) -> Iterator[dict[str, Any]]:
    return itertools.islice(datasets.events(name, data_dir), limit)


def jsonl_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.strip()
            if line:
                yield lineno, line


# Malformed variants of a real event, one per dead-letter reason the worker knows.
def _corrupt(event: dict[str, Any], rng: random.Random) -> tuple[bytes, bytes | None]:
    key = str(event.get("user_id", "")).encode()
    choice = rng.randrange(6)
    if choice == 0:
        return b"\xff\xfe not json", key
    if choice == 1:
        return orjson.dumps({k: v for k, v in event.items() if k != "item_id"}), key
    if choice == 2:
        return orjson.dumps({**event, "timestamp": "yesterday"}), key
    if choice == 3:
        bad = {**event, "price": -5.0} if event.get("type") == "purchase" else {
            **event, "rating": 11}
        return orjson.dumps(bad), key
    if choice == 4:
        return orjson.dumps([event]), key
    return orjson.dumps({**event, "event_id": 12345}), key


class Producer:
    """Sends routed events with pacing, progress and optional bad-event injection."""

    def __init__(
        self,
        settings: Settings,
        rate: float | None = None,
        progress: bool = True,
        bad_rate: float = 0.0,
        seed: int = 7,
    ) -> None:
        self.settings = settings
        self.rate = rate
        self.progress = progress
        self.bad_rate = bad_rate
        self.rng = random.Random(seed)
        self.stats = ProduceStats()
        self.stop = asyncio.Event()

    async def send_events(self, events: Iterable[dict[str, Any]]) -> ProduceStats:
        return await self._send(
            (self._route(e) for e in events),
        )

    async def send_jsonl(self, path: Path) -> ProduceStats:
        def routed() -> Iterator[tuple[str, bytes | None, bytes] | None]:
            for lineno, line in jsonl_lines(path):
                try:
                    obj = orjson.loads(line)
                    topic = self.settings.topic_of(obj["type"])
                    key = str(obj["user_id"]).encode()
                except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
                    print(
                        f"{path}:{lineno}: cannot route this line (needs a JSON object with "
                        f"'type' and 'user_id'): {exc!r}",
                        file=sys.stderr,
                    )
                    self.stats.unroutable += 1
                    yield None
                    continue
                # The line's bytes go out untouched: the worker validates them.
                yield topic, key, line

        return await self._send(routed())

    def _route(self, event: dict[str, Any]) -> tuple[str, bytes | None, bytes]:
        topic = self.settings.topic_of(event["type"])
        if self.bad_rate and self.rng.random() < self.bad_rate:
            self.stats.bad_injected += 1
            value, key = _corrupt(event, self.rng)
            return topic, key, value
        return topic, str(event["user_id"]).encode(), orjson.dumps(event)

    async def _send(
        self, records: Iterable[tuple[str, bytes | None, bytes] | None]
    ) -> ProduceStats:
        from stream.kafka import producer

        prod = producer(self.settings, linger_ms=5, max_batch_size=256 * 1024)
        start = time.monotonic()
        last_report = start
        pending: list[asyncio.Future[Any]] = []
        try:
            # Inside the try: a broker that cannot be reached still closes the client.
            await prod.start()
            for record in records:
                if self.stop.is_set():
                    break
                if record is None:
                    continue
                topic, key, value = record
                pending.append(await prod.send(topic, value, key=key))
                self.stats.sent += 1
                if len(pending) >= 1000:
                    await asyncio.gather(*pending)
                    pending.clear()
                if self.rate:
                    ahead = self.stats.sent / self.rate - (time.monotonic() - start)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
                now = time.monotonic()
                if self.progress and now - last_report >= 1.0:
                    last_report = now
                    self._report(now - start)
            await asyncio.gather(*pending)
            await prod.flush()
        finally:
            await prod.stop()
        self.stats.seconds = time.monotonic() - start
        if self.progress:
            self._report(self.stats.seconds, final=True)
        return self.stats

    def _report(self, elapsed: float, final: bool = False) -> None:
        rate = self.stats.sent / elapsed if elapsed else 0.0
        end = "\n" if final or not sys.stderr.isatty() else "\r"
        print(
            f"produced {self.stats.sent:,} events in {elapsed:.1f} s ({rate:,.0f}/s), "
            f"{self.stats.bad_injected} malformed on purpose",
            end=end,
            file=sys.stderr,
            flush=True,
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--file", type=Path, help="contract JSONL file, one event per line")
    source.add_argument("--dataset", choices=DATASETS, help="replay one of the shared datasets")
    parser.add_argument("--data-dir", type=Path, help="datasets folder (default ../shared/data)")
    parser.add_argument("--limit", type=int, help="stop after this many events")
    parser.add_argument(
        "--rate", type=float, help="events per second (default: as fast as possible)"
    )
    parser.add_argument(
        "--bad-rate", type=float, default=0.0,
        help="fraction of dataset events sent malformed on purpose (exercises the dead letters)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress line")


def run(args: argparse.Namespace, settings: Settings) -> int:
    # Checked before connecting: a wrong path is one line, not a broken replay.
    if args.file is not None:
        if not args.file.exists():
            raise FileNotFoundError(f"--file {args.file}: no such file")
        if not args.file.is_file():
            raise FileNotFoundError(f"--file {args.file}: not a file")
    else:
        from tools.datasets import check_available

        check_available(args.dataset, args.data_dir)
    producer = Producer(settings, rate=args.rate, progress=not args.quiet, bad_rate=args.bad_rate)
    if args.file:
        stats = asyncio.run(producer.send_jsonl(args.file))
    else:
        stats = asyncio.run(
            producer.send_events(dataset_events(args.dataset, args.data_dir, args.limit))
        )
    print(orjson.dumps(stats.as_dict()).decode())
    return 1 if stats.unroutable else 0
