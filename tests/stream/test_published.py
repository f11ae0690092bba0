"""The item and segment endpoints answer DP releases, never exact statistics.

Each test asks many times with releases that expire at once (interval 0) and
checks that the answers scatter around the exact figure with the configured
noise scale: an endpoint that answered the exact count (or any other exact
statistic) has no scatter and fails. With a long interval the same answer comes
back and the ledger is charged once.
"""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry

from models.engine import FeedbackEngine
from stream.metrics import Metrics
from stream.processor import DictStore, InputMessage, Processor
from stream.published import item_page, segments_page, similar_items
from stream.pull import Pulls
from stream.settings import Settings

NOW = 1_800_000_000.0
PAIR_BUYERS = 300  # customers who bought a then b
ASKS = 400


def shop(**overrides: object) -> Processor:
    """300 customers bought a then b, 200 others bought c; 5 of them also reviewed."""
    settings = Settings.from_env({}, **overrides)
    proc = Processor(settings, FeedbackEngine(), DictStore(), Metrics(CollectorRegistry()),
                     clock=lambda: NOW)  # fmt: skip
    events: list[dict[str, object]] = []
    for u in range(PAIR_BUYERS + 200):
        items = ("a", "b") if u < PAIR_BUYERS else ("c",)
        for i, item in enumerate(items):
            events.append({"type": "purchase", "event_id": f"u{u}-{i}", "user_id": f"u{u}",
                           "item_id": item, "timestamp": f"2024-01-01T10:{u % 60:02d}:0{i}Z",
                           "quantity": 1, "price": 2.0})  # fmt: skip
    proc.handle([
        InputMessage(settings.topic_purchases, 0, n, str(e["user_id"]).encode(),
                     orjson.dumps(e), NOW) for n, e in enumerate(events)
    ])  # fmt: skip
    return proc


def assert_noisy(values: list[float], exact: float, scale: float) -> None:
    """``values`` are ``exact`` plus (discrete) Laplace noise of ``scale`` (sd scale * sqrt 2)."""
    x = np.asarray(values, dtype=float)
    sd = scale * math.sqrt(2)
    assert abs(x.mean() - exact) < 4 * sd / math.sqrt(len(x)), (x.mean(), exact)
    assert 0.8 * sd < x.std() < 1.2 * sd, (x.std(), sd)


def test_similar_items_are_noisy_customer_counts() -> None:
    proc = shop(dp_epsilon=1.0, dp_interval_seconds=0)
    scores = []
    for _ in range(ASKS):
        body = similar_items(proc.publisher, "a", 5)
        assert [i["item_id"] for i in body["items"]] == ["b"]  # 300 is far above the threshold
        scores.append(body["items"][0]["score"])
    # One pair per customer: scale max_pairs_per_user / epsilon = 10.
    assert_noisy(scores, PAIR_BUYERS, 10.0)
    ledger = proc.publisher.ledger
    assert ledger is not None
    assert ledger.releases()["neighbours"] == ASKS
    assert ledger.by_release()["neighbours"] == pytest.approx(ASKS * 1.0)
    assert ledger.spent_delta == pytest.approx(ASKS * 1e-6)


def test_an_item_nobody_used_with_another_answers_like_an_unknown_one() -> None:
    proc = shop()
    assert similar_items(proc.publisher, "c", 5)["items"] == []
    assert similar_items(proc.publisher, "never-sold", 5)["items"] == []
    page = item_page(proc.publisher, "never-sold")
    assert page["bought_together"] == [] and page["buyers"] is not None


def test_item_pages_are_noisy_distinct_customer_counts() -> None:
    proc = shop(dp_epsilon=1.0, dp_interval_seconds=0)
    pages = [item_page(proc.publisher, "a") for _ in range(ASKS)]
    # 20 items per user and kind, a third of epsilon per kind: scale 60.
    assert_noisy([p["buyers"] for p in pages], PAIR_BUYERS, 60.0)
    together = [p["bought_together"][0]["customers"] for p in pages if p["bought_together"]]
    assert len(together) > 0.99 * ASKS and {p["bought_together"][0]["item_id"]
                                            for p in pages if p["bought_together"]} == {"b"}
    assert_noisy(together, PAIR_BUYERS, 10.0)


def test_segment_sizes_are_noisy() -> None:
    proc = shop(dp_epsilon=1.0, dp_interval_seconds=0)
    exact = proc.engine.segment_sizes()
    biggest = max(exact, key=lambda j: exact[j])
    assert exact[biggest] > 50
    sizes = []
    for _ in range(ASKS):
        page = {s["segment"]: s for s in segments_page(proc.publisher, 90.0)}
        sizes.append(page[biggest]["size"])
        assert page[biggest]["description"].endswith(".")
        assert len(page[biggest]["top_items"]) == 3  # the whole catalogue: a, b, c
    # A user is in one segment, half of epsilon to the sizes: scale 2.
    assert_noisy(sizes, exact[biggest], 2.0)


def test_repeated_requests_answer_the_cached_release_and_charge_once() -> None:
    proc = shop(dp_epsilon=0.5, dp_interval_seconds=3600)
    first = (similar_items(proc.publisher, "a", 5), item_page(proc.publisher, "a"),
             segments_page(proc.publisher, 90.0))  # fmt: skip
    for _ in range(50):
        again = (similar_items(proc.publisher, "a", 5), item_page(proc.publisher, "a"),
                 segments_page(proc.publisher, 90.0))  # fmt: skip
        assert again == first
    ledger = proc.publisher.ledger
    assert ledger is not None
    charged = ("neighbours", "items", "segments", "segment_items")
    assert {r: ledger.releases()[r] for r in charged} == dict.fromkeys(charged, 1)
    assert {r: ledger.by_release()[r] for r in charged} == dict.fromkeys(charged, 0.5)


def test_the_popularity_control_shows_the_published_list_not_counts() -> None:
    proc = shop(dp_epsilon=1.0, dp_interval_seconds=3600, experiment_variants="popularity")
    published = proc.publisher.popular()
    items = proc.loop.recommend(proc.engine, "u0", "popularity", None, key="k", k=10)
    expected = [i for i in published if i not in ("a", "b")][:10]  # u0 bought a and b
    assert [r.item_id for r in items] == expected
    # Scores are places in the published list, not the exact counts (300, 200).
    assert [r.score for r in items] == [float(len(published) - published.index(i))
                                        for i in expected]  # fmt: skip
    # A user the engine does not know gets the published list whatever the strategy.
    cold = Pulls(proc, clock=lambda: NOW).recommend("stranger", 5)
    assert [i["item_id"] for i in cold["items"]] == published[:5]
