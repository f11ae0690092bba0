"""The feedback loop the worker and the offline replay share."""

from __future__ import annotations

from models.attribution import Exposure, UserExposures
from models.bandit import SegmentedThompson
from models.engine import FeedbackEngine
from models.events import Event
from models.feedback_loop import FeedbackLoop, should_recommend


def engine_with_history() -> FeedbackEngine:
    engine = FeedbackEngine()
    buys = [("a", "x"), ("b", "x"), ("b", "y"), ("c", "y"), ("c", "z")]
    for i, (user, item) in enumerate(buys):
        engine.process(Event("purchase", f"e{i}", user, item, 100.0 + i, quantity=1))
    return engine


def test_one_tally_per_variant_counts_exposures_and_each_attribution() -> None:
    loop = FeedbackLoop(variants="popularity")
    log = UserExposures(window=600)
    loop.expose(log, Exposure("r1", ("y", "z"), "popularity", "popularity", 200.0))
    loop.attribute(log, Event("click", "c1", "a", "y", 210.0))
    loop.attribute(log, Event("click", "c2", "a", "z", 220.0))  # the same list: clicked once
    loop.attribute(log, Event("purchase", "p1", "a", "y", 230.0, quantity=2, price=3.0))
    assert loop.attribute(log, Event("click", "c3", "a", "q", 240.0)) is None
    assert loop.tallies["popularity"].as_tuple() == (1, 1, 1, 2, 1, 6.0)


def test_fatigued_items_are_left_out_for_the_fatigue_strategies_only() -> None:
    engine = engine_with_history()
    log = UserExposures(window=600)
    for i in range(3):
        log.expose(Exposure(f"r{i}", ("y",), "blend", "blend", 200.0 + i))
    fatigued = FeedbackLoop(fatigue_strategies="popularity")
    plain = FeedbackLoop(fatigue_strategies="blend")

    def items(loop: FeedbackLoop, log: UserExposures | None) -> set[str]:
        return {r.item_id for r in loop.recommend(engine, "a", "popularity", log, "k")}

    assert "y" not in items(fatigued, log)
    assert "y" in items(plain, log)
    assert "y" in items(fatigued, None)  # a user never shown anything is fatigued of nothing


def test_the_bandit_chooses_is_exposed_and_rewarded_for_first_clicks() -> None:
    bandit = SegmentedThompson(("blend", "popularity"), seed=1)
    loop = FeedbackLoop(bandit=bandit)
    variant, strategy = loop.choose("a", segment=2, key="e1")
    assert variant == "bandit" and strategy in ("blend", "popularity")
    assert loop.choose("a", segment=2, key="e1") == (variant, strategy)  # repeatable
    log = UserExposures(window=600)
    loop.expose(log, Exposure("r1", ("y",), strategy, variant, 200.0, 2))
    loop.attribute(log, Event("click", "c1", "a", "y", 210.0))
    loop.attribute(log, Event("click", "c2", "a", "y", 220.0))
    # One trial, one success: the second click of the same list is no new reward.
    assert bandit.posterior(2, strategy) == (bandit.prior_alpha + 1, bandit.prior_beta)
    # Without a bandit the experiment's variant names the strategy.
    plain = FeedbackLoop(variants="blend")
    assert plain.choose("a", segment=2, key="e1") == ("blend", "blend")


def test_a_click_triggers_only_after_the_minimum_interval() -> None:
    click = Event("click", "c", "u", "i", 100.0)
    assert should_recommend(None, click, 60.0)
    assert not should_recommend(50.0, click, 60.0)
    assert should_recommend(40.0, click, 60.0)
    assert should_recommend(99.0, Event("review", "r", "u", "i", 100.0, rating=5.0), 60.0)
