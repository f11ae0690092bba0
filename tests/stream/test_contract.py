"""The event contract: what decode_event accepts, and the exact reason for what it refuses."""

from __future__ import annotations

import pickle
from types import MappingProxyType
from typing import Any

import orjson
import pytest

from models.events import Event
from stream.contract import (
    MAX_ID_CHARS,
    REJECTION_REASONS,
    Rejected,
    decode_event,
    encode_event,
    event_from_dict,
    event_to_dict,
    format_timestamp,
    parse_timestamp,
)

T0 = 1_291_191_960.0  # 2010-12-01T08:26:00Z

CLICK: dict[str, Any] = {
    "type": "click", "event_id": "c1", "user_id": "u1", "item_id": "i1",
    "timestamp": "2010-12-01T08:26:00Z", "session_id": "s1",
}
PURCHASE: dict[str, Any] = {
    "type": "purchase", "event_id": "or-536365-1", "user_id": "or-c17850", "item_id": "85123A",
    "timestamp": "2010-12-01T08:26:00Z", "quantity": 6, "price": 2.55, "currency": "GBP",
    "order_id": "536365",
}
REVIEW: dict[str, Any] = {
    "type": "review", "event_id": "r1", "user_id": "u1", "item_id": "cl-767",
    "timestamp": "2010-12-01T08:26:00Z", "rating": 4, "text": "Silky.\nComfortable.",
    "title": "Lovely",
}


def raw(obj: Any, **changes: Any) -> bytes:
    """``obj`` with fields replaced (a value of ... removes the field), as JSON bytes."""
    out = dict(obj)
    for name, value in changes.items():
        if value is ...:
            out.pop(name, None)
        else:
            out[name] = value
    return orjson.dumps(out)


def rejected(payload: bytes | None, expected_type: Any = None, **kwargs: Any) -> Rejected:
    with pytest.raises(Rejected) as info:
        decode_event(payload, expected_type, **kwargs)
    assert info.value.reason in REJECTION_REASONS
    return info.value


# --- accepted events -------------------------------------------------------------------------


def test_purchase_decodes_to_the_typed_event() -> None:
    assert decode_event(raw(PURCHASE)) == Event(
        "purchase", "or-536365-1", "or-c17850", "85123A", T0,
        quantity=6, price=2.55, currency="GBP", order_id="536365",
    )


def test_click_and_review_decode() -> None:
    assert decode_event(raw(CLICK)) == Event("click", "c1", "u1", "i1", T0, session_id="s1")
    review = decode_event(raw(REVIEW))
    assert (review.rating, review.text, review.title) == (4.0, "Silky.\nComfortable.", "Lovely")
    assert isinstance(review.rating, float)


@pytest.mark.parametrize("event", [CLICK, PURCHASE, REVIEW], ids=["click", "purchase", "review"])
def test_encode_round_trips(event: dict[str, Any]) -> None:
    decoded = decode_event(raw(event))
    assert decode_event(encode_event(decoded)) == decoded
    assert orjson.loads(encode_event(decoded))["timestamp"].endswith("Z")


def test_type_is_optional_when_the_topic_implies_it() -> None:
    assert decode_event(raw(PURCHASE, type=...), "purchase").type == "purchase"
    assert decode_event(raw(PURCHASE), "purchase").quantity == 6


def test_unknown_fields_are_ignored_and_null_means_absent() -> None:
    event = decode_event(raw(CLICK, future_field={"x": [1, 2]}, session_id=None))
    assert event.session_id is None


def test_negative_quantity_is_a_return() -> None:
    event = decode_event(raw(PURCHASE, quantity=-3))
    assert event.quantity == -3 and event.revenue == pytest.approx(-7.65)


def test_integral_float_quantity_is_an_integer_like_in_json_schema() -> None:
    event = decode_event(raw(PURCHASE, quantity=2.0))
    assert event.quantity == 2 and type(event.quantity) is int


def test_integer_price_becomes_float_and_zero_price_is_allowed() -> None:
    assert type(decode_event(raw(PURCHASE, price=3)).price) is float
    assert decode_event(raw(PURCHASE, price=0)).price == 0.0


