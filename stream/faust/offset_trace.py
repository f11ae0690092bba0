"""Per-partition offset trace for rebalance investigations (off by default).

``FEEDBACK_TRACE_OFFSETS=1`` (``Settings.trace_offsets``) logs, per input
partition: the offsets of every batch the agent processed (and any jump
between batches), the offsets Faust asked to commit and what was committed,
the gaps Faust's fetch loop declared, the records fetched for partitions that
were not asked for, and the positions set by ``perform_seek`` after each
assignment. It is what shows the defects of
docs/faust-rebalance-record-loss.md; cheap enough to leave in.

:class:`OffsetTrace` only formats and logs; :class:`stream.faust.consumer.Consumer`
calls it with what it read from Faust's bookkeeping.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
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


def _name(tp: Any) -> str:
    return f"{tp.topic}[{tp.partition}]"


class OffsetTrace:
    def __init__(self, input_topics: Iterable[str]) -> None:
        self.input_topics = frozenset(input_topics)
        self._last: dict[tuple[str, int], int] = {}
        self._watching = False

    def watch_fetch_positions(self) -> None:
        """Let aiokafka's fetch-position decisions through to the log.

        Called once the worker has configured logging (it may reset levels)."""
        if self._watching:
            return
        self._watching = True
        fetcher_log = logging.getLogger("aiokafka.consumer.fetcher")
        fetcher_log.setLevel(logging.DEBUG)
        fetcher_log.addFilter(_PositionRecords())

    def batch(self, messages: Iterable[Any]) -> None:
        """The agent processed these messages."""
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

    def commit(self, wanted: Mapping[Any, int], known: Mapping[Any, int | None],
               ok: bool) -> None:
        """Faust asked to commit ``wanted``; ``known``: its committed offsets before."""
        wanted_in = {_name(tp): o for tp, o in wanted.items() if tp.topic in self.input_topics}
        if wanted_in:
            known_in = {_name(tp): o for tp, o in known.items()
                        if tp.topic in self.input_topics}
            log.info("commit wanted=%s known_before=%s ok=%s", wanted_in, known_in, ok)

    def committed(self, sent: Mapping[Any, int], ok: bool) -> None:
        """What went to the broker."""
        sent_in = {_name(tp): o for tp, o in sent.items() if tp.topic in self.input_topics}
        if sent_in:
            log.info("committed to broker %s ok=%s", sent_in, ok)

    def fetched(self, records: Mapping[Any, Any] | None, asked: frozenset[Any] | None,
                active_now: Iterable[Any] | None) -> None:
        """A fetch for the partitions ``asked`` (None: all) returned ``records``;
        ``active_now``: Faust's active partitions once it returned."""
        active = set(active_now) if active_now is not None else None
        for tp, recs in (records or {}).items():
            if tp.topic not in self.input_topics or not recs:
                continue
            note = ""
            if asked is not None and tp not in asked:
                note = f" UNREQUESTED (asked {len(asked)} tps)"
            if active is not None and tp not in active:
                note += " NOT-ACTIVE-NOW (Faust drops these)"
            log.info("fetched %s[%d] %d-%d n=%d%s", tp.topic, tp.partition,
                     recs[0].offset, recs[-1].offset, len(recs), note)

    def gap(self, tp: Any, offset_from: int, offset_to: int, committed: int | None,
            read: int | None) -> None:
        log.warning("GAP %s[%d] %d-%d (committed %s, read %s)", tp.topic, tp.partition,
                    offset_from, offset_to, committed, read)

    def positions(self, state: Mapping[Any, tuple[int | None, int | None]]) -> None:
        """(committed, read) offsets of the input partitions after ``perform_seek``."""
        log.info("perform_seek (committed, read) %s",
                 {_name(tp): v for tp, v in state.items() if tp.topic in self.input_topics})

    def callback(self, callback: Callable[[Any], Awaitable[Any]],
                 read_offset: Callable[[Any], int | None]) -> Callable[[Any], Awaitable[Any]]:
        """Wrap the consumer's message callback: logs a record delivered out of
        sequence for its partition."""
        last: dict[Any, int] = {}

        async def traced_callback(message: Any) -> Any:
            prev = last.get(message.tp)
            if prev is not None and message.offset != prev + 1:
                log.info("delivered %s[%d]@%d after %d (read offset %s)", message.topic,
                         message.partition, message.offset, prev, read_offset(message.tp))
            last[message.tp] = message.offset
            return await callback(message)

        return traced_callback
