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


def test_a_new_profile_has_every_field_empty() -> None:
    assert new_stored_profile("u") == {
        "user_id": "u", "events": {"click": 0, "purchase": 0, "review": 0},
        "first_event_time": None, "last_event_time": None, "segment": None,
        "recent_event_ids": [], "recommendations": [], "recommendation_id": None,
        "recommended_at": None, "variant": None, "exposures": [],
    }


def test_the_window_keeps_exactly_the_last_ids_and_the_segment_follows() -> None:
    profile = new_stored_profile("u")
    for i in range(3):
        update_stored_profile(profile, Event("click", f"e{i}", "u", "i", 10.0 + i),
                              Outcome(segment=i), window=3)
    assert profile["recent_event_ids"] == ["e0", "e1", "e2"]  # a full window, kept
    assert profile["segment"] == 2
    update_stored_profile(profile, Event("click", "e3", "u", "i", 13.0), Outcome(segment=1), 3)
    assert profile["recent_event_ids"] == ["e1", "e2", "e3"] and profile["segment"] == 1


def test_a_read_only_mapping_is_copied_with_its_defaults() -> None:
    from types import MappingProxyType

    old = new_stored_profile("u")
    del old["variant"]
    profile = from_changelog(MappingProxyType(old))
    assert profile["variant"] is None and "variant" in profile
    assert profile["user_id"] == "u"


def test_recommendations_are_stored_compact_and_read_back() -> None:
    from models.engine import Recommendation
    from stream.stored_profile import (
        compact_recommendations,
        expand_recommendations,
        recommendation_json,
    )

    recs = [recommendation_json(Recommendation("a", 0.123456789, "popular")),
            recommendation_json(Recommendation("b", 2.0, "similar"))]
    assert recs[0] == {"item_id": "a", "score": 0.123457, "reason": "popular"}
    compact = compact_recommendations(recs)
    assert compact == ["a", 0.123457, "popular", "b", 2.0, "similar"]
    assert expand_recommendations(compact) == recs
    assert expand_recommendations([]) == []
    assert expand_recommendations(recs) == recs  # an earlier release's dicts pass as is
