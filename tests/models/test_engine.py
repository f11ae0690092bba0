"""FeedbackEngine: the interface the worker relies on."""

from __future__ import annotations

import pickle

import numpy as np
import orjson

from models.engine import Alert, EngineConfig, FeedbackEngine, Outcome, Recommendation
from models.events import Event

T0 = 1_700_000_000.0


def mixed_stream(seed: int, n: int = 600) -> list[Event]:
    rng = np.random.default_rng(seed)
    out: list[Event] = []
    t = T0
    for i in range(n):
        t += float(rng.exponential(600.0))
        user, item = f"u{rng.integers(40)}", f"i{rng.integers(60)}"
        kind = rng.random()
        if kind < 0.5:
            out.append(Event("click", f"e{i}", user, item, t, session_id=f"s{int(t) // 3600}"))
        elif kind < 0.85:
            qty = int(rng.integers(1, 3)) if rng.random() > 0.05 else -1
            out.append(Event("purchase", f"e{i}", user, item, t, quantity=qty, price=4.0))
        else:
            rating = float(rng.integers(1, 6))
            text = "love it, great fit" if rating >= 4 else "poor quality, returned"
            out.append(Event("review", f"e{i}", user, item, t, rating=rating, text=text))
    return out


def test_outcomes_carry_predictions_for_the_right_events() -> None:
    engine = FeedbackEngine(EngineConfig(seed=0))
    for event in mixed_stream(0):
        out = engine.process(event)
        assert isinstance(out, Outcome)
        assert (out.hit is not None) == event.is_positive
        assert (out.rating_error is not None) == (event.type == "review")
        assert (out.sentiment is not None) == (event.type == "review")
        assert out.sentiment is None or 0.0 <= out.sentiment <= 1.0
        assert (out.anomaly_score is not None) <= (event.type == "purchase")
        assert all(isinstance(a, Alert) for a in out.alerts)


def test_rating_error_is_predicted_before_learning() -> None:
    engine = FeedbackEngine(EngineConfig(seed=0))
    first = engine.process(Event("review", "r1", "u", "i", T0, rating=5.0))
    assert first.rating_error == 0.0 - 5.0  # nothing learnt yet: the empty model says 0
    second = engine.process(Event("review", "r2", "v", "i", T0 + 1, rating=5.0))
    assert second.rating_error == 0.0  # learnt from the first review only


def test_pickle_round_trip_continues_identically() -> None:
    stream = mixed_stream(1)
    a = FeedbackEngine(EngineConfig(seed=4))
    for event in stream[:400]:
        a.process(event)
    b = pickle.loads(pickle.dumps(a))
    for event in stream[400:]:
        oa, ob = a.process(event), b.process(event)
        assert (oa.hit, oa.rating_error, oa.sentiment, oa.segment) == (
            ob.hit,
            ob.rating_error,
            ob.sentiment,
            ob.segment,
        )
    assert a.recommend("u1") == b.recommend("u1")


def test_same_seed_same_results() -> None:
    stream = mixed_stream(2)
    hits: list[list[bool | None]] = []
    recs: list[list[str]] = []
    for _ in range(2):
        engine = FeedbackEngine(EngineConfig(seed=9))
        hits.append([engine.process(e).hit for e in stream])
        recs.append([r.item_id for r in engine.recommend("u3")])
    assert hits[0] == hits[1] and recs[0] == recs[1]


def test_recommendations_have_scores_reasons_and_k() -> None:
    engine = FeedbackEngine(EngineConfig(seed=0))
    for event in mixed_stream(3):
        engine.process(event)
    recs = engine.recommend("u5", k=7)
    assert len(recs) == 7 and all(isinstance(r, Recommendation) for r in recs)
    assert [r.score for r in recs] == sorted((r.score for r in recs), reverse=True)
    assert all(r.reason for r in recs)
    assert len({r.item_id for r in recs}) == 7
    assert FeedbackEngine().recommend("anyone") == []


