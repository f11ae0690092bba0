"""The stored profile: its compact record in memory and its changelog form."""

from __future__ import annotations

import sys
import tracemalloc

import orjson
from faust.serializers.codecs import get_codec

from models.engine import Outcome, Recommendation
from models.events import Event
from stream.faust.table_store import PROFILE_CODEC
from stream.stored_profile import (
    HELD_TRIGGER,
    StoredProfile,
    compact_recommendations,
    expand_recommendations,
    from_changelog,
    is_inactive,
    new_stored_profile,
    recommendation_json,
    update_stored_profile,
)

ITEMS = ("22383", "20726", "85123A")
REASONS = ("bought together with 20725", "popular right now", "a best seller")
EXPOSURE = ["r1", list(ITEMS), "blend", "blend", 100.0, 2, True, True, ["20726"]]

# A record exactly as the previous release's worker wrote it (faust's json codec).
PREVIOUS_RELEASE = {
    "user_id": "u", "events": {"click": 2, "purchase": 1, "review": 0},
    "first_event_time": 92.0, "last_event_time": 100.0, "segment": 2,
    "recent_event_ids": ["e1", "e2", "e3"],
    "recommendations": ["22383", 5.031038, REASONS[0], "20726", 4.820088, REASONS[1],
                        "85123A", 0.5, REASONS[2]],
    "recommendation_id": "r2", "recommended_at": 100.0, "variant": "blend",
    "exposures": [EXPOSURE, ["r2", list(ITEMS), "blend", "blend", 100.0, 2, False, False, []]],
}


def full_profile() -> StoredProfile:
    return from_changelog({**PREVIOUS_RELEASE, HELD_TRIGGER: "e3"})


def test_the_codec_writes_the_bytes_of_the_json_codec_and_reads_them_back() -> None:
    wire = {**PREVIOUS_RELEASE, HELD_TRIGGER: "e3"}
    raw = get_codec("json").dumps(wire)  # what the table's changelog held so far
    codec = get_codec(PROFILE_CODEC)
    profile = codec.loads(raw)
    assert isinstance(profile, StoredProfile)
    assert codec.dumps(profile) == raw  # every field survives, in the same order
    assert profile.wire() == wire
    assert profile.held_trigger == "e3"
    assert profile.events == {"click": 2, "purchase": 1, "review": 0}


def test_every_field_survives_the_round_trip_through_the_changelog() -> None:
    codec = get_codec(PROFILE_CODEC)
    profile = full_profile()
    back = codec.loads(codec.dumps(profile))
    for name in StoredProfile.__slots__:
        assert getattr(back, name) == getattr(profile, name), name
    assert back.recommendations() == [
        {"item_id": "22383", "score": 5.031038, "reason": REASONS[0]},
        {"item_id": "20726", "score": 4.820088, "reason": REASONS[1]},
        {"item_id": "85123A", "score": 0.5, "reason": REASONS[2]},
    ]


def test_the_latest_exposure_shares_the_recommendations_items_and_clicks_are_tuples() -> None:
    profile = full_profile()
    older, latest = profile.exposures
    assert latest[1] is profile.rec_items  # one tuple for both
    assert older[8] == ("20726",) and latest[8] == () and type(latest[8]) is tuple
    assert isinstance(profile.recent_event_ids, tuple)


def test_the_compact_record_is_much_smaller_than_the_dict() -> None:
    wire = orjson.loads(orjson.dumps(PREVIOUS_RELEASE))
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    profile = from_changelog(wire)
    compact = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert profile.user_id == "u"
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    as_dict = orjson.loads(orjson.dumps(PREVIOUS_RELEASE))
    plain = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert as_dict["user_id"] == "u"
    assert compact < 0.6 * plain, (compact, plain)
    assert sys.getsizeof(profile) < 200


def test_a_record_of_an_earlier_release_reads_back_without_its_partition() -> None:
    old = {**new_stored_profile("u").to_json(), "partition": 3, HELD_TRIGGER: "e1"}
    del old["exposures"], old["variant"]  # written before the feedback loop existed
    profile = from_changelog(orjson.loads(orjson.dumps(old)))
    assert "partition" not in profile.to_json() and profile.legacy_partition == 3
    assert profile.held_trigger == "e1"
    assert profile.to_json()[HELD_TRIGGER] == "e1"  # the held trigger keeps its wire name
    assert (profile.variant, profile.exposures) == (None, ())


