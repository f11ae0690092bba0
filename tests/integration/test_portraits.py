"""GET /segments, GET /items/{id} and the customer value of GET /users/{id}, through the broker."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.integration.conftest import event_records, produce_events, wait_for

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def retail_events(limit: int) -> list[dict[str, Any]]:
    from tools.datasets import online_retail_purchases

    if not (DATA / "online_retail").exists():
        pytest.fail(f"shared dataset online_retail not found at {DATA}")
    return list(itertools.islice(online_retail_purchases(DATA), limit))


def test_segments_items_and_customer_value(worker_factory) -> None:
    worker = worker_factory()
    events = retail_events(4000)
    reviews = [
        {"type": "review", "event_id": f"rv{n}", "user_id": f"reviewer{n}", "item_id": "85123A",
         "timestamp": "2010-12-05T12:00:00Z", "rating": rating,
         "text": "Lovely, sturdy and exactly as pictured." if rating >= 4 else "Broke at once."}
        for n, rating in enumerate([5, 4, 2])
    ]  # fmt: skip
    produce_events(worker.settings, event_records(worker.settings, [*events, *reviews]))
    total = len(events) + len(reviews)

    def processed() -> bool:
        try:
            return worker.metric("feedback_events_total") >= total
        except OSError:  # a busy worker may answer /metrics late: ask again
            return False

    # generous: the shared test machine may give the worker a small share of a core
    assert wait_for(processed, 400)

    status, body = worker.get("/segments")
    assert status == 200
    segments = orjson.loads(body)["segments"]
    assert len(segments) >= 2
    users = {e["user_id"] for e in events} | {r["user_id"] for r in reviews}
    assert sum(s["size"] for s in segments) == len(users)
    for s in segments:
        assert s["size"] > 0 and s["description"].endswith(".")
        assert {"orders", "order_value", "expected_spend", "days_between_orders"} <= set(
            s["centre"]
        )
        assert s["centre"]["orders"] >= 0
        assert all(i["popularity"] > 0 for i in s["top_items"])
    assert any(s["top_items"] for s in segments)

    status, body = worker.get("/items/85123A")
    assert status == 200
    item = orjson.loads(body)
    assert item["rated_reviews"] == 3 and item["rating_mean"] == pytest.approx(11 / 3)
    assert item["reviews"] == 3 and item["sentiment"]["reviews"] == 3
    assert item["popularity"]["all_time"] > 0
    # The item bought with 85123A most often in the replay has a pair; every pair has a lift.
    assert item["bought_together"], item
    assert all(p["lift"] > 0 and p["pair_weight"] >= 2 for p in item["bought_together"])
    lifts = [p["pmi_bits"] for p in item["bought_together"]]
    assert lifts == sorted(lifts, reverse=True)
    assert worker.get("/items/no-such-item")[0] == 404

    buyer = Counter(e["user_id"] for e in events if e["quantity"] > 0).most_common(1)[0][0]
    status, body = worker.get(f"/users/{buyer}")
    assert status == 200
    value = orjson.loads(body)["features"]["customer_value"]
    assert value["horizon_days"] == 90.0
    assert value["expected_purchases"] > 0 and value["expected_spend"] > 0
    assert 0 < value["p_alive"] <= 1
