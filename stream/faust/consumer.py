"""The project's Faust consumer: fixes for faust-streaming 0.15.3 / aiokafka 0.14.

Every fix is an override of a method of Faust's aiokafka ``Consumer`` (or of
its consumer thread), named after it and calling the original through
``super()``. When faust-streaming is upgraded, this module is where to check
that each corrected behaviour is still there (each docstring says which one).

:class:`ConsumerFixes` carries the overrides as a mixin over Faust's
``Consumer``, so the tests can put it over a fake with Faust's bookkeeping;
:class:`Consumer` is the class Faust builds (``app.transport.Consumer``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from aiokafka.errors import IllegalStateError
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import TP

from stream.commit_guard import CommitGuard
from stream.faust.offset_trace import OffsetTrace

log = logging.getLogger(__name__)

# Faust hard-codes the consumer's fetch_max_wait_ms=1500. Kafka answers a waiting
# fetch as soon as data arrives, but the embedded broker (Tansu) waits it out,
# which adds about half a second to the median event-to-recommendation latency.
# A short wait only costs idle fetch requests, on any broker. The worker's is
# Settings.fetch_max_wait_seconds (this is its default).
FETCH_MAX_WAIT_MS = 20

# Records one poll hands Faust's fetch loop at most (Faust's broker_max_poll_records,
# unbounded by default: a poll of a backlog returned all 5,000 records buffered).
# A stream queue is polled only while it has room for this many (see
# ConsumerFixes._without_room), so it is well below Faust's stream_buffer_maxsize.
POLL_RECORDS = 200

# How long a poll waits for records when partitions were left out of it for want
# of room: their queue is looked at again after this.
HELD_POLL_SECONDS = 0.05

if TYPE_CHECKING:
    _ConsumerBase = aiokafka_driver.Consumer
else:
    _ConsumerBase = object


class ConsumerThread(aiokafka_driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        """faust-streaming 0.15.3 hard-codes ``fetch_max_wait_ms=1500``: use the
        consumer's ``fetch_max_wait_ms`` (measurements in docs/performance.md)."""
        consumer = super()._create_worker_consumer(transport)
        # Read by aiokafka when the consumer starts and builds its fetcher.
        consumer._fetch_max_wait_ms = getattr(self.consumer, "fetch_max_wait_ms",
                                              FETCH_MAX_WAIT_MS)
        return consumer