def test_user_memory_is_bounded() -> None:
    engine = FeedbackEngine(EngineConfig(seed=0, history_size=5, max_seen_items=30))
    for i in range(200):
        engine.process(Event("click", f"c{i}", "heavy", f"i{i}", T0 + i))
    profile = engine.profiles["heavy"]
    assert len(profile.history) == 5 and len(profile.seen) == 30
    assert profile.clicks == 200  # counters are exact, only item memories are capped


def test_summaries_are_json_able() -> None:
    engine = FeedbackEngine(EngineConfig(seed=0, segment_warmup=10))
    for event in mixed_stream(4):
        engine.process(event)
    summary = engine.user_summary("u1")
    assert summary is not None
    orjson.dumps(summary)
    assert summary["user_id"] == "u1" and summary["segment"] == engine.segment_of("u1")
    assert engine.user_summary("nobody") is None
    sizes = engine.segment_sizes()
    assert sum(sizes.values()) == 40
    profiles = engine.segment_profiles()
    assert set(profiles) == set(sizes)
    assert {"recency_days", "orders", "order_value", "rating_mean", "return_rate"} <= set(
        next(iter(profiles.values()))
    )
    orjson.dumps(profiles, option=orjson.OPT_NON_STR_KEYS)  # segment ids are ints
    item = engine.item_summary("i1")
    assert item is not None
    orjson.dumps(item)


def test_tick_is_cheap_and_returns_alerts() -> None:
    engine = FeedbackEngine(EngineConfig(seed=0))
    for event in mixed_stream(5):
        engine.process(event)
    alerts = engine.tick(T0 + 365 * 86_400.0)
    assert all(a.kind == "churn_risk" for a in alerts)
    assert engine.tick(T0 + 366 * 86_400.0) == []


def test_popular_is_the_all_time_ranking_minus_what_the_user_bought_or_reviewed() -> None:
    engine = FeedbackEngine()
    buys = [("a", "x"), ("b", "x"), ("c", "x"), ("a", "y"), ("b", "y"), ("d", "z")]
    for i, (user, item) in enumerate(buys):
        engine.process(Event("purchase", f"p{i}", user, item, T0 + i, quantity=1, price=1.0))
    engine.process(Event("click", "c0", "d", "x", T0 + 10))
    engine.process(Event("review", "r0", "d", "y", T0 + 11, rating=2.0))
    # d reviewed y and bought z: only x (clicked, not bought) is left, first by count.
    assert [r.item_id for r in engine.popular("d", 3)] == ["x"]
    assert [r.item_id for r in engine.popular("new-user", 3)] == ["x", "y", "z"]
    assert engine.popular("a", 0) == [] and FeedbackEngine().popular("a") == []


def test_quality_sample_checks_a_seeded_share_and_learns_from_every_event() -> None:
    stream = mixed_stream(3, n=1500)
    full = FeedbackEngine(EngineConfig(seed=5))
    sampled = FeedbackEngine(EngineConfig(seed=5))
    sampled.quality_sample = 0.2
    checked: list[str] = []
    for event in stream:
        of, os_ = full.process(event), sampled.process(event)
        assert of.sentiment == os_.sentiment and of.segment == os_.segment
        if os_.hit is not None or os_.rating_error is not None:
            # a checked event's predictions are the unsampled engine's
            assert (os_.hit, os_.rating_error) == (of.hit, of.rating_error)
            checked.append(event.event_id)
    positives = sum(e.is_positive or e.type == "review" for e in stream)
    assert 0.1 * positives < len(checked) < 0.3 * positives
    # every event was learnt from: same blend weights, same recommendations
    np.testing.assert_array_equal(full.recommender.weights, sampled.recommender.weights)
    assert [r.item_id for r in full.recommend("u3")] == [r.item_id for r in sampled.recommend("u3")]
    # the sample is the same events on a second run (a hash of the event id)
    again = FeedbackEngine(EngineConfig(seed=5))
    again.quality_sample = 0.2
    assert checked == [
        e.event_id
        for e in stream
        if (o := again.process(e)).hit is not None or o.rating_error is not None
    ]
