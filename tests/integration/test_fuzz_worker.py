"""Fuzz the *running* worker: thousands of malformed and adversarial events
interleaved with good ones, through the broker.

Zero crashes; every bad event in the dead-letter topic, bytes untouched, with
the reason the contract gives it; every good event processed. The pure
decoder has its own property tests (tests/stream/test_contract_fuzz.py); this
test checks the whole path around it: consumer, agent batching, key checks,
dead-letter publishing, metrics.

The stream is a seeded mutation fuzzer (a Hypothesis example per event would
need a worker per example): each bad event is a valid one broken by one or two
mutations drawn from the classes the issue lists. ``FEEDBACK_FUZZ_SEED`` picks
another stream; the seed is printed so any failure can be replayed.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from stream.contract import Rejected, decode_event
from stream.settings import Settings
from tests.integration.conftest import consume, produce_events
from tests.integration.reliability_helpers import wait_metric

pytestmark = pytest.mark.integration

N_GOOD, N_BAD = 2000, 2000
SEED = int(os.environ.get("FEEDBACK_FUZZ_SEED", "20261122"))

Record = tuple[str, bytes | None, bytes | None]  # (type, key, value)


def good_event(rng: random.Random, i: int) -> dict[str, Any]:
    kind = rng.choice(("click", "purchase", "review"))
    e: dict[str, Any] = {
        "type": kind,
        "event_id": f"good-{SEED}-{i}",
        "user_id": f"fz-{rng.randrange(300)}",
        "item_id": f"sku-{rng.randrange(80)}",
        "timestamp": f"2024-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}T1{rng.randint(0, 9)}:00:00Z",
    }
    if kind == "purchase":
        e |= {"quantity": rng.choice((1, 2, -1)), "price": round(rng.uniform(0, 99), 2)}
    elif kind == "review":
        e |= {"rating": rng.randint(1, 5), "text": rng.choice(("ok", "Great", "né €"))}
    return e


WEIRD_STRINGS = [
    "", " ", "\x00", "a\x07b", "\u202e\u202d", "\ud800", "x" * 300, "\U0001f600" * 70,
    "'; DROP TABLE users; --", "../../etc/passwd", "${jndi:ldap://x}", "\r\n\t",
]
WEIRD_NUMBERS: list[Any] = [
    -1, 0, -0.0, 1e308, -1e308, 10**30, -(10**30), 2.5, 100_001, 1_000_001.0, True, False,
]
WEIRD_VALUES: list[Any] = [None, [], {}, [1, 2], {"a": 1}, "1", "NaN", *WEIRD_NUMBERS]
TIMESTAMPS = [
    "1969-12-31T23:59:59Z", "0001-01-01T00:00:00Z", "2200-01-01T00:00:00Z",
    "9999-12-31T23:59:59Z", "2024-05-01 10:00:00", "2024-05-01T10:00:00", "2024-13-01T00:00:00Z",
    "2024-02-30T00:00:00Z", "yesterday", "", "2024-05-01T10:00:00+25:00", 1714557600,
]


def mutate_dict(rng: random.Random, e: dict[str, Any]) -> dict[str, Any]:
    e = dict(e)
    field = rng.choice(sorted(e))
    op = rng.randrange(7)
    if op == 0:
        del e[field]
    elif op == 1:
        e[field] = rng.choice(WEIRD_VALUES)
    elif op == 2:
        e[field] = rng.choice(WEIRD_STRINGS)
    elif op == 3:
        e["timestamp"] = rng.choice(TIMESTAMPS)
    elif op == 4:
        e["type"] = rng.choice(("refund", "CLICK", "", "purchase", "review", "click", None))
    elif op == 5 and e["type"] == "purchase":
        e[rng.choice(("quantity", "price"))] = rng.choice(WEIRD_NUMBERS)
    elif op == 5 and e["type"] == "review":
        e[rng.choice(("rating", "text", "title"))] = rng.choice(
            [0, 6, -3, 5.5, "5", "x" * 10_001, "t" * 501, None]
        )
    else:
        e["text"] = "call +44 20 7946 0958 " + "\x1b[31m" * rng.randint(1, 3000)
    return e


def dumps(obj: Any) -> bytes:
    try:
        return orjson.dumps(obj)
    except TypeError:  # a lone surrogate: JSON can still carry it, escaped
        return json.dumps(obj).encode()


def bad_value(rng: random.Random, e: dict[str, Any]) -> bytes | None:
    op = rng.randrange(12)
    if op < 5:
        return dumps(mutate_dict(rng, mutate_dict(rng, e) if op == 0 else e))
    if op == 5:  # invalid UTF-8 inside an otherwise valid object
        return orjson.dumps(e).replace(b'"sku', b'"\xff\xfe', 1)
    if op == 6:  # truncated
        raw = orjson.dumps(e)
        return raw[: rng.randrange(len(raw))]
    if op == 7:  # NaN / Infinity literals, which JSON does not have
        raw = orjson.dumps({**e, "price": 1.0, "rating": 1.0, "quantity": 1})
        return raw.replace(b"1.0", rng.choice((b"NaN", b"Infinity", b"-Infinity")), 1)
    if op == 8:  # deep nesting
        depth = rng.choice((1100, 5000, 50_000))
        return b'{"x":' + b"[" * depth + b"]" * depth + b"}"
    if op == 9:  # oversized (rare: each is 70 KB)
        return b'{"text":"' + b"x" * 70_000 + b'"}' if rng.random() < 0.1 else b""
    if op == 10:  # not an object, or random bytes
        return rng.choice((b"[1,2]", b"42", b'"str"', b"null", b"true", rng.randbytes(40), None))
    return orjson.dumps(e)[::-1]


def expected_outcome(
    s: Settings, etype: str, key: bytes | None, value: bytes | None, now: float,
    learned: set[tuple[str, str]],
) -> str | None:
    """What the contract says about one record: None if good, "duplicate" for an
    event id already learned for that user, else the rejection reason."""
    try:
        event = decode_event(
            value, etype,  # type: ignore[arg-type]
            max_bytes=s.max_payload_bytes, max_text_chars=s.max_text_chars,
        )
    except Rejected as r:
        return r.reason
    if key is not None and key != event.user_id.encode():
        return "key_mismatch"
    if event.timestamp > now + s.max_future_skew_seconds:
        return "out_of_range"
    if (event.user_id, event.event_id) in learned:
        return "duplicate"  # a mutation can turn an id into another valid, repeated one
    learned.add((event.user_id, event.event_id))
    return None


def fuzz_stream(s: Settings) -> tuple[list[Record], list[tuple[str, bytes]], int, int]:
    """Interleaved records, the expected (reason, value) dead letters, the good and
    duplicate counts."""
    rng = random.Random(SEED)
    now = time.time()
    records: list[Record] = []
    dead: list[tuple[str, bytes]] = []
    good = duplicates = 0
    learned: set[tuple[str, str]] = set()
    while good < N_GOOD or len(dead) < N_BAD:
        e = good_event(rng, len(records))
        etype = e["type"]
        if len(dead) < N_BAD and (good >= N_GOOD or rng.random() < 0.5):
            value = bad_value(rng, e)
            key: bytes | None = e["user_id"].encode()
            if rng.random() < 0.1:
                key = rng.choice((b"someone-else", None, b"\xff"))
        else:
            value, key = orjson.dumps(e), e["user_id"].encode()
        reason = expected_outcome(s, etype, key, value, now, learned)
        if reason is None:
            good += 1
        elif reason == "duplicate":
            duplicates += 1
        else:
            dead.append((reason, value or b""))
        records.append((etype, key, value))
    return records, dead, good, duplicates


def test_fuzzed_stream_against_the_running_worker(worker_factory) -> None:
    worker = worker_factory()
    s = worker.settings
    records, dead, good, duplicates = fuzz_stream(s)
    sent_records = [(s.topic_of(t), k, v) for t, k, v in records]
    sent: list[Any] = []
    produce_events(s, sent_records, sent=sent)  # type: ignore[arg-type]
    # (topic, partition, offset) -> the (key, value) written there.
    at = {(m.topic, m.partition, m.offset): (k, v or b"")
          for (_, k, v), m in zip(sent_records, sent, strict=True)}

    got = consume(s, s.topic_deadletter, until=lambda r: len(r) >= len(dead), timeout=240)
    processed = wait_metric(worker, "feedback_events_total", good, 120, outcome="processed")
    reasons = Counter(r for r, _ in dead)
    print(f"\n[fuzz seed={SEED}] sent={len(records)} good={good} bad={len(dead)} "
          f"duplicates={duplicates} dead_lettered={len(got)} processed={processed:.0f} "
          f"reasons={dict(reasons)}")

    assert worker.process.poll() is None, "the worker died"
    for marker in ("Traceback", "Agent crashed", "CRITICAL"):
        assert marker not in worker.log(), f"{marker} in the worker log:\n{worker.log()[-3000:]}"
    assert len(got) == len(dead)
    actual = Counter((dict(m.headers)["deadletter.reason"].decode(), m.value or b"") for m in got)
    assert actual == Counter(dead), "dead letters differ from what the contract says"
    for m in got:
        h = dict(m.headers)
        assert h["deadletter.detail"] and h["source.topic"].decode() in s.input_topics
        source = (h["source.topic"].decode(), int(h["source.partition"]), int(h["source.offset"]))
        assert at[source] == (m.key, m.value or b""), f"{source} is not where it came from"
    assert processed == good
    assert worker.metric("feedback_events_total", outcome="duplicate") == duplicates
    assert worker.metric("feedback_deadletter_total") == len(dead)
    by_reason: Callable[[str], float] = lambda r: worker.metric(  # noqa: E731
        "feedback_deadletter_total", reason=r
    )
    assert {r: by_reason(r) for r in reasons} == {r: float(n) for r, n in reasons.items()}
