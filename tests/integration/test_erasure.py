"""Erasure on request through the broker, and the access gate on the real HTTP server.

The erasure bar: a user's events go in, the user is erased through
``feedback.erasure``, the worker is SIGKILLed and restarted; afterwards
``GET /users/{id}`` is 404, the recommendations topic ends with a tombstone
for the user's key, the changelog's last record for the user is a tombstone,
and the checkpoint file holds no trace of the id.
"""

from __future__ import annotations

import signal
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream import checkpoint
from stream.erasure import ERASED_PARTS, ErasureRequest, encode_request
from stream.privacy import pseudonymise
from stream.settings import Settings
from stream.topics import changelog_topic
from tests.integration.conftest import (
    Worker,
    consume,
    ensure_topics,
    event_records,
    isolated_settings,
    produce_events,
    wait_for,
)

pytestmark = pytest.mark.timeout(300)

TOKEN = "integration-" + "t" * 24
PSEUDONYM_KEY = "k" * 32
VICTIM = "victim-7f3a91"
T0 = 1_717_200_000.0


def stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def user_events(user: str, n: int, offset: float = 0.0) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for i in range(n):
        t = T0 + offset + i * 600
        item = f"sku-{(hash(user) + i) % 7}"
        events.append({"type": "click", "event_id": f"{user}-c{i}", "user_id": user,
                       "item_id": item, "timestamp": stamp(t)})
        events.append({"type": "purchase", "event_id": f"{user}-p{i}", "user_id": user,
                       "item_id": item, "timestamp": stamp(t + 60), "quantity": 1,
                       "price": 4.5, "order_id": f"{user}-o{i}"})
    events.append({"type": "review", "event_id": f"{user}-r", "user_id": user,
                   "item_id": "sku-1", "timestamp": stamp(T0 + offset + n * 600),
                   "rating": 5, "text": "Lovely, would buy again"})
    return events


