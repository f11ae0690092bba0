"""The whole pipeline on the embedded broker: real events in, real outputs out."""

from __future__ import annotations

import itertools
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from tests.integration.conftest import (
    consume,
    event_records,
    produce_events,
    wait_for,
)
from tests.shared_data import data_dir

pytestmark = pytest.mark.integration



def retail_events(limit: int) -> list[dict[str, Any]]:
    from tools.datasets import online_retail_purchases

    return list(itertools.islice(online_retail_purchases(data_dir("online_retail")), limit))


def test_real_purchases_get_sensible_recommendations(worker_factory) -> None:
    worker = worker_factory()
    events = retail_events(3000)
    produce_events(worker.settings, event_records(worker.settings, events))

    users = {e["user_id"] for e in events}
    bought: dict[str, set[str]] = defaultdict(set)
    by_id = {e["event_id"]: e for e in events}

    recs = consume(
        worker.settings,
        worker.settings.topic_recommendations,
        until=lambda r: len({m.key for m in r}) >= len(users) * 0.9,
        timeout=90,
    )
    assert recs, "no recommendation published"
    payloads = [orjson.loads(m.value) for m in recs]
    assert len({p["recommendation_id"] for p in payloads}) == len(payloads)
    # Items the user had bought before each trigger event.
    order = {e["event_id"]: i for i, e in enumerate(events)}
    for p in payloads:
        trigger = by_id[p["trigger_event_id"]]
        assert p["user_id"] == trigger["user_id"]
        assert p["strategy"]
        items = p["items"]
        assert 1 <= len(items) <= worker.settings.top_k
        scores = [i["score"] for i in items]
        assert scores == sorted(scores, reverse=True)
        assert all(i["reason"] for i in items)
        before = {
            e["item_id"] for e in events[: order[p["trigger_event_id"]] + 1]
            if e["user_id"] == p["user_id"] and e["quantity"] > 0
        }
        assert not before & {i["item_id"] for i in items}, "recommended an item already bought"
        bought[p["user_id"]] |= before
    # The whole pipeline counted what it did.
    assert wait_for(lambda: worker.metric("feedback_events_total") >= len(events), 60)
    assert worker.metric("feedback_events_total", outcome="processed") == len(events)
    assert worker.metric("feedback_recommendations_emitted_total") >= len(payloads)


def test_profile_lookup_and_duplicates(worker_factory) -> None:
    worker = worker_factory()
    base = {"user_id": "alice", "timestamp": "2024-05-01T10:00:00Z"}
    events = [
        {**base, "type": "click", "event_id": "c1", "item_id": "sku-1", "session_id": "s1"},
        {**base, "type": "purchase", "event_id": "p1", "item_id": "sku-1", "quantity": 2,
         "price": 9.5, "currency": "EUR"},
        {**base, "type": "review", "event_id": "r1", "item_id": "sku-1", "rating": 5,
         "text": "Lovely, fits well"},
    ]
    # Bob's purchase gives the catalogue an item Alice has not bought yet.
    bob = {**events[1], "user_id": "bob", "event_id": "b1", "item_id": "sku-2"}
    # Alice's purchase arrives twice (a producer retry): it must be learned once.
    records = event_records(worker.settings, [bob, *events, events[1]])
    produce_events(worker.settings, records)

    def profile() -> dict[str, Any] | None:
        status, body = worker.get("/users/alice")
        return orjson.loads(body) if status == 200 else None

    assert wait_for(lambda: (p := profile()) is not None and sum(p["events"].values()) == 3, 60)
    p = profile()
    assert p is not None
    assert p["events"] == {"click": 1, "purchase": 1, "review": 1}
    assert p["last_event_time"] is not None
    assert p["recommendation_id"]
    assert [r["item_id"] for r in p["recommendations"]] == ["sku-2"]
    assert p["variant"] == "blend"
    assert wait_for(lambda: worker.metric("feedback_events_total", outcome="duplicate") == 1, 30)
    status, body = worker.get("/users/nobody")
    assert status == 404 and b"nobody" in body