def test_review_with_only_rating_or_only_text() -> None:
    assert decode_event(raw(REVIEW, text=..., title=...)).text is None
    assert decode_event(raw(REVIEW, rating=...)).rating is None


@pytest.mark.parametrize(
    ("stamp", "expected"),
    [
        ("2010-12-01T08:26:00Z", T0),
        ("2010-12-01t08:26:00z", T0),
        ("2010-12-01T09:26:00+01:00", T0),
        ("2010-12-01T03:26:00-05:00", T0),
        ("2010-12-01T08:26:00-00:00", T0),
        ("2010-12-01T08:26:00.5Z", T0 + 0.5),
        ("2010-12-01T08:26:00.123456789Z", T0 + 0.123456),  # truncated to microseconds
        ("2016-12-31T23:59:60Z", 1_483_228_800.0),  # leap second = next minute
        ("1990-01-01T00:00:00Z", 631_152_000.0),
    ],
)
def test_rfc3339_timestamps(stamp: str, expected: float) -> None:
    assert parse_timestamp(stamp) == pytest.approx(expected, abs=1e-6)


def test_fast_and_slow_timestamp_paths_agree_to_the_bit() -> None:
    # 'T...Z' goes through fromisoformat, 't...z' through the manual parser.
    for frac in ("000001", "123456", "999999", "5"):
        fast = parse_timestamp(f"2099-12-31T23:59:59.{frac}Z")
        slow = parse_timestamp(f"2099-12-31t23:59:59.{frac}z")
        assert fast == slow
        assert parse_timestamp(format_timestamp(fast)) == fast


def test_bytearray_and_memoryview_are_accepted() -> None:
    payload = raw(CLICK)
    assert decode_event(bytearray(payload)) == decode_event(memoryview(payload))


def test_event_from_dict_accepts_any_mapping() -> None:
    assert event_from_dict(MappingProxyType(CLICK)).event_id == "c1"


def test_event_to_dict_omits_other_types_fields() -> None:
    out = event_to_dict(decode_event(raw(CLICK)))
    assert set(out) == {"type", "event_id", "user_id", "item_id", "timestamp", "session_id"}


# --- rejected events: reason and detail ------------------------------------------------------


def test_price_detail_is_a_precise_sentence() -> None:
    error = rejected(raw(PURCHASE, price=-3.0))
    assert (error.reason, error.detail) == ("out_of_range", 'field "price" must be >= 0, got -3.0')
    assert str(error) == 'out_of_range: field "price" must be >= 0, got -3.0'


def test_oversized_is_checked_before_parsing() -> None:
    error = rejected(b"{" + b" " * 70_000)  # not even JSON: size wins
    assert error.reason == "oversized" and "70001 bytes" in error.detail
    assert rejected(raw(CLICK), max_bytes=10).reason == "oversized"


@pytest.mark.parametrize(
    ("payload", "reason", "words"),
    [
        (b"", "undecodable", "not valid JSON"),
        (None, "undecodable", "no value"),
        (b'{"type": "click", "user_id": "\xff\xfe"}', "undecodable", "UTF-8"),
        (b'{"type": "click"', "undecodable", "not valid JSON"),
        (b"\xef\xbb\xbf{}", "undecodable", "BOM"),
        (b'{"price": NaN}', "non_finite_number", "NaN"),
        (b'{"price": Infinity}', "non_finite_number", "Infinity"),
        (b'{"price": -Infinity}', "non_finite_number", "Infinity"),
        (b'{"price": 1e400}', "non_finite_number", "overflows"),
        (b"[" * 2000 + b"]" * 2000, "too_deep", "1024"),
        (b'{"a":' * 1100 + b"1" + b"}" * 1100, "too_deep", "1024"),
        (b"[1, 2]", "not_an_object", "an array"),
        (b'"click"', "not_an_object", "a string"),
        (b"null", "not_an_object", "null"),
        (b"42", "not_an_object", "an integer"),
    ],
)
def test_undecodable_payloads(payload: bytes | None, reason: str, words: str) -> None:
    error = rejected(payload)
    assert error.reason == reason
    assert words in error.detail


