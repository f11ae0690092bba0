"""The worker's batch logic without a broker: real engine, in-memory profile store."""

from __future__ import annotations

import math

import orjson
import pytest
from prometheus_client import CollectorRegistry

from models.engine import FeedbackEngine
from stream.contract import format_timestamp
from stream.metrics import Metrics
from stream.processor import DictStore, InputMessage, OutputMessage, Processor, Slicer
from stream.settings import Settings, SettingsError
from tests.stream.loop_turns import loop_turns

NOW = 1_800_000_000.0  # the injected wall clock (2027)


def make(**overrides: object) -> tuple[Processor, Settings, CollectorRegistry]:
    settings = Settings.from_env({}, **overrides)
    registry = CollectorRegistry()
    proc = Processor(settings, FeedbackEngine(), DictStore(), Metrics(registry), clock=lambda: NOW)
    return proc, settings, registry


def msg(settings: Settings, event: dict[str, object], offset: int = 0) -> InputMessage:
    topic = settings.topic_of(str(event["type"]))
    return InputMessage(
        topic, 0, offset, str(event["user_id"]).encode(), orjson.dumps(event), NOW - 0.5
    )


def purchase(eid: str, user: str, item: str, ts: str = "2024-01-01T10:00:00Z") -> dict:
    return {"type": "purchase", "event_id": eid, "user_id": user, "item_id": item,
            "timestamp": ts, "quantity": 1, "price": 3.0}


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def test_purchases_update_profiles_and_publish_recommendations() -> None:
    proc, s, reg = make()
    batch = [
        msg(s, purchase("e1", "ann", "a")),
        msg(s, purchase("e2", "ann", "b")),
        msg(s, purchase("e3", "bob", "a")),
    ]
    out = proc.handle(batch)
    recs = [orjson.loads(o.value) for o in out if o.topic == s.topic_recommendations]
    # Ann has bought everything the catalogue knows after e1 and e2, so nothing is
    # published for her; Bob, who bought "a", is offered "b".
    assert [r["trigger_event_id"] for r in recs] == ["e3"]
    bob = recs[-1]
    assert bob["user_id"] == "bob"
    assert "a" not in [i["item_id"] for i in bob["items"]]
    assert "b" in [i["item_id"] for i in bob["items"]]
    profile = proc.profiles.get("ann")
    assert profile is not None and profile["events"]["purchase"] == 2
    assert value(reg, "feedback_events_total", type="purchase", outcome="processed") == 3
    assert value(reg, "feedback_recommendations_emitted_total",
                 strategy="blend") == 1


def test_duplicate_event_ids_are_learned_once() -> None:
    proc, s, reg = make()
    proc.handle([msg(s, purchase("e1", "ann", "a"))])
    out = proc.handle([msg(s, purchase("e1", "ann", "a"), offset=1)])
    assert out == []
    profile = proc.profiles.get("ann")
    assert profile is not None and profile["events"]["purchase"] == 1
    assert value(reg, "feedback_events_total", type="purchase", outcome="duplicate") == 1


def test_dedup_window_is_bounded() -> None:
    proc, s, _ = make(dedup_window=3)
    proc.handle([msg(s, purchase(f"e{i}", "ann", f"i{i}")) for i in range(5)])
    profile = proc.profiles.get("ann")
    assert profile is not None
    assert profile["recent_event_ids"] == ["e2", "e3", "e4"]


def test_clicks_publish_at_most_once_per_interval() -> None:
    proc, s, _ = make(recommend_min_interval_seconds=60)
    clicks = [
        {"type": "click", "event_id": f"c{i}", "user_id": "ann", "item_id": "x",
         "timestamp": f"2024-01-01T10:00:{i * 10:02d}Z"}
        for i in range(6)
    ] + [{"type": "click", "event_id": "late", "user_id": "ann", "item_id": "y",
          "timestamp": "2024-01-01T10:01:05Z"}]
    out = proc.handle([msg(s, c) for c in clicks])
    triggers = [orjson.loads(o.value)["trigger_event_id"] for o in out
                if o.topic == s.topic_recommendations]
    assert triggers == ["c0", "late"]


