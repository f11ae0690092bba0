"""Owed (debounced) recommendations on a real broker: their trigger records are
not committed while owed, and a worker killed before publishing them leaves
them to its successor, which publishes every one of them.

The first worker debounces for 60 s, so nothing it owes is published before
the SIGKILL; every wait below is on a condition, with a deadline.
"""

from __future__ import annotations

import asyncio
import signal

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from stream.kafka import client_kwargs
from stream.settings import Settings
from tests.integration.conftest import consume, event_records, produce_events, wait_for
from tests.integration.reliability_helpers import wait_metric

pytestmark = pytest.mark.integration

TS = "2024-03-01T10:00:00Z"


def committed(settings: Settings, topic: str) -> int | None:
    """The consumer group's committed offset of ``topic``[0]."""

    async def read() -> int | None:
        consumer = AIOKafkaConsumer(
            **client_kwargs(settings), group_id=settings.app_id, enable_auto_commit=False
        )
        await consumer.start()
        try:
            return await consumer.committed(TopicPartition(topic, 0))
        finally:
            await consumer.stop()

    return asyncio.run(read())


def purchase(eid: str, user: str, item: str) -> dict:
    return {"type": "purchase", "event_id": eid, "user_id": user, "item_id": item,
            "timestamp": TS, "quantity": 1, "price": 2.5}


def click(eid: str, user: str, item: str) -> dict:
    return {"type": "click", "event_id": eid, "user_id": user, "item_id": item,
            "timestamp": TS}


def test_owed_recommendations_hold_their_commit_and_survive_a_crash(worker_factory) -> None:
    # A batch waits up to 2 s: round 2's two records, produced together, must come
    # in one batch (a batch without a trigger of zoe would publish her held list).
    # Held across batches even where a batch drains the partition (the default
    # publishes those at the batch's end: test_a_drained_partitions_trigger_...).
    first = worker_factory(
        partitions=1, recommend_debounce_seconds=60, recommend_max_delay_seconds=60,
        batch_max_wait_seconds=2.0, recommend_publish_drained=False,
    )
    s = first.settings
    # Round 1 (offsets 0-6): every purchase is owed a recommendation.
    round1 = [purchase(f"p{i}", f"w{i}", "abc"[i % 3]) for i in range(6)]
    round1.append(purchase("zoe-1", "zoe", "a"))
    produce_events(s, event_records(s, round1))
    assert wait_metric(first, "feedback_events_total", 7, 60, outcome="processed") == 7
    # Round 2, one batch: zoe's basket goes on (offset 7, the same invoice: it
    # takes over zoe-1's obligation), then a record that owes nothing (8).
    undecodable = (s.topic_purchases, b"zoe", b"not json")
    produce_events(s, [*event_records(s, [purchase("zoe-2", "zoe", "b")]), undecodable])
    assert wait_metric(first, "feedback_deadletter_total", 1, 60) == 1
    # The batch published the w users' recommendations (their triggers had
    # stopped) and released zoe-1: committed up to zoe-2, held there, though
    # offset 8 was processed.
    assert wait_for(lambda: committed(s, s.topic_purchases) == 7, timeout=60)
    checkpoints = first.metric("feedback_model_checkpoints_total")
    wait_metric(first, "feedback_model_checkpoints_total", checkpoints + 1, 30)
    assert first.metric("feedback_recommendations_held") == 1
    assert committed(s, s.topic_purchases) == 7
    first.stop(signal.SIGKILL)
    before = {
        orjson.loads(m.value)["trigger_event_id"]
        for m in consume(s, s.topic_recommendations, until=lambda r: len(r) >= 6, timeout=30)
    }
    assert before == {f"p{i}" for i in range(6)}

    # The successor reads offsets 7 and 8 again: zoe-2, a duplicate, is owed
    # again (her profile names it) and published.
    successor = worker_factory(settings=s)
    recs = consume(
        s, s.topic_recommendations,
        until=lambda r: "zoe-2" in {orjson.loads(m.value)["trigger_event_id"] for m in r},
        timeout=90,
    )
    payloads = [orjson.loads(m.value) for m in recs]
    assert {p["trigger_event_id"] for p in payloads} == before | {"zoe-2"}
    assert all(p["items"] for p in payloads)
    status, body = successor.get("/users/zoe")
    assert status == 200 and orjson.loads(body)["events"]["purchase"] == 2  # learned once
    # Published, so committed: 9 records.
    assert wait_for(lambda: committed(s, s.topic_purchases) == 9, timeout=60)


def test_a_drained_partitions_trigger_is_published_at_its_batch_end(worker_factory) -> None:
    """With a 60 s debounce, the partition's last trigger would wait a minute
    for lines that were never sent; the batch drained the partition (the
    consumer's fetched high-water mark), so it goes out with its batch."""
    w = worker_factory(
        partitions=1, recommend_debounce_seconds=60, recommend_max_delay_seconds=60,
    )
    s = w.settings
    events = [purchase(f"p{i}", f"w{i}", "abc"[i % 3]) for i in range(6)]
    events.append(purchase("zoe-1", "zoe", "a"))
    produce_events(s, event_records(s, events))
    recs = consume(
        s, s.topic_recommendations,
        until=lambda r: "zoe-1" in {orjson.loads(m.value)["trigger_event_id"] for m in r},
        timeout=30,
    )
    assert "zoe-1" in {orjson.loads(m.value)["trigger_event_id"] for m in recs}
    assert w.metric("feedback_recommendations_held") == 0