def test_type_rules() -> None:
    assert rejected(raw(CLICK, type=...)).reason == "missing_field"
    assert rejected(raw(CLICK, type="refund")).reason == "unknown_type"
    assert rejected(raw(CLICK, type=1)).reason == "wrong_type"
    error = rejected(raw(CLICK), "purchase")
    assert error.reason == "type_mismatch"
    assert error.detail == "field \"type\" is 'click' but this topic carries 'purchase'"


def test_invalid_expected_type_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="expected_type"):
        decode_event(raw(CLICK), "refund")  # type: ignore[arg-type]


@pytest.mark.parametrize("field", ["event_id", "user_id", "item_id", "timestamp"])
def test_required_fields(field: str) -> None:
    error = rejected(raw(CLICK, **{field: ...}))
    assert (error.reason, error.detail) == ("missing_field", f'field "{field}" is required')
    assert rejected(raw(CLICK, **{field: None})).reason == "missing_field"


@pytest.mark.parametrize("field", ["event_id", "user_id", "item_id", "session_id"])
@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (17850, "wrong_type"),
        (True, "wrong_type"),
        (["u1"], "wrong_type"),
        ("", "invalid_value"),
        ("u\x00", "invalid_value"),
        ("u\n1", "invalid_value"),
        ("u\x7f", "invalid_value"),
        ("u\x85", "invalid_value"),
        ("x" * (MAX_ID_CHARS + 1), "out_of_range"),
    ],
)
def test_id_rules(field: str, value: Any, reason: str) -> None:
    error = rejected(raw(CLICK, **{field: value}))
    assert error.reason == reason
    assert f'"{field}"' in error.detail


def test_ids_may_be_unicode_and_at_the_length_limit() -> None:
    event = decode_event(raw(CLICK, user_id="Zoë\u00a0名前", item_id="x" * MAX_ID_CHARS))
    assert event.user_id == "Zoë\u00a0名前"


def test_lone_surrogate_in_a_mapping_is_rejected_not_crashing_the_encoder() -> None:
    with pytest.raises(Rejected) as info:
        event_from_dict({**CLICK, "user_id": "u\ud800"})
    assert info.value.reason == "invalid_value"


@pytest.mark.parametrize(
    ("stamp", "reason"),
    [
        ("2010-12-01T08:26:00", "invalid_value"),  # naive
        ("2010-12-01 08:26:00Z", "invalid_value"),  # space separator: not RFC 3339 proper
        ("2010-12-01", "invalid_value"),
        ("2010-12-01T08:26Z", "invalid_value"),
        ("2010-12-01T08:26:00+0100", "invalid_value"),
        ("2010-W48-3T08:26:00Z", "invalid_value"),  # ISO week date: fromisoformat takes it
        ("20101201T082600Z", "invalid_value"),
        ("2010-02-30T08:26:00Z", "invalid_value"),
        ("2010-12-01T24:00:00Z", "invalid_value"),
        ("2010-12-01T08:26:00+24:00", "invalid_value"),
        ("2010-12-01T08:26:00.1234567890Z", "invalid_value"),
        ("２０１０-12-01T08:26:00Z", "invalid_value"),  # non-ASCII digits
        ("1989-12-31T23:59:59Z", "out_of_range"),
        ("2100-01-01T00:00:00Z", "out_of_range"),
        ("2099-12-31T23:30:00-01:00", "out_of_range"),
        ("0001-01-01T00:00:00+01:00", "out_of_range"),
        ("9999-12-31T23:59:59-23:59", "out_of_range"),
    ],
)
def test_timestamp_rules(stamp: str, reason: str) -> None:
    error = rejected(raw(CLICK, timestamp=stamp))
    assert error.reason == reason
    assert '"timestamp"' in error.detail


def test_epoch_number_timestamp_is_a_wrong_type() -> None:
    assert rejected(raw(CLICK, timestamp=1_291_191_960)).reason == "wrong_type"


