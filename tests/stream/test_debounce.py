"""The worker's debounce of recommendations across batches: the step itself
(:class:`stream.debounce.Debounce`) and the processor that runs it
(``Processor(debounce=True)``).

The wall clock is injected: every "later" below is a clock the test moves.
"""

from __future__ import annotations

import orjson
import pytest
from prometheus_client import CollectorRegistry

from models.engine import FeedbackEngine
from models.events import Event
from stream.debounce import Debounce
from stream.metrics import Metrics
from stream.processor import DictStore, InputMessage, Processor
from stream.settings import Settings, SettingsError
from stream.stored_profile import HELD_TRIGGER, from_changelog

NOW = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def make(
    store: DictStore | None = None, engine: FeedbackEngine | None = None, **overrides: object
) -> tuple[Processor, Settings, Clock]:
    settings = Settings.from_env({}, **overrides)
    clock = Clock()
    proc = Processor(
        settings, engine or FeedbackEngine(), DictStore() if store is None else store,
        Metrics(CollectorRegistry()), clock=clock, debounce=True,
    )
    return proc, settings, clock


def purchase(eid: str, user: str, item: str, ts: str = "2024-01-01T10:00:00Z") -> dict:
    return {"type": "purchase", "event_id": eid, "user_id": user, "item_id": item,
            "timestamp": ts, "quantity": 1, "price": 3.0}


