"""Erasure requests and receipts: the contract of ``feedback.erasure`` and
``feedback.erasure.done`` (docs/contract.md, docs/privacy.md).

A request is keyed by ``user_id`` (so it reaches the partition, hence the
worker, that holds the user) and its value is
``{"user_id", "requested_at", "request_id"}``; the receipt, keyed the same,
says what was erased and when. Faust-free: the worker, ``DELETE /users/{id}``
and the tests share these functions.

>>> raw = encode_request(ErasureRequest("u1", 1_700_000_000.0, "req-1"))
>>> raw
b'{"user_id":"u1","requested_at":"2023-11-14T22:13:20Z","request_id":"req-1"}'
>>> decode_request(raw, b"u1")
ErasureRequest(user_id='u1', requested_at=1700000000.0, request_id='req-1')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from stream.contract import Rejected, _id, _type_name, format_timestamp, parse_timestamp

__all__ = [
    "ERASED_PARTS",
    "ErasureRequest",
    "decode_request",
    "encode_receipt",
    "encode_request",
]

MAX_REQUEST_BYTES: Final = 4096
#: What one erasure removes, in receipt order: the receipt counts each.
ERASED_PARTS: Final = (
    "profile",  # the stored profile (a changelog tombstone)
    "engine_state",  # history, seen items, vectors, segment row, churn state, alert cooldowns
    "dedupe_ids",  # the event ids remembered for de-duplication (inside the profile)
    "exposures",  # recommendations shown, kept for attribution
    "attribution",  # attributed clicks and purchases still held per recommendation
    "pending",  # a recommendation owed and not yet published
    "recommendations",  # the tombstone published on the recommendations topic
)


@dataclass(frozen=True, slots=True)
class ErasureRequest:
    """One request to erase everything the service holds about ``user_id``."""

    user_id: str
    requested_at: float
    request_id: str


def decode_request(raw: bytes | None, key: bytes | None = None) -> ErasureRequest:
    """Validate one ``feedback.erasure`` message; raises :class:`Rejected`.

    The key, when given, must be the user id: a request on the wrong partition
    would erase nothing and report success.
    """
    if raw is None:
        raise Rejected("undecodable", "the message has no value (null / tombstone)")
    if len(raw) > MAX_REQUEST_BYTES:
        raise Rejected(
            "oversized", f"the message is {len(raw)} bytes, the limit is {MAX_REQUEST_BYTES}"
        )
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise Rejected("undecodable", f"the message is not valid JSON: {error}") from None
    if type(obj) is not dict:
        raise Rejected("not_an_object", f"the message must be a JSON object, got {_type_name(obj)}")
    return request_from_dict(obj, key)


def request_from_dict(obj: Mapping[str, Any], key: bytes | None = None) -> ErasureRequest:
    user_id = _id(obj, "user_id")
    request_id = _id(obj, "request_id")
    assert user_id is not None and request_id is not None  # required
    stamp = obj.get("requested_at")
    if stamp is None:
        raise Rejected("missing_field", 'field "requested_at" is required')
    if type(stamp) is not str:
        raise Rejected(
            "wrong_type",
            f'field "requested_at" must be an RFC 3339 string, got {_type_name(stamp)}',
        )
    requested_at = parse_timestamp(stamp)
    if key is not None and key != user_id.encode("utf-8", "surrogatepass"):
        raise Rejected("key_mismatch", "the message key is not the request's user_id")
    return ErasureRequest(user_id, requested_at, request_id)


def encode_request(request: ErasureRequest) -> bytes:
    return orjson.dumps({
        "user_id": request.user_id,
        "requested_at": format_timestamp(request.requested_at),
        "request_id": request.request_id,
    })


def encode_receipt(
    request: ErasureRequest, erased: Mapping[str, int], completed_at: float
) -> bytes:
    """The ``feedback.erasure.done`` value: the request, when it was carried out,
    and how many records of each of :data:`ERASED_PARTS` were removed.

    >>> r = ErasureRequest("u1", 1_700_000_000.0, "req-1")
    >>> orjson.loads(encode_receipt(r, {"profile": 1}, 1_700_000_001.0))["erased"]["profile"]
    1
    """
    return orjson.dumps({
        "request_id": request.request_id,
        "user_id": request.user_id,
        "requested_at": format_timestamp(request.requested_at),
        "completed_at": format_timestamp(completed_at),
        "erased": {part: int(erased.get(part, 0)) for part in ERASED_PARTS},
    })
