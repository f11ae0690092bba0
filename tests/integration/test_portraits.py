"""GET /segments, GET /items/{id} and the customer value of GET /users/{id}, through the broker."""

from __future__ import annotations

import itertools
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from models.engine import EngineConfig
from stream.dp import release_threshold
from tests.integration.conftest import event_records, produce_events, wait_for

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def retail_events(limit: int) -> list[dict[str, Any]]:
    from tools.datasets import online_retail_purchases

    if not (DATA / "online_retail").exists():
        pytest.fail(f"shared dataset online_retail not found at {DATA}")
    return list(itertools.islice(online_retail_purchases(DATA), limit))


def test_segments_items_and_customer_value(worker_factory) -> None:
    # releases at most 2 s old, so that the pages below read the replayed users
    worker = worker_factory(dp_interval_seconds=2)
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

    time.sleep(2)  # the releases the timer made during the replay have expired
    # Everything below is a DP release at the default epsilon 1: noisy figures,
    # checked against the exact ones within the noise (tests/stream/test_published.py
    # checks the noise itself).
    status, body = worker.get("/segments")
    assert status == 200
    segments = orjson.loads(body)["segments"]
    assert [s["segment"] for s in segments] == list(range(EngineConfig().n_segments))
    users = {e["user_id"] for e in events} | {r["user_id"] for r in reviews}
    # five sizes, each with noise of scale 2 (and at least 0)
    assert abs(sum(s["size"] for s in segments) - len(users)) < 50
    for s in segments:
        assert s["size"] >= 0 and s["description"].endswith(".")
        assert {"orders", "order_value", "expected_spend", "days_between_orders"} <= set(
            s["centre"]
        )
        assert s["centre"]["orders"] >= 0
        assert [i["rank"] for i in s["top_items"]] == [1, 2, 3, 4, 5]

    status, body = worker.get("/items/85123A")
    assert status == 200
    item = orjson.loads(body)
    assert set(item) == {"item_id", "buyers", "reviewers", "viewers", "bought_together"}
    exact_buyers = len({e["user_id"] for e in events if e["item_id"] == "85123A"})
    assert item["buyers"] >= 0 and abs(item["buyers"] - exact_buyers) < 20 * 60  # scale 60
    # A pair is shown only above the release's threshold (155 customers at epsilon 1).
    threshold = release_threshold(10, 1.0, 1e-6)
    assert all(p["customers"] >= threshold for p in item["bought_together"])
    status, body = worker.get("/items/no-such-item")
    assert status == 200 and orjson.loads(body)["bought_together"] == []
    # the ledger is charged (the gauges are refreshed by the worker's timer)
    assert wait_for(lambda: worker.metric("feedback_dp_releases", release="items") >= 1
                    and worker.metric("feedback_dp_releases", release="segment_items") >= 1,
                    60)  # fmt: skip

    buyer = Counter(e["user_id"] for e in events if e["quantity"] > 0).most_common(1)[0][0]
    status, body = worker.get(f"/users/{buyer}")
    assert status == 200
    value = orjson.loads(body)["features"]["customer_value"]
    assert value["horizon_days"] == 90.0
    assert value["expected_purchases"] > 0 and value["expected_spend"] > 0
    assert 0 < value["p_alive"] <= 1