class Feed:
    """Input messages with increasing offsets on one partition."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.offset = 0

    def __call__(self, event: dict[str, object]) -> InputMessage:
        topic = self.settings.topic_of(str(event["type"]))
        self.offset += 1
        return InputMessage(
            topic, 0, self.offset, str(event["user_id"]).encode(), orjson.dumps(event), NOW
        )


def recs(settings: Settings, out: list) -> list[dict]:
    return [orjson.loads(o.value) for o in out if o.topic == settings.topic_recommendations]


def warm(proc: Processor, feed: Feed) -> None:
    """A catalogue to recommend from: other users bought a, b and c."""
    proc.handle([feed(purchase(f"w{i}", f"w{i}", item))
                 for i, item in enumerate("abcabc")])
    proc.publish_all()
    proc.settle()


def offsets(messages: list[InputMessage]) -> list[int]:
    return [m.offset for m in messages]


def test_a_basket_split_over_batches_is_ranked_once_after_its_last_line() -> None:
    proc, s, clock = make()
    feed = Feed(s)
    warm(proc, feed)
    first = [feed(purchase("x1", "xia", "b")), feed(purchase("z1", "zoe", "a"))]
    out = recs(s, proc.handle(first))
    # Xia's line is followed on the partition by another user's: her basket is
    # complete. Zoe's is the partition's last in the batch: it may go on.
    assert [(r["user_id"], r["trigger_event_id"]) for r in out] == [("xia", "x1")]
    held, released = proc.settle()
    assert offsets(held) == [first[1].offset] and released == []
    assert proc.profiles["zoe"][HELD_TRIGGER] == "z1"
    clock.now += 0.01
    second = [feed(purchase("z2", "zoe", "b"))]  # the same invoice (event time)
    assert recs(s, proc.handle(second)) == []
    held, released = proc.settle()
    # z1's hold passed to z2.
    assert offsets(held) == offsets(second) and offsets(released) == [first[1].offset]
    clock.now += 0.01
    third = [feed(purchase("y1", "yan", "c"))]
    out = recs(s, proc.handle(third))
    # A batch without a trigger of hers: published, naming the basket's last line.
    assert [(r["user_id"], r["trigger_event_id"]) for r in out] == [("zoe", "z2")]
    assert HELD_TRIGGER not in proc.profiles["zoe"]
    held, released = proc.settle()
    assert offsets(released) == offsets(second) and offsets(held) == offsets(third)


def test_a_drained_partition_publishes_its_last_users_basket_at_the_batch_end() -> None:
    """Nothing was left past the batch on her partition at the consumer's last
    fetch: no more lines have been sent, so her recommendation goes out now
    instead of waiting a fetch cycle for the next batch."""
    proc, s, clock = make()
    feed = Feed(s)
    warm(proc, feed)
    marks: dict[tuple[str, int], int] = {}
    proc.highwater = lambda topic, partition: marks.get((topic, partition))
    line = feed(purchase("z1", "zoe", "a"))
    part = (line.topic, line.partition)
    marks[part] = line.offset + 2  # one more record on the broker: her basket may go on
    assert recs(s, proc.handle([line])) == []
    assert offsets(proc.settle()[0]) == [line.offset]
    clock.now += 0.01
    more = feed(purchase("z2", "zoe", "b"))
    marks[part] = more.offset + 1  # the batch read the partition to its end
    out = recs(s, proc.handle([more]))
    assert [(r["user_id"], r["trigger_event_id"]) for r in out] == [("zoe", "z2")]
    held, released = proc.settle()
    assert held == [] and offsets(released) == [line.offset]
    assert HELD_TRIGGER not in proc.profiles["zoe"]
    # A mark the consumer does not know (not fetched yet, or revoked) holds.
    del marks[part]
    last = feed(purchase("z3", "zoe", "c", ts="2024-01-01T11:00:00Z"))
    assert recs(s, proc.handle([last])) == []
    assert offsets(proc.settle()[0]) == [last.offset]


def test_between_batches_the_quiet_period_and_the_deadline_publish() -> None:
    proc, s, clock = make(recommend_debounce_seconds=0.1, recommend_max_delay_seconds=0.3)
    feed = Feed(s)
    warm(proc, feed)
    proc.handle([feed(purchase("z1", "zoe", "a"))])
    clock.now += 0.05
    assert proc.publish_due() == []  # her triggers may not have stopped yet
    clock.now += 0.06
    assert [r["trigger_event_id"] for r in recs(s, proc.publish_due())] == ["z1"]
    assert HELD_TRIGGER not in proc.profiles["zoe"]
    # A user whose triggers never stop for long is answered at the deadline,
    # naming the latest trigger.
    for i in range(4):
        proc.handle([feed(purchase(f"q{i}", "quinn", "a"))])
        clock.now += 0.09
        out = recs(s, proc.publish_due())
        if out:
            break
    assert i == 3 and [r["trigger_event_id"] for r in out] == ["q3"]


def test_a_batch_without_her_trigger_publishes_though_she_is_the_partition_last() -> None:
    """The next batch's only record is a producer's resend of her trigger: she
    is still the partition's last user, but no new trigger of hers came, so her
    basket is over and the batch's end publishes it (not the quiet period)."""
    proc, s, clock = make()
    feed = Feed(s)
    warm(proc, feed)
    first = feed(purchase("z1", "zoe", "a"))
    assert recs(s, proc.handle([first])) == []
    assert offsets(proc.settle()[0]) == [first.offset]
    clock.now += 0.01  # well within the quiet period and the deadline
    resent = feed(purchase("z1", "zoe", "a"))
    out = recs(s, proc.handle([resent]))
    assert [(r["user_id"], r["trigger_event_id"]) for r in out] == [("zoe", "z1")]
    assert HELD_TRIGGER not in proc.profiles["zoe"]
    held, released = proc.settle()
    assert held == [] and offsets(released) == [first.offset]


def test_a_later_invoice_publishes_the_held_one_first() -> None:
    proc, s, _ = make()
    feed = Feed(s)
    warm(proc, feed)
    out = proc.handle([
        feed(purchase("z1", "zoe", "a")),
        feed(purchase("z2", "zoe", "b", ts="2024-01-02T10:00:00Z")),
    ])
    assert [r["trigger_event_id"] for r in recs(s, out)] == ["z1"]
    assert [r["trigger_event_id"] for r in recs(s, proc.publish_all())] == ["z2"]


