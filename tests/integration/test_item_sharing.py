"""Item knowledge learnt from events on one worker shapes another worker's
recommendations, within the configured staleness (period + transit)."""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime

import orjson
import pytest

from models.item_updates import partition_of
from tests.integration.conftest import consume, produce_events, wait_for
from tests.integration.reliability_helpers import (
    START,
    owned_partitions,
    records_for,
    wait_metric,
)
from tools.broker import free_port

pytestmark = pytest.mark.integration

# What transit may add to the publication period on this loaded test machine:
# A's batch wait, the owner's apply, the next publication tick, B's reader poll.
TRANSIT_ALLOWANCE_S = 10.0


def users_on(owned: set[tuple[str, str]], topic: str, partitions: int, n: int,
             prefix: str) -> list[str]:
    """``n`` user ids whose ``topic`` partition is in ``owned``."""
    mine = {int(p) for t, p in owned if t == topic}
    users = []
    i = 0
    while len(users) < n:
        u = f"{prefix}-{i}"
        if partition_of(u, partitions) in mine:
            users.append(u)
        i += 1
    return users


def click(user: str, item: str, i: int) -> dict:
    return {
        "type": "click", "event_id": f"{user}-{i}", "user_id": user, "item_id": item,
        "session_id": f"s-{user}",
        "timestamp": datetime.fromtimestamp(START + i, UTC).isoformat(),
    }


def test_item_knowledge_from_worker_a_shapes_worker_b(worker_factory) -> None:
    period = 1.0
    a = worker_factory(item_model_period_seconds=period)
    s = a.settings
    b = worker_factory(settings=dataclasses.replace(s, web_port=free_port()))
    assert wait_for(lambda: bool(owned_partitions(a)) and bool(owned_partitions(b)), 60), (
        "the partitions were not shared"
    )
    on_a = users_on(owned_partitions(a), s.topic_clicks, s.partitions, 30, "ua")
    (on_b,) = users_on(owned_partitions(b), s.topic_clicks, s.partitions, 1, "ub")

    # Only A's users ever see the pair: they all click "pair-x", then "pair-y".
    events = [click(u, item, 2 * k + j)
              for k, u in enumerate(on_a) for j, item in enumerate(("pair-x", "pair-y"))]
    produce_events(s, records_for(s, events))
    assert wait_metric(a, "feedback_events_total", len(events), 90, outcome="processed") == len(
        events
    )
    learnt_on_a = time.monotonic()
    assert b.metric("feedback_events_total", outcome="processed") == 0

    # B's replica takes both items' models within the staleness bound.
    bound = period + TRANSIT_ALLOWANCE_S
    assert wait_metric(b, "feedback_item_model_records_applied_total", 2, bound) >= 2
    replica_s = time.monotonic() - learnt_on_a
    print(f"\n[sharing] B's replica had A's items {replica_s:.2f} s after A learnt them "
          f"(period {period} s, staleness gauge "
          f"{b.metric('feedback_item_model_staleness_seconds'):.3f} s)")

    # A user of B clicks "pair-x": B recommends "pair-y", an item none of its own
    # users ever touched, from what A's users taught the owners.
    produce_events(s, records_for(s, [click(on_b, "pair-x", 10_000)]))

    def for_b(records: list) -> list[dict]:
        return [v for v in map(orjson.loads, (r.value for r in records)) if v["user_id"] == on_b]

    got = for_b(consume(s, s.topic_recommendations, until=lambda r: bool(for_b(r)), timeout=30))
    assert got, "B published no recommendation for its user"
    rec = got[0]
    assert b.metric("feedback_events_total", outcome="processed") == 1
    # Ranked after the user's own item at most (the session strategy may show it).
    assert "pair-y" in [r["item_id"] for r in rec["items"] if r["item_id"] != "pair-x"][:1], rec