@pytest.mark.parametrize(
    ("value", "key", "reason"),
    [
        (b"\xff", b"ann", "undecodable"),
        (b'{"type": "purchase"}', b"ann", "missing_field"),
        (orjson.dumps(purchase("e1", "ann", "a")), b"bob", "key_mismatch"),
        (orjson.dumps(purchase("e1", "ann", "a", ts="2031-01-01T00:00:00Z")), b"ann",
         "out_of_range"),
    ],
)
def test_bad_input_becomes_a_dead_letter_with_its_reason(
    value: bytes, key: bytes, reason: str
) -> None:
    proc, s, reg = make()
    bad = InputMessage(s.topic_purchases, 2, 41, key, value, NOW + 0.25)
    good = msg(s, purchase("g", "carl", "z"))
    out = proc.handle([bad, good])
    dead = [o for o in out if o.topic == s.topic_deadletter]
    assert len(dead) == 1
    headers = dict(dead[0].headers)
    assert headers["deadletter.reason"] == reason.encode()
    assert headers["source.topic"] == s.topic_purchases.encode()
    assert headers["source.partition"] == b"2" and headers["source.offset"] == b"41"
    assert headers["source.timestamp"] == b"2027-01-15T08:00:00.250Z"  # NOW + 0.25 s
    assert headers["deadletter.detail"], "the dead letter says why"
    assert dead[0].value == value and dead[0].key == key
    assert value_of(reg, reason) == 1
    assert proc.profiles.get("carl") is not None, "the good event after it was processed"


def value_of(reg: CollectorRegistry, reason: str) -> float:
    return value(reg, "feedback_deadletter_total", reason=reason, topic="feedback.purchases")


def test_short_pseudonymisation_keys_are_refused_at_start_up() -> None:
    with pytest.raises(SettingsError, match="FEEDBACK_PSEUDONYMISE_KEY"):
        Settings.from_env({"FEEDBACK_PSEUDONYMISE_KEY": "secret"})


def test_pseudonymised_ids_never_reach_outputs_or_state() -> None:
    proc, s, _ = make(pseudonymise_key="a-secret-of-32-bytes-for-tests!!")
    out = proc.handle([msg(s, purchase("e1", "alice@example.com", "a"))])
    assert proc.profiles.get("alice@example.com") is None
    assert len(proc.profiles) == 1
    for o in out:
        assert b"alice" not in o.value and b"alice" not in (o.key or b"")


def test_a_restored_bandit_keeps_choosing_from_what_it_learned() -> None:
    from models.bandit import SegmentedThompson
    from models.strategies import STRATEGIES

    restored = SegmentedThompson(STRATEGIES, seed=1)
    for _ in range(500):  # an earlier run's evidence: only popularity earns clicks
        for arm in STRATEGIES:
            restored.expose(None, arm)
        restored.reward(None, "popularity")
    settings = Settings.from_env({}, bandit=True)
    proc = Processor(settings, FeedbackEngine(), DictStore(), Metrics(CollectorRegistry()),
                     clock=lambda: NOW, bandit=restored)
    assert proc.bandit is restored
    out = proc.handle([msg(settings, purchase(f"e{i}", f"u{i}", f"sku-{i % 3}"), i)
                       for i in range(12)])
    strategies = {orjson.loads(o.value)["strategy"] for o in out
                  if o.topic == settings.topic_recommendations}
    assert strategies == {"popularity"}
    # Without the setting a restored bandit is not used; with it and none given, a new one.
    assert Processor(Settings.from_env({}), FeedbackEngine(), DictStore(),
                     Metrics(CollectorRegistry()), bandit=restored).bandit is None
    assert make(bandit=True)[0].bandit is not None


@pytest.mark.parametrize("value", ["0", "-1", "6", "soon"])
def test_the_batch_wait_is_validated_at_start_up(value: str) -> None:
    with pytest.raises(SettingsError, match="FEEDBACK_BATCH_MAX_WAIT_SECONDS"):
        Settings.from_env({"FEEDBACK_BATCH_MAX_WAIT_SECONDS": value})
    quick = Settings.from_env({"FEEDBACK_BATCH_MAX_WAIT_SECONDS": "0.03"})
    assert quick.batch_max_wait_seconds == 0.03


