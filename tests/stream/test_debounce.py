"""The worker's debounce of recommendations across batches (Processor(debounce=True)).

The wall clock is injected: every "later" below is a clock the test moves.
"""

from __future__ import annotations

import orjson
import pytest
from prometheus_client import CollectorRegistry

from models.engine import FeedbackEngine
from stream.metrics import Metrics
from stream.processor import PENDING_TRIGGER, DictStore, InputMessage, Processor
from stream.settings import Settings, SettingsError

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
    proc.flush_all()
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
    assert proc.profiles["zoe"][PENDING_TRIGGER] == "z1"
    clock.now += 0.01
    second = [feed(purchase("z2", "zoe", "b"))]  # the same invoice (event time)
    assert recs(s, proc.handle(second)) == []
    held, released = proc.settle()
    # z1's obligation passed to z2.
    assert offsets(held) == offsets(second) and offsets(released) == [first[1].offset]
    clock.now += 0.01
    third = [feed(purchase("y1", "yan", "c"))]
    out = recs(s, proc.handle(third))
    # A batch without a trigger of hers: published, naming the basket's last line.
    assert [(r["user_id"], r["trigger_event_id"]) for r in out] == [("zoe", "z2")]
    assert PENDING_TRIGGER not in proc.profiles["zoe"]
    held, released = proc.settle()
    assert offsets(released) == offsets(second) and offsets(held) == offsets(third)


def test_between_batches_the_quiet_period_and_the_deadline_publish() -> None:
    proc, s, clock = make(recommend_debounce_seconds=0.1, recommend_max_delay_seconds=0.3)
    feed = Feed(s)
    warm(proc, feed)
    proc.handle([feed(purchase("z1", "zoe", "a"))])
    clock.now += 0.05
    assert proc.flush_due() == []  # her triggers may not have stopped yet
    clock.now += 0.06
    assert [r["trigger_event_id"] for r in recs(s, proc.flush_due())] == ["z1"]
    assert PENDING_TRIGGER not in proc.profiles["zoe"]
    # A user whose triggers never stop for long is answered at the deadline,
    # naming the latest trigger.
    for i in range(4):
        proc.handle([feed(purchase(f"q{i}", "quinn", "a"))])
        clock.now += 0.09
        out = recs(s, proc.flush_due())
        if out:
            break
    assert i == 3 and [r["trigger_event_id"] for r in out] == ["q3"]


def test_a_later_invoice_publishes_the_owed_one_first() -> None:
    proc, s, _ = make()
    feed = Feed(s)
    warm(proc, feed)
    out = proc.handle([
        feed(purchase("z1", "zoe", "a")),
        feed(purchase("z2", "zoe", "b", ts="2024-01-02T10:00:00Z")),
    ])
    assert [r["trigger_event_id"] for r in recs(s, out)] == ["z1"]
    assert [r["trigger_event_id"] for r in recs(s, proc.flush_all())] == ["z2"]


def test_an_owed_recommendation_survives_a_crash_through_the_profile() -> None:
    """The profile written to the changelog names the owed trigger; the worker
    that reads the held record again (replay) owes it again, though the event is
    a duplicate, and publishes it."""
    proc, s, _ = make()
    feed = Feed(s)
    warm(proc, feed)
    trigger = feed(purchase("z1", "zoe", "a"))
    proc.handle([trigger])
    held, _ = proc.settle()
    assert offsets(held) == [trigger.offset]
    # Crash: the owed recommendation is lost with the process; the profiles
    # (changelog) and the models survive, the held offset was not committed.
    store = DictStore({u: orjson.loads(orjson.dumps(p)) for u, p in proc.profiles.items()})
    successor, _, _ = make(store=store, engine=proc.engine)
    assert recs(s, successor.handle([trigger])) == []
    assert offsets(successor.settle()[0]) == [trigger.offset]
    out = recs(s, successor.flush_all())
    assert [(r["user_id"], r["trigger_event_id"]) for r in out] == [("zoe", "z1")]
    assert successor.profiles["zoe"]["events"]["purchase"] == 1  # learned once
    # Replayed once more after publication: a plain duplicate now.
    assert successor.handle([trigger]) == [] and successor.flush_all() == []


def test_revoked_partitions_drop_their_owed_recommendations_unreleased() -> None:
    proc, s, _ = make()
    feed = Feed(s)
    warm(proc, feed)
    trigger = feed(purchase("z1", "zoe", "a"))
    proc.handle([trigger])
    assert proc.drop_pending({(trigger.topic, 5)}) == 0
    assert proc.drop_pending({(trigger.topic, trigger.partition)}) == 1
    assert proc.settle() == ([], [])  # neither held nor released: never committed here
    assert proc.flush_all() == []
    assert proc.profiles["zoe"][PENDING_TRIGGER] == "z1"  # for the next owner


def test_without_debounce_every_batch_publishes_its_own() -> None:
    settings = Settings.from_env({})
    proc = Processor(settings, FeedbackEngine(), DictStore(), Metrics(CollectorRegistry()),
                     clock=lambda: NOW)
    feed = Feed(settings)
    warm(proc, feed)
    out = proc.handle([feed(purchase("z1", "zoe", "a"))])
    assert [r["trigger_event_id"] for r in recs(settings, out)] == ["z1"]
    assert proc.settle() == ([], [])
    assert PENDING_TRIGGER not in proc.profiles["zoe"]
    # 0 turns the worker's debounce off too.
    assert not make(recommend_debounce_seconds=0)[0].debounce


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


def test_the_user_cap_spares_a_user_whose_recommendation_is_owed() -> None:
    proc, s, clock = make(user_retention_seconds=0, max_users=2)
    feed = Feed(s)
    warm(proc, feed)
    # Zoe is the least recently active by event time, and her recommendation is owed.
    proc.handle([feed(purchase("z1", "zoe", "a", ts="2023-12-31T10:00:00Z"))])
    assert proc.profiles["zoe"][PENDING_TRIGGER] == "z1"
    proc.evict()
    assert "zoe" in proc.engine.profiles and "zoe" in proc.profiles
    clock.now += 1.0
    out = recs(s, proc.flush_due())
    assert [r["trigger_event_id"] for r in out] == ["z1"]
    assert out[0]["items"][0]["reason"] != "popular with everyone"  # ranked as herself
    proc.handle([feed(purchase("y1", "yan", "b"))])  # three users again
    proc.evict()  # nothing owed to her now: the cap takes her, the least recent
    assert "zoe" not in proc.engine.profiles and "zoe" not in proc.profiles
