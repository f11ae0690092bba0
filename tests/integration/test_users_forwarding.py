"""``GET /users/{id}`` on a worker that does not own the user: Faust's table
routing forwards the request to the worker that does, so either worker answers
for every user."""

from __future__ import annotations

import dataclasses

import orjson
import pytest

from tests.integration.conftest import produce_events, wait_for
from tests.integration.reliability_helpers import make_events, records_for, wait_metric
from tests.integration.test_reliability_rebalance import owned_partitions
from tools.broker import free_port

pytestmark = pytest.mark.integration


def test_each_worker_answers_for_every_user(worker_factory) -> None:
    a = worker_factory()
    s = a.settings
    b = worker_factory(settings=dataclasses.replace(s, web_port=free_port()))
    # Each owns some partitions before the events arrive.
    assert wait_for(lambda: bool(owned_partitions(a)) and bool(owned_partitions(b)), 60), (
        "the partitions were not shared"
    )
    events = make_events(60, 3, seed=4)  # 180 events, 60 users
    expected: dict[str, int] = {}
    for e in events:
        expected[e["user_id"]] = expected.get(e["user_id"], 0) + 1
    produce_events(s, records_for(s, events))

    def processed() -> float:
        return sum(w.metric("feedback_events_total", outcome="processed") for w in (a, b))

    assert wait_for(lambda: processed() == len(events), 120), f"{processed()} processed"
    # Both workers own partitions, so each holds only some of the users.
    assert wait_metric(a, "feedback_events_total", 1, 5, outcome="processed") >= 1
    assert wait_metric(b, "feedback_events_total", 1, 5, outcome="processed") >= 1
    for worker in (a, b):
        for user, n in expected.items():
            status, body = worker.get(f"/users/{user}")
            assert status == 200, f"{user} via :{worker.settings.web_port}: {status} {body[:200]!r}"
            assert sum(orjson.loads(body)["events"].values()) == n
