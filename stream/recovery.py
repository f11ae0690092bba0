"""Recovery guards the project applies to Faust (faust-streaming 0.15.3, aiokafka 0.14).

Three guards, applied per app instance without touching the installed packages
(the analysis is in docs/faust-sigterm-offset-race.md and
docs/faust-rebalance-record-loss.md):

1. **Changelog end offsets** (the cause of the SIGTERM loss of issue 5).
   Faust's table recovery reads each changelog partition up to the end offset
   that ``ListOffsets(latest)`` reports. Tansu answers with the base offset of
   the last record batch + 1, not the log end, so recovery stops short and the
   newest profiles of the last batch are lost; after a graceful stop their
   events are not replayed either (their input offsets were committed).
   :func:`fetch_highwaters` asks for the high watermark of a *Fetch* response
   instead, which Tansu and Kafka both report exactly, and recovery reads to
   the larger of the two. On Apache Kafka both agree: a no-op.

2. **Commits of events no agent processed** (defence in depth; never seen to
   fire in our runs). Faust can acknowledge input messages that never reached
   the agent's code: one read from the stream's queue after flow control was
   suspended (shutdown, rebalance) is acked as "skipped", and
   ``Stream.take_events`` acks its whole batch in a ``finally`` when the
   generator is closed at shutdown, even while the agent is still publishing
   that batch's outputs. :class:`CommitGuard` makes an input offset
   committable only after the agent has published that event's outputs.

3. **Producer flushes that return early** (:func:`guard_producer_flush`, one
   cause of issue 5's rebalance loss): Faust's ``Producer.flush()`` could
   return with table writes still queued, so a commit, or a checkpoint, could
   run ahead of the changelog (docs/faust-rebalance-record-loss.md).

``FEEDBACK_RECOVERY_GUARDS=0`` turns all three off, to reproduce the upstream defects.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.types import TP

from stream.kafka import client_kwargs
from stream.settings import Settings

log = logging.getLogger(__name__)


async def fetch_highwaters(
    settings: Settings, hints: Mapping[Any, int | None], timeout: float = 10.0
) -> dict[Any, int]:
    """The high watermark of each partition as a Fetch response states it.

    ``hints`` maps Faust TPs to the ``ListOffsets`` answer (or None); a fetch
    starts one record before it, so the answer costs one small fetch per
    partition whatever the log size.
    """
    consumer = AIOKafkaConsumer(
        **client_kwargs(settings), enable_auto_commit=False, group_id=None,
        auto_offset_reset="earliest", fetch_max_bytes=1 << 16, max_partition_fetch_bytes=1 << 16,
    )
    await consumer.start()
    found: dict[Any, int] = {}
    try:
        by_tp = {TopicPartition(tp.topic, tp.partition): tp for tp in hints}
        consumer.assign(list(by_tp))
        for ktp, tp in by_tp.items():
            consumer.seek(ktp, max(0, (hints[tp] or 0) - 1))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(found) < len(by_tp) and loop.time() < deadline:
            await consumer.getmany(timeout_ms=200, max_records=1)
            for ktp, tp in by_tp.items():
                hw = consumer.highwater(ktp)
                if hw is not None:
                    found[tp] = hw
    finally:
        await consumer.stop()
    return found


def guard_changelog_recovery(app: Any, settings: Settings) -> None:
    """Make Faust's table recovery read each changelog to its real end."""
    if not settings.recovery_guards:
        return
    recovery = app.tables.recovery
    original = recovery._build_highwaters

    async def build_highwaters(consumer: Any, tps: Any, destination: Any, title: str) -> None:
        await original(consumer, tps, destination, title)
        if not tps:
            return
        # Faust stores "last offset" (end - 1), -1 for an empty partition.
        listed = {tp: destination.get(tp, -1) + 1 for tp in tps}
        try:
            fetched = await fetch_highwaters(settings, listed)
        except Exception:  # the ListOffsets figures stay: better than no recovery
            log.exception("could not fetch changelog high watermarks; using ListOffsets")
            return
        for tp, end in fetched.items():
            if end > listed[tp]:
                log.warning(
                    "%s changelog %s[%d]: ListOffsets says end %d, Fetch says %d; reading to %d",
                    title, tp.topic, tp.partition, listed[tp], end, end,
                )
                destination[tp] = end - 1
        missing = set(tps) - set(fetched)
        if missing:
            log.warning("no Fetch high watermark for %s; using ListOffsets", sorted(missing))

    recovery._build_highwaters = build_highwaters


