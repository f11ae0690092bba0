"""Which input offsets may be committed: only those whose outputs were published.

A plain class, without Faust: the consumer in :mod:`stream.faust.consumer`
asks it what to commit, and the agent tells it what was processed and
published. Partitions are ``(topic, partition)`` pairs (Faust's ``TP`` is one).

The agents first keep of each batch what :meth:`CommitGuard.in_order` lets
through (never past an offset Faust lost). The agent calls
:meth:`CommitGuard.done` after publishing a batch,
:meth:`CommitGuard.hold` for the batch's events whose outputs are still owed
(a debounced recommendation) and :meth:`CommitGuard.release` once those are
published; :meth:`CommitGuard.forget` drops the held offsets of revoked
partitions. The consumer asks :meth:`CommitGuard.take_done` whether an ack counts,
:meth:`CommitGuard.committable` what to commit, and :meth:`CommitGuard.cap`
how far a commit may go.

A held offset stays uncommitted, so the next owner of the partition (or this
worker after a restart) reads it again: at-least-once, and the profile's
de-duplication window absorbs the repeat. An offset never processed holds that
partition's commits until it is read again (the next rebalance or restart),
which the lag gauge shows.

>>> guard = CommitGuard(["in.clicks"])
>>> guard.done([Offset("in.clicks", 0, o) for o in (0, 1, 2, 4)])
>>> guard.cap(("in.clicks", 0), 5, committed=None)  # offset 3 was never processed
3
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import NamedTuple, Protocol, TypeVar

log = logging.getLogger(__name__)

Partition = tuple[str, int]


class Located(Protocol):
    """A record's place in the log (an input message, a Faust message)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...


L = TypeVar("L", bound=Located)


class Offset(NamedTuple):
    topic: str
    partition: int
    offset: int


#: How long :meth:`CommitGuard.in_order` waits for a hole read again before it
#: asks for it once more (should the record be lost a second time).
REWIND_AGAIN_SECONDS = 10.0


