"""Keyed pseudonyms and PII scrubbing."""

from __future__ import annotations

import re
import time

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.contract import decode_event
from stream.privacy import pseudonymise, scrub_pii
from tests.shared_data import data_dir

KEY = b"k" * 32


# --- pseudonymise ----------------------------------------------------------------------------


def test_pseudonym_is_stable_prefixed_hex() -> None:
    p = pseudonymise("or-c17850", KEY)
    assert p == pseudonymise("or-c17850", KEY)
    assert re.fullmatch(r"p_[0-9a-f]{32}", p)


def test_pseudonym_is_a_known_value() -> None:
    # Pinned: a change of algorithm would silently split every user's history.
    from hashlib import blake2b

    expected = blake2b(b"or-c17850", digest_size=16, key=bytes(range(32)), person=b"fs-user-id")
    assert pseudonymise("or-c17850", bytes(range(32))) == "p_" + expected.hexdigest()


def test_pseudonym_depends_on_the_key_and_the_user() -> None:
    assert pseudonymise("u1", KEY) != pseudonymise("u1", b"j" * 32)
    assert pseudonymise("u1", KEY) != pseudonymise("u2", KEY)
    users = [f"or-c{i}" for i in range(5000)]
    assert len({pseudonymise(u, KEY) for u in users}) == len(users)


def test_short_keys_are_refused_and_long_keys_work() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        pseudonymise("u1", b"secret")
    long_key = b"x" * 100
    assert pseudonymise("u1", long_key) == pseudonymise("u1", long_key)
    assert pseudonymise("u1", long_key) != pseudonymise("u1", b"x" * 64)


def test_pseudonym_is_a_valid_contract_user_id() -> None:
    event = {
        "type": "click", "event_id": "e1", "user_id": pseudonymise("Zoë\u00a0\ud800", KEY),
        "item_id": "i1", "timestamp": "2011-01-01T00:00:00Z",
    }
    assert decode_event(orjson.dumps(event)).user_id.startswith("p_")


# --- scrub_pii -------------------------------------------------------------------------------

SCRUBBED = [
    ("write to jane.doe@example.co.uk please", "write to [email] please"),
    ("JANE+shop@Mail.Example.COM!", "[email]!"),
    ("mail: a_b-c.d@sub-domain.example.org.", "mail: [email]."),
    ("call +44 20 7946 0958 now", "call [phone] now"),
    ("call 020 7946 0958", "call [phone]"),
    ("mobile 07946 095895", "mobile [phone]"),
    ("us (555) 123-4567", "us [phone]"),
    ("us 555-123-4567, thanks", "us [phone], thanks"),
    ("us 555.123.4567.", "us [phone]."),
    ("+1-800-555-0199", "[phone]"),
    ("tel:+447946095895", "tel:[phone]"),
    ("fr 06 12 34 56 78", "fr [phone]"),
    ("fr +33 6 12 34 56 78", "fr [phone]"),
    ("0044 20 7946 0958", "[phone]"),
    ("5551234567", "[phone]"),
    ("both a@b.io and 555-123-4567", "both [email] and [phone]"),
]

KEPT = [
    "size 12 fits",
    "I ordered a size 0P and a 12",
    "only $49.99, was £120.00",
    "price 1,299.99 or 1.234.567,89 EUR",
    "bought in 2016, again in 2017",
    "order 2016 2017 2018",
    "i'm 5'8\" 130 lbs, 34DD",
    "i'm 5'2\", 110, 32-24.5-32",
    "5'7 145-150 lbs",
    "sizes 32 34 36 38 40",
    "sizes 2 4 6 8 10 12 14",
    "looks very 1930-1940's",
    "delivered 2016-05-01 10:30",
    "12/25/2016 and 25.12.2016",
    "12.5 x 30.5 cm, 100% cotton",
    "1234567890123456789 is not a phone",  # 19 digits: more than E.164 allows
    "55 5 stars",
    "user@localhost is not an internet address",
    "@handle and foo@ and @bar.com",
]


@pytest.mark.parametrize(("text", "expected"), SCRUBBED)
def test_emails_and_phones_are_scrubbed(text: str, expected: str) -> None:
    assert scrub_pii(text) == expected


@pytest.mark.parametrize("text", KEPT)
def test_ordinary_numbers_and_text_are_kept(text: str) -> None:
    assert scrub_pii(text) == text


@settings(max_examples=800, deadline=None)
@given(st.text(alphabet=st.sampled_from("0123456789 .-+()@abc.,:$/'\n"), max_size=80))
def test_scrub_is_idempotent_and_only_replaces(text: str) -> None:
    once = scrub_pii(text)
    assert scrub_pii(once) == once
    # Nothing but the placeholders is added; no digit or '@' survives inside one.
    assert len(re.sub(r"\[(email|phone)\]", "", once)) <= len(text)


@pytest.mark.parametrize(
    "text",
    [
        "a" * 10_000 + "@",
        "1 " * 5_000,
        "1-" * 5_000,
        "a." * 5_000 + "@x",
        "a@" + "b." * 4_998 + "c",
        "(" * 10_000,
        ("1" * 15 + "-") * 600,
        "+1" * 5_000,
    ],
)
def test_adversarial_texts_scrub_in_linear_time(text: str) -> None:
    started = time.perf_counter()
    scrub_pii(text)
    assert time.perf_counter() - started < 0.25  # about 1 ms measured; no backtracking blow-up


def test_real_clothing_reviews_are_left_intact() -> None:
    # The public dataset is already anonymised: nothing in 23,486 real reviews may
    # be taken for an e-mail or a phone number (sizes, weights, measurements...).
    from tools import datasets

    data = data_dir("womens_clothing_reviews")
    texts = [e["text"] for e in datasets.clothing_reviews(data) if "text" in e]
    assert len(texts) > 20_000
    changed = [t for t in texts if scrub_pii(t) != t]
    assert changed == []


def test_module_doctests() -> None:
    import doctest

    import stream.privacy

    result = doctest.testmod(stream.privacy)
    assert result.attempted >= 4 and result.failed == 0


def test_key_length_limits_are_exact() -> None:
    from hashlib import blake2b

    def expected(key: bytes) -> str:
        return "p_" + blake2b(b"u1", digest_size=16, key=key, person=b"fs-user-id").hexdigest()

    assert pseudonymise("u1", b"k" * 16) == expected(b"k" * 16)  # the shortest key allowed
    with pytest.raises(ValueError, match="got 15"):
        pseudonymise("u1", b"k" * 15)
    assert pseudonymise("u1", b"k" * 64) == expected(b"k" * 64)  # BLAKE2b's longest: as is
    # Longer keys are hashed down, and the whole key still matters.
    assert pseudonymise("u1", b"k" * 65) == expected(blake2b(b"k" * 65).digest())
    assert pseudonymise("u1", b"a" + b"k" * 99) != pseudonymise("u1", b"b" + b"k" * 99)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ring 012 345 678", "ring [phone]"),  # 9 digits: the fewest a phone has
        ("ring 12 345 678", "ring 12 345 678"),  # 8: kept
        ("ring +123 456 789 012 345", "ring [phone]"),  # 15: the most E.164 allows
        ("ring +1234 567 890 123 456", "ring +1234 567 890 123 456"),  # 16: kept
        ("ring 123 456 789", "ring [phone]"),  # 3-digit groups are not a list of sizes
        ("ring +1 12 34 56 78 90", "ring [phone]"),  # '+' makes short groups a phone
    ],
)
def test_phone_digit_limits(text: str, expected: str) -> None:
    assert scrub_pii(text) == expected
