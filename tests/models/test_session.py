"""Session context: sessions, sequential rules, V-SKNN, repeats, and the engine's use of them."""

from __future__ import annotations

import pickle

import numpy as np

from models.engine import EngineConfig, FeedbackEngine
from models.events import Event
from models.session import (
    SESSION_FEATURES,
    SessionRecommender,
    SessionSignals,
    _summed_by_key,
    strongest,
    with_session,
)

T0 = 1_700_000_000.0
RULES = SESSION_FEATURES.index("rules")
NEIGHBOURS = SESSION_FEATURES.index("neighbours")
REPEAT = SESSION_FEATURES.index("repeat")


def feed(
    s: SessionRecommender, user: str, items: list[int], t: float = T0, key: str | None = None
) -> None:
    for i, item in enumerate(items):
        s.learn_one(user, item, t + i, key)


def test_a_session_id_change_or_the_gap_starts_a_new_session() -> None:
    s = SessionRecommender(gap_s=600.0)
    feed(s, "u", [1, 2], key="a")
    first = s.current["u"].number
    s.learn_one("u", 3, T0 + 5_000, "a")  # same id, long after: still the same session
    assert s.current["u"].number == first and s.current["u"].items == [1, 2, 3]
    s.learn_one("u", 4, T0 + 5_001, "b")
    assert s.current["u"].number != first and s.current["u"].items == [4]
    feed(s, "v", [1, 2])
    second = s.current["v"].number
    s.learn_one("v", 3, T0 + 1 + 599, None)  # under the gap
    assert s.current["v"].number == second
    s.learn_one("v", 4, T0 + 600 + 600, None)  # the gap: a new one
    assert s.current["v"].items == [4]


def test_context_is_the_live_session_plus_the_viewed_item() -> None:
    s = SessionRecommender(gap_s=600.0)
    feed(s, "u", [1, 2])
    assert s.context("u", T0 + 100) == [1, 2]
    assert s.context("u", T0 + 100, item=7) == [1, 2, 7]
    assert s.context("u", T0 + 100, item=2) == [1, 2]  # already the last one
    assert s.context("u", T0 + 10_000) == []  # expired by the gap
    assert s.context("u", T0 + 10_000, item=7) == [7]
    feed(s, "w", [1, 2], key="x")
    assert s.context("w", T0 + 10_000) == [1, 2]  # a keyed session has no gap
    assert s.context("w", T0, session_id="other") == []
    assert s.context("nobody", T0) == []


def test_rules_weigh_one_over_the_gap_within_the_window() -> None:
    s = SessionRecommender(rule_window=2)
    feed(s, "u", [0, 1, 2, 3])
    assert s.rules[0].get(1) == 1.0 and s.rules[0].get(2) == 0.5
    assert s.rules[0].get(3) == 0.0  # three steps back: outside the window
    assert s.rules[2].get(0) == 0.0  # rules point forward only


def test_repeats_rank_recent_session_items_higher_and_the_viewed_item_first() -> None:
    s = SessionRecommender()
    feed(s, "u", [5, 6, 7, 8])
    sig = s.signals(s.context("u", T0 + 4), 10)
    assert sig.matrix[0].tolist() == [0.0] * 8 + [1.0, 0.0]
    repeat = sig.matrix[REPEAT]
    assert repeat[7] > repeat[6] > repeat[5] > 0 and repeat[8] == 0.0


def test_neighbour_sessions_vote_for_their_items_and_not_the_own_session() -> None:
    s = SessionRecommender(neighbours=1)
    feed(s, "a", [0, 1, 9])  # shares 0 and 1 with the query: the nearest
    feed(s, "b", [1, 8])  # shares only 1
    feed(s, "q", [0, 1])
    own = s.current["q"].number
    row = s.signals(s.context("q", T0 + 3), 10, own=own).matrix[NEIGHBOURS]
    assert row[9] == 1.0 and row[8] == 0.0  # one neighbour: a's items only
    without_own = SessionRecommender(neighbours=1)
    feed(without_own, "q", [0, 1])
    assert not without_own.signals([0, 1], 10, own=without_own.current["q"].number).matrix.any(
        axis=1
    )[NEIGHBOURS]


