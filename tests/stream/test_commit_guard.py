"""The commit guard's bookkeeping, without Faust: which input offsets may be
committed (stream.commit_guard). tests/stream/faust/test_consumer.py runs it
under the consumer's overrides."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

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


def test_refusals_are_counted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="stream.commit_guard")
    guard = CommitGuard([TOPIC])
    for offset in (7, 8, 9):
        guard.refuse(TOPIC, 0, offset)
    assert guard.refused == 3
    assert [r.getMessage() for r in caplog.records][1] == (
        "not committing in.clicks[0]@8: acked by Faust, never processed"
    )


def test_cap_warns_once_per_hole_and_never_for_a_held_offset(
    caplog: pytest.LogCaptureFixture,
) -> None:
    guard = CommitGuard([TOPIC])
    guard.done(run(0, 4) + run(6, 9))
    assert guard.cap(TP0, 10, None) == 5
    assert guard.cap(TP0, 12, 5) is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "holding the commit of in.clicks[0] at 5 (Faust wanted 10): offset 5 was never "
        "processed; it will be read again"
    ]
    caplog.clear()
    held = CommitGuard([TOPIC])
    held.hold(run(3, 3))
    held.done(run(0, 6))
    assert held.cap(TP0, 7, None) == 3  # held on purpose: no warning
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_cap_never_passes_the_offset_faust_asked_for(caplog: pytest.LogCaptureFixture) -> None:
    guard = CommitGuard([TOPIC])
    guard.done(run(0, 9))
    assert guard.cap(TP0, 5, None) == 5
    assert guard.committable(TP0, 5) == 10  # 5..9 are still to commit
    assert caplog.records == []  # no hole: nothing to warn about


def test_a_held_offset_at_the_committed_one_stays_held(caplog: pytest.LogCaptureFixture) -> None:
    guard = CommitGuard([TOPIC])
    guard.hold(run(5, 5))
    guard.done(run(5, 8))
    assert guard.cap(TP0, 9, 5) is None
    assert caplog.records == []  # held on purpose


def test_a_partition_that_starts_past_zero_commits_from_its_first_offset() -> None:
    # Faust knows no committed offset (retention deleted the first records).
    guard = CommitGuard([TOPIC])
    guard.done(run(10, 12))
    assert guard.committable(TP0, None) == 13


def test_offsets_another_owner_committed_are_dropped() -> None:
    guard = CommitGuard([TOPIC])
    guard.hold([Offset(TOPIC, 0, 3), Offset(TOPIC, 0, 7)])
    guard.done([Offset(TOPIC, 0, o) for o in (3, 5, 6)] + [Offset(TOPIC, 0, 1)])
    assert guard.committable(TP0, 5) == 7  # 1 is below the committed 5
    assert guard._processed[TP0] == {5, 6} and guard._owed[TP0] == {7}


def test_release_goes_on_past_a_forgotten_message() -> None:
    guard = CommitGuard([TOPIC])
    guard.hold(run(2, 2))
    guard.done(run(0, 3))
    guard.release([Offset(TOPIC, 0, 9), Offset(TOPIC, 0, 2)])  # 9 was never held
    assert guard._owed[TP0] == set()
    assert guard.committable(TP0, None) == 4


def test_forgetting_a_partition_resets_what_faust_acked_of_it() -> None:
    guard = CommitGuard([TOPIC])
    guard.forget([("other", 3)])  # nothing held there: nothing to do
    guard.hold(run(2, 2))
    guard.done(run(0, 3))
    assert guard.take_done(TOPIC, 0, 2) is False
    guard.refuse(TOPIC, 0, 2)  # Faust acked the held one
    guard.forget([TP0])  # revoked; later read again and processed normally
    guard.done(run(2, 2))
    assert guard.take_done(TOPIC, 0, 2) is True


def test_a_released_offset_read_again_is_acked_normally() -> None:
    guard = CommitGuard([TOPIC])
    guard.hold(run(2, 2))
    guard.done(run(0, 3))
    guard.refuse(TOPIC, 0, 2)
    guard.release(run(2, 2))  # Faust's earlier ack was its last word for this one
    assert guard.take_done(TOPIC, 0, 2) is False
    guard.done(run(2, 2))  # read again after a seek
    assert guard.take_done(TOPIC, 0, 2) is True


def test_a_revoked_partitions_commit_without_a_committed_offset_stops_at_the_hole() -> None:
    # Seen in the three-worker restart test: after a rebalance Faust's fetch
    # skipped 348-356 (processed 309-347 in an earlier generation, 357 on),
    # and the commit of the revoked partition came with no committed offset.
    guard = CommitGuard([TOPIC])
    guard.done(run(309, 347))
    assert guard.cap(TP0, 348, 309) == 348
    guard.done(run(357, 710))
    assert guard.cap(TP0, 711, None) is None  # not 711: 348 was never processed
    assert guard.committable(TP0, None) is None
    guard.done(run(348, 356))  # read again after the next seek
    assert guard.cap(TP0, 711, None) == 711


def committed_at(offset: int | None) -> Callable[[Any], int | None]:
    return lambda tp: offset


def test_in_order_keeps_nothing_past_a_record_faust_lost() -> None:
    # Traced in the three-worker restart test (clicks[5]): committed at 634,
    # Faust delivered 634 and lost 635 around the rebalance's seek (its ack
    # refused), then delivered 636 on; processed, 636-965 reached the item owners
    # before 635, read again after the next rebalance, whose click the owner of
    # sku-001 then skipped as applied.
    guard = CommitGuard([TOPIC])
    kept, holes = guard.in_order(run(634, 634), committed_at(634))
    assert [m.offset for m in kept] == [634] and holes == {}
    guard.done(kept)
    guard.refuse(TOPIC, 0, 635)
    kept, holes = guard.in_order(run(636, 640), committed_at(634))
    assert kept == [] and holes == {TP0: 635}
    # The records still queued after the seek: skipped, without a second seek.
    kept, holes = guard.in_order(run(641, 642), committed_at(634))
    assert kept == [] and holes == {}
    kept, holes = guard.in_order(run(635, 637), committed_at(634))
    assert [m.offset for m in kept] == [635, 636, 637] and holes == {}


def test_in_order_counts_held_and_replayed_offsets_as_processed() -> None:
    guard = CommitGuard([TOPIC])
    guard.hold(run(10, 10))  # a debounced recommendation's trigger
    guard.done(run(10, 12))
    kept, holes = guard.in_order([*run(11, 12), *run(13, 14)], committed_at(10))
    assert [m.offset for m in kept] == [11, 12, 13, 14] and holes == {}
    guard.done(kept)
    assert guard.cap(TP0, 15, 10) is None  # 10 still held: nothing committed
    kept, holes = guard.in_order(run(15, 15), committed_at(10))
    assert [m.offset for m in kept] == [15]


def test_in_order_without_a_known_start_takes_the_first_offset_it_sees() -> None:
    guard = CommitGuard([TOPIC])
    kept, holes = guard.in_order([*run(5, 6), *run(8, 9)], committed_at(None))
    assert [m.offset for m in kept] == [5, 6] and holes == {TP0: 7}
    kept, holes = guard.in_order(run(3, 3), committed_at(None))
    assert [m.offset for m in kept] == [3]  # below the run: a replay, in order


def test_in_order_without_a_committed_offset_starts_from_the_lowest_processed_or_held() -> None:
    # No commit known (Faust's nor the guard's): the run starts at the lowest
    # offset processed or held, whichever is lower, so the hole after it is found.
    guard = CommitGuard([TOPIC])
    guard.done(run(2, 3))
    kept, holes = guard.in_order(run(5, 5), committed_at(None))
    assert kept == [] and holes == {TP0: 4}
    held_later = CommitGuard([TOPIC])
    held_later.done(run(2, 3))
    held_later.hold(run(6, 6))
    kept, holes = held_later.in_order(run(5, 5), committed_at(None))
    assert kept == [] and holes == {TP0: 4}
    held_first = CommitGuard([TOPIC])
    held_first.hold(run(1, 1))
    held_first.done(run(1, 3))
    kept, holes = held_first.in_order(run(4, 4), committed_at(None))
    assert [m.offset for m in kept] == [4] and holes == {}


def test_in_order_leaves_other_topics_and_a_disabled_guard_alone() -> None:
    guard = CommitGuard([TOPIC])
    other = [Offset("in.other", 0, 7)]
    assert guard.in_order(other, committed_at(0)) == (other, {})
    off = CommitGuard([TOPIC], enabled=False)
    assert off.in_order(run(5, 5), committed_at(0)) == (run(5, 5), {})


def test_a_forgotten_partitions_hole_is_reported_again() -> None:
    guard = CommitGuard([TOPIC])
    assert guard.in_order(run(3, 3), committed_at(1))[1] == {TP0: 1}
    assert guard.in_order(run(3, 3), committed_at(1))[1] == {}
    guard.forget([TP0])
    assert guard.in_order(run(3, 3), committed_at(1))[1] == {TP0: 1}


def test_absent_offsets_hold_no_hole() -> None:
    guard = CommitGuard([TOPIC])
    assert guard.in_order(run(4, 4), committed_at(2))[1] == {TP0: 2}
    guard.absent(TP0, 2, 4)  # the fetch from 2 began at 4
    kept, holes = guard.in_order(run(4, 4), committed_at(2))
    assert [m.offset for m in kept] == [4] and holes == {}
    guard.done(kept)
    assert guard.cap(TP0, 5, 2) == 5


def test_a_hole_still_missing_after_a_while_is_asked_for_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import stream.commit_guard as cg

    now = [100.0]
    monkeypatch.setattr(cg, "time", SimpleNamespace(monotonic=lambda: now[0]))
    guard = CommitGuard([TOPIC])
    assert guard.in_order(run(3, 3), committed_at(1))[1] == {TP0: 1}
    now[0] += cg.REWIND_AGAIN_SECONDS - 1
    assert guard.in_order(run(4, 4), committed_at(1))[1] == {}
    now[0] += 2
    assert guard.in_order(run(5, 5), committed_at(1))[1] == {TP0: 1}