def test_bad_input_is_dead_lettered_and_good_input_flows(worker_factory) -> None:
    worker = worker_factory()
    s = worker.settings
    good = {
        "type": "purchase", "event_id": "g", "user_id": "u1", "item_id": "i1",
        "timestamp": "2024-05-01T10:00:00+02:00", "quantity": 1, "price": 2.5,
    }
    bad: list[tuple[str, str, bytes | None, bytes]] = [
        ("undecodable", s.topic_purchases, b"u1", b"\xff\xfe\x00garbage"),
        ("undecodable", s.topic_clicks, b"u1", b'{"type": "click", '),
        ("not_an_object", s.topic_purchases, b"u1", b"[1, 2, 3]"),
        ("missing_field", s.topic_purchases, b"u1",
         orjson.dumps({k: v for k, v in good.items() if k != "item_id"})),
        ("wrong_type", s.topic_purchases, b"u1", orjson.dumps({**good, "quantity": "two"})),
        ("out_of_range", s.topic_purchases, b"u1", orjson.dumps({**good, "price": -1})),
        ("out_of_range", s.topic_reviews, b"u1",
         orjson.dumps({**good, "type": "review", "rating": 9})),
        ("oversized", s.topic_reviews, b"u1", b'{"text": "' + b"x" * 70_000 + b'"}'),
        ("unknown_type", s.topic_clicks, b"u1", orjson.dumps({**good, "type": "refund"})),
        ("type_mismatch", s.topic_clicks, b"u1", orjson.dumps(good)),
        ("invalid_value", s.topic_purchases, b"u1",
         orjson.dumps({**good, "timestamp": "2024-05-01 10:00:00"})),
        ("non_finite_number", s.topic_purchases, b"u1",
         b'{"type":"purchase","event_id":"n","user_id":"u1","item_id":"i","timestamp":'
         b'"2024-05-01T10:00:00Z","quantity":1,"price":NaN}'),
        ("key_mismatch", s.topic_purchases, b"someone-else", orjson.dumps(good)),
    ]
    records: list[tuple[str, bytes | None, bytes]] = []
    for i, (_, topic, key, value) in enumerate(bad):
        g = {**good, "event_id": f"good-{i}", "user_id": f"u{i}"}
        records.append((s.topic_purchases, f"u{i}".encode(), orjson.dumps(g)))
        records.append((topic, key, value))
    # Each record its own Kafka timestamp (with milliseconds), to find it in the headers.
    stamps = [1_714_557_600_000 + 60_000 * i + 7 * i for i in range(len(records))]
    sent: list[Any] = []
    produce_events(s, records, timestamps_ms=stamps, sent=sent)
    # Where each bad record landed: the dead letter must point back to exactly there.
    where = {
        (key, value): (meta.topic, meta.partition, meta.offset, stamp)
        for (_, key, value), meta, stamp in zip(records, sent, stamps, strict=True)
    }

    dead = consume(s, s.topic_deadletter, until=lambda r: len(r) >= len(bad), timeout=60)
    assert len(dead) == len(bad)
    got = sorted((dict(m.headers)["deadletter.reason"].decode(), m.value) for m in dead)
    assert got == sorted((reason, value) for reason, _, _, value in bad)
    for m in dead:
        headers = dict(m.headers)
        assert headers["deadletter.detail"], "every dead letter says why"
        topic, partition, offset, stamp = where[m.key, m.value]
        assert headers["source.topic"].decode() == topic
        assert int(headers["source.partition"]) == partition
        assert int(headers["source.offset"]) == offset
        expected = datetime.fromtimestamp(stamp / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
        assert headers["source.timestamp"].decode() == expected[:-3] + "Z"
    assert wait_for(
        lambda: worker.metric("feedback_events_total", outcome="processed") == len(bad), 30
    )
    assert worker.metric("feedback_deadletter_total") == len(bad)
    assert worker.metric("feedback_deadletter_total", reason="out_of_range") == 2
    assert worker.metric("feedback_events_total", outcome="dead_lettered") == len(bad)
