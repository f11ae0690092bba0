"""Privacy helpers: keyed pseudonyms for user ids, PII scrubbing for review text.

Pure functions, no I/O: the worker applies them at the edge, before anything
is stored, logged or emitted, with the key taken from its settings (the
environment). Nothing here imports Faust.

>>> key = bytes(range(32))
>>> pseudonymise("or-c17850", key) == pseudonymise("or-c17850", key)
True
>>> pseudonymise("or-c17850", key)[:2]
'p_'
>>> scrub_pii("Mail jane.doe@example.co.uk or call +44 20 7946 0958. Size 12, $49.99 in 2016.")
'Mail [email] or call [phone]. Size 12, $49.99 in 2016.'
"""

from __future__ import annotations

import re
from hashlib import blake2b
from typing import Final

__all__ = [
    "MIN_KEY_BYTES", "PSEUDONYM_PREFIX", "pseudonymise", "pseudonymise_key_bytes", "scrub_pii",
]

PSEUDONYM_PREFIX: Final = "p_"
MIN_KEY_BYTES: Final = 16  # 128 bits: anything shorter is guessable offline
_DIGEST_BYTES: Final = 16  # 128-bit pseudonyms: no collision among billions of users
_PERSON: Final = b"fs-user-id"  # BLAKE2 personalisation: these hashes serve no other use


def pseudonymise(user_id: str, key: bytes) -> str:
    """A stable, keyed pseudonym: ``"p_"`` + 32 hex digits of BLAKE2b-128(key, user_id).

    BLAKE2b in keyed mode is a MAC (no HMAC construction needed) and is fast
    (about 1 µs). Without the key nobody can link a pseudonym back to a known
    user id by hashing candidate ids, and changing the key unlinks every
    pseudonym. ``key`` must hold at least 16 bytes; keys longer than 64 bytes
    (BLAKE2b's maximum) are first hashed down to 64.
    """
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"the pseudonymisation key needs >= {MIN_KEY_BYTES} bytes, got {len(key)}")
    if len(key) > blake2b.MAX_KEY_SIZE:
        key = blake2b(key, digest_size=blake2b.MAX_KEY_SIZE).digest()
    digest = blake2b(
        user_id.encode("utf-8", "surrogatepass"),
        digest_size=_DIGEST_BYTES, key=key, person=_PERSON,
    )
    return PSEUDONYM_PREFIX + digest.hexdigest()


def pseudonymise_key_bytes(raw: bytes | None, key: bytes) -> bytes | None:
    """The pseudonym of a Kafka message key, as bytes (``None`` stays ``None``).

    For the dead-letter topic, whose records keep the original bytes: a valid
    UTF-8 key gets the same pseudonym as the user id it names, so a dead letter
    can be matched with the pseudonymised profile; any other bytes are hashed
    as they are (undecodable bytes become lone surrogates, hashed losslessly).

    >>> k = bytes(range(32))
    >>> pseudonymise_key_bytes(b"or-c17850", k) == pseudonymise("or-c17850", k).encode()
    True
    >>> pseudonymise_key_bytes(b"\\xff", k) != pseudonymise_key_bytes(b"\\xfe", k)
    True
    """
    if raw is None:
        return None
    return pseudonymise(raw.decode("utf-8", "surrogateescape"), key).encode()


# E-mail: local part, '@', dot-separated domain labels, alphabetic TLD. Every
# quantifier is bounded and each repeated group starts with a literal '.', so
# the match time stays linear on adversarial 10,000-character texts.
_EMAIL = re.compile(
    r"(?<![\w.%+-])[\w.%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){0,8}"
    r"\.[A-Za-z]{2,24}(?![A-Za-z0-9-])"
)

# Phone candidate: optional +country code, optional (area code), then digit
# groups joined by single spaces, dots or dashes, not glued to a word, a
# decimal, a price or a time ("10:30"). _phone() then decides.
_PHONE = re.compile(
    r"(?<![\w.,+$£€/-])"
    r"(?P<plus>\+\d{1,3}[ .-]?)?"
    r"(?P<area>\(\d{1,5}\)[ .-]?)?"
    r"\d{1,15}(?:[ .-]\d{1,15}){0,6}"
    r"(?![\w%/]|[.,:-]\d)"
)
_SEPARATOR = re.compile(r"[ .-]")
_YEAR = re.compile(r"(?:19|20)[0-9]{2}")
_MIN_PHONE_DIGITS, _MAX_PHONE_DIGITS = 9, 15  # E.164 allows at most 15 digits


def _phone(match: re.Match[str]) -> str:
    """Keep ordinary numbers: sizes, prices, years, measurements, ranges, lists.

    A phone needs 9..15 digits in all. Without '+' or parentheses, a run of
    1-2-digit groups (``32 34 36 38 40``) is a list of sizes unless it starts
    with the trunk prefix 0 (``06 12 34 56 78``), and a run of years
    (``2016 2017 2018``) is a list of years.
    """
    text = match.group()
    digits = sum(c.isdigit() for c in text)
    if not _MIN_PHONE_DIGITS <= digits <= _MAX_PHONE_DIGITS:
        return text
    if match.group("plus") is None and match.group("area") is None:
        groups = _SEPARATOR.split(text)
        if max(map(len, groups)) <= 2 and not text.startswith("0"):
            return text
        if all(_YEAR.fullmatch(g) for g in groups):
            return text
    return "[phone]"


_MIN_ID_CHARS = 3  # shorter ids ("7", "ab") are ordinary words and numbers in a review


def scrub_pii(text: str, identifiers: tuple[str, ...] = ()) -> str:
    """Replace e-mail addresses by ``[email]``, phone numbers by ``[phone]``, and each of
    ``identifiers`` (the author's own user id) standing as a word by ``[user]``.

    Ordinary numbers stay: ``size 12``, ``$49.99``, ``2016``, ``5'8"``,
    ``32-24.5-32``, ``145-150 lbs``, ``2016-05-01``. Idempotent. Known limits:
    7-digit local numbers (``555-1234``) and spelled-out addresses
    (``jane at example dot com``) are left alone.

    >>> scrub_pii("call (555) 123-4567 or 555.123.4567; i'm 5'2\\", 110, 32-24.5-32")
    'call [phone] or [phone]; i\\'m 5\\'2", 110, 32-24.5-32'
    >>> scrub_pii("I am customer C-1042, ask for C-1042b", identifiers=("c-1042",))
    'I am customer [user], ask for C-1042b'
    """
    for ident in identifiers:
        if len(ident) >= _MIN_ID_CHARS and ident.casefold() in text.casefold():
            text = re.sub(rf"(?<!\w){re.escape(ident)}(?!\w)", "[user]", text,
                          flags=re.IGNORECASE)
    if "@" in text:
        text = _EMAIL.sub("[email]", text)
    return _PHONE.sub(_phone, text)