def test_a_held_recommendation_survives_a_crash_through_the_profile() -> None:
    """The profile written to the changelog names the held trigger; the worker
    that reads the held record again (replay) holds it again, though the event is
    a duplicate, and publishes it."""
    proc, s, _ = make()
    feed = Feed(s)
    warm(proc, feed)
    trigger = feed(purchase("z1", "zoe", "a"))
    proc.handle([trigger])
    held, _ = proc.settle()
    assert offsets(held) == [trigger.offset]
    # Crash: the held recommendation is lost with the process; the profiles
    # (changelog) and the models survive, the held offset was not committed.
    store = DictStore({
        u: from_changelog(orjson.loads(orjson.dumps(p.to_json())))
        for u, p in proc.profiles.items()
    })
    successor, _, _ = make(store=store, engine=proc.engine)
    assert recs(s, successor.handle([trigger])) == []
    assert offsets(successor.settle()[0]) == [trigger.offset]
    out = recs(s, successor.publish_all())
    assert [(r["user_id"], r["trigger_event_id"]) for r in out] == [("zoe", "z1")]
    assert successor.profiles["zoe"]["events"]["purchase"] == 1  # learned once
    # Replayed once more after publication: a plain duplicate now.
    assert successor.handle([trigger]) == [] and successor.publish_all() == []


def test_revoked_partitions_drop_their_held_recommendations_unreleased() -> None:
    proc, s, _ = make()
    feed = Feed(s)
    warm(proc, feed)
    trigger = feed(purchase("z1", "zoe", "a"))
    proc.handle([trigger])
    assert proc.drop_held({(trigger.topic, 5)}) == 0
    assert proc.drop_held({(trigger.topic, trigger.partition)}) == 1
    assert proc.settle() == ([], [])  # neither held nor released: never committed here
    assert proc.publish_all() == []
    assert proc.profiles["zoe"][HELD_TRIGGER] == "z1"  # for the next owner