def test_memory_is_bounded() -> None:
    s = SessionRecommender(max_items=3, max_sessions=2, max_rules=2, sample=2)
    for u in range(5):
        feed(s, f"u{u}", list(range(10)))
    assert len(s.store) == 2
    assert max(len(sessions) for sessions in s.item_sessions.values()) <= 4
    assert all(len(items) <= 3 for items in s.store.values())
    assert all(len(state.items) <= 3 for state in s.current.values())
    assert all(len(nb) <= 4 for nb in s.rules)
    s.forget("u0")
    assert "u0" not in s.current


def clicks(engine: FeedbackEngine, user: str, items: list[str], t: float, session: str) -> float:
    for item in items:
        engine.process(Event("click", f"{user}-{t}", user, item, t, session_id=session))
        t += 10
    return t


def test_engine_ranks_the_session_first_and_explains_every_item() -> None:
    engine = FeedbackEngine(EngineConfig(seed=3))
    t = T0
    for n in range(20):  # many visitors go shoes -> socks -> laces
        t = clicks(engine, f"v{n}", ["shoes", "socks", "laces"], t, f"s{n}")
    t = clicks(engine, "pop", ["hat"] * 5 + ["scarf"] * 5, t, "p")  # popular elsewhere
    clicks(engine, "me", ["hat", "shoes"], t, "mine")
    recs = engine.recommend("me", k=5)
    assert [r.item_id for r in recs[:3]] == ["shoes", "socks", "laces"]
    assert {r.item_id for r in recs[3:]} == {"hat", "scarf"}
    reasons = {r.item_id: r.reason for r in recs}
    assert reasons["laces"] == "viewed in sessions like yours"
    assert reasons["shoes"] == "the item you are viewing"
    assert reasons["socks"] == "often viewed next after shoes"
    assert reasons["hat"] == "viewed earlier in this session"
    assert all(r.reason for r in recs)


def test_engine_session_context_from_the_request_and_its_expiry() -> None:
    engine = FeedbackEngine(EngineConfig(seed=3, session_gap_s=600.0))
    t = T0
    for n in range(10):
        t = clicks(engine, f"v{n}", ["a", "b"], t, f"s{n}")
    # an unknown visitor viewing "a": the rule a -> b applies at once
    assert [r.item_id for r in engine.recommend("new", k=2, item_id="a")] == ["a", "b"]
    # no session context: the blend alone, which excludes nothing clicked
    plain = engine.recommend("new", k=2)
    assert plain and all(r.reason != "the item you are viewing" for r in plain)
    engine.process(Event("click", "x", "late", "c", t + 10_000))  # no session_id
    assert engine.recommend("late", k=1)[0].item_id == "c"
    engine.process(Event("click", "y", "other", "a", t + 20_000))  # the clock moves on
    assert engine.recommend("late", k=1)[0].reason != "the item you are viewing"


def test_after_a_purchase_or_review_the_session_leads_only_on_request() -> None:
    engine = FeedbackEngine(EngineConfig(seed=3))
    t = clicks(engine, "u", ["a", "b"], T0, "s")
    assert engine.recommend("u", k=1)[0].reason == "the item you are viewing"
    engine.process(Event("review", "r", "u", "z", t, rating=5.0))
    assert all(r.reason != "the item you are viewing" for r in engine.recommend("u", k=3))
    asked = engine.recommend("u", k=1, session_id="s")
    assert asked[0].item_id == "b" and asked[0].reason == "the item you are viewing"
    clicks(engine, "u", ["c"], t + 1, "s")  # browsing again
    assert engine.recommend("u", k=1)[0].item_id == "c"


def test_forget_drops_the_session() -> None:
    engine = FeedbackEngine(EngineConfig(seed=3))
    clicks(engine, "u", ["a", "b"], T0, "s")
    assert "u" in engine.sessions.current
    engine.forget("u")
    assert "u" not in engine.sessions.current
    assert np.isfinite(engine.recommender.score(engine._profile("u", T0), 2).scores).all()


