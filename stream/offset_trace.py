"""Per-partition offset tracing for rebalance investigations (off by default).

``FEEDBACK_TRACE_OFFSETS=1`` (``Settings.trace_offsets``) logs, per input
partition: the offsets of every batch the agent processed (and any jump
between batches), the offsets Faust asked to commit and what was committed,
the gaps Faust's fetch loop declared, and the positions set by
``perform_seek`` after each assignment. Used to find the cause of issue 5's
rebalance loss (docs/reliability.md); cheap enough to leave in.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

log = logging.getLogger("feedback.offsets")


class _PositionRecords(logging.Filter):
    """Only aiokafka's fetch-position decisions, not its per-fetch chatter."""

    def filter(self, record: logging.LogRecord) -> bool:
        keep = str(record.msg).startswith(("Resetting offset", "No committed offset",
                                           "Fetch offset", "Updating fetch positions",
                                           "Discarding fetch", "Not returning"))
        if keep and record.levelno < logging.INFO:  # past the worker's INFO handlers
            record.levelno, record.levelname = logging.INFO, "INFO"
        return keep


class OffsetTrace:
    def __init__(self, input_topics: Iterable[str]) -> None:
        self.input_topics = frozenset(input_topics)
        self._last: dict[tuple[str, int], int] = {}

    def batch(self, messages: Iterable[Any]) -> None:
        by_tp: dict[tuple[str, int], list[int]] = {}
        for m in messages:
            by_tp.setdefault((m.topic, m.partition), []).append(m.offset)
        for (topic, partition), offsets in sorted(by_tp.items()):
            last = self._last.get((topic, partition))
            first = offsets[0]
            note = ""
            if last is not None and first != last + 1:
                note = f" JUMP from {last}"
            if offsets != list(range(first, first + len(offsets))):
                note += f" UNORDERED {offsets}"
            self._last[(topic, partition)] = offsets[-1]
            log.info("processed %s[%d] %d-%d n=%d%s", topic, partition, first, offsets[-1],
                     len(offsets), note)

    def install(self, consumer: Any) -> None:
        if getattr(consumer, "_offset_trace", None) is self:
            return
        consumer._offset_trace = self
        # After the worker configured logging (it may reset logger levels).
        fetcher_log = logging.getLogger("aiokafka.consumer.fetcher")
        fetcher_log.setLevel(logging.DEBUG)
        fetcher_log.addFilter(_PositionRecords())
        topics = self.input_topics

        commit_offsets = consumer._commit_offsets

        async def traced_commit_offsets(offsets: Mapping[Any, int], *a: Any, **kw: Any) -> bool:
            wanted = {f"{tp.topic}[{tp.partition}]": o for tp, o in offsets.items()
                      if tp.topic in topics}
            known = {f"{tp.topic}[{tp.partition}]": consumer._committed_offset.get(tp)
                     for tp in offsets if tp.topic in topics}
            ok = bool(await commit_offsets(offsets, *a, **kw))
            if wanted:
                log.info("commit wanted=%s known_before=%s ok=%s", wanted, known, ok)
            return ok

        consumer._commit_offsets = traced_commit_offsets

        getmany = consumer._getmany

        async def traced_getmany(active_partitions: Any, timeout: float) -> Any:
            asked = frozenset(active_partitions) if active_partitions is not None else None
            records = await getmany(active_partitions, timeout)
            for tp, recs in (records or {}).items():
                if tp.topic not in topics or not recs:
                    continue
                note = ""
                if asked is not None and tp not in asked:
                    note = f" UNREQUESTED (asked {len(asked)} tps)"
                if active_partitions is not None and tp not in active_partitions:
                    note += " NOT-ACTIVE-NOW (Faust drops these)"
                log.info("fetched %s[%d] %d-%d n=%d%s", tp.topic, tp.partition,
                         recs[0].offset, recs[-1].offset, len(recs), note)
            return records

        consumer._getmany = traced_getmany

        real_commit = consumer._commit

        async def traced_commit(offsets: Mapping[Any, int]) -> bool:
            sent = {f"{tp.topic}[{tp.partition}]": o for tp, o in offsets.items()
                    if tp.topic in topics}
            ok = bool(await real_commit(offsets))
            if sent:
                log.info("committed to broker %s ok=%s", sent, ok)
            return ok

        consumer._commit = traced_commit

        add_gap = consumer._add_gap

        async def traced_add_gap(tp: Any, offset_from: int, offset_to: int) -> None:
            log.warning("GAP %s[%d] %d-%d (committed %s, read %s)", tp.topic, tp.partition,
                        offset_from, offset_to, consumer._committed_offset.get(tp),
                        consumer._read_offset.get(tp))
            await add_gap(tp, offset_from, offset_to)

        consumer._add_gap = traced_add_gap

        perform_seek = consumer.perform_seek

        async def traced_perform_seek() -> None:
            await perform_seek()
            state = {f"{tp.topic}[{tp.partition}]": (consumer._committed_offset.get(tp),
                                                      consumer._read_offset.get(tp))
                     for tp in consumer.assignment() if tp.topic in topics}
            log.info("perform_seek (committed, read) %s", state)

        consumer.perform_seek = traced_perform_seek


def trace_callback(consumer: Any, callback: Any) -> Any:
    """Wrap the consumer's message callback (Conductor.on_message): logs a record
    delivered out of sequence for its partition. Installed when the consumer is
    created, before its fetch loop binds the callback."""
    last: dict[Any, int] = {}

    async def traced_callback(message: Any) -> Any:
        prev = last.get(message.tp)
        if prev is not None and message.offset != prev + 1:
            log.info("delivered %s[%d]@%d after %d (read offset %s)", message.topic,
                     message.partition, message.offset, prev,
                     consumer._read_offset.get(message.tp))
        last[message.tp] = message.offset
        return await callback(message)

    return traced_callback
