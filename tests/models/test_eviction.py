"""Eviction of inactive users from the engine's per-user state (models only)."""

from __future__ import annotations

import numpy as np

from models.engine import EngineConfig, FeedbackEngine
from models.events import Event
from models.profiles import DAY

T0 = 1_700_000_000.0


def purchase(user: str, item: str, t: float, n: int, order: str | None = None) -> Event:
    return Event("purchase", f"{user}-{n}", user, item, t, quantity=1, price=10.0,
                 order_id=order or f"{user}-o{n}")


def review(user: str, item: str, t: float, n: int) -> Event:
    return Event("review", f"{user}-r{n}", user, item, t, rating=5.0, text="love it")


def engine_with(users: int, step: float = DAY) -> FeedbackEngine:
    """``users`` users, one purchase and one review each, user i active at T0 + i * step."""
    engine = FeedbackEngine(EngineConfig(seed=3, segment_warmup=4))
    for i in range(users):
        t = T0 + i * step
        engine.process(purchase(f"u{i}", f"sku-{i % 7}", t, 0))
        engine.process(review(f"u{i}", f"sku-{i % 7}", t + 1, 0))
    return engine


def per_user_keys(engine: FeedbackEngine, user: str) -> dict[str, bool]:
    return {
        "profile": user in engine.profiles,
        "taste": user in engine.recommender.taste.user_vec,
        "ratings": user in engine.ratings.user_rows or user in engine.ratings.user_bias,
        "segmentation": user in engine.segmentation.index,
        "session": user in engine.sessions.current,
    }


def test_forget_drops_every_per_user_structure() -> None:
    engine = engine_with(10)
    assert all(per_user_keys(engine, "u3").values())
    assert engine.forget("u3")
    assert not any(per_user_keys(engine, "u3").values())
    assert not engine.forget("u3")  # unknown now
    # Every other user is intact and the segmentation arrays stay consistent.
    seg = engine.segmentation
    assert seg.n_users == 9 and sorted(seg.users) == sorted(seg.index)
    for user, row in seg.index.items():
        assert seg.users[row] == user
    n = seg.n_users
    assert int(seg.counts.sum()) == int((seg.labels[:n] >= 0).sum())
    assert np.allclose(seg.total, seg.vectors[:n].sum(axis=0))
    for j in range(seg.k):
        members = seg.labels[:n] == j
        assert np.allclose(seg.sums[j], seg.vectors[:n][members].sum(axis=0))


def test_a_forgotten_user_starts_afresh() -> None:
    engine = engine_with(6)
    engine.forget("u2")
    engine.process(purchase("u2", "sku-1", T0 + 10 * DAY, 9))
    p = engine.profiles["u2"]
    assert p.purchase_lines == 1 and p.reviews == 0 and p.first_seen == T0 + 10 * DAY
    assert len(p.history) == 1


def test_evict_inactive_takes_least_recent_first_and_is_bounded() -> None:
    engine = engine_with(20)
    # Users 0..9 were last active before T0 + 10 days.
    gone = engine.evict_inactive(T0 + 10 * DAY, limit=4)
    assert gone == ["u0", "u1", "u2", "u3"]
    gone = engine.evict_inactive(T0 + 10 * DAY, limit=100)
    assert gone == [f"u{i}" for i in range(4, 10)]
    assert engine.evict_inactive(T0 + 10 * DAY, limit=100) == []
    assert sorted(engine.profiles) == sorted(f"u{i}" for i in range(10, 20))


def test_an_active_user_processed_first_does_not_block_eviction() -> None:
    # Partitions interleave: a newer event can be processed before an older one.
    engine = FeedbackEngine(EngineConfig(seed=3))
    engine.process(purchase("kim", "sku-1", T0 + 2 * DAY, 0))
    engine.process(purchase("ann", "sku-2", T0, 0))
    assert engine.evict_inactive(T0 + DAY, limit=10) == ["ann"]
    assert list(engine.profiles) == ["kim"]


def test_order_of_processing_does_not_matter_beyond_the_limit() -> None:
    # Many newer users processed before the expired ones (a lagging partition).
    engine = FeedbackEngine(EngineConfig(seed=3))
    for i in range(50):
        engine.process(purchase(f"new{i}", "sku-1", T0 + 5 * DAY + i, 0))
    for i in range(5):
        engine.process(purchase(f"old{i}", "sku-2", T0 + i, 0))
    assert engine.evict_inactive(T0 + DAY, limit=3) == ["old0", "old1", "old2"]
    assert engine.evict_inactive(T0 + DAY, limit=3) == ["old3", "old4"]
    assert engine.evict_inactive(T0 + DAY, limit=3) == []
    assert len(engine.profiles) == 50