def request(worker: Worker, method: str, path: str, token: str | None = TOKEN,
            headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    req = urllib.request.Request(worker.web_url + path, method=method)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    for name, value in (headers or {}).items():
        req.add_header(name, value)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


def last_by_key(settings: Settings, topic: str, key: bytes,
                until: Callable[[list[Any]], bool] | None = None,
                timeout: float = 30.0) -> list[Any]:
    """Every record of ``topic`` under ``key``, in offset order within its partition."""
    records = consume(settings, topic, until or (lambda rs: False), timeout=timeout)
    return [r for r in records if r.key == key]


def settings_for(broker: str, state: Path, **overrides: Any) -> Settings:
    return isolated_settings(
        broker, state,
        api_tokens=f"tests={TOKEN}", pseudonymise_key=PSEUDONYM_KEY,
        checkpoint_interval_seconds=1.0, recommend_min_interval_seconds=0.0,
        **overrides,
    )


def test_erasure_through_the_topic_survives_a_sigkill(
    broker: str, tmp_path: Path, worker_factory: Callable[..., Worker]
) -> None:
    settings = settings_for(broker, tmp_path / "state")
    ensure_topics(settings)
    stored = pseudonymise(VICTIM, PSEUDONYM_KEY.encode())
    others = [f"other-{i}" for i in range(6)]
    events = user_events(VICTIM, 4) + [e for u in others for e in user_events(u, 4, 30.0)]
    events.sort(key=lambda e: e["timestamp"])
    worker = worker_factory(settings)
    produce_events(settings, event_records(settings, events))

    # Before: the worker knows the victim, published to them, and checkpointed them.
    assert wait_for(lambda: request(worker, "GET", f"/users/{VICTIM}")[0] == 200, 60)
    recs = last_by_key(settings, settings.topic_recommendations, stored.encode(),
                       until=lambda rs: any(r.key == stored.encode() for r in rs))
    assert recs and recs[-1].value is not None
    path = checkpoint.path_for(settings)
    assert wait_for(lambda: path.exists() and stored.encode() in path.read_bytes(), 30), (
        "the test must see the victim in a checkpoint before the erasure"
    )

    erasure = ErasureRequest(VICTIM, time.time(), "req-" + uuid.uuid4().hex[:8])
    produce_events(settings, [(settings.topic_erasure, VICTIM.encode(), encode_request(erasure))])
    receipts = consume(
        settings, settings.topic_erasure_done,
        lambda rs: any(orjson.loads(r.value)["request_id"] == erasure.request_id for r in rs),
    )
    receipt = next(orjson.loads(r.value) for r in receipts
                   if orjson.loads(r.value)["request_id"] == erasure.request_id)
    assert receipt["user_id"] == VICTIM and set(receipt["erased"]) == set(ERASED_PARTS)
    assert receipt["erased"]["profile"] == 1 and receipt["erased"]["engine_state"] >= 1
    assert receipt["erased"]["recommendations"] == 1

    worker.stop(signal.SIGKILL)
    restarted = worker_factory(settings)
    assert wait_for(lambda: request(restarted, "GET", f"/users/{others[0]}")[0] == 200, 60)
    status, body, _ = request(restarted, "GET", f"/users/{VICTIM}")
    assert status == 404 and set(orjson.loads(body)) == {"error"}

    recs = last_by_key(settings, settings.topic_recommendations, stored.encode(),
                       until=lambda rs: any(r.key == stored.encode() and r.value is None
                                            for r in rs))
    assert recs and recs[-1].value is None, "the recommendations topic must end with a tombstone"

    changelog = [r for r in consume(settings, changelog_topic(settings), lambda rs: False, 10.0)
                 if stored.encode() in r.key]
    assert changelog and changelog[-1].value is None, "the changelog must end with a tombstone"

    # The restarted worker checkpoints again; neither that file nor the one the
    # erasure wrote names the user, raw or pseudonymised.
    assert wait_for(lambda: restarted.metric("feedback_model_checkpoints_total") >= 1, 30)
    blob = path.read_bytes()
    assert stored.encode() not in blob and VICTIM.encode() not in blob
    # A request whose offset the kill left uncommitted is carried out again:
    # idempotent, it finds nothing more to erase.
    replays = [orjson.loads(r.value) for r in consume(settings, settings.topic_erasure_done,
                                                      lambda rs: False, 5.0)][1:]
    assert all(r["erased"]["profile"] == r["erased"]["engine_state"] == 0 for r in replays)


def test_delete_users_needs_a_token_and_erases_through_the_topic(
    broker: str, tmp_path: Path, worker_factory: Callable[..., Worker]
) -> None:
    settings = settings_for(broker, tmp_path / "state", rate_limit_per_second=2.0,
                            rate_limit_burst=8)
    ensure_topics(settings)
    worker = worker_factory(settings)
    produce_events(settings, event_records(settings, user_events(VICTIM, 2)))
    assert wait_for(lambda: request(worker, "GET", f"/users/{VICTIM}")[0] == 200, 60)

    for token in (None, "wrong-" + "x" * 30):
        for method, path in (("GET", f"/users/{VICTIM}"), ("DELETE", f"/users/{VICTIM}"),
                             ("GET", "/nowhere")):
            status, body, headers = request(worker, method, path, token=token)
            assert status == 401 and body == b'{"error":"unauthorized"}', (method, path)
            assert VICTIM.encode() not in body and headers["WWW-Authenticate"].startswith("Bearer")
    assert request(worker, "GET", "/metrics", token=None)[0] == 200
    assert request(worker, "GET", "/healthz", token=None)[0] == 200

    status, body, _ = request(worker, "DELETE", f"/users/{VICTIM}")
    assert status == 202
    request_id = orjson.loads(body)["request_id"]
    consume(settings, settings.topic_erasure_done,
            lambda rs: any(orjson.loads(r.value)["request_id"] == request_id for r in rs))
    assert wait_for(lambda: request(worker, "GET", f"/users/{VICTIM}")[0] == 404, 30)
    assert worker.metric("feedback_erasures_total") == 1

    # Over the rate limit: 429 with Retry-After, and the denials are counted.
    statuses = [request(worker, "GET", f"/users/{VICTIM}") for _ in range(12)]
    limited = [s for s in statuses if s[0] == 429]
    assert limited and limited[0][2]["Retry-After"].isdigit()
    assert worker.metric("feedback_http_denied_total", reason="rate_limited") >= len(limited)
    assert worker.metric("feedback_http_denied_total", reason="unauthorized") >= 6