def guard_producer_flush(producer: Any, settings: Settings) -> None:
    """Make ``Producer.flush`` wait until Faust's send buffer is really empty.

    Table writes (``table[key] = value``) go through ``Topic.send_soon`` into
    the producer's ``ProducerBuffer``, which a background task hands to
    aiokafka. Faust commits input offsets after ``producer.flush()``, and the
    checkpoints rely on it too, but in faust-streaming 0.15.3
    ``ProducerBuffer.flush_atmost`` gives up as soon as no message leaves the
    buffer within 0.1 s (``asyncio.wait_for(..., timeout=0.1)`` -> ``return``)
    and ``flush`` returns with profile writes still queued. On a loaded
    machine the commit then covers events whose profile writes are not in the
    changelog yet; a SIGKILL at that moment loses them for good (the
    rebalance test lost 7 events of the killed worker this way: input offsets
    committed, no changelog record ever held the events).

    Idempotent; applied per producer instance.
    """
    if not settings.recovery_guards:
        return
    buffer = producer.buffer
    if getattr(buffer.flush, "flush_guard", False):
        return
    flush_atmost = buffer.flush_atmost

    async def flush() -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        warned = False
        # flush_atmost raises if the buffer stops with messages queued, so
        # this cannot spin on a dead producer.
        while buffer.size:
            await flush_atmost(None)
            if not warned and loop.time() - started > 10:
                warned = True
                log.warning("producer flush: %d messages still queued after 10 s", buffer.size)

    flush.flush_guard = True  # type: ignore[attr-defined]
    buffer.flush = flush


