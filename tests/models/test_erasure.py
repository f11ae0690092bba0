"""FeedbackEngine.erase: no structure of the engine keeps an erased user's id."""

from __future__ import annotations

import pickle

from models.engine import EngineConfig, FeedbackEngine
from models.events import Event

T = 1_700_000_000.0
VICTIM = "victim-0042"


def busy_engine() -> FeedbackEngine:
    engine = FeedbackEngine(EngineConfig(seed=1))
    for u in range(30):
        for i in range(5):
            item = f"i{(u + i) % 12}"
            engine.process(Event("purchase", f"e{u}-{i}", f"user{u}", item, T + u * 100 + i,
                                 quantity=1, price=2.0, order_id=f"o{u}"))
            engine.process(Event("review", f"r{u}-{i}", f"user{u}", item, T + u * 100 + i + 0.5,
                                 rating=4.0, text="great"))
    # Eight orders a day apart: a churn due date is scheduled for the victim.
    for i in range(8):
        engine.process(Event("purchase", f"v{i}", VICTIM, f"i{i}", T + 5000 + i * 86_400,
                             quantity=1, price=3.0, order_id=f"vo{i}"))
        engine.process(Event("click", f"vc{i}", VICTIM, f"i{i + 1}", T + 5001 + i * 86_400))
    engine.process(Event("review", "vr", VICTIM, "i3", T + 9 * 86_400, rating=5.0, text="ok"))
    engine.tick(T + 9 * 86_400)
    return engine


def test_erase_leaves_no_trace_of_the_id_in_the_pickled_engine() -> None:
    engine = busy_engine()
    assert VICTIM.encode() in pickle.dumps(engine)
    due_dates = sum(1 for entry in engine.churn.heap if entry[1] == VICTIM)
    assert due_dates >= 1
    assert VICTIM in engine.sessions.current
    # The live session, the profile and each due date.
    assert engine.erase(VICTIM) == 1 + 1 + due_dates
    assert VICTIM.encode() not in pickle.dumps(engine)
    assert engine.erase(VICTIM) == 0


def test_forget_alone_leaves_the_churn_due_date_behind() -> None:
    # Why erase is more than eviction's forget: the lazy heap keeps the id.
    engine = busy_engine()
    engine.forget(VICTIM)
    assert VICTIM.encode() in pickle.dumps(engine)


def test_an_erased_user_who_comes_back_is_a_new_user() -> None:
    engine = busy_engine()
    engine.erase(VICTIM)
    engine.process(Event("click", "later", VICTIM, "i1", T + 20 * 86_400))
    summary = engine.user_summary(VICTIM)
    assert summary is not None
    assert summary["clicks"] == 1 and summary["orders"] == 0
    assert summary["first_seen"] == T + 20 * 86_400


def test_erase_drops_the_live_session_from_the_session_neighbour_store() -> None:
    # The store holds no id, but the live session's item list is the user's own.
    engine = busy_engine()
    number = engine.sessions.current[VICTIM].number
    assert number in engine.sessions.store
    engine.erase(VICTIM)
    assert number not in engine.sessions.store
    assert all(number not in recent for recent in engine.sessions.item_sessions.values())


def test_erasing_a_session_the_bounded_store_or_item_lists_have_dropped() -> None:
    from models.session import SessionRecommender

    # The store keeps the last 2 sessions: a's is pushed out by b's and c's.
    store = SessionRecommender(max_sessions=2)
    for n, user in enumerate("abc"):
        store.learn_one(user, 7, float(n), None)
    assert store.current["a"].number not in store.store
    assert store.erase("a") == 1 and "a" not in store.current
    assert list(store.store) == [store.current["b"].number, store.current["c"].number]

    # Item 5's list of recent sessions is cut back to the last one: a's is gone from it.
    lists = SessionRecommender(sample=1)
    for n, user in enumerate("abcd"):
        lists.learn_one(user, 5, float(n), None)
    number = lists.current["a"].number
    assert number in lists.store and number not in lists.item_sessions[5]
    kept = list(lists.item_sessions[5])
    assert lists.erase("a") == 1
    assert number not in lists.store and lists.item_sessions[5] == kept
