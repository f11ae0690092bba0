"""Processor.erase and the dead-letter key pseudonym, without a broker."""

from __future__ import annotations

import pickle

import orjson
from prometheus_client import CollectorRegistry

from models.engine import FeedbackEngine
from stream.contract import Rejected
from stream.erasure import ERASED_PARTS
from stream.metrics import Metrics
from stream.privacy import pseudonymise
from stream.processor import DictStore, InputMessage, Processor
from stream.settings import Settings

NOW = 1_800_000_000.0
KEY = "k" * 32


def make(**overrides: object) -> tuple[Processor, Settings]:
    settings = Settings.from_env({}, **overrides)
    proc = Processor(settings, FeedbackEngine(), DictStore(), Metrics(CollectorRegistry()),
                     clock=lambda: NOW, debounce=True)
    return proc, settings


def msg(settings: Settings, event: dict[str, object], offset: int) -> InputMessage:
    return InputMessage(settings.topic_of(str(event["type"])), 0, offset,
                        str(event["user_id"]).encode(), orjson.dumps(event), NOW - 0.5)


def events(user: str, n: int) -> list[dict[str, object]]:
    return [{"type": "purchase", "event_id": f"{user}-{i}", "user_id": user, "item_id": f"i{i}",
             "timestamp": f"2024-01-01T10:{i:02d}:00Z", "quantity": 1, "price": 3.0}
            for i in range(n)]


def test_erase_removes_the_profile_the_models_and_the_owed_recommendation() -> None:
    proc, s = make(pseudonymise_key=KEY)
    proc.handle([msg(s, e, i) for i, e in enumerate(events("bob", 3) + events("ann", 4))])
    stored = pseudonymise("ann", KEY.encode())
    assert proc.profiles.get(stored) is not None and stored in proc.engine.profiles
    proc.settle()

    outputs, erased = proc.erase("ann")
    assert list(erased) == list(ERASED_PARTS)
    assert erased["profile"] == 1 and erased["dedupe_ids"] == 4 and erased["engine_state"] >= 1
    assert erased["pending"] == 1  # ann's last purchase still owed its recommendation
    assert [(o.topic, o.key, o.value) for o in outputs] == [
        (s.topic_recommendations, stored.encode(), None)
    ]
    assert proc.profiles.get(stored) is None and stored not in proc.engine.profiles
    assert stored.encode() not in pickle.dumps(proc.engine)
    _, released = proc.settle()
    assert [m.offset for m in released] == [6]  # the owed trigger may be committed now
    assert all(o.key != stored.encode() for o in proc.publish_all())  # nothing published later
    assert proc.profiles.get(pseudonymise("bob", KEY.encode())) is not None

    _, again = proc.erase("ann")
    assert again["profile"] == again["engine_state"] == again["pending"] == 0


def test_events_after_an_erasure_start_a_new_user() -> None:
    proc, s = make()
    proc.handle([msg(s, e, i) for i, e in enumerate(events("ann", 3))])
    proc.erase("ann")
    late = events("ann", 5)[4]
    proc.handle([msg(s, late, 10)])
    profile = proc.profiles.get("ann")
    assert profile is not None and profile["events"]["purchase"] == 1
    assert profile["recent_event_ids"] == ["ann-4"]


def test_dead_letter_keys_are_pseudonymised_on_request() -> None:
    rejection = Rejected("undecodable", "not JSON")
    bad = InputMessage("feedback.clicks", 0, 1, b"or-c17850", b"\xff", NOW)
    plain, _ = make(pseudonymise_key=KEY)
    assert plain.dead_letter(bad, rejection).key == b"or-c17850"
    hashed, _ = make(pseudonymise_key=KEY, deadletter_pseudonymise_keys=True)
    out = hashed.dead_letter(bad, rejection)
    assert out.key == pseudonymise("or-c17850", KEY.encode()).encode()
    assert out.value == b"\xff"  # the evidence stays as it came


def test_erase_counts_and_drops_every_exposure_including_pulled_lists() -> None:
    from stream.pull import Pulls

    proc, s = make()
    catalogue = [e for u in range(12) for e in events(f"u{u}", 30)]
    proc.handle([msg(s, e, i) for i, e in enumerate(catalogue)])
    proc.settle()
    proc.publish_all()  # the held recommendations are shown now

    def ann(kind: str, event_id: str, item: str, minute: int) -> dict[str, object]:
        event: dict[str, object] = {"type": kind, "event_id": event_id, "user_id": "ann",
                                    "item_id": item, "timestamp": f"2024-01-02T10:{minute:02d}:00Z"}
        if kind == "purchase":
            event.update(quantity=1, price=3.0)
        return event

    def shown() -> list[str]:
        profile = proc.profiles.get("ann")
        assert profile is not None
        return list(profile["exposures"][-1][1])

    # Three lists shown: one converted (bought from, not clicked), one clicked, one neither.
    proc.handle([msg(s, ann("purchase", "a1", "i0", 0), 1000)])
    proc.settle()
    proc.publish_all()
    proc.handle([msg(s, ann("purchase", "a2", shown()[0], 1), 1001)])
    proc.settle()
    proc.publish_all()
    proc.handle([msg(s, ann("click", "a3", shown()[0], 2), 1002)])
    proc.settle()
    proc.publish_all()
    profile = proc.profiles.get("ann")
    assert profile is not None
    assert [(e[6], e[7]) for e in profile["exposures"]] == [
        (False, True), (True, False), (False, False)]
    # A list pulled over HTTP waits in memory for ann's next event.
    pulled = Pulls(proc, clock=lambda: NOW).recommend("ann", 3)
    assert pulled["items"] and "ann" in proc.pulled.pending and "ann" in proc._exposure_logs

    _, erased = proc.erase("ann")
    assert erased == {"profile": 1, "engine_state": 2, "dedupe_ids": 3, "exposures": 4,
                      "attribution": 2, "pending": 0, "recommendations": 1}
    assert "ann" not in proc.pulled.pending and "ann" not in proc._exposure_logs
    # ann comes back: nothing shown before the erasure is in her new log.
    proc.handle([msg(s, ann("click", "a4", "i5", 3), 1003)])
    profile = proc.profiles.get("ann")
    assert profile is not None
    assert pulled["recommendation_id"] not in {e[0] for e in profile["exposures"]}
    assert all(not e[6] and not e[7] for e in profile["exposures"])