def test_strategies_pass_the_request_context_to_the_engine() -> None:
    from models.strategies import Strategies

    engine = FeedbackEngine(EngineConfig(seed=3))
    t = T0
    for n in range(5):
        t = clicks(engine, f"v{n}", ["a", "b"], t, f"s{n}")
    s = Strategies(seed=1)
    assert s.recommend("blend", engine, "new", k=2, item_id="a")[0].item_id == "a"
    pool = s.recommend("explore", engine, "new", k=2, key="k", item_id="a")
    assert {r.item_id for r in pool} <= {"a", "b"}


def test_with_session_scales_the_blend_over_the_items_it_did_not_exclude() -> None:
    rng = np.random.default_rng(3)
    n = 50
    matrix = rng.random((4, n)) * (rng.random((4, n)) < 0.2)
    sig = SessionSignals(matrix, [1], [])
    weights = np.array([4.0, 0.5, 1.0, 1.0])
    blend = rng.normal(size=n)
    blend[[3, 17, 40]] = -np.inf
    blend[8] = np.nan  # not a score: excluded like -inf
    scores, unit = with_session(blend, sig, weights, 0.2)
    finite = np.isfinite(blend)
    low, high = blend[finite].min(), blend[finite].max()
    expected = np.zeros(n)
    expected[finite] = (blend[finite] - low) / (high - low)
    expected *= 0.2
    # Bit for bit the dense formula: published scores must not move by an ulp.
    assert np.array_equal(unit, expected)
    assert np.array_equal(scores[finite], (weights @ matrix + expected)[finite])
    assert np.isneginf(scores[~finite]).all()
    for flat in (np.full(n, 2.0), np.full(n, -np.inf)):  # nothing to scale
        scores, unit = with_session(flat, sig, weights, 0.2)
        assert not unit.any()
        assert np.array_equal(np.isneginf(scores), np.isneginf(flat))


def test_strongest_names_the_largest_contribution_first_on_ties() -> None:
    m = np.array([[0.0, 0.25, 0.0], [0.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.5, 0.0, 0.0]])
    sig = SessionSignals(m, [0], [])
    w = np.array([4.0, 0.5, 1.0, 1.0])
    unit = np.array([0.1, 0.2, 0.3])
    assert strongest(sig, w, unit, [0, 1, 2]) == [2, 0, len(SESSION_FEATURES)]
    assert strongest(sig, w, unit, [2, 0]) == [len(SESSION_FEATURES), 2]
    assert strongest(sig, w, unit, []) == []


def test_a_voting_session_that_grows_or_leaves_the_store_votes_as_it_is_now() -> None:
    s = SessionRecommender(max_sessions=2)
    feed(s, "a", [0, 1])
    votes = s.signals([0], 10).matrix[NEIGHBOURS]
    assert votes[1] > 0 and votes[5] == 0.0  # a votes for its items, as arrays now
    feed(s, "a", [5], t=T0 + 2)  # a's stored session grows after it voted
    assert s.signals([0], 10).matrix[NEIGHBOURS][5] == votes[1]
    again = pickle.loads(pickle.dumps(s))  # checkpoints leave the arrays out
    assert "_store_arrays" not in s.__getstate__()
    assert np.array_equal(again.signals([0], 10).matrix, s.signals([0], 10).matrix)
    feed(s, "b", [7], t=T0 + 20)
    feed(s, "c", [8], t=T0 + 20)  # a's session leaves the store: it no longer votes
    assert not s.signals([0], 10).matrix[NEIGHBOURS].any()
    assert len(s._store_arrays) <= len(s.store) == 2
    s.signals([7], 10), s.signals([8], 10)
    s.erase("b")  # b's session and its array go
    assert len(s._store_arrays) <= len(s.store) == 1


def test_summed_by_key_is_unique_and_bincount_bit_for_bit() -> None:
    rng = np.random.default_rng(5)
    for spread in (40, 10_000_000):  # counted over the range, and sorted
        keys = rng.integers(0, spread, 300) + 1_000_000
        weights = rng.random(300) / 7
        unique, where = np.unique(keys, return_inverse=True)
        got_keys, got_sums = _summed_by_key(keys, weights)
        assert np.array_equal(got_keys, unique)
        assert np.array_equal(got_sums, np.bincount(where, weights=weights))
