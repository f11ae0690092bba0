"""Eviction through the real broker: an evicted user's profile is deleted durably
(a changelog tombstone), stays gone after a restart, and a returning user starts
a fresh profile."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from stream.topics import changelog_topic
from tests.integration.conftest import consume, event_records, produce_events, wait_for

pytestmark = pytest.mark.integration

DAY = 86_400


def purchase(eid: str, user: str, item: str, ts: str) -> dict[str, Any]:
    return {"type": "purchase", "event_id": eid, "user_id": user, "item_id": item,
            "timestamp": ts, "quantity": 1, "price": 4.0}


def profile(worker: Any, user: str) -> dict[str, Any] | None:
    status, body = worker.get(f"/users/{user}")
    return orjson.loads(body) if status == 200 else None


def _require_store(store: str) -> None:
    if store == "rocksdb":
        try:
            import rocksdict  # noqa: F401
        except ImportError:
            pytest.fail(
                "rocksdict not installed: pip install 'feedback-stream[rocksdb]'", pytrace=False
            )


@pytest.mark.parametrize("store", ["memory", "rocksdb"])
def test_evicted_profile_is_gone_after_restart_and_returns_fresh(
    worker_factory, store: str
) -> None:
    _require_store(store)
    worker = worker_factory(user_retention_seconds=DAY, table_store=store)
    s = worker.settings
    produce_events(s, event_records(s, [
        purchase("a1", "ann", "sku-1", "2024-05-02T08:00:00Z"),
        purchase("a2", "ann", "sku-2", "2024-05-02T08:05:00Z"),
        purchase("k1", "kim", "sku-1", "2024-05-03T07:00:00Z"),
    ]))
    # Whatever the order the partitions are read in, Ann's last event is within a
    # day of the newest one (Kim's): nobody is evicted yet.
    assert wait_for(lambda: profile(worker, "kim") is not None, 60)
    assert wait_for(lambda: profile(worker, "ann") is not None, 60)
    # Later that day: Ann (last seen 37 hours before) is past the one-day
    # horizon, Kim (14 hours before) is not.
    produce_events(s, event_records(s, [purchase("z1", "zed", "sku-3", "2024-05-03T21:00:00Z")]))
    assert wait_for(lambda: profile(worker, "ann") is None, 60), "ann was not evicted"
    assert profile(worker, "kim") is not None and profile(worker, "zed") is not None
    assert worker.metric("feedback_users_evicted_total", reason="inactive") == 1

    # The changelog ends Ann's history with a tombstone: compaction drops her.
    def ann_records(records: list[Any]) -> list[Any]:
        return [r for r in records if r.key in (b"ann", b'"ann"')]  # the table's key codec

    records = consume(s, changelog_topic(s), until=lambda r: any(
        x.value is None for x in ann_records(r)), timeout=30)
    ann = ann_records(records)
    assert ann and ann[-1].value is None, "no tombstone after ann's last profile"

    # After a restart the table is restored from the changelog: Ann stays gone.
    assert worker.stop() == 0
    again = worker_factory(settings=s)
    assert wait_for(lambda: profile(again, "kim") is not None, 60)
    assert profile(again, "ann") is None

    # Ann comes back: a fresh profile, only her new event.
    produce_events(s, event_records(s, [purchase("a3", "ann", "sku-3", "2024-05-03T22:00:00Z")]))
    assert wait_for(lambda: profile(again, "ann") is not None, 60)
    p = profile(again, "ann")
    assert p is not None
    assert p["events"] == {"click": 0, "purchase": 1, "review": 0}
    assert p["first_event_time"] == p["last_event_time"]
    assert p["features"] is not None and p["features"]["purchase_lines"] == 1