class CommitGuard:
    """Only offsets of input events whose outputs were published get committed.

    The agent calls :meth:`done` after publishing a batch, :meth:`hold` for the
    batch's events whose outputs are still owed (a debounced recommendation,
    stream/processor.py) and :meth:`release` once those are published. Four
    wrappers on the consumer enforce it:

    * ``ack``: an input message acked by Faust without having been marked done
      is dropped from the pending set (a rebalance or shutdown does not wait
      for it) but never recorded as committable; a held one is dropped the same
      way, quietly, and becomes committable at its :meth:`release`;
    * ``_new_offset``: the offset Faust asks to commit for an input partition is
      the guard's, the end of the run of processed offsets from the committed
      one. Faust's own accounting never hears of the messages refused above, and
      stops committing a partition for good once its acks start past the
      committed offset (a hole it believes it saw), which a released offset
      must be able to fill;
    * ``_commit_offsets``: the offset committed for an input partition never
      passes the first offset, counted from the last committed one, that the
      agent has not processed, or that is held. Faust's own gap accounting can
      step over a hole (``Consumer._new_offset`` tests ``min(acked) - committed
      > 1``, one too many), and a rebalance test lost two events that way or
      through another unexplained path; this cap does not depend on how the
      hole arose;
    * ``_filter_tps_with_pending_acks``: Faust commits only partitions it saw
      an ack for, so the partitions with released offsets are added (a quiet
      partition whose every record so far was held has none).

    A held offset stays uncommitted, so the next owner of the partition (or
    this worker after a restart) reads it again: at-least-once, and the
    profile's de-duplication window absorbs the repeat. An offset never
    processed holds that partition's commits until it is read again (the next
    rebalance or restart), which the lag gauge shows.
    """

    def __init__(self, input_topics: Iterable[str], enabled: bool = True) -> None:
        self.input_topics = frozenset(input_topics)
        self.enabled = enabled
        self._done: set[tuple[str, int, int]] = set()
        # Offsets processed and not yet committed, per (topic, partition).
        self._processed: dict[tuple[str, int], set[int]] = {}
        # Offsets processed whose outputs are owed (held), per (topic, partition).
        self._owed: dict[tuple[str, int], set[int]] = {}
        # Held offsets Faust acked already: their release is their last word.
        self._acked_owed: set[tuple[str, int, int]] = set()
        self._held: set[tuple[str, int, int]] = set()
        self.refused = 0  # acks of unprocessed input events, for the logs and tests

    def done(self, messages: Iterable[Any]) -> None:
        """Mark processed messages whose outputs are published (held ones stay held)."""
        if not self.enabled:
            return
        for m in messages:
            owed = self._owed.get((m.topic, m.partition))
            if owed and m.offset in owed:
                continue
            self._mark(m.topic, m.partition, m.offset)

    def hold(self, messages: Iterable[Any]) -> None:
        """Processed messages whose outputs are still owed: not committable yet."""
        if not self.enabled:
            return
        for m in messages:
            self._owed.setdefault((m.topic, m.partition), set()).add(m.offset)

    def release(self, messages: Iterable[Any]) -> None:
        """Held messages whose owed outputs are now published."""
        if not self.enabled:
            return
        for m in messages:
            owed = self._owed.get((m.topic, m.partition))
            if owed is None or m.offset not in owed:
                continue  # forgotten (revoked) meanwhile: the next owner redoes it
            owed.discard(m.offset)
            self._mark(m.topic, m.partition, m.offset)

    def forget(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Drop the held offsets of revoked partitions (their owed outputs were
        dropped; the partition's next owner reads them again)."""
        for tp in partitions:
            for offset in self._owed.pop(tp, ()):
                self._acked_owed.discard((tp[0], tp[1], offset))

    def _mark(self, topic: str, partition: int, offset: int) -> None:
        key = (topic, partition, offset)
        if key in self._acked_owed:
            self._acked_owed.discard(key)  # Faust will not ack it again
        else:
            self._done.add(key)
        self._processed.setdefault((topic, partition), set()).add(offset)

    def _base(self, tp: Any, committed: int | None) -> int | None:
        """Where the run of committable offsets starts for ``tp`` (None: nothing to commit)."""
        key = (tp.topic, tp.partition)
        processed = self._processed.setdefault(key, set())
        owed = self._owed.get(key)
        if not processed:
            return None
        # Faust may not know the committed offset (it keeps None for "unknown"
        # and for 0): count from the first offset processed since then, held
        # ones included.
        base = committed if committed else min(min(processed), min(owed) if owed else 1 << 62)
        if min(processed) < base:  # another owner committed past them
            processed.difference_update([o for o in processed if o < base])
        if owed and min(owed) < base:
            owed.difference_update([o for o in owed if o < base])
        return base

    def committable(self, tp: Any, committed: int | None) -> int | None:
        """The offset the guard would commit for ``tp`` now (None: none)."""
        base = self._base(tp, committed)
        if base is None:
            return None
        processed = self._processed[(tp.topic, tp.partition)]
        end = base
        while end in processed:
            end += 1
        return end if end > (committed or 0) else None

    def cap(self, tp: Any, offset: int, committed: int | None) -> int | None:
        """The offset to commit for ``tp`` instead of ``offset`` (None: none)."""
        base = self._base(tp, committed)
        if base is None:
            return None
        processed = self._processed[(tp.topic, tp.partition)]
        end = base
        while end < offset and end in processed:
            end += 1
        processed.difference_update(range(base, end))
        owed = self._owed.get((tp.topic, tp.partition))
        if (
            end < offset and (tp.topic, tp.partition, end) not in self._held
            and not (owed and end in owed)  # owed outputs: held on purpose
        ):
            self._held.add((tp.topic, tp.partition, end))
            log.warning(
                "holding the commit of %s[%d] at %d (Faust wanted %d): offset %d was "
                "never processed; it will be read again", tp.topic, tp.partition, end,
                offset, end,
            )
        return end if end > (committed or 0) else None

    def install(self, consumer: Any) -> None:
        """Wrap ``consumer.ack``; idempotent (an agent restart installs again)."""
        if not self.enabled:
            return
        if getattr(consumer.ack, "commit_guard", None) is self:
            return
        original = consumer.ack

        def ack(message: Any) -> bool:
            if message.topic in self.input_topics:
                key = (message.topic, message.partition, message.offset)
                if key not in self._done:
                    if not message.acked:
                        message.acked = True
                        consumer._unacked_messages.discard(message)
                        owed = self._owed.get((message.topic, message.partition))
                        if owed and message.offset in owed:
                            self._acked_owed.add(key)
                            return False
                        self.refused += 1
                        log.info(
                            "not committing %s[%d]@%d: acked by Faust, never processed",
                            message.topic, message.partition, message.offset,
                        )
                    return False
                self._done.discard(key)
            return bool(original(message))

        ack.commit_guard = self  # type: ignore[attr-defined]
        consumer.ack = ack

        new_offset = getattr(consumer, "_new_offset", None)
        if new_offset is not None:
            def guarded_new_offset(tp: Any) -> int | None:
                if tp.topic not in self.input_topics:
                    return new_offset(tp)
                # Faust's list of acked offsets is not what decides: empty it.
                acked = consumer._acked.get(tp)
                if acked:
                    acked.clear()
                    consumer._acked_index[tp].clear()
                return self.committable(tp, consumer._committed_offset.get(tp))

            consumer._new_offset = guarded_new_offset

        pending_acks = getattr(consumer, "_filter_tps_with_pending_acks", None)
        if pending_acks is not None:
            def with_released(topics: Any = None) -> Iterator[Any]:
                seen = set(pending_acks(topics))
                yield from seen
                assigned = consumer.assignment()
                for (topic, partition), offsets in list(self._processed.items()):
                    tp = TP(topic, partition)
                    if (offsets and tp not in seen and tp in assigned
                            and (topics is None or tp in topics or topic in topics)):
                        yield tp

            consumer._filter_tps_with_pending_acks = with_released

        commit_offsets = consumer._commit_offsets

        async def capped_commit_offsets(offsets: Mapping[Any, int], *args: Any, **kw: Any
                                        ) -> bool:
            capped: dict[Any, int] = {}
            for tp, offset in offsets.items():
                if tp.topic not in self.input_topics:
                    capped[tp] = offset
                    continue
                safe = self.cap(tp, offset, consumer._committed_offset.get(tp))
                if safe is not None:
                    capped[tp] = safe
            if not capped:
                return False
            return bool(await commit_offsets(capped, *args, **kw))

        consumer._commit_offsets = capped_commit_offsets
