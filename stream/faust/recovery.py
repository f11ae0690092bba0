"""Recovery guards: table recovery that reads each changelog to its real end, and
a producer flush that waits for the whole send buffer (faust-streaming 0.15.3).

Both are overrides of Faust classes the app is built with
(:func:`stream.faust.create_app`); ``FEEDBACK_RECOVERY_GUARDS=0`` leaves
Faust's own classes in place, to reproduce the upstream defects.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any, ClassVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.tables.manager import TableManager
from faust.tables.recovery import Recovery
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.transport.producer import ProducerBuffer
from faust.types import TP

from stream.kafka import client_kwargs
from stream.settings import Settings

log = logging.getLogger(__name__)


async def fetch_highwaters(
    settings: Settings, hints: Mapping[TP, int | None], timeout: float = 10.0
) -> dict[TP, int]:
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
    found: dict[TP, int] = {}
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


class ChangelogRecovery(Recovery):
    """Faust's table recovery, reading each changelog to the end a Fetch reports.

    faust-streaming 0.15.3 reads a changelog partition up to the end offset of
    ``ListOffsets(latest)``. Tansu answers it with the base offset of the last
    record batch + 1, not the log end, so recovery stops short and the newest
    profiles are lost; after a graceful stop their events are not replayed
    either, their input offsets being committed
    (docs/faust-sigterm-offset-race.md). A Fetch response's high watermark is
    exact on Tansu and Kafka alike; recovery reads to the larger of the two
    (on Apache Kafka they agree).
    """

    settings: ClassVar[Settings]

    async def _build_highwaters(
        self, consumer: Any, tps: Any, destination: Any, title: str
    ) -> None:
        await super()._build_highwaters(consumer, tps, destination, title)
        if not tps:
            return
        # Faust stores "last offset" (end - 1), -1 for an empty partition.
        listed = {tp: destination.get(tp, -1) + 1 for tp in tps}
        try:
            fetched = await fetch_highwaters(self.settings, listed)
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

    async def _seek_offsets(self, consumer: Any, tps: Any, offsets: Any, title: str) -> None:
        # Faust seeks an offset of -1 ("nothing read yet") to 0 but passes None
        # on, which aiokafka refuses ("Offset must be a positive integer"): the
        # recovery service crashed, and the worker with it, when a rebalance
        # interrupted a recovery and left a changelog partition it had just
        # made a standby without a start offset. Such a one is read from the
        # start, as Faust reads one it knows nothing of.
        for tp in tps:
            offset = offsets.get(tp)
            if offset is None or offset < -1:
                log.warning("%s changelog %s[%d]: no start offset (%r); reading from the start",
                            title, tp.topic, tp.partition, offset)
                offsets[tp] = -1
        await super()._seek_offsets(consumer, tps, offsets, title)


class GuardedTableManager(TableManager):
    """Faust's table manager, recovering with :attr:`recovery_class`."""

    recovery_class: ClassVar[type[ChangelogRecovery]] = ChangelogRecovery

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = self.recovery_class(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery


class FlushingProducerBuffer(ProducerBuffer):
    """Faust's send buffer whose ``flush`` returns only once it is empty.

    Table writes (``table[key] = value``) go through ``Topic.send_soon`` into
    this buffer, which a background task hands to aiokafka. Faust commits input
    offsets after ``producer.flush()``, and the checkpoints rely on it too, but
    in faust-streaming 0.15.3 ``flush_atmost(None)`` gives up as soon as no
    message leaves the buffer within 0.1 s, and ``flush`` returns with profile
    writes still queued. On a loaded machine the commit then covers events whose
    profile writes are not in the changelog yet, and a SIGKILL at that moment
    loses them for good (docs/faust-rebalance-record-loss.md, defect 2).

    Nor does ``size`` count the message the buffer's task has taken off the
    queue and is still handing to aiokafka (``_send_pending`` can wait there
    for metadata or room in aiokafka's batches): Faust's ``Producer.flush``
    then flushes aiokafka's batches without it, and the commit runs ahead of
    that profile write. ``flush`` here also waits for the message in flight.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def _send_pending(self, fut: Any) -> None:
        # Runs from the moment the task took the message off the queue: the
        # queue's get returns to its task without a turn of the loop between.
        self.in_flight += 1
        self._idle.clear()
        try:
            await super()._send_pending(fut)
        finally:
            self.in_flight -= 1
            if not self.in_flight:
                self._idle.set()

    async def flush(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        warned = False
        # flush_atmost raises if the buffer stops with messages queued, so
        # this cannot spin on a dead producer; a send in flight ends in
        # aiokafka's own timeout at worst.
        while self.size or self.in_flight:
            if self.size:
                await self.flush_atmost(None)
            else:
                await self._idle.wait()
            if not warned and loop.time() - started > 10:
                warned = True
                log.warning("producer flush: %d messages still queued, %d being handed "
                            "to aiokafka, after 10 s", self.size, self.in_flight)


class Producer(aiokafka_driver.Producer):
    """Faust's aiokafka producer with a :class:`FlushingProducerBuffer`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Faust's __init__ builds its own buffer class: replace it, wired the same way.
        plain = self.buffer
        buffer = FlushingProducerBuffer(loop=self.loop, beacon=self.beacon)
        if hasattr(plain, "threaded_producer"):
            buffer.threaded_producer = plain.threaded_producer
        buffer.app = self.app
        plain.beacon.detach(self.beacon)
        self.buffer = buffer