def test_without_debounce_every_batch_publishes_its_own() -> None:
    settings = Settings.from_env({})
    proc = Processor(settings, FeedbackEngine(), DictStore(), Metrics(CollectorRegistry()),
                     clock=lambda: NOW)
    feed = Feed(settings)
    warm(proc, feed)
    out = proc.handle([feed(purchase("z1", "zoe", "a"))])
    assert [r["trigger_event_id"] for r in recs(settings, out)] == ["z1"]
    assert proc.settle() == ([], [])
    assert HELD_TRIGGER not in proc.profiles["zoe"]
    # 0 turns the worker's debounce off too.
    assert make()[0].debounce.enabled
    assert not make(recommend_debounce_seconds=0)[0].debounce.enabled


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"FEEDBACK_RECOMMEND_DEBOUNCE_SECONDS": "-0.1"}, "FEEDBACK_RECOMMEND_DEBOUNCE_SECONDS"),
        ({"FEEDBACK_RECOMMEND_DEBOUNCE_SECONDS": "0.5",
          "FEEDBACK_RECOMMEND_MAX_DELAY_SECONDS": "0.2"}, "FEEDBACK_RECOMMEND_MAX_DELAY_SECONDS"),
    ],
)
def test_the_debounce_settings_are_validated_at_start_up(env: dict[str, str], name: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env(env)


def test_the_user_cap_spares_a_user_whose_recommendation_is_held() -> None:
    proc, s, clock = make(user_retention_seconds=0, max_users=2)
    feed = Feed(s)
    warm(proc, feed)
    # Zoe is the least recently active by event time, and her recommendation is held.
    proc.handle([feed(purchase("z1", "zoe", "a", ts="2023-12-31T10:00:00Z"))])
    assert proc.profiles["zoe"][HELD_TRIGGER] == "z1"
    proc.evict()
    assert "zoe" in proc.engine.profiles and "zoe" in proc.profiles
    clock.now += 1.0
    out = recs(s, proc.publish_due())
    assert [r["trigger_event_id"] for r in out] == ["z1"]
    assert out[0]["items"][0]["reason"] != "popular with everyone"  # ranked as herself
    proc.handle([feed(purchase("y1", "yan", "b"))])  # three users again
    proc.evict()  # nothing held for her now: the cap takes her, the least recent
    assert "zoe" not in proc.engine.profiles and "zoe" not in proc.profiles


# -- the step alone: state + event -> what to publish, the clock passed in --------


def record(offset: int, partition: int = 0) -> InputMessage:
    return InputMessage("purchases", partition, offset, b"u", b"")


def trigger_event(event_id: str, user: str, t: float) -> Event:
    return Event("purchase", event_id, user, "i", t, quantity=1)


def test_the_step_merges_close_triggers_and_returns_a_distant_earlier_one() -> None:
    d = Debounce(min_interval=60.0, quiet=0.1, max_delay=1.0)
    d.start_batch()
    assert d.trigger("u", {}, trigger_event("e1", "u", 100.0), record(1), 90.0, now=5.0) is None
    assert d.trigger("u", {}, trigger_event("e2", "u", 130.0), record(2), 100.0, now=5.5) is None
    held = d.held["u"]
    # e2 replaced e1 and kept its previous time and first hold time.
    assert (held.event.event_id, held.previous, held.since, held.last) == ("e2", 90.0, 5.0, 5.5)
    hold, release = d.settle()
    assert [r.offset for r in hold] == [2] and release == []  # 1 held and released at once
    earlier = d.trigger("u", {}, trigger_event("e3", "u", 200.0), record(3), 130.0, now=6.0)
    assert earlier is held and "u" not in d  # due now: the caller publishes, then triggers again
    assert d.trigger("u", {}, trigger_event("e3", "u", 200.0), record(3), 130.0, now=6.0) is None
    hold, release = d.settle()
    assert [r.offset for r in hold] == [3] and [r.offset for r in release] == [2]


def test_the_step_is_due_at_batch_end_between_batches_and_at_the_deadline() -> None:
    d = Debounce(min_interval=60.0, quiet=0.1, max_delay=1.0)
    d.start_batch()
    d.trigger("a", {}, trigger_event("a1", "a", 100.0), record(1, partition=0), None, now=5.0)
    d.trigger("b", {}, trigger_event("b1", "b", 100.0), record(2, partition=1), None, now=5.0)
    # a is not the last user of partition 0; b is partition 1's last: held on.
    due = d.batch_due(5.0, {("purchases", 0): "x", ("purchases", 1): "b"})
    assert [h.event.event_id for h in due] == ["a1"] and list(d.held) == ["b"]
    assert d.due(5.05) == []  # b's triggers may not have stopped yet
    d.start_batch()
    d.trigger("b", {}, trigger_event("b2", "b", 101.0), record(3, partition=1), None, now=5.9)
    assert d.due(5.95) == []
    assert [h.event.event_id for h in d.due(6.0)] == ["b2"]  # since 5.0: the 1 s deadline
    # Disabled, everything held is due at the end of its batch.
    off = Debounce(min_interval=60.0, quiet=0.1, max_delay=1.0, enabled=False)
    off.start_batch()
    off.trigger("b", {}, trigger_event("b1", "b", 100.0), record(4), None, now=5.0)
    assert len(off.batch_due(5.0, {("purchases", 0): "b"})) == 1


def test_the_step_publishes_a_partitions_last_user_once_the_partition_is_drained() -> None:
    d = Debounce(min_interval=60.0, quiet=0.1, max_delay=1.0)
    d.start_batch()
    d.trigger("a", {}, trigger_event("a1", "a", 100.0), record(1, partition=0), None, now=5.0)
    d.trigger("b", {}, trigger_event("b1", "b", 100.0), record(2, partition=1), None, now=5.0)
    last = {("purchases", 0): "a", ("purchases", 1): "b"}
    due = d.batch_due(5.0, last, drained={("purchases", 1)})
    assert [h.event.event_id for h in due] == ["b1"] and list(d.held) == ["a"]


def test_at_batch_end_a_hold_of_an_earlier_batch_is_due_and_one_of_this_batch_is_not() -> None:
    # The user stays the partition's last in every batch below, and the clock
    # stays short of the 1 s deadline: only the batch decides.
    d = Debounce(min_interval=60.0, quiet=0.1, max_delay=1.0)
    last = {("purchases", 0): "u"}
    d.start_batch()
    d.trigger("u", {}, trigger_event("u1", "u", 100.0), record(1), None, now=5.0)
    assert d.batch_due(5.0, last) == []
    d.start_batch()  # a batch that brings no trigger of hers
    assert [h.event.event_id for h in d.batch_due(5.1, last)] == ["u1"]
    for batch in range(3):  # a trigger in each batch keeps the merged one held
        d.start_batch()
        d.trigger("u", {}, trigger_event(f"v{batch}", "u", 200.0), record(2 + batch), None,
                  now=5.2 + batch * 0.1)
        assert d.batch_due(5.2 + batch * 0.1, last) == []
    d.start_batch()
    assert [h.event.event_id for h in d.batch_due(5.6, last)] == ["v2"]
    # Held in this batch, but past the deadline since its first merged trigger: due.
    d.start_batch()
    d.trigger("u", {}, trigger_event("w1", "u", 300.0), record(9), None, now=6.0)
    assert [h.event.event_id for h in d.batch_due(7.5, last)] == ["w1"]


def test_dropping_a_partition_forgets_its_holds_unreleased() -> None:
    d = Debounce(min_interval=60.0, quiet=0.1, max_delay=1.0)
    d.start_batch()
    d.trigger("a", {}, trigger_event("a1", "a", 100.0), record(1, partition=0), None, now=5.0)
    d.trigger("b", {}, trigger_event("b1", "b", 100.0), record(2, partition=1), None, now=5.0)
    assert d.drop({("purchases", 1)}) == 1 and list(d.held) == ["a"]
    hold, release = d.settle()
    assert [r.offset for r in hold] == [1] and release == []
    # Announced as held by that settle(), then revoked: still neither released
    # nor held again.
    assert d.drop({("purchases", 0)}) == 1 and len(d) == 0
    assert d.settle() == ([], [])


def test_the_step_is_due_exactly_at_its_intervals() -> None:
    # Times exact in binary floating point: the boundaries themselves are tested.
    d = Debounce(min_interval=60.0, quiet=0.5, max_delay=2.0)
    d.start_batch()
    d.trigger("u", {}, trigger_event("u1", "u", 100.0), record(1), None, now=5.0)
    # Exactly min_interval later (event time) is not "less than": the held one is due.
    earlier = d.trigger("u", {}, trigger_event("u2", "u", 160.0), record(2), None, now=5.25)
    assert earlier is not None and earlier.event.event_id == "u1"
    d.trigger("u", {}, trigger_event("u2", "u", 160.0), record(2), None, now=5.25)
    assert d.due(5.5) == [] and [h.event.event_id for h in d.due(5.75)] == ["u2"]  # quiet 0.5 s
    d.trigger("v", {}, trigger_event("v1", "v", 100.0), record(3), None, now=6.0)
    for i in range(1, 8):  # never quiet for 0.5 s: due at the 2 s deadline exactly
        d.trigger("v", {}, trigger_event(f"v{i + 1}", "v", 100.0 + i), record(3 + i), None,
                  now=6.0 + i * 0.25)
    assert d.due(7.75) == [] and [h.event.event_id for h in d.due(8.0)] == ["v8"]
    # At batch end too, the deadline itself is due.
    d.start_batch()
    d.trigger("w", {}, trigger_event("w1", "w", 100.0), record(9), None, now=9.0)
    assert d.batch_due(11.0, {("purchases", 0): "w"})[0].event.event_id == "w1"