@pytest.mark.parametrize(
    ("strategies", "control_rotates"),
    [("blend,explore", False), ("blend,explore,popularity", True)],
)
def test_the_fatigue_rule_applies_to_the_listed_strategies_only(
    strategies: str, control_rotates: bool
) -> None:
    # Everyone in one variant at a time: the popularity control, then the blend.
    def second_list(variant: str) -> tuple[list[str], list[str]]:
        proc, s, _ = make(
            experiment_variants=variant, fatigue_impressions=1, fatigue_strategies=strategies
        )
        history = [purchase(f"h{u}{i}", f"u{u}", f"i{i}") for u in range(6) for i in range(u, 24)]
        proc.handle([msg(s, e, n) for n, e in enumerate(history)])
        lists = []
        for n in range(2):
            out = proc.handle([
                msg(s, purchase(f"z{n}", "zed", f"i{n}", ts=f"2024-01-02T10:0{n}:00Z"), 100 + n),
                msg(s, purchase(f"o{n}", "u0", "i0", ts=f"2024-01-02T10:0{n}:01Z"), 200 + n),
            ])
            recs = [orjson.loads(o.value) for o in out if o.topic == s.topic_recommendations]
            lists.append([i["item_id"] for r in recs if r["user_id"] == "zed" for i in r["items"]])
        return lists[0], lists[1]

    first, second = second_list("popularity")
    assert first and second
    assert bool(set(first) & set(second)) is not control_rotates
    first, second = second_list("blend")
    assert first and second and not set(first) & set(second)  # the blend always rotates


def test_unknown_fatigue_strategies_are_refused_at_start_up() -> None:
    with pytest.raises(SettingsError, match="FEEDBACK_FATIGUE_STRATEGIES: unknown strategy"):
        Settings.from_env({"FEEDBACK_FATIGUE_STRATEGIES": "blend,psychic"})
    assert Settings.from_env({"FEEDBACK_FATIGUE_STRATEGIES": ""}).fatigue_strategies == ""


def test_contact_details_reach_neither_the_models_nor_the_checkpoint() -> None:
    from stream import checkpoint

    proc, s, _ = make()
    email, phone = "zorblaxq.quimby@plonkshop.example", "+44 20 7946 0958"
    batch = [
        msg(s, {"type": "review", "event_id": f"r{i}", "user_id": f"u{i % 5}",
                "item_id": f"sku-{i % 3}", "timestamp": "2024-01-01T10:00:00Z",
                "rating": 1 + i % 5, "title": f"wugglefrump, write to {email}",
                "text": f"Wugglefrump fabric. Call {phone} or mail {email} anytime"}, i)
        for i in range(60)
    ]
    proc.handle(batch)
    blob = checkpoint.dumps(checkpoint.Models(proc.engine, proc.bandit))
    state = blob + orjson.dumps({u: p.to_json() for u, p in proc.profiles.items()})
    # The review words reach the sentiment vocabulary, so the check can see a leak.
    assert b"wugglefrump" in blob
    for part in (b"zorblaxq", b"quimby", b"plonkshop", b"7946", b"0958"):
        assert part not in state, f"{part!r} of an e-mail or phone is in the model state"


def test_the_bandit_moves_traffic_to_the_strategy_that_earns_clicks() -> None:
    """A closed loop: users click only what the popularity strategy recommends.
    The bandit starts from the prior and ends up sending most traffic there."""
    proc, s, _ = make(bandit=True)
    good = "popularity"
    shares: list[float] = []
    t = 1_704_103_200.0  # 2024-01-01T10:00:00Z
    clicks: list[InputMessage] = []
    offset = 0
    for rnd in range(12):
        batch = list(clicks)
        for u in range(60):
            t += 1
            offset += 1
            batch.append(msg(s, purchase(f"p{rnd}-{u}", f"u{u}", f"sku-{(u + rnd) % 40}",
                                         ts=format_timestamp(t)), offset))
        out = proc.handle(batch)
        recs = [orjson.loads(o.value) for o in out if o.topic == s.topic_recommendations]
        assert len(recs) > 30
        shares.append(sum(r["strategy"] == good for r in recs) / len(recs))
        clicks = []
        for r in recs:
            if r["strategy"] == good:
                t += 1
                offset += 1
                clicks.append(msg(s, {
                    "type": "click", "event_id": f"c-{r['recommendation_id']}",
                    "user_id": r["user_id"], "item_id": r["items"][0]["item_id"],
                    "timestamp": format_timestamp(t),
                    "recommendation_id": r["recommendation_id"]}, offset))
    # Exploration first (about a third each), then most traffic on the earning arm.
    assert shares[0] < 0.6, shares
    assert sum(shares[-3:]) / 3 > 0.8, shares


