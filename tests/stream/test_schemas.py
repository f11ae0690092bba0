"""The published JSON Schemas agree with decode_event, example by example and at random."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from stream.contract import Rejected, decode_event

SCHEMAS = Path(__file__).resolve().parents[2] / "stream" / "schemas"
KINDS = ("click", "purchase", "review")

BASE: dict[str, Any] = {
    "event_id": "e1", "user_id": "u1", "item_id": "i1", "timestamp": "2011-06-01T10:00:00Z",
}
GOOD: dict[str, dict[str, Any]] = {
    "click": {**BASE, "type": "click", "session_id": "s1", "recommendation_id": "r1"},
    "purchase": {**BASE, "type": "purchase", "quantity": 2, "price": 3.5, "currency": "GBP",
                 "order_id": "536365"},
    "review": {**BASE, "type": "review", "rating": 4, "text": "Fits well.\nLovely.",
               "title": "Nice"},
}
DROP = object()  # marks a field to remove


@cache
def validator(kind: str) -> Draft202012Validator:
    schema = json.loads((SCHEMAS / f"{kind}.json").read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def schema_ok(kind: str, obj: Any) -> bool:
    return validator(kind).is_valid(obj)


def contract_ok(kind: str, obj: Any) -> bool:
    try:
        decode_event(orjson.dumps(obj), kind)  # type: ignore[arg-type]
    except Rejected:
        return False
    return True


def variant(kind: str, **changes: Any) -> dict[str, Any]:
    out = dict(GOOD[kind])
    for name, value in changes.items():
        if value is DROP:
            out.pop(name, None)
        else:
            out[name] = value
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_schema_is_valid_draft_2020_12(kind: str) -> None:
    schema = json.loads((SCHEMAS / f"{kind}.json").read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


GOOD_CASES: list[tuple[str, dict[str, Any]]] = [
    ("click", GOOD["click"]),
    ("click", variant("click", type=DROP, session_id=None, recommendation_id=DROP)),
    ("click", variant("click", extra={"nested": [1, 2]})),
    ("click", variant("click", timestamp="2011-06-01t10:00:00.123456789+05:30")),
    ("click", variant("click", timestamp="1990-06-01T00:00:00-00:00")),
    ("click", variant("click", user_id="Zoë 名前", item_id="x" * 256)),
    ("purchase", GOOD["purchase"]),
    ("purchase", variant("purchase", quantity=-100_000, price=0, currency=DROP)),
    ("purchase", variant("purchase", quantity=3.0, price=1_000_000)),
    ("purchase", variant("purchase", currency=None, order_id=None)),
    ("review", GOOD["review"]),
    ("review", variant("review", text=DROP, title=DROP, rating=1)),
    ("review", variant("review", rating=None, text="x" * 10_000)),
    ("review", variant("review", rating=5.0, text="tab\there", title="")),
]

BAD_CASES: list[tuple[str, dict[str, Any] | Any]] = [
    ("click", [GOOD["click"]]),
    ("click", variant("click", type="purchase")),
    ("click", variant("click", type="refund")),
    ("click", variant("click", event_id=DROP)),
    ("click", variant("click", user_id=None)),
    ("click", variant("click", user_id="")),
    ("click", variant("click", user_id=17850)),
    ("click", variant("click", user_id="u\n1")),
    ("click", variant("click", user_id="u\x85")),
    ("click", variant("click", item_id="x" * 257)),
    ("click", variant("click", session_id="")),
    ("click", variant("click", session_id=5)),
    ("click", variant("click", timestamp="2011-06-01T10:00:00")),
    ("click", variant("click", timestamp="2011-06-01T10:00:00Z\n")),
    ("click", variant("click", timestamp="2011-06-01 10:00:00Z")),
    ("click", variant("click", timestamp="2011-06-01T10:00Z")),
    ("click", variant("click", timestamp="2011-06-01T25:00:00Z")),
    ("click", variant("click", timestamp="2011-13-01T10:00:00Z")),
    ("click", variant("click", timestamp="1989-12-31T23:59:59Z")),
    ("click", variant("click", timestamp="2100-01-01T00:00:00Z")),
    ("click", variant("click", timestamp="2011-06-01T10:00:00.1234567891Z")),
    ("click", variant("click", timestamp=1_306_922_400)),
    ("purchase", variant("purchase", quantity=DROP)),
    ("purchase", variant("purchase", quantity=0)),
    ("purchase", variant("purchase", quantity=0.0)),
    ("purchase", variant("purchase", quantity=1.5)),
    ("purchase", variant("purchase", quantity=True)),
    ("purchase", variant("purchase", quantity="2")),
    ("purchase", variant("purchase", quantity=100_001)),
    ("purchase", variant("purchase", price=DROP)),
    ("purchase", variant("purchase", price=None)),
    ("purchase", variant("purchase", price=-0.01)),
    ("purchase", variant("purchase", price=1_000_000.5)),
    ("purchase", variant("purchase", price=False)),
    ("purchase", variant("purchase", currency="gbp")),
    ("purchase", variant("purchase", currency="GBP\n")),
    ("purchase", variant("purchase", order_id="")),
    ("review", variant("review", rating=DROP, text=DROP)),
    ("review", variant("review", rating=None, text=None)),
    ("review", variant("review", rating=0.5)),
    ("review", variant("review", rating=5.01)),
    ("review", variant("review", rating="5")),
    ("review", variant("review", rating=True)),
    ("review", variant("review", text="")),
    ("review", variant("review", text="x" * 10_001)),
    ("review", variant("review", text="nul\x00")),
    ("review", variant("review", title="esc\x1b")),
    ("review", variant("review", title="x" * 501)),
]


@pytest.mark.parametrize(("kind", "obj"), GOOD_CASES)
def test_good_examples_pass_both(kind: str, obj: dict[str, Any]) -> None:
    assert contract_ok(kind, obj)
    assert schema_ok(kind, obj), list(validator(kind).iter_errors(obj))


@pytest.mark.parametrize(("kind", "obj"), BAD_CASES)
def test_bad_examples_fail_both(kind: str, obj: Any) -> None:
    assert not contract_ok(kind, obj)
    assert not schema_ok(kind, obj)


# What a pattern cannot check: calendar validity and the UTC instant near the year
# bounds. Here (and only here) the schema is looser than the validator; never the reverse.
KNOWN_GAPS = [
    "2011-02-30T10:00:00Z",  # no 30 February
    "1990-01-01T00:30:00+01:00",  # 1989-12-31T23:30Z
    "2099-12-31T23:30:00-01:00",  # 2100-01-01T00:30Z
    "2099-12-31T23:59:60Z",  # the leap second lands on 2100-01-01
]


@pytest.mark.parametrize("stamp", KNOWN_GAPS)
def test_known_gaps_are_only_stricter_in_the_validator(stamp: str) -> None:
    obj = variant("click", timestamp=stamp)
    assert schema_ok("click", obj) and not contract_ok("click", obj)


# --- random agreement ------------------------------------------------------------------------

ids = st.one_of(
    st.text(max_size=4),
    st.text(st.characters(codec="utf-8"), min_size=250, max_size=260),
    st.integers(-(2**63), 2**63 - 1), st.none(), st.booleans(),
)
numbers = st.one_of(
    st.integers(-200_000, 200_000), st.floats(-2e6, 2e6, allow_nan=False),
    st.sampled_from([0, 0.0, 1, 5, 5.0, 100_000, 100_001, 1_000_000, 1_000_000.01, 2.0, -1]),
    st.booleans(), st.none(), st.text(max_size=2),
)
stamps = st.one_of(
    st.sampled_from([
        "2011-06-01T10:00:00Z", "2011-06-01T10:00:00", "2011-06-01T10:00:00+01:00",
        "2011-06-01 10:00:00Z", "1985-01-01T00:00:00Z", "2011-06-01T10:00:00.5z", "x",
    ]),
    st.integers(-(2**63), 2**63 - 1), st.none(),
)
texts = st.one_of(st.none(), st.text(max_size=30), st.integers(0, 9), st.just(""))


FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "type": st.sampled_from([*KINDS, "refund", None, 3]),
    "event_id": ids, "user_id": ids, "item_id": ids, "timestamp": stamps,
    "session_id": ids, "recommendation_id": ids, "order_id": ids,
    "quantity": numbers, "price": numbers, "rating": numbers,
    "currency": st.sampled_from(["GBP", "gbp", "EURO", None, 1]),
    "text": texts, "title": texts,
}


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(KINDS),
    names=st.lists(st.sampled_from(sorted(FIELDS)), max_size=3, unique=True),
    drop=st.lists(st.sampled_from(sorted(FIELDS)), max_size=1),
    data=st.data(),
)
def test_schema_and_validator_agree_on_random_events(
    kind: str, names: list[str], drop: list[str], data: st.DataObject
) -> None:
    # A valid event with up to three fields replaced and maybe one removed, so that
    # both accepted and rejected events are common.
    obj = {**GOOD[kind], **{name: data.draw(FIELDS[name], label=name) for name in names}}
    for name in drop:
        obj.pop(name, None)
    assert contract_ok(kind, obj) == schema_ok(kind, obj), obj
