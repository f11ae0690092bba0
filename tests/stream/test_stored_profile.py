"""The stored profile's changelog form."""

from __future__ import annotations

import orjson

from models.engine import Outcome
from models.events import Event
from stream.stored_profile import (
    HELD_TRIGGER,
    from_changelog,
    is_inactive,
    new_stored_profile,
    update_stored_profile,
)


def test_a_record_of_the_previous_release_reads_back_without_its_partition() -> None:
    old = {**new_stored_profile("u"), "partition": 3, HELD_TRIGGER: "e1"}
    del old["exposures"], old["variant"]  # written before the feedback loop existed
    profile = from_changelog(orjson.loads(orjson.dumps(old)))
    assert "partition" not in profile
    assert profile[HELD_TRIGGER] == "e1"  # the held trigger keeps its wire name
    assert (profile["variant"], profile["exposures"]) == (None, [])


def test_the_wire_form_is_plain_json_and_round_trips() -> None:
    profile = new_stored_profile("u")
    event = Event("purchase", "e1", "u", "i", 100.0, quantity=1)
    update_stored_profile(profile, event, Outcome(segment=2), window=2)
    for i in (2, 3):
        update_stored_profile(profile, Event("click", f"e{i}", "u", "i", 90.0 + i), Outcome(), 2)
    assert profile["recent_event_ids"] == ["e2", "e3"]
    assert (profile["first_event_time"], profile["last_event_time"]) == (92.0, 100.0)
    assert profile["events"] == {"click": 2, "purchase": 1, "review": 0}
    assert from_changelog(orjson.loads(orjson.dumps(profile))) == profile
    assert is_inactive(profile, 101.0) and not is_inactive(profile, 100.0)
