"""The pull API on the embedded broker: answers, routing between two workers, attribution."""

from __future__ import annotations

import dataclasses
import socket
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from tests.integration.conftest import event_records, produce_events, wait_for

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stamp(second: float) -> str:
    """A time a few minutes before now (event time close to the wall clock)."""
    now = datetime.now(UTC).timestamp()
    return datetime.fromtimestamp(now - 600 + second, UTC).isoformat().replace("+00:00", "Z")


def clicks(user: str, items: str, start: float, session: str, **extra: Any) -> list[dict]:
    return [
        {"type": "click", "event_id": f"{user}-{start + i}", "user_id": user, "item_id": item,
         "timestamp": stamp(start + i), "session_id": session, **extra}
        for i, item in enumerate(items)
    ]  # fmt: skip


def owned_partitions(worker: Any) -> set[str]:
    """Input partitions the worker reports a high-water mark for (its assignment)."""
    _, body = worker.get("/metrics")
    return {
        line[: line.index("}")] for line in body.decode().splitlines()
        if line.startswith("feedback_input_highwater_offset{")
    }


def get_json(worker: Any, path: str) -> tuple[int, Any]:
    status, body = worker.get(path)
    return status, orjson.loads(body)


def test_pull_answers_errors_and_attribution(worker_factory) -> None:
    # Eight visitors: the DP releases run at a large epsilon so that their pairs
    # are shown (the noise is tested in tests/stream/test_published.py).
    worker = worker_factory(experiment_variants="blend", dp_epsilon=1e4, dp_min_pair_support=3)
    s = worker.settings
    events = [e for n in range(8) for e in clicks(f"v{n}", "abc", n * 10, f"s{n}")]
    events += clicks("me", "a", 100, "mine")
    produce_events(s, event_records(s, events))
    assert wait_for(lambda: worker.metric("feedback_events_total", outcome="processed")
                    >= len(events), 60)  # fmt: skip

    status, body = get_json(worker, "/recommendations/me?k=3")
    assert status == 200, body
    assert body["user_id"] == "me" and body["strategy"] == body["variant"] == "blend"
    assert body["trigger_event_type"] == "request"
    assert [i["item_id"] for i in body["items"]][:2] == ["a", "b"]  # the session leads
    assert all(i["reason"] for i in body["items"])
    status, viewing = get_json(worker, "/recommendations/me?k=2&item=b&session=mine")
    assert status == 200 and [i["item_id"] for i in viewing["items"]] == ["b", "c"]

    status, cold = get_json(worker, "/recommendations/stranger?k=2")
    assert status == 200 and len(cold["items"]) == 2  # an unknown user: popular items
    status, similar = get_json(worker, "/items/a/similar?k=5")
    # Eight visitors went a -> b: b with its (here barely) noisy customer count.
    assert status == 200 and [i["item_id"] for i in similar["items"]] == ["b"], similar
    assert similar["items"][0]["score"] == 8.0
    # Any id answers like one nobody used: no 404 that would tell which items were used.
    assert get_json(worker, "/items/nothing-like-it/similar") == (
        200, {"item_id": "nothing-like-it", "items": []}
    )

    for path, code, words in [
        ("/recommendations/me?k=0", 400, "k must be between 1 and 100"),
        ("/recommendations/me?k=many", 400, "k must be an integer"),
        ("/items/a/similar?k=500", 400, "k must be between 1 and 100"),
    ]:
        status, error = get_json(worker, path)
        assert status == code and words in error["error"], (path, error)

    # A click carrying the pulled list's id, and one on a pulled item without an id.
    follow = clicks("me", "b", 110, "mine", recommendation_id=body["recommendation_id"])
    follow += clicks("stranger", cold["items"][0]["item_id"], 120, "theirs")
    produce_events(s, event_records(s, follow))

    def attributed(matched_by: str) -> float:
        return worker.metric("feedback_attributed_clicks_total", matched_by=matched_by)

    assert wait_for(lambda: attributed("id") >= 1 and attributed("window") >= 1, 60), (
        attributed("id"), attributed("window"),
    )
    assert worker.metric("feedback_pull_requests_total", endpoint="recommendations",
                         code="200") == 3  # fmt: skip
    assert worker.metric("feedback_pull_requests_total", code="400") == 3


def test_pulls_are_routed_to_the_worker_that_owns_the_user(worker_factory) -> None:
    a = worker_factory(experiment_variants="blend")
    s = a.settings
    b = worker_factory(settings=dataclasses.replace(s, web_port=free_port()))
    # The group has settled when each worker reports its own share of the partitions,
    # the same for 3 s (a second worker joining can take two rebalances): then each
    # user's events and pulls go to one owner.
    shares: list[tuple[frozenset[str], frozenset[str]]] = []

    def settled() -> bool:
        share = (frozenset(owned_partitions(a)), frozenset(owned_partitions(b)))
        shares.append(share)
        last = shares[-6:]
        return (
            len(last) == 6 and all(x == share for x in last)
            and bool(share[0]) and bool(share[1]) and not share[0] & share[1]
        )

    assert wait_for(settled, 120), shares[-1]
    users = [f"u{n}" for n in range(24)]
    # Each user's last click is their own item: only their owner's session knows it.
    events = [e for n, u in enumerate(users) for e in clicks(u, ["x", f"own-{u}"], n * 5, u)]
    produce_events(s, event_records(s, events))

    def processed() -> float:
        return sum(w.metric("feedback_events_total", outcome="processed") for w in (a, b))

    assert wait_for(lambda: processed() >= len(events), 90), processed()
    assert a.metric("feedback_events_total", outcome="processed") > 0
    assert b.metric("feedback_events_total", outcome="processed") > 0, "one worker got everything"
    for user in users:
        status, body = get_json(a, f"/recommendations/{user}?k=2")  # always asked to a
        assert status == 200, body
        assert body["items"][0]["item_id"] == f"own-{user}", (user, body)
    answered = [w.metric("feedback_pull_requests_total", endpoint="recommendations")
                for w in (a, b)]  # fmt: skip
    assert sum(answered) == len(users)
    assert answered[1] > 0, "no request was forwarded to the other worker"
    for user in users:  # the profile look-up is routed the same way
        status, body = get_json(a, f"/users/{user}")
        assert status == 200 and body["events"]["click"] == 2, (user, body)