@pytest.mark.parametrize(
    ("changes", "reason", "detail"),
    [
        ({"quantity": ...}, "missing_field", 'field "quantity" is required'),
        ({"quantity": 0}, "out_of_range", 'field "quantity" must not be 0'),
        ({"quantity": True}, "wrong_type", 'field "quantity" must be an integer, got a boolean'),
        ({"quantity": "6"}, "wrong_type", 'field "quantity" must be an integer, got a string'),
        ({"quantity": 2.5}, "wrong_type", 'field "quantity" must be an integer, got 2.5'),
        ({"quantity": 100_001}, "out_of_range", "between -100000 and 100000"),
        ({"quantity": -100_001}, "out_of_range", "between -100000 and 100000"),
        ({"quantity": 2**64 - 1}, "out_of_range", "between"),
        ({"price": ...}, "missing_field", 'field "price" is required'),
        ({"price": "2.55"}, "wrong_type", 'field "price" must be a number, got a string'),
        ({"price": False}, "wrong_type", 'field "price" must be a number, got a boolean'),
        ({"price": 1_000_000.01}, "out_of_range", 'field "price" must be <= 1e+06'),
        ({"currency": "gbp"}, "invalid_value", "3-letter ISO 4217"),
        ({"currency": "GBPX"}, "invalid_value", "3-letter ISO 4217"),
        ({"currency": 826}, "wrong_type", 'field "currency" must be a string'),
        ({"order_id": ""}, "invalid_value", 'field "order_id" must not be empty'),
    ],
)
def test_purchase_rules(changes: dict[str, Any], reason: str, detail: str) -> None:
    error = rejected(raw(PURCHASE, **changes))
    assert error.reason == reason
    assert detail in error.detail


@pytest.mark.parametrize(
    ("changes", "reason", "detail"),
    [
        ({"rating": ..., "text": ...}, "missing_field", 'needs "rating" or "text"'),
        ({"rating": None, "text": None}, "missing_field", 'needs "rating" or "text"'),
        ({"rating": 0.5}, "out_of_range", 'field "rating" must be >= 1, got 0.5'),
        ({"rating": 5.5}, "out_of_range", 'field "rating" must be <= 5, got 5.5'),
        ({"rating": "5"}, "wrong_type", 'field "rating" must be a number'),
        ({"rating": True}, "wrong_type", 'field "rating" must be a number'),
        ({"text": ""}, "invalid_value", 'field "text" must not be empty'),
        ({"text": 5}, "wrong_type", 'field "text" must be a string'),
        ({"text": "x" * 10_001}, "out_of_range", "at most 10000 characters, got 10001"),
        ({"text": "a\x00b"}, "invalid_value", "control characters"),
        ({"text": "a\x1bb"}, "invalid_value", "control characters"),
        ({"title": "x" * 501}, "out_of_range", 'field "title" must be at most 500'),
        ({"title": ["x"]}, "wrong_type", 'field "title" must be a string'),
    ],
)
def test_review_rules(changes: dict[str, Any], reason: str, detail: str) -> None:
    error = rejected(raw(REVIEW, **changes))
    assert error.reason == reason
    assert detail in error.detail


def test_max_text_chars_is_configurable() -> None:
    assert decode_event(raw(REVIEW, text="x" * 10_000)).text == "x" * 10_000
    assert rejected(raw(REVIEW, text="x" * 101), max_text_chars=100).reason == "out_of_range"


def test_text_keeps_tabs_and_line_breaks() -> None:
    assert decode_event(raw(REVIEW, text="a\tb\r\nc")).text == "a\tb\r\nc"


def test_details_quote_offending_strings_safely_and_briefly() -> None:
    error = rejected(raw(CLICK, timestamp="\x00" + "x" * 1000))
    assert "\x00" not in error.detail and "\\x00" in error.detail
    assert len(error.detail) < 200
    wide = rejected(raw(CLICK, timestamp="\U0001f600" * 1000))  # escapes are 10 chars each
    assert len(wide.detail) < 200


def test_rejected_pickles_for_multiprocessing_and_logging() -> None:
    error = pickle.loads(pickle.dumps(Rejected("wrong_type", "detail")))
    assert (error.reason, error.detail) == ("wrong_type", "detail")


def test_rejection_reasons_are_a_small_fixed_label_set() -> None:
    assert len(REJECTION_REASONS) == len(set(REJECTION_REASONS)) <= 12
    assert all(r.isidentifier() and r.islower() for r in REJECTION_REASONS)