def test_older_forms_of_recommendations_and_exposures_read_back() -> None:
    dicts = [{"item_id": i, "score": 1.0, "reason": r}
             for i, r in zip(ITEMS, REASONS, strict=True)]
    exposure = {"id": "r1", "items": list(ITEMS), "s": "blend", "v": "blend", "t": 5.0,
                "seg": 1, "c": True, "ci": ["22383"]}
    profile = from_changelog({**PREVIOUS_RELEASE, "recommendations": dicts,
                              "exposures": [exposure]})
    assert profile.recommendations() == dicts
    assert profile.exposures == (
        ("r1", ITEMS, "blend", "blend", 5.0, 1, True, False, ("22383",)),
    )
    assert profile.to_json()["recommendations"] == compact_recommendations(dicts)


def test_keys_of_a_later_release_are_kept_and_written_back() -> None:
    profile = from_changelog({**PREVIOUS_RELEASE, "loyalty": {"tier": 2}})
    assert profile.to_json()["loyalty"] == {"tier": 2}


def test_the_wire_form_is_plain_json_and_round_trips() -> None:
    profile = new_stored_profile("u")
    event = Event("purchase", "e1", "u", "i", 100.0, quantity=1)
    update_stored_profile(profile, event, Outcome(segment=2), window=2)
    for i in (2, 3):
        update_stored_profile(profile, Event("click", f"e{i}", "u", "i", 90.0 + i), Outcome(), 2)
    assert profile.recent_event_ids == ("e2", "e3")
    assert (profile.first_event_time, profile.last_event_time) == (92.0, 100.0)
    assert profile.events == {"click": 2, "purchase": 1, "review": 0}
    wire = orjson.loads(orjson.dumps(profile.to_json()))
    assert wire["recent_event_ids"] == ["e2", "e3"]
    assert from_changelog(wire) == profile
    assert is_inactive(profile, 101.0) and not is_inactive(profile, 100.0)


def test_a_new_profile_has_every_field_empty() -> None:
    assert new_stored_profile("u").wire() == {
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
    assert profile.recent_event_ids == ("e0", "e1", "e2")  # a full window, kept
    assert profile.segment == 2
    update_stored_profile(profile, Event("click", "e3", "u", "i", 13.0), Outcome(segment=1), 3)
    assert profile.recent_event_ids == ("e1", "e2", "e3") and profile.segment == 1


def test_a_read_only_mapping_is_read_with_its_defaults() -> None:
    from types import MappingProxyType

    old = new_stored_profile("u").to_json()
    del old["variant"]
    profile = from_changelog(MappingProxyType(old))
    assert profile.variant is None and "variant" in profile
    assert profile["user_id"] == "u"


def test_recommendations_keep_the_rounded_scores_exactly() -> None:
    recs = [recommendation_json(Recommendation("a", 0.123456789, "popular")),
            recommendation_json(Recommendation("d", 3.0000004999, "popular")),
            recommendation_json(Recommendation("b", 2.0, "similar")),
            recommendation_json(Recommendation("c", 1234.56789049, "similar"))]
    assert recs[0] == {"item_id": "a", "score": 0.123457, "reason": "popular"}
    profile = new_stored_profile("u")
    profile.recommend("r", tuple(r["item_id"] for r in recs), [r["score"] for r in recs],
                      [r["reason"] for r in recs], 1.0, "blend")
    assert profile.recommendations() == recs
    assert orjson.dumps(profile.to_json()["recommendations"]) == orjson.dumps(
        compact_recommendations(recs)
    )
    compact = compact_recommendations(recs)
    assert compact[:3] == ["a", 0.123457, "popular"]
    assert expand_recommendations(compact) == recs
    assert expand_recommendations([]) == []
    assert expand_recommendations(recs) == recs  # an earlier release's dicts pass as is


def test_formatted_reasons_are_shared_between_profiles() -> None:
    def reason(n: int) -> str:
        return f"bought together with {n}"

    a, b = new_stored_profile("a"), new_stored_profile("b")
    for p in (a, b):
        p.recommend("r", ("x",), [1.0], [reason(85123)], 1.0, "blend")
    assert a.rec_reasons[0] is b.rec_reasons[0]
