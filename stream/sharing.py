"""Item-side knowledge learnt from all traffic, shared by every worker (docs/architecture.md).

Three parts, wired into the Faust app by :func:`register`:

* the **item owner**: an agent over ``feedback.item-updates`` (keyed by item,
  partitioned like the inputs, so Kafka spreads its partitions over the
  workers of the group) applies every worker's item increments to the
  changelogged table ``item_state`` (item id -> :class:`ItemState` record),
  idempotently: per source input partition, each item keeps the highest
  offset it applied, written in the same changelog record as its counters;
* every ``item_model_period_seconds`` the owner publishes the compact model of
  each item that changed to the compacted ``feedback.item-model``; the owner of
  item-updates partition 0 also publishes the segment centres, and every
  worker its blend weights, to the compacted ``feedback.globals``;
* the **replica**: every worker reads all of ``feedback.item-model`` and
  ``feedback.globals`` from the beginning, then follows them, and overwrites its
  engine's item-side state with the published models (a plain aiokafka reader:
  a Faust GlobalTable misses updates, faust-streaming#212, robinhood/faust#541).

The user side (the outbox drained into item-update messages after each batch,
published before the batch's profile writes and offsets) is in
:class:`stream.processor.Processor` and :mod:`stream.app`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import faust
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.types import TP

from models.engine import FeedbackEngine
from models.item_state import ItemParams, ItemState, is_snapshot_key
from models.item_updates import decode_model, decode_updates, encode_model, partition_of
from stream.commit_guard import CommitGuard
from stream.faust import acknowledged, in_order, send_through, write_through
from stream.kafka import client_kwargs
from stream.metrics import Metrics
from stream.processor import Slicer, Slices, run, run_async
from stream.settings import Settings
from stream.topics import ITEM_STATE_TABLE

log = logging.getLogger(__name__)

SEGMENTS_KEY = b"segments"
BLEND_PREFIX = "blend:"


def collect(writes: list[tuple[str, dict[str, Any], int]], key: str,
            record: dict[str, Any], event: Any) -> None:
    """A ``write`` for :meth:`Sharing.apply_batch`: the record, for the changelog
    partition of the item-updates message it came from (= the item's)."""
    writes.append((key, record, event.message.partition))


@dataclass
class Sharing:
    """What the item owner and the replica keep between calls."""

    settings: Settings
    engine: FeedbackEngine
    metrics: Metrics
    params: ItemParams
    worker_id: str
    # Items applied since the last publication tick, by this worker as their
    # owner: the only ones whose ItemState.due may have turned true (a state and
    # what it last showed change only when it is applied or published), so each
    # tick's work follows what changed, not what is waiting for the tolerance.
    fresh: set[str] = field(default_factory=set)
    # Items applied whose changelog records are not written yet, with the
    # item-updates event of their last message (its partition is the changelog
    # partition), and the item-updates messages whose writes are owed: with a
    # commit guard over item-updates, the owner writes each changed item once
    # per period (write_changed) and only then lets those offsets commit.
    dirty: dict[str, Any] = field(default_factory=dict)
    owed: list[Any] = field(default_factory=list)
    # What each item's last publication showed (ItemState.shown), for
    # ItemState.due: kept here, since the timer cannot write the table (Faust
    # writes a table only within a stream's event); lost with the worker, so a
    # new owner publishes every item once.
    shown: dict[str, list[float] | None] = field(default_factory=dict)
    # The item states of the owned partitions, decoded once (the table holds
    # their changelog records).
    states: dict[str, ItemState] = field(default_factory=dict)
    # Item-updates partitions this worker owned at the last publication.
    owned: set[int] = field(default_factory=set)
    # The latest blend record of every worker, by key, with its arrival time.
    blends: dict[str, dict[str, Any]] = field(default_factory=dict)
    owns_segments: bool = False
    # The messages the period's write in progress is to release (see
    # write_period), or None.
    writing: list[Any] | None = None
    # The partitions revoked while a batch is applied in slices (see
    # apply_in_slices), or None.
    revoked_while_applying: set[int] | None = None

    def state_of(self, table: Any, item_id: str) -> ItemState:
        """The item's state: this owner's cached object, else the table's record."""
        state = self.states.get(item_id)
        if state is None:
            raw = table.get(item_id)
            state = ItemState() if raw is None else ItemState.from_changelog(
                raw, table.get, item_id)
            self.states[item_id] = state
        return state

    def apply_batch(self, table: Any, messages: Iterable[tuple[bytes, Any]],
                    write: Callable[[str, dict[str, Any], Any], None] | None
                    ) -> tuple[int, int]:
        """Apply item-updates messages ``(payload, source)``; each changed item is
        written once, ``write(key, record, source of its last message)`` for each
        of its records (:meth:`ItemState.changelog`: the item's, after its
        neighbour snapshot when one is due); ``write=None``: later, by
        :meth:`write_changed`. Returns ``(entries applied, entries skipped as
        duplicates)``."""
        counts = run(self.apply_in_slices(table, messages, math.inf))
        if write is not None:
            self.write_changed(write)
        return counts

    async def hold_and_apply(self, table: Any, events: Sequence[Any],
                             guard: CommitGuard) -> tuple[int, int]:
        """The owner's batch when it writes once per period: the messages' offsets
        held by ``guard`` (until :meth:`write_period`), then applied in slices
        (:meth:`apply_in_slices`), the event loop running between two."""
        messages = [e.message for e in events]
        # Held before the first pause: a revocation during one makes the guard
        # forget them, and they are not owed (see forget).
        guard.hold(messages)
        revoked: set[int] = set()
        counts = await run_async(
            self.apply_in_slices(table, [(e.value, e) for e in events], revoked=revoked))
        self.owed.extend(m for m in messages if m.partition not in revoked)
        return counts

    def apply_in_slices(self, table: Any, messages: Iterable[tuple[bytes, Any]],
                        budget: float | None = None, revoked: set[int] | None = None
                        ) -> Slices[tuple[int, int]]:
        """:meth:`apply_batch` without its write, pausing (see
        :data:`stream.processor.Slices`) between two items once ``budget`` seconds
        (``Settings.batch_slice_seconds``) have passed: a backlog's batch of
        messages held the event loop for 0.1-0.4 s. Items of partitions revoked
        during a pause are left alone from then on, and none of them is marked
        to write: their next owner reads their messages again (``revoked``, if
        given, receives those partitions)."""
        budget = self.settings.batch_slice_seconds if budget is None else budget
        revoked = self.revoked_while_applying = set() if revoked is None else revoked
        try:
            changed, applied, skipped = yield from Slicer(budget).run(
                self._apply_steps(table, messages, revoked))
        finally:
            self.revoked_while_applying = None
        parts = self.settings.partitions
        if revoked:
            changed = {i: s for i, s in changed.items() if partition_of(i, parts) not in revoked}
        self.dirty.update(changed)
        self.fresh.update(changed)
        self.metrics.item_updates_applied.inc(applied)
        self.metrics.item_updates_duplicate.inc(skipped)
        return applied, skipped

    def _apply_steps(self, table: Any, messages: Iterable[tuple[bytes, Any]], revoked: set[int]
                     ) -> Generator[None, None, tuple[dict[str, Any], int, int]]:
        """:meth:`apply_in_slices`'s work, a step boundary before each item: the
        items changed (with the source of their last message), the entries
        applied and those skipped as duplicates."""
        parts = self.settings.partitions
        applied = skipped = 0
        changed: dict[str, Any] = {}
        for payload, source in messages:
            try:
                updates = decode_updates(payload)
            except ValueError:
                # Written by this service's own workers: a bug, not bad input.
                log.error("malformed item-updates message skipped: %r", payload[:200])
                continue
            for item_id, entries in updates.items():
                yield
                if revoked and partition_of(item_id, parts) in revoked:
                    continue
                state = self.state_of(table, item_id)
                fresh = state.apply(entries, self.params, item_id)
                skipped += len(entries) - fresh
                if fresh:
                    applied += fresh
                    changed[item_id] = source
        return changed, applied, skipped

    def write_changed(self, write: Callable[[str, dict[str, Any], Any], None],
                      limit: int | None = None) -> int:
        """Write the changelog records of (up to ``limit``) items applied since
        their last write, each item once; how many records. An item's records
        carry its counters and watermark together, whenever they are written, so
        the table rebuilds to a state with the watermark of what it holds."""
        dirty, n = self.dirty, 0
        items = list(dirty) if limit is None else list(itertools.islice(dirty, limit))
        for item_id in items:
            source = dirty.pop(item_id)
            for key, record in self.states[item_id].changelog(item_id):
                write(key, record, source)
                n += 1
        self.metrics.item_state_records_written.inc(n)
        return n

    async def own(self, table: Any, events: Sequence[Any]) -> tuple[int, int]:
        """:meth:`apply_batch` of the owner's Faust events, each changed item's
        records written to the changelog partition of its last message (= the
        item's) straight through the producer (:func:`stream.faust.write_through`),
        acknowledged when this returns."""
        writes: list[tuple[str, dict[str, Any], int]] = []
        counts = self.apply_batch(table, [(e.value, e) for e in events],
                                  partial(collect, writes))
        await write_through(table, writes)
        return counts

    def apply_updates(self, table: Any, payload: bytes) -> tuple[int, int]:
        """:meth:`apply_batch` of one message into a plain mapping."""
        return self.apply_batch(table, [(payload, None)],
                                lambda k, v, _: table.__setitem__(k, v))

    def forget(self, partitions: set[int]) -> None:
        """Drop what this owner keeps of revoked item-updates partitions (their
        next owner's table is the truth from now on)."""
        p = self.settings.partitions
        self.fresh = {i for i in self.fresh if partition_of(i, p) not in partitions}
        # Unwritten changes of those: their messages' offsets were never
        # committable (the commit guard forgets them), so the next owner reads
        # and applies them again. Writing them now would mix this worker's
        # records into a changelog partition the next owner is restoring.
        for cache in (self.shown, self.states, self.dirty):
            for i in [i for i in cache if partition_of(i, p) in partitions]:
                del cache[i]
        self.owed = [m for m in self.owed if m.partition not in partitions]
        if self.writing is not None:
            # The guard forgets their holds, and this worker may be given the
            # partition back and read the same messages again, holding the same
            # offsets for its next write: the write in progress releasing them
            # would let them commit before that write.
            self.writing[:] = [m for m in self.writing if m.partition not in partitions]
        self.owned -= partitions
        if self.revoked_while_applying is not None:
            self.revoked_while_applying |= partitions

    async def write_period(self, table: Any, guard: CommitGuard,
                           stopping: Callable[[], bool]) -> None:
        """The period's changelog writes, acknowledged, then the offsets they
        cover are released (``guard`` holds the owner's messages until then)."""
        owed, self.owed = self.owed, []
        self.writing = owed  # forget drops the revoked ones
        try:
            await self._write_period(table, guard, stopping, owed)
        finally:
            self.writing = None

    async def _write_period(self, table: Any, guard: CommitGuard,
                            stopping: Callable[[], bool], owed: list[Any]) -> None:
        # The items applied before now come first in ``dirty`` (an item applied
        # again keeps its place; one written and applied again goes last): the
        # first ``left`` cover every message in ``owed``. Those applied during
        # the awaits wait for the next period, with their messages.
        slicer = Slicer(self.settings.batch_slice_seconds)
        left = len(self.dirty)
        while left > 0 and self.dirty:
            if stopping():
                # Stopping: what is not written stays held; the next owner reads it again.
                self.owed = owed + self.owed
                return
            n = min(left, WRITE_CHUNK)
            left -= n
            futures: list[Any] = []
            while n > 0 and self.dirty:
                k = min(n, WRITE_SLICE)
                n -= k
                writes: list[tuple[str, dict[str, Any], int]] = []
                self.write_changed(partial(collect, writes), k)
                # Every record taken is written: a partition revoked during an
                # earlier await had its items dropped from ``dirty`` by forget,
                # and the loop gets its turn only once the records taken are sent.
                # (Filtering on the consumer's assignment instead can lose increments:
                # it can be empty mid-rebalance, before the revocation's forget,
                # while the offsets were still released below.)
                futures += await send_through(table, writes)
                await slicer.turn()
            await acknowledged(table, futures)
        guard.release(owed)  # without those of partitions revoked meanwhile

    def due_models(self, table: Any, owned: set[int], now: float) -> list[tuple[bytes, bytes]]:
        """The item-model records to publish now: the changed items of the
        partitions this worker owns, and every item of a partition it has just
        taken over (its previous owner may have died before publishing them)."""
        return run(self.due_models_in_slices(table, owned, now, math.inf))

    def due_models_in_slices(self, table: Any, owned: set[int], now: float,
                             budget: float | None = None) -> Slices[list[tuple[bytes, bytes]]]:
        """:meth:`due_models`, pausing (see :data:`stream.processor.Slices`) once
        ``budget`` seconds (``Settings.batch_slice_seconds``) have passed: a
        period's changed items held the event loop for 0.05-0.1 s. Items of a
        partition revoked during a pause are not published (their states are
        the next owner's)."""
        budget = self.settings.batch_slice_seconds if budget is None else budget
        return (yield from Slicer(budget).run(self._due_steps(table, owned, now)))

    def _due_steps(self, table: Any, owned: set[int], now: float
                   ) -> Generator[None, None, list[tuple[bytes, bytes]]]:
        """:meth:`due_models_in_slices`'s work, a step boundary every 256 keys of
        a taken partition's table scan and before each changed item."""
        partitions = self.settings.partitions
        taken = owned - self.owned
        self.owned = set(owned)  # Sharing.forget removes those revoked from now on
        if taken:
            # The cached states stay: those of a taken partition were read from
            # its table after the assignment (Sharing.forget drops them on
            # revocation) and may hold increments applied but not written yet,
            # whose messages the period's write then releases.
            for n, k in enumerate(list(table)):
                if n % 256 == 255:
                    yield
                if not is_snapshot_key(k) and partition_of(k, partitions) in taken:
                    self.fresh.add(k)
                    self.shown.pop(k, None)
        # Those of partitions revoked meanwhile are dropped.
        ids = sorted(i for i in self.fresh if partition_of(i, partitions) in self.owned)
        self.fresh.clear()
        out = []
        for item_id in ids:
            yield
            if partition_of(item_id, partitions) not in self.owned:
                continue  # revoked during the pause
            if item_id not in self.states and table.get(item_id) is None:
                continue
            state = self.state_of(table, item_id)
            state.shown = self.shown.get(item_id)
            if not state.due(self.params):
                continue  # moved less than the publication tolerance: tested when it moves
            model = state.published(now, self.params)
            self.shown[item_id] = state.shown
            out.append((item_id.encode(), encode_model(model)))
        return out

    def globals_due(self, now: float) -> list[tuple[bytes, bytes]]:
        """This worker's blend record, and the segment centres if it owns them."""
        blend = self.engine.blend_state()
        blend["at"] = now
        out = [((BLEND_PREFIX + self.worker_id).encode(), orjson.dumps(blend))]
        if self.owns_segments:
            centres = self.engine.segmentation.centres_state()
            if centres is not None:
                out.append((SEGMENTS_KEY, orjson.dumps({"centres": centres, "at": now})))
        return out

    def merge_blends(self, now: float) -> bool:
        """Average the blend weights over the live workers (records newer than
        ten periods, 30 s at least), this one's current weights included."""
        horizon = now - max(30.0, 10 * self.settings.item_model_period_seconds)
        mine = BLEND_PREFIX + self.worker_id
        states = [self.engine.blend_state()] + [
            s for k, s in self.blends.items() if k != mine and s.get("at", 0.0) >= horizon
        ]
        if len(states) < 2:
            return False
        merged = self.engine.merge_blend(states)
        if merged:
            self.metrics.globals_applied.labels("blend").inc()
        return merged

    def read(self, records: list[Any], now: float) -> int:
        """Apply records of ``feedback.item-model`` and ``feedback.globals``."""
        return run(self.read_steps(records, now, math.inf))

    def read_steps(self, records: list[Any], now: float,
                   budget: float | None = None) -> Slices[int]:
        """:meth:`read`, pausing (see :data:`stream.processor.Slices`) between two
        models once ``budget`` seconds (``Settings.batch_slice_seconds``) have
        passed. The models are confirmed together before the first is applied
        (:func:`models.item_updates.apply_item_models_in_steps`), as when they
        were applied at once; a model applied after a pause adds this worker's
        pending increments as they are then, those of the events processed
        during the pause included, as a model of the next slice always did."""
        budget = self.settings.batch_slice_seconds if budget is None else budget
        models = []
        newest = 0.0
        for r in records:
            if r.value is None or r.key is None:
                continue
            if r.topic == self.settings.topic_globals:
                self._global(r.key, orjson.loads(r.value))
                continue
            model = decode_model(r.value)
            newest = max(newest, float(model.get("t", 0.0)))
            models.append((r.key.decode(), model))
        if models:
            yield from Slicer(budget).run(self.engine.apply_item_models_in_steps(models))
            self.metrics.item_models_applied.inc(len(models))
            self.metrics.item_model_staleness.set(max(0.0, now - newest))
        return len(models)

    async def read_in_slices(self, records: list[Any]) -> int:
        """:meth:`read` of ``records`` in slices of :data:`READ_SLICE`, the event
        loop's turn between two: a fetch holds up to 5,000 models (a new worker
        reads the whole topic), and applying them at once held the loop (every
        input batch and pull) for up to seconds. Only the newest model of each
        item in ``records`` is read (:func:`newest`)."""
        records = newest(records, self.settings.topic_item_model)
        n = 0
        for i in range(0, len(records), READ_SLICE):
            if i:
                await asyncio.sleep(0)
            n += await run_async(self.read_steps(records[i : i + READ_SLICE], time.time()))
        return n

    def _global(self, key: bytes, value: dict[str, Any]) -> None:
        if key == SEGMENTS_KEY:
            if not self.owns_segments:
                self.engine.segmentation.adopt(value["centres"])
                self.metrics.globals_applied.labels("segments").inc()
        elif key.startswith(BLEND_PREFIX.encode()):
            self.blends[key.decode()] = value


def newest(records: list[Any], topic: str) -> list[Any]:
    """``records`` without the item models of ``topic`` that a later record of the
    same item follows: a replica overwrites an item with its model, so only the
    newest one matters (an item's records share a partition, read in order).

    >>> from types import SimpleNamespace as R
    >>> rs = [R(topic="m", key=b"x", value=1), R(topic="g", key=b"b", value=2),
    ...       R(topic="m", key=b"y", value=3), R(topic="m", key=b"x", value=4)]
    >>> [r.value for r in newest(rs, "m")]
    [2, 3, 4]
    """
    last = {r.key: i for i, r in enumerate(records) if r.topic == topic}
    if len(last) == len(records):
        return records
    return [r for i, r in enumerate(records) if r.topic != topic or last[r.key] == i]


#: Item-updates messages the owner applies between two turns of the event loop
#: when it writes once per period (the batch's size then decides no write): a
#: backlog's 500 held the loop for 0.1-0.25 s.
OWNER_BATCH = 50

#: Item-model records a replica confirms at once (``Outbox.confirm``), then applies
#: with the event loop's turn between two once the slice's time is up
#: (:meth:`Sharing.read_steps`), and always after the last.
READ_SLICE = 50

#: The owner's changelog writes of one period go to the producer in chunks this
#: size, each acknowledged before the next...
WRITE_CHUNK = 50

#: ...the records of this many items at a time, the event loop's turn between
#: two once the slice's time is up (50 items' records, JSON-encoded, held it for
#: 0.06-0.1 s under the bench's latency phase).
WRITE_SLICE = 10


def register(app: faust.App, settings: Settings, engine: FeedbackEngine, metrics: Metrics,
             crash: Any, guard: CommitGuard | None = None) -> Sharing:
    """Add the item owner's agent, table and publisher, and the replica's reader.

    With a ``guard`` over ``feedback.item-updates`` the owner writes each changed
    item once per period and holds the offsets of the messages applied until
    then; without one, it writes after every batch (Faust would commit them)."""
    sharing = Sharing(settings, engine, metrics, ItemParams.of(engine.config),
                      worker_id=settings.canonical_url)
    updates_topic = app.topic(
        settings.topic_item_updates, partitions=settings.partitions,
        key_type=bytes, key_serializer="raw", value_serializer="raw",
    )
    table = app.Table(
        ITEM_STATE_TABLE, default=None, partitions=settings.partitions,
        schema=faust.Schema(key_type=str, key_serializer="raw", value_serializer="json"),
    )

    coalesce = guard is not None and guard.guards(settings.topic_item_updates)

    @app.agent(updates_topic, name="item-owner")
    async def own_items(stream: Any) -> None:
        # In batches: an item touched by several messages is written once. With
        # the guard, the batch's offsets are held (before it is applied, in
        # slices) until the period's write; without it, the records go
        # straight to the producer (write_through: Faust's buffered table writes
        # stall the worker's inputs) and are acknowledged before the batch's
        # events are acked. Either way a commit never passes an unwritten increment.
        async for events in stream.take_events(OWNER_BATCH if coalesce else 500,
                                               within=settings.batch_max_wait_seconds):
            if coalesce:
                assert guard is not None
                # In offset order, as the user side: an item's watermark per
                # source skips what comes after it.
                events = in_order(app, events)
                if events:
                    await sharing.hold_and_apply(table, events, guard)
            else:
                await sharing.own(table, events)

    @app.timer(settings.item_model_period_seconds, name="publish-item-models")
    async def publish_models() -> None:
        if app.rebalancing or app.in_recovery or app.should_stop:
            return  # the table is not whole yet (publish once it is), or stopping
        if coalesce:
            assert guard is not None
            await sharing.write_period(table, guard, lambda: bool(app.should_stop))
            if app.rebalancing:
                return
        now = time.time()
        assigned = app.consumer.assignment()
        owned = {tp.partition for tp in assigned if tp.topic == settings.topic_item_updates}
        sharing.owns_segments = 0 in owned
        if sharing.owns_segments and engine.segmentation.follower:
            engine.segmentation.follower = False  # this worker re-fits the centres now
        records = [(settings.topic_item_model, k, v)
                   for k, v in await run_async(sharing.due_models_in_slices(table, owned, now))]
        records += [(settings.topic_globals, k, v) for k, v in sharing.globals_due(now)]
        send = app.producer.send
        futures = [await send(t, k, v, None, None, None) for t, k, v in records]
        await asyncio.gather(*futures)
        metrics.item_models_published.inc(len(records) - sum(
            t == settings.topic_globals for t, _, _ in records))
        sharing.merge_blends(now)

    @app.task
    async def read_replica() -> None:
        consumer = AIOKafkaConsumer(
            **client_kwargs(settings), group_id=None, enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            tps = [TopicPartition(settings.topic_item_model, p)
                   for p in range(settings.partitions)]
            tps.append(TopicPartition(settings.topic_globals, 0))
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            while True:
                batch = await consumer.getmany(timeout_ms=200, max_records=5000)
                records = [r for msgs in batch.values() for r in msgs]
                if records:
                    await sharing.read_in_slices(records)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("the item-model reader failed")
            await crash(exc)
        finally:
            await consumer.stop()

    async def forget_revoked(sender: Any, revoked: set[TP], **kwargs: Any) -> None:
        parts = {tp.partition for tp in revoked if tp.topic == settings.topic_item_updates}
        if parts:
            sharing.forget(parts)

    app.on_partitions_revoked.connect(forget_revoked)  # type: ignore[arg-type]
    return sharing
