"""The events every contestant reads, and getting them into Kafka before a clock starts."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from stream.contract import format_timestamp
from stream.settings import Settings

if TYPE_CHECKING:
    from stream.records import InputMessage

Record = tuple[str, bytes, bytes]  # topic, key, value


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


def input_messages(
    events: Sequence[dict[str, Any]], settings: Settings, partitions: int
) -> list[InputMessage]:
    """``events`` as the records a worker's agent hands the processor, offset = position,
    partitioned by the user id (for the in-process probes, no broker)."""
    import zlib

    from stream.records import InputMessage

    return [
        InputMessage(
            settings.topic_of(e["type"]),
            zlib.crc32(str(e["user_id"]).encode()) % partitions,
            i,
            str(e["user_id"]).encode(),
            orjson.dumps(e),
        )
        for i, e in enumerate(events)
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


def bench_settings(bootstrap: str, prefix: str, partitions: int, **extra: Any) -> Settings:
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
        topic_item_updates=f"{prefix}item-updates",
        topic_item_model=f"{prefix}item-model",
        topic_globals=f"{prefix}globals",
        **extra,
    )


async def produce(
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
        return await produce(settings, records)

    return asyncio.run(go())