class CommitGuard:
    """The bookkeeping of processed, held and released input offsets."""

    def __init__(self, input_topics: Iterable[str], enabled: bool = True) -> None:
        self.input_topics = frozenset(input_topics)
        self.enabled = enabled
        # Processed and published; Faust's ack of each is let through once.
        self._done: set[tuple[str, int, int]] = set()
        # Offsets processed and not yet committed, per partition.
        self._processed: dict[Partition, set[int]] = {}
        # Offsets processed whose outputs are owed (held), per partition.
        self._owed: dict[Partition, set[int]] = {}
        # Held offsets Faust acked already: their release is their last word.
        self._acked_owed: set[tuple[str, int, int]] = set()
        # The highest offset known committed per partition: Faust's own, or
        # what this guard let it commit (every offset below was processed).
        # Faust passes None for "unknown" when it commits a revoked partition.
        self._committed: dict[Partition, int] = {}
        # Unprocessed offsets a commit stopped at (warned about once each).
        self._stopped_at: set[tuple[str, int, int]] = set()
        # Per partition, an offset below which every one is processed, held or
        # committed (where in_order's scan resumes), and the hole in_order last
        # asked to read again.
        self._frontier: dict[Partition, int] = {}
        self._rewound: dict[Partition, tuple[int, float]] = {}
        self.refused = 0  # acks of unprocessed input events, for the logs and tests

    def guards(self, topic: str) -> bool:
        """Whether the commits of ``topic`` are this guard's to decide."""
        return self.enabled and topic in self.input_topics

    def done(self, messages: Iterable[Located]) -> None:
        """Mark processed messages whose outputs are published (held ones stay held)."""
        if not self.enabled:
            return
        for m in messages:
            owed = self._owed.get((m.topic, m.partition))
            if owed and m.offset in owed:
                continue
            self._mark(m.topic, m.partition, m.offset)

    def hold(self, messages: Iterable[Located]) -> None:
        """Processed messages whose outputs are still owed: not committable yet."""
        if not self.enabled:
            return
        for m in messages:
            self._owed.setdefault((m.topic, m.partition), set()).add(m.offset)

    def release(self, messages: Iterable[Located]) -> None:
        """Held messages whose owed outputs are now published."""
        if not self.enabled:
            return
        for m in messages:
            owed = self._owed.get((m.topic, m.partition))
            if owed is None or m.offset not in owed:
                continue  # forgotten (revoked) meanwhile: the next owner redoes it
            owed.discard(m.offset)
            self._mark(m.topic, m.partition, m.offset)

    def forget(self, partitions: Iterable[Partition]) -> None:
        """Drop the held offsets of revoked partitions (their owed outputs were
        dropped; the partition's next owner reads them again)."""
        for tp in partitions:
            for offset in self._owed.pop(tp, ()):
                self._acked_owed.discard((tp[0], tp[1], offset))
            self._frontier.pop(tp, None)  # its held offsets are holes again
            self._rewound.pop(tp, None)

    def in_order(self, messages: Sequence[L], committed: Callable[[Partition], int | None]
                 ) -> tuple[list[L], dict[Partition, int]]:
        """``messages`` without those that would be processed past an unprocessed
        offset of their partition, and the first such offset (the *hole*) of each
        partition to read again from; a hole already returned is returned
        again only once the partition is forgotten, or after
        :data:`REWIND_AGAIN_SECONDS` (the records still queued when it was
        returned follow it, and are dropped without a seek each).

        Faust can lose a delivered record around a rebalance (its ack is then
        refused, and the commits stop there), while the records after it reach
        the agent. Processed then, they would be learned before the lost one,
        which is read again only after the partition's next seek: the item
        owners keep per item and source partition the highest offset applied
        (models/item_state.py), so the late record's item increments would be
        skipped as already applied. ``committed(tp)`` is Faust's committed
        offset of ``tp`` (None if unknown); with none known here either, a
        partition's first message sets where its run starts.
        """
        if not self.enabled:
            return list(messages), {}
        kept: list[L] = []
        holes: dict[Partition, int] = {}
        expect: dict[Partition, int | None] = {}
        for m in messages:
            key = (m.topic, m.partition)
            if m.topic not in self.input_topics:
                kept.append(m)
                continue
            if key in holes:
                continue
            if key not in expect:
                expect[key] = self._next_unprocessed(key, committed(key))
            nxt = expect[key]
            if nxt is not None and m.offset > nxt:
                last = self._rewound.get(key)
                now = time.monotonic()
                if last is None or last[0] != nxt or now - last[1] > REWIND_AGAIN_SECONDS:
                    self._rewound[key] = (nxt, now)
                    holes[key] = nxt
                    log.info("offset %d of %s[%d] not processed: reading from it again "
                             "before %d", nxt, m.topic, m.partition, m.offset)
                else:
                    holes[key] = -1  # still waiting for the hole read again
                continue
            kept.append(m)
            expect[key] = m.offset + 1 if nxt is None else max(nxt, m.offset + 1)
        return kept, {k: o for k, o in holes.items() if o >= 0}

    def absent(self, tp: Partition, first: int, end: int) -> None:
        """Offsets ``first`` to ``end - 1`` of ``tp`` hold no record (a fetch
        from ``first`` returned ``end`` first): nothing to process there."""
        if not self.enabled or end <= first:
            return
        self._processed.setdefault((tp[0], tp[1]), set()).update(range(first, end))

    def _next_unprocessed(self, key: Partition, committed: int | None) -> int | None:
        """The first offset of ``key`` from the committed one neither processed
        nor held (None: no committed offset and nothing processed known)."""
        processed = self._processed.get(key, set())
        owed = self._owed.get(key, set())
        known = max(committed or 0, self._committed.get(key, 0))
        if not known:
            if not processed and not owed:
                return None
            known = min(min(processed, default=1 << 62), min(owed, default=1 << 62))
        n = max(known, self._frontier.get(key, 0))
        while n in processed or n in owed:
            n += 1
        self._frontier[key] = n
        return n

    def take_done(self, topic: str, partition: int, offset: int) -> bool:
        """Faust acks a guarded message: True if it was processed and published
        (its ack then counts towards a commit, once)."""
        key = (topic, partition, offset)
        if key in self._done:
            self._done.discard(key)
            return True
        return False

    def refuse(self, topic: str, partition: int, offset: int) -> None:
        """Faust acked a message :meth:`take_done` refused (first ack only).

        A held one becomes committable at its :meth:`release` instead; an
        unprocessed one only once it is read again and processed.
        """
        owed = self._owed.get((topic, partition))
        if owed and offset in owed:
            self._acked_owed.add((topic, partition, offset))
            return
        self.refused += 1
        log.info("not committing %s[%d]@%d: acked by Faust, never processed",
                 topic, partition, offset)

    def pending(self) -> Iterator[Partition]:
        """Partitions with processed offsets not yet committed."""
        for tp, offsets in list(self._processed.items()):
            if offsets:
                yield tp

    def _mark(self, topic: str, partition: int, offset: int) -> None:
        key = (topic, partition, offset)
        if key in self._acked_owed:
            self._acked_owed.discard(key)  # Faust will not ack it again
        else:
            self._done.add(key)
        self._processed.setdefault((topic, partition), set()).add(offset)

    def _base(self, tp: Partition, committed: int | None) -> int | None:
        """Where the run of committable offsets starts for ``tp`` (None: nothing to commit)."""
        key = (tp[0], tp[1])
        processed = self._processed.setdefault(key, set())
        owed = self._owed.get(key)
        known = max(committed or 0, self._committed.get(key, 0))
        if known:
            self._committed[key] = known
        if not processed:
            return None
        # Neither Faust nor this guard knows a committed offset (Faust keeps
        # None for "unknown" and for 0): count from the first offset processed,
        # held ones included. Only for a partition no commit was ever seen of:
        # Faust also passes None when it commits a revoked partition, and
        # counting from the first offset processed since a rebalance then
        # stepped over the offsets its fetch had skipped.
        base = known if known else min(min(processed), min(owed) if owed else 1 << 62)
        if min(processed) < base:  # another owner committed past them
            processed.difference_update([o for o in processed if o < base])
        if owed and min(owed) < base:
            owed.difference_update([o for o in owed if o < base])
        return base

    def committable(self, tp: Partition, committed: int | None) -> int | None:
        """The offset the guard would commit for ``tp`` now (None: none)."""
        base = self._base(tp, committed)
        if base is None:
            return None
        processed = self._processed[(tp[0], tp[1])]
        end = base
        while end in processed:
            end += 1
        return end if end > base else None

    def cap(self, tp: Partition, offset: int, committed: int | None) -> int | None:
        """The offset to commit for ``tp`` instead of ``offset`` (None: none).

        It never passes the first offset, counted from the committed one, that
        was not processed or is held, however the hole arose.
        """
        base = self._base(tp, committed)
        if base is None:
            return None
        topic, partition = tp[0], tp[1]
        processed = self._processed[(topic, partition)]
        end = base
        while end < offset and end in processed:
            end += 1
        processed.difference_update(range(base, end))
        if end > base:
            self._committed[(topic, partition)] = end
        owed = self._owed.get((topic, partition))
        if (
            end < offset and (topic, partition, end) not in self._stopped_at
            and not (owed and end in owed)  # owed outputs: held on purpose
        ):
            self._stopped_at.add((topic, partition, end))
            log.warning(
                "holding the commit of %s[%d] at %d (Faust wanted %d): offset %d was "
                "never processed; it will be read again", topic, partition, end,
                offset, end,
            )
        return end if end > base else None
