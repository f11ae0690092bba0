"""The events of a bench run: synthetic distinct users and their encoding.

Nothing here is timed.
"""

from __future__ import annotations

from tools.bench.workload import distinct_users, encode


def test_distinct_users_pinned_in_time_and_prefixed() -> None:
    events = [
        {"type": "click", "event_id": f"e{i}", "user_id": "u", "item_id": f"i{i}",
         "timestamp": "2011-01-01T00:00:00Z"}
        for i in range(3)
    ]
    a = list(distinct_users(events, 4, seed=3, at=1_300_000_000.0, prefix="x"))
    assert {e["timestamp"] for e in a} == {"2011-03-13T07:06:40Z"}
    assert {e["user_id"] for e in a}.isdisjoint(e["user_id"] for e in distinct_users(events, 4, 3))


def test_distinct_users_one_event_each_and_seeded() -> None:
    events = [
        {"type": "click", "event_id": f"e{i}", "user_id": "u", "item_id": f"i{i}",
         "timestamp": "2011-01-01T00:00:00Z"}
        for i in range(10)
    ]
    a = list(distinct_users(events, 25, seed=3))
    assert len({e["user_id"] for e in a}) == 25
    assert len({e["event_id"] for e in a}) == 25
    assert a == list(distinct_users(events, 25, seed=3))
    assert [e["item_id"] for e in a] != [e["item_id"] for e in distinct_users(events, 25, seed=4)]


def test_encode_routes_by_type_and_keys_by_user() -> None:
    event = {"type": "purchase", "event_id": "e", "user_id": "ann", "item_id": "x"}
    [(topic, key, value)] = encode([event], {"purchase": "p-topic"}.__getitem__)
    assert topic == "p-topic" and key == b"ann" and value.startswith(b"{")