def test_a_tombstone_is_dead_lettered_with_an_empty_value() -> None:
    proc, s, _ = make()
    out = proc.handle([InputMessage(s.topic_clicks, 1, 5, b"ann", None, None)])
    (dead,) = [o for o in out if o.topic == s.topic_deadletter]
    headers = dict(dead.headers)
    assert dead.value == b"" and dead.key == b"ann"
    assert headers["deadletter.detail"] == b"the message has no value (null / tombstone)"
    assert "source.timestamp" not in headers  # the record had none


def test_attributed_revenue_is_counted_in_the_purchase_currency() -> None:
    proc, s, reg = make()
    proc.handle([msg(s, purchase("e1", "ann", "a")), msg(s, purchase("e2", "ann", "b")),
                 msg(s, purchase("e3", "bob", "a"))])
    # Bob was recommended "b": he buys two, in pounds.
    bought = {**purchase("e4", "bob", "b", "2024-01-01T10:05:00Z"), "quantity": 2,
              "currency": "GBP"}
    proc.handle([msg(s, bought, 3)])
    labels = {"variant": "blend", "strategy": "blend"}
    assert value(reg, "feedback_attributed_revenue_total", **labels, currency="GBP") == 6.0
    assert value(reg, "feedback_attributed_revenue_total", **labels,
                 currency="unspecified") == 0.0


