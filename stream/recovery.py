"""Recovery guards the project applies to Faust (faust-streaming 0.15.3, aiokafka 0.14).

Two guards, applied per app instance without touching the installed packages
(the analysis is in docs/faust-sigterm-offset-race.md):

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

``FEEDBACK_RECOVERY_GUARDS=0`` turns both off, to reproduce the upstream defects.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

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


class CommitGuard:
    """Only offsets of input events whose outputs were published get committed.

    The agent calls :meth:`done` after publishing a batch; the consumer's
    ``ack`` is wrapped so that an input message acked by Faust without having
    been marked done is dropped from the pending set (a rebalance or shutdown
    does not wait for it) but never recorded as committable. Its offset stays
    uncommitted, so the next owner of the partition reads it again
    (at-least-once; the profile's de-duplication window absorbs the repeat).
    """

    def __init__(self, input_topics: Iterable[str], enabled: bool = True) -> None:
        self.input_topics = frozenset(input_topics)
        self.enabled = enabled
        self._done: set[tuple[str, int, int]] = set()
        self.refused = 0  # acks of unprocessed input events, for the logs and tests

    def done(self, messages: Iterable[Any]) -> None:
        if self.enabled:
            self._done.update((m.topic, m.partition, m.offset) for m in messages)

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