def test_stream_package_import_does_not_load_faust() -> None:
    import subprocess
    import sys

    code = "import sys, stream.contract; print('faust' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_module_doctests() -> None:
    # pytest's --doctest-modules only collects tests/ and models/: run these here.
    import doctest

    import stream.contract

    result = doctest.testmod(stream.contract, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 8 and result.failed == 0


# --- the detail sentence of each rejection, exactly (the dead letter's header) ----------


@pytest.mark.parametrize(
    ("payload", "reason", "detail"),
    [
        (raw(CLICK, type=...), "missing_field", 'field "type" is required'),
        (raw(CLICK, type=1), "wrong_type", 'field "type" must be a string, got an integer'),
        (raw(CLICK, type="refund"), "unknown_type",
         "field \"type\" must be one of click, purchase, review, got 'refund'"),
        (raw(CLICK, user_id=5), "wrong_type", 'field "user_id" must be a string, got an integer'),
        (raw(CLICK, user_id="a\x01b"), "invalid_value",
         "field \"user_id\" must not contain control characters, got 'a\\x01b'"),
        (raw(CLICK, timestamp=5), "wrong_type",
         'field "timestamp" must be an RFC 3339 string, got an integer'),
        (raw(CLICK, timestamp="2100-01-01T00:00:00Z"), "out_of_range",
         "field \"timestamp\" must be in [1990-01-01, 2100-01-01) UTC, got '2100-01-01T00:00:00Z'"),
        (raw(CLICK, timestamp="2010-12-01t08:60:00z"), "invalid_value",
         "field \"timestamp\" is not a valid date-time, got '2010-12-01t08:60:00z'"),
        (raw(PURCHASE, quantity=...), "missing_field", 'field "quantity" is required'),
        (raw(PURCHASE, quantity=0), "out_of_range", 'field "quantity" must not be 0'),
        (raw(PURCHASE, quantity=100_001), "out_of_range",
         'field "quantity" must be between -100000 and 100000, got 100001'),
        (raw(PURCHASE, price=...), "missing_field", 'field "price" is required'),
        (raw(PURCHASE, price="1"), "wrong_type", 'field "price" must be a number, got a string'),
        (raw(PURCHASE, currency=7), "wrong_type",
         'field "currency" must be a string, got an integer'),
        (raw(PURCHASE, currency="pounds"), "invalid_value",
         "field \"currency\" must be a 3-letter ISO 4217 code like \"GBP\", got 'pounds'"),
        (raw(REVIEW, text=""), "invalid_value", 'field "text" must not be empty'),
        (raw(REVIEW, text=3), "wrong_type", 'field "text" must be a string, got an integer'),
        (raw(REVIEW, text=..., rating=..., title=...), "missing_field",
         'a review needs "rating" or "text" (or both)'),
        (None, "undecodable", "the message has no value (null / tombstone)"),
        (b"[1]", "not_an_object", "the message must be a JSON object, got an array"),
        (b"1.5", "not_an_object", "the message must be a JSON object, got a number"),
        (b"[" * 2000 + b"]" * 2000, "too_deep", "JSON nesting is deeper than 1024 levels"),
    ],
)
def test_rejection_details_are_exact(payload: bytes | None, reason: str, detail: str) -> None:
    error = rejected(payload)
    assert (error.reason, error.detail) == (reason, detail)
    assert error.args == (reason, detail)


@pytest.mark.parametrize(
    ("payload", "reason", "prefix"),
    [
        # The rest of these sentences is orjson's own message.
        (b"NaN", "non_finite_number", "NaN and Infinity are not valid JSON numbers: "),
        (b'{"price":-Infinity}', "non_finite_number",
         "NaN and Infinity are not valid JSON numbers: "),
        (b'{"price": x}', "undecodable", "the message is not valid JSON: unexpected character"),
        (b'{"a": "\xff"}', "undecodable", "the message is not valid UTF-8: str is not valid UTF-8"),
    ],
)
def test_json_error_details_name_the_problem(payload: bytes, reason: str, prefix: str) -> None:
    error = rejected(payload)
    assert error.reason == reason and error.detail.startswith(prefix)


@pytest.mark.parametrize(
    ("obj", "detail"),
    [
        ({**PURCHASE, "price": float("nan")}, 'field "price" must be finite, got nan'),
        ({**PURCHASE, "quantity": float("inf")}, 'field "quantity" must be finite, got inf'),
    ],
)
def test_non_finite_numbers_from_a_mapping(obj: dict[str, Any], detail: str) -> None:
    with pytest.raises(Rejected) as info:
        event_from_dict(obj)
    assert (info.value.reason, info.value.detail) == ("non_finite_number", detail)


def test_a_mapping_that_is_not_a_dict_names_its_type() -> None:
    with pytest.raises(Rejected) as info:
        event_from_dict({1, 2})  # type: ignore[arg-type]
    assert info.value.args == ("not_an_object", "the message must be a JSON object, got set")


def test_quantity_limit_is_inclusive() -> None:
    assert decode_event(raw(PURCHASE, quantity=100_000)).quantity == 100_000
    assert decode_event(raw(PURCHASE, quantity=-100_000)).quantity == -100_000


def test_click_keeps_its_recommendation_id() -> None:
    event = decode_event(raw(CLICK, recommendation_id="rec-7"))
    assert event.recommendation_id == "rec-7"
    assert event_to_dict(event)["recommendation_id"] == "rec-7"
    assert decode_event(raw(CLICK, session_id=...)).session_id is None


@pytest.mark.parametrize(
    ("stamp", "expected"),
    [  # a leap second or 'z' takes the manual parser: offsets and limits there
        ("2010-12-01T09:25:60+01:00", T0),
        ("2010-12-01T03:25:60-05:00", T0),
        ("2010-12-01T08:25:60-00:30", T0 + 1800),
        ("2010-12-02T08:24:60+23:59", T0),
        ("2010-12-01T08:25:60+00:59", T0 - 59 * 60),
        ("2010-12-01t08:26:00.1234567z", T0 + 0.123456),
        ("2010-12-01t08:26:00z", T0),
    ],
)
def test_slow_timestamp_offsets(stamp: str, expected: float) -> None:
    assert parse_timestamp(stamp) == pytest.approx(expected, abs=1e-7)


@pytest.mark.parametrize(
    "stamp",
    ["2010-12-01T08:26:00+24:00", "2010-12-01T08:26:00+00:60", "2010-12-01T08:25:60+00:60",
     "2010-12-01t24:00:00z", "2010-12-01t08:60:00z", "2010-12-01t08:26:61z",
     "2010-02-30t08:26:00z"],
)
def test_slow_timestamp_limits(stamp: str) -> None:
    assert rejected(raw(CLICK, timestamp=stamp)).reason == "invalid_value"


def test_format_timestamp_rounds_up_to_the_next_second() -> None:
    assert format_timestamp(T0 + 0.9999996) == "2010-12-01T08:26:01Z"
    assert format_timestamp(T0 + 0.0000004) == "2010-12-01T08:26:00Z"
    assert format_timestamp(T0 + 0.0000006) == "2010-12-01T08:26:00.000001Z"


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("r" * 40, "'" + "r" * 40 + "'"),  # up to 40 characters quoted whole
        ("r" * 41, "'" + "r" * 40 + "'..."),
        ("\x00" * 19 + "ab", "'" + "\\x00" * 19 + "ab'"),  # 80 characters once escaped
        ("\x00" * 20, ("'" + "\\x00" * 20)[:80] + "..."),  # 82: cut to 80
    ],
)
def test_offending_strings_are_quoted_to_a_bound(value: str, shown: str) -> None:
    detail = rejected(raw(CLICK, type=value)).detail
    assert detail == f'field "type" must be one of click, purchase, review, got {shown}'


def test_size_limit_is_inclusive() -> None:
    payload = raw(CLICK)
    assert decode_event(payload, max_bytes=len(payload)).event_id == "c1"
    assert rejected(payload, max_bytes=len(payload) - 1).reason == "oversized"


def test_formatting_does_not_depend_on_the_local_time_zone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import time

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert format_timestamp(T0) == "2010-12-01T08:26:00Z"
    finally:
        monkeypatch.undo()
        time.tzset()
