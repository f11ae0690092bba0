"""Fuzzing the decoding and validation path with bad input.

Thousands of malformed, oversized, wrongly typed, wrongly encoded and
adversarial payloads: decode_event must either return an Event that re-encodes
and re-decodes to itself, or raise Rejected with a reason from
REJECTION_REASONS. Any other exception fails the test.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from models.events import EVENT_TYPES, Event
from stream.contract import (
    MAX_BYTES,
    REJECTION_REASONS,
    Rejected,
    decode_event,
    encode_event,
    event_from_dict,
)

FUZZ = settings(
    max_examples=1000, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

VALID: dict[str, dict[str, Any]] = {
    "click": {"type": "click", "event_id": "e1", "user_id": "u1", "item_id": "i1",
              "timestamp": "2011-06-01T10:00:00Z", "session_id": "s1"},
    "purchase": {"type": "purchase", "event_id": "e2", "user_id": "u1", "item_id": "i1",
                 "timestamp": "2011-06-01T10:00:00Z", "quantity": 2, "price": 9.99,
                 "currency": "GBP", "order_id": "o1"},
    "review": {"type": "review", "event_id": "e3", "user_id": "u1", "item_id": "i1",
               "timestamp": "2011-06-01T10:00:00Z", "rating": 4, "text": "ok", "title": "t"},
}
FIELDS = sorted({name for event in VALID.values() for name in event})
expected_types = st.sampled_from([None, *EVENT_TYPES])


def check(raw: bytes, expected_type: Any = None, **kwargs: Any) -> Event | None:
    """The fuzz property; returns the event when accepted."""
    try:
        event = decode_event(raw, expected_type, **kwargs)
    except Rejected as error:
        assert error.reason in REJECTION_REASONS, error.reason
        assert error.detail and len(error.detail) < 400
        return None
    assert isinstance(event, Event)
    assert expected_type is None or event.type == expected_type
    encoded = encode_event(event)
    again = decode_event(encoded, event.type, **kwargs)
    assert again == event
    assert encode_event(again) == encoded
    return event


# --- strategies ------------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
adversarial_strings = st.one_of(
    st.text(max_size=30),
    st.text(st.characters(codec="utf-8", categories=["Cc", "Cf", "Zs", "Zl", "Zp"]), max_size=10),
    st.text(min_size=250, max_size=300),
    st.sampled_from(["", " ", "\x00", "u\x1b[31m", "\u202e", "\ufeff", "null", "NaN", "%s%n"]),
    st.integers(9_990, 10_010).map(lambda n: "x" * n),
)
years = st.integers(1, 9999).map(lambda y: f"{y:04d}")
timestamps = st.one_of(
    st.builds(
        lambda y, mo, d, h, mi, s, frac, tz: (
            f"{y}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}{frac}{tz}"
        ),
        years, st.integers(0, 13), st.integers(0, 32), st.integers(0, 25), st.integers(0, 61),
        st.integers(0, 61),
        st.sampled_from(["", ".5", ".123456", ".123456789", ".1234567890", "."]),
        st.sampled_from(["Z", "z", "", "+00:00", "-00:00", "+14:00", "-23:59", "+24:00",
                         "+0100", "+01", " Z", "UTC"]),
    ),
    st.datetimes().map(lambda d: d.isoformat()),
    st.text(alphabet="0123456789-:TZ+. tz", max_size=32),
)
numbers = st.one_of(
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, -0.0, 1e-320, 5e-324, 1.7976931348623157e308, 100_000, 100_001,
                     -100_000, 1_000_000, 1_000_000.0000001, 0.5, 1, 5, 5.000001, 2.0]),
    st.booleans(), st.none(), st.text(max_size=5),
)
field_values = st.one_of(json_values, adversarial_strings, timestamps, numbers)


@st.composite
def mutated_events(draw: st.DrawFn) -> dict[str, Any]:
    """A valid event with a few fields replaced or removed."""
    event = dict(VALID[draw(st.sampled_from(EVENT_TYPES))])
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=3)):
        if draw(st.booleans()):
            event.pop(name, None)
        else:
            strategy = {"timestamp": timestamps, "quantity": numbers, "price": numbers,
                        "rating": numbers}.get(name, field_values)
            event[name] = draw(st.one_of(strategy, field_values))
    return event


# --- properties ------------------------------------------------------------------------------


@FUZZ
@given(raw=st.binary(max_size=2000), expected_type=expected_types)
@example(raw=b"", expected_type=None)
@example(raw=b"\xff\xfe\x00", expected_type="click")
@example(raw=b"\xef\xbb\xbf{}", expected_type=None)
def test_random_bytes(raw: bytes, expected_type: Any) -> None:
    check(raw, expected_type)


@FUZZ
@given(event=mutated_events(), expected_type=expected_types)
def test_mutated_events(event: dict[str, Any], expected_type: Any) -> None:
    check(orjson.dumps(event), expected_type)


@FUZZ
@given(value=json_values, expected_type=expected_types)
def test_arbitrary_json(value: Any, expected_type: Any) -> None:
    assert check(orjson.dumps(value), expected_type) is None  # never a valid event by chance


@FUZZ
@given(
    kind=st.sampled_from(EVENT_TYPES),
    position=st.integers(0, 10_000),
    junk=st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x00",
                          b"NaN", b"Infinity", b"-Infinity", b"1e999", b"\\ud800", b'"', b"}"]),
)
def test_invalid_utf8_and_literals_spliced_into_valid_events(
    kind: str, position: int, junk: bytes
) -> None:
    raw = orjson.dumps(VALID[kind])
    at = position % (len(raw) + 1)
    check(raw[:at] + junk + raw[at:], kind)


@FUZZ
@given(kind=st.sampled_from(EVENT_TYPES), cut=st.integers(0, 300))
def test_truncated_events(kind: str, cut: int) -> None:
    raw = orjson.dumps(VALID[kind])
    assume(cut < len(raw))
    assert check(raw[:cut]) is None


@settings(max_examples=60, deadline=None)
@given(depth=st.integers(1, 3000), opener=st.sampled_from([b"[", b'{"a":']))
@example(depth=1023, opener=b"[")
@example(depth=1024, opener=b"[")
def test_deep_nesting(depth: int, opener: bytes) -> None:
    closer = b"]" if opener == b"[" else b"}"
    nested = opener * depth + b"1" + closer * depth
    raw = b'{"type":"click","event_id":"e","user_id":"u","item_id":"i",' \
          b'"timestamp":"2011-06-01T10:00:00Z","extra":' + nested + b"}"
    event = check(raw, max_bytes=1_000_000)
    # orjson allows 1024 levels in all: the event object and 1,023 nested.
    assert (event is not None) == (depth <= 1023)


@settings(max_examples=40, deadline=None)
@given(size=st.integers(MAX_BYTES - 200, MAX_BYTES + 200), kind=st.sampled_from(EVENT_TYPES))
def test_size_limit_is_exact(size: int, kind: str) -> None:
    raw = orjson.dumps({**VALID[kind], "pad": ""})
    raw = raw[:-2] + b"x" * (size - len(raw)) + b'"}'
    assert len(raw) == size
    try:
        decode_event(raw)
    except Rejected as error:
        assert size > MAX_BYTES and error.reason == "oversized"
    else:
        assert size <= MAX_BYTES


@FUZZ
@given(
    event=mutated_events(),
    extra=st.dictionaries(
        st.sampled_from(FIELDS),
        st.one_of(st.floats(), st.text(st.characters(codec="utf-16", exclude_categories=[]))),
        max_size=2,
    ),
    expected_type=expected_types,
)
def test_event_from_dict_with_non_json_values(
    event: dict[str, Any], extra: dict[str, Any], expected_type: Any
) -> None:
    # Python callers can pass NaN, infinities and lone surrogates that no JSON holds.
    obj = {**event, **extra}
    try:
        decoded = event_from_dict(obj, expected_type)
    except Rejected as error:
        assert error.reason in REJECTION_REASONS
        return
    assert decode_event(encode_event(decoded)) == decoded
    for value in (decoded.price, decoded.rating or 1.0, decoded.timestamp):
        assert math.isfinite(value)
