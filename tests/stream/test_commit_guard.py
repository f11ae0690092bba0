"""The commit guard's bookkeeping, without Faust: which input offsets may be
committed (stream.commit_guard). tests/stream/faust/test_consumer.py runs it
under the consumer's overrides."""

from __future__ import annotations

import subprocess
import sys

from stream.commit_guard import CommitGuard, Offset

TOPIC = "in.clicks"
TP0 = (TOPIC, 0)


def run(first: int, last: int) -> list[Offset]:
    return [Offset(TOPIC, 0, o) for o in range(first, last + 1)]


def test_the_module_needs_no_faust() -> None:
    code = "import sys, stream.commit_guard; print(sorted(m for m in sys.modules " \
        "if m.split('.')[0] in ('faust', 'aiokafka', 'mode')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_committable_is_the_end_of_the_run_of_processed_offsets() -> None:
    guard = CommitGuard([TOPIC])
    assert guard.committable(TP0, None) is None  # nothing processed
    guard.done(run(0, 4) + run(6, 7))
    assert guard.committable(TP0, None) == 5  # offset 5 is a hole
    assert guard.committable(TP0, 5) is None  # committed there already


def test_cap_stops_at_the_first_unprocessed_offset_and_forgets_what_it_commits() -> None:
    guard = CommitGuard([TOPIC])
    guard.done(run(0, 4) + run(6, 9))
    assert guard.cap(TP0, 10, None) == 5
    assert guard.cap(TP0, 12, 5) is None  # still the hole at 5
    guard.done(run(5, 5))
    assert guard.cap(TP0, 10, 5) == 10
    assert list(guard.pending()) == []  # all committed


def test_a_held_offset_is_committable_only_after_its_release() -> None:
    guard = CommitGuard([TOPIC])
    msgs = run(0, 3)
    guard.hold([msgs[2]])
    guard.done(msgs)  # the held one stays held
    assert guard.committable(TP0, None) == 2
    guard.release([msgs[2]])
    assert guard.committable(TP0, None) == 4


def test_a_held_first_offset_is_where_the_run_starts() -> None:
    # No committed offset known: count from the first offset processed, held included.
    guard = CommitGuard([TOPIC])
    msgs = run(0, 3)
    guard.hold([msgs[0]])
    guard.done(msgs)
    assert guard.committable(TP0, None) is None
    assert guard.cap(TP0, 4, None) is None


def test_forgotten_offsets_are_not_released() -> None:
    guard = CommitGuard([TOPIC])
    msgs = run(0, 3)
    guard.hold([msgs[2]])
    guard.done(msgs)
    guard.forget([TP0])  # revoked: the owed output was dropped
    guard.release([msgs[2]])  # a late release changes nothing
    assert guard.committable(TP0, None) == 2


def test_faust_acks_count_once_for_processed_offsets_only() -> None:
    guard = CommitGuard([TOPIC])
    guard.done(run(7, 7))
    assert guard.take_done(TOPIC, 0, 7) is True
    assert guard.take_done(TOPIC, 0, 7) is False  # once
    assert guard.take_done(TOPIC, 0, 8) is False
    guard.refuse(TOPIC, 0, 8)  # never processed: counted
    assert guard.refused == 1
    held = Offset(TOPIC, 0, 9)
    guard.hold([held])
    guard.done([held])
    assert guard.take_done(TOPIC, 0, 9) is False
    guard.refuse(TOPIC, 0, 9)  # held: not counted, committable at its release
    assert guard.refused == 1
    guard.release([held])
    assert guard.take_done(TOPIC, 0, 9) is False  # Faust will not ack it again
    assert guard.committable(TP0, 7) == 8


def test_only_input_topics_and_only_when_enabled() -> None:
    assert CommitGuard([TOPIC]).guards(TOPIC)
    assert not CommitGuard([TOPIC]).guards("app-profiles-changelog")
    off = CommitGuard([TOPIC], enabled=False)
    assert not off.guards(TOPIC)
    off.done(run(0, 3))
    assert off.committable(TP0, None) is None
