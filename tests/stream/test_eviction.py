"""The processor's eviction step: models and profile store forget inactive users."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from models.engine import FeedbackEngine
from stream.contract import format_timestamp
from stream.metrics import Metrics
from stream.processor import DictStore, InputMessage, Processor
from stream.settings import Settings, SettingsError
from stream.stored_profile import (
    compact_recommendations,
    expand_recommendations,
    from_changelog,
)
from stream.views import profile_view

NOW = 1_800_000_000.0  # the injected wall clock (2027)
DAY = 86_400.0
T0 = 1_700_000_000.0


def make(**overrides: object) -> tuple[Processor, Settings, CollectorRegistry]:
    settings = Settings.from_env({}, **overrides)
    registry = CollectorRegistry()
    proc = Processor(settings, FeedbackEngine(), DictStore(), Metrics(registry), clock=lambda: NOW)
    return proc, settings, registry


def purchase(settings: Settings, eid: str, user: str, item: str, t: float) -> InputMessage:
    event = {"type": "purchase", "event_id": eid, "user_id": user, "item_id": item,
             "timestamp": format_timestamp(t), "quantity": 1, "price": 3.0}
    return InputMessage(settings.topic_purchases, 0, 0, user.encode(), orjson.dumps(event), NOW)


def evicted(registry: CollectorRegistry, reason: str) -> float:
    return registry.get_sample_value("feedback_users_evicted_total", {"reason": reason}) or 0.0


def test_inactive_users_leave_models_and_profiles() -> None:
    proc, s, reg = make(user_retention_seconds=30 * DAY)
    proc.handle([purchase(s, f"e{i}", f"u{i}", f"sku-{i % 3}", T0 + i * DAY) for i in range(10)])
    assert len(proc.profiles) == 10 and len(proc.engine.profiles) == 10
    assert proc.evict() == 0  # everyone within 30 days of the newest event
    proc.handle([purchase(s, "late", "u9", "sku-1", T0 + 45 * DAY)])
    # Newest event at T0 + 45 d: users last active before T0 + 15 d go (u0..u8).
    assert proc.evict() == 9
    assert sorted(proc.profiles) == ["u9"] and list(proc.engine.profiles) == ["u9"]
    assert evicted(reg, "inactive") == 9 and evicted(reg, "cap") == 0


def test_eviction_work_per_call_is_bounded() -> None:
    proc, s, _ = make(user_retention_seconds=DAY, evictions_per_tick=4)
    proc.handle([purchase(s, f"e{i}", f"u{i}", "sku", T0 + i) for i in range(10)])
    proc.handle([purchase(s, "now", "zed", "sku", T0 + 10 * DAY)])
    assert [proc.evict(), proc.evict(), proc.evict(), proc.evict()] == [4, 4, 2, 0]
    assert sorted(proc.profiles) == ["zed"]


def test_a_returning_user_gets_a_fresh_profile() -> None:
    proc, s, _ = make(user_retention_seconds=DAY)
    proc.handle([purchase(s, "e1", "ann", "a", T0), purchase(s, "e2", "bob", "b", T0)])
    proc.handle([purchase(s, "e3", "bob", "a", T0 + 5 * DAY)])
    assert proc.evict() == 1
    assert proc.profiles.get("ann") is None
    proc.handle([purchase(s, "e4", "ann", "b", T0 + 6 * DAY)])
    ann = proc.profiles.get("ann")
    assert ann is not None
    assert ann["events"]["purchase"] == 1 and ann["recent_event_ids"] == ["e4"]
    assert ann["first_event_time"] == T0 + 6 * DAY
    assert proc.engine.profiles["ann"].purchase_lines == 1


def test_cap_evicts_the_least_recently_active() -> None:
    proc, s, reg = make(user_retention_seconds=0, max_users=3)
    proc.handle([purchase(s, f"e{i}", f"u{i}", "sku", T0 + i) for i in range(5)])
    # u0 active again an hour later (the cap orders users by the hour of last activity)
    proc.handle([purchase(s, "again", "u0", "sku", T0 + 3600)])
    assert proc.evict() == 2
    assert sorted(proc.profiles) == ["u0", "u3", "u4"]
    assert evicted(reg, "cap") == 2


def test_zero_retention_keeps_everyone() -> None:
    proc, s, _ = make(user_retention_seconds=0)
    proc.handle([purchase(s, "e1", "ann", "a", T0), purchase(s, "e2", "bob", "b", T0 + 400 * DAY)])
    assert proc.evict() == 0 and len(proc.profiles) == 2


def test_sweep_deletes_stored_profiles_the_models_do_not_know() -> None:
    # Profiles restored from a taken-over partition's changelog: none in the models.
    proc, s, reg = make(user_retention_seconds=DAY)
    for user, last in (("old", T0), ("recent", T0 + 9.5 * DAY)):
        restored = from_changelog({"user_id": user, "last_event_time": last})
        proc.profiles.put(user, restored, None)  # type: ignore[arg-type]
    proc.handle([purchase(s, "e1", "ann", "a", T0 + 10 * DAY)])
    assert proc.evict() == 1
    assert sorted(proc.profiles) == ["ann", "recent"]
    assert evicted(reg, "inactive") == 1


def test_retention_settings_are_validated() -> None:
    with pytest.raises(SettingsError, match="FEEDBACK_USER_RETENTION_SECONDS"):
        Settings.from_env({"FEEDBACK_USER_RETENTION_SECONDS": "60"})
    with pytest.raises(SettingsError, match="FEEDBACK_MAX_USERS"):
        Settings.from_env({"FEEDBACK_MAX_USERS": "-1"})
    with pytest.raises(SettingsError, match="FEEDBACK_EVICTIONS_PER_TICK"):
        Settings.from_env({"FEEDBACK_EVICTIONS_PER_TICK": "0"})
    assert Settings.from_env({"FEEDBACK_USER_RETENTION_SECONDS": "0"}).user_retention_seconds == 0


def test_profile_keeps_recommendations_once_and_view_answers_as_before() -> None:
    proc, s, _ = make()
    proc.handle([purchase(s, "e1", "ann", "a", T0), purchase(s, "e2", "ann", "b", T0 + 1)])
    out = proc.handle([purchase(s, "e3", "bob", "a", T0 + 2)])
    payload = orjson.loads(next(o.value for o in out if o.topic == s.topic_recommendations))
    bob = proc.profiles.get("bob")
    assert bob is not None
    assert len(bob["recommendations"]) == 3 * len(payload["items"])  # one flat list
    items = [{k: v for k, v in i.items() if k != "rank"} for i in payload["items"]]
    assert profile_view(bob, None)["recommendations"] == items
    wire = orjson.loads(orjson.dumps(bob.to_json()))
    view = profile_view(from_changelog(wire), None)  # as read from the changelog
    assert view["recommendations"] == items
    # A profile stored in the list-of-dicts form still answers the same.
    old = dict(wire, recommendations=items)
    assert profile_view(from_changelog(old), None)["recommendations"] == items
    assert expand_recommendations(compact_recommendations(items)) == items


def test_a_quiet_customer_is_alerted_on_before_being_evicted() -> None:
    proc, s, reg = make(user_retention_seconds=DAY)
    weekly = [purchase(s, f"l{n}", "loyal", f"sku-{n}", T0 + n * 7 * DAY) for n in range(4)]
    for m in weekly:
        proc.handle([m])
    last_order = T0 + 21 * DAY
    proc.handle([purchase(s, "x1", "other", "sku-9", last_order + 10 * DAY)])
    assert proc.evict() == 0  # past the one-day horizon, but its churn alert is still due
    assert proc.profiles.get("loyal") is not None
    due = proc.engine.profiles["loyal"].churn_due
    assert due is not None and due > last_order + 10 * DAY
    proc.handle([purchase(s, "x2", "other", "sku-9", due + 1)])
    alerts = [orjson.loads(o.value) for o in proc.tick() if o.topic == s.topic_alerts]
    assert [(a["kind"], a["subject"]) for a in alerts] == [("churn_risk", "loyal")]
    assert proc.evict() == 1
    assert proc.profiles.get("loyal") is None and "loyal" not in proc.engine.profiles
    assert evicted(reg, "inactive") == 1


def test_eviction_frees_exposure_logs_and_alert_cooldowns() -> None:
    proc, s, _ = make(user_retention_seconds=30 * DAY)
    users = [f"u{i}" for i in range(10)]
    batch = [purchase(s, f"e{i}", u, f"sku-{i % 3}", T0 + i * DAY) for i, u in enumerate(users)]
    proc.handle([*batch, purchase(s, "late", "u9", "sku-1", T0 + 45 * DAY)])
    for u in users:  # as an alert on each user would have left them
        assert proc.engine.cooldown.allow("anomalous_behaviour", u, T0 + 45 * DAY)
    assert set(proc._exposure_logs) == set(users)
    assert proc.evict() == 9
    assert set(proc._exposure_logs) == {"u9"}
    assert {user for _, user in proc.engine.cooldown.last} == {"u9"}


# -- the Eviction step alone (stream.eviction), on a real engine and a dict store ------


def eviction_over(users: dict[str, float], **options: Any) -> tuple[Any, DictStore, Any]:
    """An Eviction over an engine that saw one purchase per user at the given time."""
    from models.events import Event
    from stream.eviction import Eviction

    engine, store, registry = FeedbackEngine(), DictStore(), CollectorRegistry()
    for i, (user, t) in enumerate(users.items()):
        engine.process(Event("purchase", f"e{i}", user, "sku", t, quantity=1, price=1.0))
        store[user] = from_changelog({"user_id": user, "last_event_time": t})
    counter = Metrics(registry).users_evicted
    options = {"retention": 0.0, "max_users": 0, "per_tick": 100, **options}
    return Eviction(engine, store, counter, **options), store, registry


def test_inactive_users_and_the_cap_share_one_budget() -> None:
    users = {"old1": T0, "old2": T0, **{f"a{i}": T0 + (40 + i) * DAY for i in range(4)}}
    ev, store, reg = eviction_over(users, retention=30 * DAY, max_users=2, per_tick=3)
    assert ev.evict(T0 + 45 * DAY) == 3  # two inactive, then one for the cap
    assert (evicted(reg, "inactive"), evicted(reg, "cap")) == (2, 1)
    assert sorted(store) == ["a1", "a2", "a3"] and sorted(ev.engine.profiles) == sorted(store)
    assert ev.evict(T0 + 45 * DAY) == 1 and sorted(store) == ["a2", "a3"]


def test_small_settings_still_count() -> None:
    ev, store, _ = eviction_over({"u1": 0.0 + T0, "u2": T0 + 1, "u3": T0 + 2}, max_users=1)
    assert ev.evict(T0 + 2) == 2 and list(store) == ["u3"]  # a cap of one user
    ev, store, _ = eviction_over({"u1": T0, "u2": T0 + 10}, retention=1.0)
    assert ev.evict(T0 + 10) == 1 and list(store) == ["u2"]  # a retention of one second


def test_without_retention_no_profile_is_swept() -> None:
    ev, store, _ = eviction_over({"u1": T0})
    store["taken-over"] = {"user_id": "taken-over", "last_event_time": T0}  # type: ignore[assignment]
    assert ev.evict(T0 + 100 * DAY) == 0
    assert sorted(store) == ["taken-over", "u1"]


def test_the_sweep_steps_over_users_the_models_know() -> None:
    ev, store, reg = eviction_over({"known": T0 + 10 * DAY}, retention=DAY)
    store["stale"] = from_changelog({"user_id": "stale", "last_event_time": T0})
    assert ev.evict(T0 + 10 * DAY) == 1
    assert list(store) == ["known"] and evicted(reg, "inactive") == 1


def test_the_cap_spares_users_whose_recommendation_is_held() -> None:
    ev, store, _ = eviction_over(
        {"held": T0, "a": T0 + 1, "b": T0 + 2}, max_users=1, held={"held"}
    )
    assert ev.evict(T0 + 2) == 2
    assert list(store) == ["held"] and list(ev.engine.profiles) == ["held"]