class ConsumerFixes(_ConsumerBase):
    """The overrides, over any class with Faust's ``Consumer`` bookkeeping.

    Two fix input records lost on a rebalance (docs/faust-rebalance-record-loss.md):
    :meth:`_getmany` and :meth:`seek_to_committed`, always on. Four let the
    :class:`~stream.commit_guard.CommitGuard` decide what is committed for the
    input topics (docs/faust-sigterm-offset-race.md): :meth:`ack`,
    :meth:`_new_offset`, :meth:`_filter_tps_with_pending_acks` and
    :meth:`_commit_offsets`. :meth:`in_order` keeps the agents from processing
    a partition past a record Faust lost, which :meth:`rewind` reads again.
    :meth:`_getmany` also lets every stream's records reach it while another
    stream has a backlog (:meth:`_poll`, :meth:`_without_room`): the item
    owner's, behind the inputs. With an :class:`OffsetTrace`, the commit,
    fetch, gap and seek methods also log what they did.

    Faust builds the consumer itself, so the guard and the trace are class
    attributes of the subclass :func:`stream.faust.create_app` installs.
    """

    commit_guard: ClassVar[CommitGuard | None] = None
    offset_trace: ClassVar[OffsetTrace | None] = None
    fetch_max_wait_ms: ClassVar[int] = FETCH_MAX_WAIT_MS
    poll_records: ClassVar[int | None] = None

    # -- Records of paused partitions fetched and thrown away ------------------

    async def _getmany(self, active_partitions: set[TP] | None, timeout: float) -> Any:
        """Hand the consumer thread a copy of the active partitions.

        faust-streaming 0.15.3 passes its *live* set, which aiokafka reads later
        in ``fetched_records``. A rebalance or table recovery pauses partitions
        meanwhile; when the set is empty by then, aiokafka returns the buffered
        records of *every* assigned partition (an empty filter means "all"),
        Faust's ``getmany`` discards those of the paused input partitions, and
        aiokafka's position has moved past them
        (docs/faust-rebalance-record-loss.md, defect 1).
        """
        asked = frozenset(active_partitions) if active_partitions is not None else None
        await self._rewind_now()
        if active_partitions is None:  # client-only apps: every partition, as Faust means
            records = await super()._getmany(None, timeout)
        else:
            requested = set(active_partitions)
            held = self._without_room(requested)
            if held:
                requested -= held
                timeout = min(timeout, HELD_POLL_SECONDS)
            if requested:
                records = await self._poll(requested, timeout)
            else:
                records = {}
                if held:  # nothing else to wait on: look again shortly
                    await asyncio.sleep(timeout)
        if self.offset_trace is not None:
            self.offset_trace.fetched(records, asked, active_partitions)
        self._rewound_fetch(records)
        return records

    # -- Records processed out of order ----------------------------------------

    def in_order(self, events: Sequence[Any]) -> list[Any]:
        """The agent's ``events`` it may process now: none of a guarded partition
        past a record Faust lost (:meth:`CommitGuard.in_order`); such a partition
        is read again from its hole, before the next fetch (:meth:`rewind`). Its
        events left out are acked by Faust and refused by the guard."""
        guard = self.commit_guard
        if guard is None or not guard.enabled:
            return list(events)
        by_message = {id(e.message): e for e in events}
        kept, holes = guard.in_order(
            [e.message for e in events],
            lambda tp: self._committed_offset.get(TP(tp[0], tp[1])),
        )
        if holes:
            self.rewind({TP(t, p): o for (t, p), o in holes.items()})
        return [by_message[id(m)] for m in kept]

    def rewind(self, offsets: Mapping[TP, int]) -> None:
        """Read each partition again from its offset, from the next fetch on.

        Not at once: Faust's fetch loop may be delivering an earlier fetch's
        records, and each sets its read offset, below which it drops records;
        :meth:`_getmany` starts each fetch, once the previous one's records are
        all delivered, so the seek is done there.
        """
        pending = self.__dict__.setdefault("_rewinds", {})
        for tp, offset in offsets.items():
            pending[tp] = min(offset, pending.get(tp, offset))

    async def _rewind_now(self) -> None:
        pending: dict[TP, int] = self.__dict__.pop("_rewinds", {})
        if not pending:
            return
        assigned = self.assignment()
        checks = self.__dict__.setdefault("_rewound", {})
        for tp, offset in pending.items():
            if tp not in assigned:
                continue  # revoked meanwhile: its next owner starts at its committed offset
            try:
                # In the consumer's thread, and Faust's read offset set to it:
                # its fetch loop delivers the records from this offset on.
                await self._thread.seek_wait({tp: offset})
            except IllegalStateError:
                continue  # revoked since assignment() was read
            except TimeoutError:
                pass  # seeked; only the position's confirmation timed out
            checks[tp] = offset
            log.info("reading %s[%d] again from %d", tp.topic, tp.partition, offset)

    def _rewound_fetch(self, records: Mapping[TP, Any]) -> None:
        """The first records of a rewound partition start past its offset: those
        offsets hold no record (deleted, compacted, a transaction marker), and
        the guard counts them as processed rather than wait for them.

        aiokafka discards a fetch made before the seek, so the first records
        returned after it start at the first offset that holds one.
        """
        checks: dict[TP, int] = self.__dict__.get("_rewound", {})
        guard = self.commit_guard
        for tp in [tp for tp in checks if records.get(tp)]:
            offset, first = checks.pop(tp), records[tp][0].offset
            if first > offset and guard is not None:
                log.info("%s[%d] %d-%d: no records", tp.topic, tp.partition, offset, first - 1)
                guard.absent((tp.topic, tp.partition), offset, first)

    async def _poll(self, partitions: set[TP], timeout: float) -> Any:
        """The records of ``partitions``: up to ``poll_records`` for each group of
        partitions that feed the same streams, none waiting on another's.

        aiokafka's ``Fetcher.fetched_records`` drains the partitions in the
        order their fetches completed, up to ``max_records`` in all, so the
        input partitions' buffered megabyte each came before the item-updates
        partitions, which a poll reached only once the inputs' buffers were
        empty: the item owner lagged the whole input backlog. Each group is
        asked without waiting; only when none has records does the poll wait
        (``timeout``) on all of them at once, as Faust's does.
        """
        groups = self._groups(partitions)
        if len(groups) < 2:
            return await super()._getmany(partitions, timeout)
        records: dict[TP, Any] = {}
        for group in groups:
            records.update(await super()._getmany(group, 0))
        return records or await super()._getmany(partitions, timeout)

    def _groups(self, partitions: set[TP]) -> list[set[TP]]:
        """``partitions`` grouped by the streams (Faust's channels) they feed."""
        index = self.app.topics._tp_index  # type: ignore[attr-defined]
        groups: dict[frozenset[int], set[TP]] = {}
        for tp in partitions:
            key = frozenset(id(channel) for channel in index.get(tp, ()))
            groups.setdefault(key, set()).add(tp)
        return list(groups.values())

    def _without_room(self, partitions: set[TP]) -> set[TP]:
        """The partitions a whole poll's records could not be handed to without waiting.

        Faust's fetch loop (``Consumer._drain_messages``) hands each record of a
        poll to the conductor and awaits it; the conductor awaits a full stream
        queue (``stream_buffer_maxsize``) until that stream's agent takes an
        event. So while one agent has a backlog, the loop sits on its records and
        the records of every other partition, those in the same poll and those
        not fetched yet, wait for that agent: the item owner's
        ``feedback.item-updates`` waited for the whole input backlog
        (docs/performance.md, "The item owner's turn"). Faust's own back-pressure
        (``on_buffer_full``) stops fetching a partition only once its queue is
        under pressure, and still awaits the rest of the poll. A partition feeding
        a queue that has no room for a whole poll (``poll_records``, which
        :func:`stream.faust.create_app` makes Faust's ``broker_max_poll_records``)
        below the queue's pressure mark is left out of this poll instead; its
        records stay in aiokafka's fetch buffer, where the next poll finds them:
        nothing is skipped or sought. Below that mark, Faust's own back-pressure
        never engages (it takes partitions off one by one, and gives them back one
        per ``get`` in its set's order, which can pass one over for as long as a
        backlog lasts): a queue's partitions are left out and polled again
        together. Not during table recovery, as Faust's ``on_buffer_full``.
        """
        limit = self.poll_records
        if limit is None or self.app.in_recovery:
            return set()
        index = self.app.topics._tp_index  # type: ignore[attr-defined]
        held: set[TP] = set()
        for tp in partitions:
            for channel in index.get(tp, ()):
                queue = channel.queue
                mark = getattr(queue, "pressure_high_size", queue.maxsize)
                if queue.maxsize and mark - queue.qsize() < limit:
                    held.add(tp)
                    break
        return held

    async def seek_to_committed(self) -> Any:
        """Seek input partitions nobody has committed yet to their beginning.

        aiokafka's ``seek_to_committed`` skips a partition whose committed
        offset is missing or 0, so ``perform_seek`` leaves such a partition at
        whatever position discarded fetches moved it to
        (docs/faust-rebalance-record-loss.md, defect 1). With
        ``consumer_auto_offset_reset="earliest"``, the beginning is where a
        fresh partition starts anyway.
        """
        committed = await super().seek_to_committed()
        if self.app.conf.consumer_auto_offset_reset == "earliest":
            fresh = [
                tp for tp, offset in committed.items()
                if not offset  # None or 0: aiokafka did not seek
                and not self._is_changelog_tp(tp)
                and self.app.topics.acks_enabled_for(tp.topic)
            ]
            if fresh:
                log.info("no committed offset for %s: reading them from the beginning",
                         sorted(f"{tp.topic}[{tp.partition}]" for tp in fresh))
                await self._thread.seek_to_beginning(*fresh)
        return committed

    async def perform_seek(self) -> None:
        """Trace only: the positions each assignment starts from."""
        await super().perform_seek()
        if self.offset_trace is not None:
            self.offset_trace.positions({
                tp: (self._committed_offset.get(tp), self._read_offset.get(tp))
                for tp in self.assignment()
            })

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        """Trace only: the offsets Faust's fetch loop declares skipped."""
        if self.offset_trace is not None:
            self.offset_trace.gap(tp, offset_from, offset_to, self._committed_offset.get(tp),
                                  self._read_offset.get(tp))
        await super()._add_gap(tp, offset_from, offset_to)

    # -- Commits of input events no agent processed or published --------------

    def ack(self, message: Any) -> bool:
        """Let an input message's ack count only once the agent published its outputs.

        faust-streaming 0.15.3 acks input messages that never reached the
        agent's code: one read from the stream's queue after flow control was
        suspended (shutdown, rebalance) is acked as "skipped", and
        ``Stream.take_events`` acks its whole batch in a ``finally`` when the
        generator is closed at shutdown, even while the agent is still
        publishing that batch's outputs (docs/faust-sigterm-offset-race.md).
        A refused message is still taken off the pending set, so a rebalance
        or shutdown does not wait for it.
        """
        guard = self.commit_guard
        if (
            guard is not None and guard.guards(message.topic)
            and not guard.take_done(message.topic, message.partition, message.offset)
        ):
            if not message.acked:
                message.acked = True
                self._unacked_messages.discard(message)
                guard.refuse(message.topic, message.partition, message.offset)
            return False
        return bool(super().ack(message))

    def _new_offset(self, tp: TP) -> int | None:
        """For an input partition, the guard's committable offset.

        Faust's own accounting never hears of the acks refused above, and in
        faust-streaming 0.15.3 stops committing a partition for good once its
        acks start past the committed offset (a hole it believes it saw),
        which a released offset must be able to fill.
        """
        guard = self.commit_guard
        if guard is None or not guard.guards(tp.topic):
            return super()._new_offset(tp)
        # Faust's list of acked offsets is not what decides: empty it.
        acked = self._acked.get(tp)
        if acked:
            acked.clear()
            self._acked_index[tp].clear()
        return guard.committable(tp, self._committed_offset.get(tp))

    def _filter_tps_with_pending_acks(self, topics: Any = None) -> Iterator[TP]:
        """Also the partitions with offsets the guard released.

        Faust commits only the partitions it saw an ack for; a quiet partition
        whose every record so far was held has none.
        """
        seen = set(super()._filter_tps_with_pending_acks(topics))
        yield from seen
        if self.commit_guard is None or not self.commit_guard.enabled:
            return
        assigned = self.assignment()
        for topic, partition in self.commit_guard.pending():
            tp = TP(topic, partition)
            if (tp not in seen and tp in assigned
                    and (topics is None or tp in topics or topic in topics)):
                yield tp

    async def _commit_offsets(self, offsets: Mapping[TP, int], *args: Any, **kw: Any) -> bool:
        """Commit no input partition past its first unprocessed or held offset.

        Faust's own gap accounting can step over a hole: faust-streaming
        0.15.3's ``Consumer._new_offset`` tests ``min(acked) - committed > 1``,
        one too many (docs/faust-sigterm-offset-race.md). The cap does not
        depend on how the hole arose. The trace records what Faust wanted.
        """
        guard, trace = self.commit_guard, self.offset_trace
        known = {tp: self._committed_offset.get(tp) for tp in offsets} if trace else {}
        capped: dict[TP, int] = {}
        for tp, offset in offsets.items():
            if guard is None or not guard.guards(tp.topic):
                capped[tp] = offset
                continue
            safe = guard.cap(tp, offset, self._committed_offset.get(tp))
            if safe is not None:
                capped[tp] = safe
        ok = bool(await super()._commit_offsets(capped, *args, **kw)) if capped else False
        if trace is not None:
            trace.commit(offsets, known, ok)
        return ok

    async def _commit(self, offsets: Mapping[TP, int]) -> bool:
        """Trace only: what goes to the broker."""
        ok = bool(await super()._commit(offsets))
        if self.offset_trace is not None:
            self.offset_trace.committed(offsets, ok)
        return ok


class Consumer(ConsumerFixes, aiokafka_driver.Consumer):
    """Faust's aiokafka consumer with :class:`ConsumerFixes`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.offset_trace is not None:
            # Before the fetch loop binds the callback (Conductor.on_message).
            read_offset = self._read_offset
            self.callback = self.offset_trace.callback(self.callback, read_offset.get)

    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)
