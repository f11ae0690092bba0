"""models/strategies.py: every strategy honours the avoid set, however long it is."""

from __future__ import annotations

import pytest

from models.engine import FeedbackEngine
from models.events import Event
from models.strategies import STRATEGIES, Strategies

T0 = 1_700_000_000.0


def engine_with_catalogue(n_items: int = 200) -> FeedbackEngine:
    engine = FeedbackEngine()
    for i in range(n_items):  # item i bought by (n_items - i) % 7 + 1 users: a ranking
        for u in range((n_items - i) % 7 + 1):
            engine.process(Event("purchase", f"p{i}-{u}", f"u{u}", f"sku-{i}", T0 + i,
                                 quantity=1, price=1.0))
    engine.process(Event("click", "c", "me", "sku-0", T0 + 1_000))
    return engine


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_avoided_items_never_come_back_and_the_list_stays_full(strategy: str) -> None:
    engine, s = engine_with_catalogue(), Strategies(seed=3)
    first = [r.item_id for r in s.recommend(strategy, engine, "me", k=10, key="e1")]
    assert len(first) == 10
    # Avoid far more than the old look-ahead of 50 items past the top k.
    avoid = set(first) | {f"sku-{i}" for i in range(0, 200, 2)}
    again = [r.item_id for r in s.recommend(strategy, engine, "me", k=10, key="e1", avoid=avoid)]
    assert len(again) == 10 and not set(again) & avoid


def test_avoid_is_applied_before_ranking_not_after() -> None:
    engine = engine_with_catalogue()
    top = engine.recommend("me", 12)
    cut = engine.recommend("me", 10, avoid={top[0].item_id, "not-in-catalogue"})
    assert [r.item_id for r in cut] == [r.item_id for r in top[1:11]]


def test_only_the_fatigue_strategies_take_the_avoid_set() -> None:
    engine = engine_with_catalogue()
    s = Strategies(seed=3, fatigue_strategies={"blend", "explore"})
    plain = [r.item_id for r in s.recommend("popularity", engine, "me", k=10)]
    avoid = set(plain)
    assert [r.item_id for r in s.recommend("popularity", engine, "me", k=10, avoid=avoid)] == plain
    for strategy in ("blend", "explore"):
        listed = s.recommend(strategy, engine, "me", k=10, key="e1", avoid=avoid)
        assert listed and not avoid & {r.item_id for r in listed}