def test_a_users_exposure_log_is_written_once_per_batch_with_every_attribution(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from models.attribution import UserExposures

    proc, s, reg = make()
    proc.handle([msg(s, purchase("e1", "ann", "a")), msg(s, purchase("e2", "ann", "b")),
                 msg(s, purchase("e3", "bob", "a"))])
    shown = proc.profiles["bob"]["exposures"][-1]
    calls = []
    compact = UserExposures.compact
    monkeypatch.setattr(UserExposures, "compact", lambda log: calls.append(1) or compact(log))
    # Bob clicks the recommended "b" three times, then buys it: four attributed
    # events of one user, one batch (a basket's lines come so).
    clicks = [{"type": "click", "event_id": f"c{i}", "user_id": "bob", "item_id": "b",
               "timestamp": f"2024-01-01T10:0{i + 1}:00Z", "recommendation_id": shown[0]}
              for i in range(3)]
    bought = purchase("e4", "bob", "b", "2024-01-01T10:05:00Z")
    proc.handle([msg(s, e, 3 + n) for n, e in enumerate([*clicks, bought])])
    log = proc.profiles["bob"]["exposures"]
    hit = next(e for e in log if e[0] == shown[0])
    assert hit[6] and hit[7] and hit[8] == ["b"]  # clicked, converted, the clicked item
    labels = {"variant": "blend", "strategy": "blend"}
    assert value(reg, "feedback_attributed_purchases_total", **labels) == 1
    # Once for the attributions, once more if the batch published bob a new list.
    assert len(calls) == 1 + any(e[0] != shown[0] for e in log[log.index(hit) + 1:])


def test_a_batch_in_slices_pauses_between_events_and_gives_what_handle_gives() -> None:
    # A slice budget far below one event's work: a pause after every event.
    events = [purchase(f"e{i}", f"u{i % 7}", f"i{i % 11}") for i in range(60)]
    whole, s, _ = make()
    sliced, s2, sliced_reg = make(batch_slice_seconds=1e-9)
    expected = whole.handle([msg(s, e, n) for n, e in enumerate(events)])
    steps = sliced.handle_in_slices([msg(s2, e, n) for n, e in enumerate(events)])
    processed_at_pauses = []
    while True:
        try:
            next(steps)
        except StopIteration as end:
            out = end.value
            break
        processed_at_pauses.append(
            value(sliced_reg, "feedback_events_total", type="purchase", outcome="processed")
        )
    # A pause between every two events (the counter counts whole events); the
    # publishing and the profile writes after the last event pause too.
    assert {float(n) for n in range(1, 60)} <= set(processed_at_pauses)
    assert processed_at_pauses == sorted(processed_at_pauses)
    assert without_reasons(out) == without_reasons(expected)
    assert sliced.engine.recommend("u3", 5) == whole.engine.recommend("u3", 5)


def without_reasons(out: list[OutputMessage]) -> list[tuple[str, object]]:
    """Outputs less their reasons: a pair reason depends on DP noise (stream/dp.py)."""
    decoded = []
    for o in out:
        payload = orjson.loads(o.value) if o.value else None
        if payload is not None:
            for item in payload.get("items", ()):
                item.pop("reason")
        decoded.append((o.topic, payload))
    return decoded


@pytest.mark.parametrize("value", ["0", "-1", "2"])
def test_the_batch_slice_is_validated_at_start_up(value: str) -> None:
    with pytest.raises(SettingsError, match="FEEDBACK_BATCH_SLICE_SECONDS"):
        Settings.from_env({"FEEDBACK_BATCH_SLICE_SECONDS": value})


def test_an_author_quoting_their_own_id_does_not_teach_it_to_the_sentiment_model() -> None:
    proc, s, _ = make()
    proc.handle([
        msg(s, {"type": "review", "event_id": f"r{i}", "user_id": "kwyjibo-77",
                "item_id": "sku-1", "timestamp": "2024-01-01T10:00:00Z", "rating": 1 + i % 5,
                "title": "KWYJIBO-77 says", "text": f"I am kwyjibo-77 and the fabric is {i}"}, i)
        for i in range(20)
    ])
    weights = repr(list(proc.engine.sentiment.classifier.weights)).lower()
    assert "fabric" in weights  # the review words do reach the model
    assert "kwyjibo" not in weights


def test_the_engine_checks_quality_on_the_configured_share() -> None:
    proc, _, _ = make(quality_sample=0.25)
    assert proc.engine.quality_sample == 0.25


def test_a_slicer_pauses_at_a_steps_yield_once_its_slice_is_up_and_shares_it() -> None:
    done: list[str] = []

    def steps(name: str, n: int):  # type: ignore[no-untyped-def]
        for k in range(n):
            if k:
                yield  # between two steps
            done.append(f"{name}{k}")
        return name

    def pauses(slicer: Slicer, *runs: tuple[str, int]) -> list[list[str]]:
        at: list[list[str]] = []

        def all_runs():  # type: ignore[no-untyped-def]
            for name, n in runs:
                assert (yield from slicer.run(steps(name, n))) == name
        for _ in all_runs():
            at.append(list(done))
        done.clear()
        return at

    assert pauses(Slicer(math.inf), ("a", 3)) == []
    # Every step boundary once the slice is always up; none after the last step.
    assert pauses(Slicer(0.0), ("a", 3)) == [["a0"], ["a0", "a1"]]
    # Two step generators in turn share the slicer's slice: one that is up when
    # the first ends pauses at the second's first boundary.
    slicer = Slicer(0.0)
    assert pauses(slicer, ("a", 1), ("b", 2)) == [["a0", "b0"]]


async def test_a_slicers_async_turn_lets_the_loop_run_only_once_its_slice_is_up() -> None:
    async def boundaries(slicer: Slicer, n: int) -> int:
        async with loop_turns() as turns:
            for _ in range(n):
                await slicer.turn()
        return len(turns)

    assert await boundaries(Slicer(math.inf), 5) == 0
    assert await boundaries(Slicer(0.0), 5) == 5


def test_profiles_hold_each_list_once_and_survive_the_changelog_whole() -> None:
    from faust.serializers.codecs import get_codec

    from stream.faust.table_store import PROFILE_CODEC
    from stream.stored_profile import StoredProfile

    proc, s, _ = make()
    proc.handle([msg(s, purchase("e1", "ann", "a")), msg(s, purchase("e2", "ann", "b")),
                 msg(s, purchase("e3", "bob", "a"), 2)])
    shown = proc.profiles["bob"].exposures[-1]
    click = {"type": "click", "event_id": "c1", "user_id": "bob", "item_id": shown[1][0],
             "timestamp": "2024-01-01T10:01:00Z", "recommendation_id": shown[0]}
    proc.handle([msg(s, click, 3), msg(s, purchase("e4", "bob", "b", "2024-01-01T10:05:00Z"), 4)])
    codec = get_codec(PROFILE_CODEC)
    for user, profile in proc.profiles.items():
        if profile.rec_items:  # the list of a user answered: one tuple for both
            assert profile.exposures[-1][1] is profile.rec_items, user
        back = codec.loads(codec.dumps(profile))
        for name in StoredProfile.__slots__:
            assert getattr(back, name) == getattr(profile, name), (user, name)
    bob = proc.profiles["bob"]
    assert bob.rec_items
    clicked = next(e for e in bob.exposures if e[0] == shown[0])
    assert clicked[6] and clicked[8] == (shown[1][0],)
    assert bob.events == {"click": 1, "purchase": 2, "review": 0}
