"""The erasure request and receipt contract (stream/erasure.py, stream/schemas/erasure*.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from stream.contract import Rejected
from stream.erasure import (
    ERASED_PARTS,
    ErasureRequest,
    decode_request,
    encode_receipt,
    encode_request,
)

SCHEMAS = Path(__file__).resolve().parents[2] / "stream" / "schemas"
GOOD: dict[str, Any] = {
    "user_id": "or-c17850", "requested_at": "2026-12-05T18:00:00Z", "request_id": "req-1",
}


def validator(name: str) -> Draft202012Validator:
    schema = json.loads((SCHEMAS / f"{name}.json").read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def test_a_request_round_trips_and_extra_fields_are_ignored() -> None:
    request = decode_request(orjson.dumps({**GOOD, "note": "by e-mail"}), b"or-c17850")
    assert request == ErasureRequest("or-c17850", 1796493600.0, "req-1")
    assert decode_request(encode_request(request)) == request
    assert validator("erasure").is_valid(orjson.loads(encode_request(request)))


BAD: list[tuple[Any, bytes | None, str]] = [
    ({**GOOD, "user_id": None}, None, "missing_field"),
    ({**GOOD, "request_id": ""}, None, "invalid_value"),
    ({**GOOD, "requested_at": 1700000000}, None, "wrong_type"),
    ({**GOOD, "requested_at": "2026-12-05 18:00:00"}, None, "invalid_value"),
    ({**GOOD, "user_id": "a\x00b"}, None, "invalid_value"),
    ({**GOOD, "user_id": "u" * 257}, None, "out_of_range"),
    (GOOD, b"someone-else", "key_mismatch"),
    ([GOOD], None, "not_an_object"),
]


@pytest.mark.parametrize("obj, key, reason", BAD)
def test_bad_requests_are_rejected_with_their_reason(
    obj: Any, key: bytes | None, reason: str
) -> None:
    with pytest.raises(Rejected) as err:
        decode_request(orjson.dumps(obj), key)
    assert err.value.reason == reason
    if key is None and isinstance(obj, dict):
        assert not validator("erasure").is_valid(obj)


def test_undecodable_oversized_and_tombstones_are_rejected() -> None:
    for raw, reason in [(b"{", "undecodable"), (None, "undecodable"),
                        (b'{"x":"' + b"y" * 5000 + b'"}', "oversized")]:
        with pytest.raises(Rejected) as err:
            decode_request(raw)
        assert err.value.reason == reason


def test_the_receipt_names_every_part_and_matches_its_schema() -> None:
    request = ErasureRequest("u1", 1_700_000_000.0, "req-9")
    receipt = orjson.loads(encode_receipt(request, {"profile": 1, "exposures": 3}, 1_700_000_002.0))
    assert receipt["request_id"] == "req-9" and receipt["user_id"] == "u1"
    assert list(receipt["erased"]) == list(ERASED_PARTS)
    assert receipt["erased"]["exposures"] == 3 and receipt["erased"]["attribution"] == 0
    assert validator("erasure-receipt").is_valid(receipt)


@settings(max_examples=300, deadline=None)
@given(raw=st.one_of(st.binary(max_size=300), st.builds(
    lambda d: orjson.dumps(d),
    st.dictionaries(st.sampled_from(["user_id", "requested_at", "request_id", "x"]),
                    st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1), st.text(max_size=30),
                              st.just("2026-12-05T18:00:00Z")), max_size=4),
)))
def test_fuzz_requests_decode_or_are_rejected_and_agree_with_the_schema(raw: bytes) -> None:
    try:
        request = decode_request(raw)
    except Rejected:
        return
    assert validator("erasure").is_valid(orjson.loads(raw))
    assert request.user_id and request.request_id


# The detail travels in the dead-letter record's headers: it must say what is wrong.
DETAILS: list[tuple[bytes | None, bytes | None, str, str]] = [
    (None, None, "undecodable", "the message has no value (null / tombstone)"),
    (b"{", None, "undecodable", "the message is not valid JSON: "),
    (b"[1]", None, "not_an_object", "the message must be a JSON object, got an array"),
    (b'"u1"', None, "not_an_object", "the message must be a JSON object, got a string"),
    (orjson.dumps({k: v for k, v in GOOD.items() if k != "requested_at"}), None,
     "missing_field", 'field "requested_at" is required'),
    (orjson.dumps({**GOOD, "requested_at": None}), None,
     "missing_field", 'field "requested_at" is required'),
    (orjson.dumps({**GOOD, "requested_at": 17.5}), None,
     "wrong_type", 'field "requested_at" must be an RFC 3339 string, got a number'),
    (orjson.dumps(GOOD), b"or-c17851",
     "key_mismatch", "the message key is not the request's user_id"),
]


@pytest.mark.parametrize("raw, key, reason, detail", DETAILS)
def test_each_rejection_says_why(
    raw: bytes | None, key: bytes | None, reason: str, detail: str
) -> None:
    with pytest.raises(Rejected) as err:
        decode_request(raw, key)
    assert err.value.reason == reason
    if detail.endswith(": "):  # followed by orjson's own words
        assert err.value.detail.startswith(detail) and len(err.value.detail) > len(detail)
    else:
        assert err.value.detail == detail


def test_the_size_limit_is_inclusive_and_named() -> None:
    def padded(size: int) -> bytes:
        raw = orjson.dumps({**GOOD, "pad": ""})
        return raw[:-2] + b" " * (size - len(raw)) + raw[-2:]

    assert len(padded(4096)) == 4096
    assert decode_request(padded(4096)).user_id == GOOD["user_id"]
    with pytest.raises(Rejected) as err:
        decode_request(padded(4097))
    assert (err.value.reason, err.value.detail) == (
        "oversized", "the message is 4097 bytes, the limit is 4096")
