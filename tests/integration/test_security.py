"""Privacy on the running worker: with ``FEEDBACK_PSEUDONYMISE_KEY`` set, no raw
user id reaches any output topic, the profile changelog or the log, and e-mail
addresses and phone numbers in review text reach none of them either.

Dead letters are the exception by design: they keep the original bytes
untouched (Kafka Connect's convention) and so carry exactly what the input
topics carry; this test sends only valid events, so that topic must stay empty.
"""

from __future__ import annotations

import asyncio
import random
import signal
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from stream.kafka import client_kwargs
from stream.privacy import pseudonymise
from stream.settings import Settings
from tests.integration.conftest import event_records, produce_events
from tests.integration.reliability_helpers import wait_metric

pytestmark = pytest.mark.integration

KEY = "test-pseudonymisation-key-0123456789"
EMAIL = "zorblaxq.quimby+shop@plonkshop.example"
# Pieces of them a tokenizer would keep, if either reached the sentiment vocabulary.
PII_PARTS = (b"zorblaxq", b"quimby", b"plonkshop", b"7946", b"0958")
PHONE = "+44 20 7946 0958"
RAW_PREFIX = "rawuser-"


def events(n_users: int = 40, per_user: int = 10) -> list[dict]:
    rng = random.Random(5)
    out = []
    for i in range(n_users * per_user):
        user = f"{RAW_PREFIX}{i % n_users:03d}"
        base = {
            "event_id": f"sec-{i}", "user_id": user, "item_id": f"sku-{rng.randrange(30)}",
            "timestamp": f"2024-06-{1 + i // 100:02d}T10:{i % 60:02d}:00Z",
        }
        if i % 3 == 0:
            out.append({**base, "type": "review", "rating": rng.randint(1, 5),
                        "title": f"Mail me at {EMAIL}",
                        "text": f"Arrived late, wugglefrump. Call {PHONE} or write to {EMAIL}, "
                                f"I am {user}."})
        else:
            out.append({**base, "type": "purchase", "quantity": 1, "price": 9.99})
    return out


def read_everything(settings: Settings) -> dict[str, list[bytes]]:
    """Every key, value and header of every topic this test's worker wrote."""

    async def read() -> dict[str, list[bytes]]:
        admin = AIOKafkaAdminClient(**client_kwargs(settings))
        await admin.start()
        try:
            inputs = set(settings.input_topics)
            topics = [
                t for t in await admin.list_topics()
                if t not in inputs
                and (t.startswith(settings.app_id) or t.startswith(settings.topic_clicks[:9]))
            ]
        finally:
            await admin.close()
        consumer = AIOKafkaConsumer(**client_kwargs(settings), group_id=None,
                                    enable_auto_commit=False, auto_offset_reset="earliest")
        await consumer.start()
        found: dict[str, list[bytes]] = {t: [] for t in topics}
        try:
            parts = [TopicPartition(t, p) for t in topics
                     for p in (consumer.partitions_for_topic(t) or {0})]
            consumer.assign(parts)
            while batch := await consumer.getmany(timeout_ms=1500, max_records=5000):
                for tp, msgs in batch.items():
                    for m in msgs:
                        found[tp.topic].extend(
                            [m.key or b"", m.value or b"", *(v for _, v in m.headers)]
                        )
        finally:
            await consumer.stop()
        return found

    return asyncio.run(read())


def test_pseudonymised_worker_emits_no_raw_ids_and_no_contact_details(worker_factory) -> None:
    worker = worker_factory(pseudonymise_key=KEY)
    s = worker.settings
    evs = events()
    produce_events(s, event_records(s, evs))
    assert wait_metric(worker, "feedback_events_total", len(evs), 90, outcome="processed") == len(
        evs
    )
    assert wait_metric(worker, "feedback_recommendations_emitted_total", 1, 30) >= 1

    # The API answers for the raw id but only ever shows the pseudonym.
    user = f"{RAW_PREFIX}001"
    status, body = worker.get(f"/users/{user}")
    assert status == 200
    profile = orjson.loads(body)
    assert profile["user_id"] == pseudonymise(user, KEY.encode())
    assert RAW_PREFIX.encode() not in body

    # Stopped first (gracefully: the final checkpoint and flush are written): a
    # running worker publishes its blend weights every period, so the topics
    # would never be read to their end.
    assert worker.stop(signal.SIGTERM) == 0
    topics = read_everything(s)
    assert s.topic_recommendations in topics and any(t.endswith("-changelog") for t in topics)
    counts = {t: len(v) for t, v in topics.items()}
    print(f"\n[privacy] sent={len(evs)} items read per topic={counts}")
    assert topics[s.topic_recommendations], "no recommendation to inspect"
    assert topics[s.topic_deadletter] == [], "a valid event was dead-lettered"
    for topic, blobs in topics.items():
        for blob in blobs:
            assert RAW_PREFIX.encode() not in blob, f"raw user id in {topic}: {blob[:200]!r}"
            assert EMAIL.encode() not in blob, f"e-mail in {topic}"
            assert b"7946 0958" not in blob and b"79460958" not in blob, f"phone in {topic}"
    log = worker.log()
    assert RAW_PREFIX not in log and EMAIL not in log and PHONE not in log

    # The state directory: the checkpoint the graceful stop wrote, and whatever else.
    files = [f for f in Path(s.state_dir).rglob("*") if f.is_file()]
    checkpoints = [f for f in files if f.suffix == ".pkl"]
    assert checkpoints, f"no checkpoint in {s.state_dir}: {files}"
    # Review words do reach the checkpoint (the sentiment vocabulary): a leak would show.
    assert any(b"wugglefrump" in f.read_bytes() for f in checkpoints)
    # Not checked here: the raw id the reviews quote ("I am rawuser-001") is free
    # text, and scrubbing covers e-mails and phones only: it is in the vocabulary.
    for f in files:
        data = f.read_bytes()
        for part in PII_PARTS:
            assert part not in data, f"{part!r} of an e-mail or phone number in {f}"