def test_eviction_inside_the_bucket_straddling_the_horizon_is_exact() -> None:
    engine = FeedbackEngine(EngineConfig(seed=3, activity_bucket_s=DAY))
    for i in range(6):
        engine.process(purchase(f"u{i}", "sku-1", T0 + i * 3600, 0))  # all in one day
    assert sorted(engine.evict_inactive(T0 + 2.5 * 3600, limit=10)) == ["u0", "u1", "u2"]
    assert sorted(engine.profiles) == ["u3", "u4", "u5"]
    assert engine.evict_inactive(T0 + 2.5 * 3600, limit=10) == []


def test_activity_moves_a_user_behind_the_others() -> None:
    engine = engine_with(5)
    engine.process(purchase("u0", "sku-3", T0 + 30 * DAY, 5))
    assert engine.evict_least_recent(keep=4, limit=1) == ["u1"]
    engine = engine_with(5)
    engine.process(purchase("u0", "sku-3", T0 + 30 * DAY, 5))
    assert engine.evict_inactive(T0 + 20 * DAY, limit=100) == ["u1", "u2", "u3", "u4"]
    assert list(engine.profiles) == ["u0"]


def test_a_pending_churn_alert_fires_before_eviction() -> None:
    engine = FeedbackEngine(EngineConfig(seed=1, churn_min_orders=3))
    # A weekly customer: four orders a week apart, then silence.
    for n in range(4):
        engine.process(purchase("loyal", "sku-1", T0 + n * 7 * DAY, n))
    for n in range(3):
        engine.process(purchase(f"once{n}", "sku-2", T0 + n, 0))
    last = T0 + 21 * DAY
    assert engine.profiles["loyal"].churn_due is not None
    # Eviction horizon shorter than the time to the alert: the customer is held.
    now = last + 10 * DAY
    gone = engine.evict_inactive(now - 5 * DAY, limit=100)
    assert "loyal" not in gone and sorted(gone) == ["once0", "once1", "once2"]
    assert "loyal" in engine.profiles
    # The alert fires at its due date, after which the user may go.
    due = engine.profiles["loyal"].churn_due
    assert due is not None
    alerts = engine.tick(due)
    assert [(a.kind, a.subject) for a in alerts] == [("churn_risk", "loyal")]
    assert ("churn_risk", "loyal") in engine.cooldown.last
    assert engine.evict_inactive(due - 5 * DAY, limit=100) == ["loyal"]
    assert engine.profiles == {}
    # The alert's cooldown goes with the user: nothing keyed by the id is left.
    assert not [key for key in engine.cooldown.last if "loyal" in key]


def test_stale_churn_entry_does_not_alert_a_returning_user() -> None:
    engine = FeedbackEngine(EngineConfig(seed=1, churn_min_orders=3))
    for n in range(3):
        engine.process(purchase("u", "sku-1", T0 + n * DAY, n))
    old_due = engine.profiles["u"].churn_due
    assert old_due is not None
    engine.forget("u")  # the hard cap may drop a user with an alert pending
    for n in range(3):  # the same number of orders again: the same churn version
        engine.process(purchase("u", "sku-1", old_due - DAY / 2 + n * 3600, 10 + n))
    new_due = engine.profiles["u"].churn_due
    assert engine.profiles["u"].churn_version == 3 and new_due is not None
    assert new_due > old_due
    # The old heap entry falls due: not an alert for the new profile.
    assert engine.tick(old_due) == []
    assert [a.subject for a in engine.tick(new_due)] == ["u"]


def test_evict_least_recent_caps_the_users() -> None:
    engine = engine_with(10)
    assert engine.evict_least_recent(keep=4, limit=3) == ["u0", "u1", "u2"]
    assert engine.evict_least_recent(keep=4, limit=100) == ["u3", "u4", "u5"]
    assert engine.evict_least_recent(keep=4, limit=100) == []
    assert len(engine.profiles) == 4
    assert len(engine.recommender.taste.user_vec) == 4
    assert engine.segmentation.n_users == 4


def test_the_cap_spares_the_users_it_is_told_to() -> None:
    # The worker's users whose recommendation is still owed: the next least recent go.
    engine = engine_with(10)
    assert engine.evict_least_recent(keep=6, limit=100, spare={"u0", "u2"}) == [
        "u1", "u3", "u4", "u5",
    ]
    assert engine.evict_least_recent(keep=2, limit=100, spare={"u0", "u2", "u9"}) == [
        "u6", "u7", "u8",
    ]
    assert sorted(engine.profiles) == ["u0", "u2", "u9"]  # more than keep: all spared


def test_recommendations_still_work_after_evictions() -> None:
    engine = engine_with(30)
    engine.evict_inactive(T0 + 25 * DAY, limit=1000)
    engine.segmentation.refresh(1000)
    assert engine.recommend("u29")  # item-side models keep what evicted users taught
    assert engine.recommend("u0")  # an evicted user is a new one: popular items
    snapshot_users, x, labels = engine.segmentation.snapshot()
    assert len(snapshot_users) == x.shape[0] == labels.shape[0]
    assert set(snapshot_users) <= set(engine.profiles)
