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
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import faust
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.types import TP

from models.engine import FeedbackEngine
from models.item_state import ItemParams, ItemState, is_snapshot_key
from models.item_updates import decode_updates, partition_of
from stream.faust import write_through
from stream.kafka import client_kwargs
from stream.metrics import Metrics
from stream.settings import Settings
from stream.topics import ITEM_STATE_TABLE

log = logging.getLogger(__name__)

SEGMENTS_KEY = b"segments"
BLEND_PREFIX = "blend:"


@dataclass
class Sharing:
    """What the item owner and the replica keep between calls."""

    settings: Settings
    engine: FeedbackEngine
    metrics: Metrics
    params: ItemParams
    worker_id: str
    # Items applied and not yet published, by this worker as their owner.
    changed: set[str] = field(default_factory=set)
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
                    write: Callable[[str, dict[str, Any], Any], None]) -> tuple[int, int]:
        """Apply item-updates messages ``(payload, source)``; each changed item is
        written once, ``write(key, record, source of its last message)`` for each
        of its records (:meth:`ItemState.changelog`: the item's, after its
        neighbour snapshot when one is due).
        Returns ``(entries applied, entries skipped as duplicates)``."""
        applied = skipped = 0
        dirty: dict[str, Any] = {}
        decoded = []
        for payload, source in messages:
            try:
                decoded.append((decode_updates(payload), source))
            except ValueError:
                # Written by this service's own workers: a bug, not bad input.
                log.error("malformed item-updates message skipped: %r", payload[:200])
        for updates, source in decoded:
            for item_id, entries in updates.items():
                state = self.state_of(table, item_id)
                fresh = state.apply(entries, self.params, item_id)
                skipped += len(entries) - fresh
                if fresh:
                    applied += fresh
                    dirty[item_id] = source
        for item_id, source in dirty.items():
            for key, record in self.states[item_id].changelog(item_id):
                write(key, record, source)
            self.changed.add(item_id)
        self.metrics.item_updates_applied.inc(applied)
        self.metrics.item_updates_duplicate.inc(skipped)
        return applied, skipped

    async def own(self, table: Any, events: Sequence[Any]) -> tuple[int, int]:
        """:meth:`apply_batch` of the owner's Faust events, each changed item's
        records written to the changelog partition of its last message (= the
        item's) straight through the producer (:func:`stream.faust.write_through`),
        acknowledged when this returns."""
        writes: list[tuple[str, dict[str, Any], int]] = []
        counts = self.apply_batch(
            table, [(e.value, e) for e in events],
            lambda key, record, event: writes.append((key, record, event.message.partition)),
        )
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
        self.changed = {i for i in self.changed if partition_of(i, p) not in partitions}
        for cache in (self.shown, self.states):
            for i in [i for i in cache if partition_of(i, p) in partitions]:
                del cache[i]
        self.owned -= partitions

    def due_models(self, table: Any, owned: set[int], now: float) -> list[tuple[bytes, bytes]]:
        """The item-model records to publish now: the changed items of the
        partitions this worker owns, and every item of a partition it has just
        taken over (its previous owner may have died before publishing them)."""
        partitions = self.settings.partitions
        taken = owned - self.owned
        if taken:
            for k in list(table):
                if not is_snapshot_key(k) and partition_of(k, partitions) in taken:
                    self.changed.add(k)
                    self.shown.pop(k, None)
                    self.states.pop(k, None)
        self.owned = owned
        ids = sorted(i for i in self.changed if partition_of(i, partitions) in owned)
        self.changed.intersection_update(ids)  # drop those of partitions revoked meanwhile
        out = []
        for item_id in ids:
            if item_id not in self.states and table.get(item_id) is None:
                self.changed.discard(item_id)
                continue
            state = self.state_of(table, item_id)
            state.shown = self.shown.get(item_id)
            if not state.due(self.params):
                continue  # moved less than the publication tolerance: stays changed
            self.changed.discard(item_id)
            model = state.published(now, self.params)
            self.shown[item_id] = state.shown
            out.append((item_id.encode(), orjson.dumps(model)))
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
        models = []
        newest = 0.0
        for r in records:
            if r.value is None or r.key is None:
                continue
            if r.topic == self.settings.topic_globals:
                self._global(r.key, orjson.loads(r.value))
                continue
            model = orjson.loads(r.value)
            newest = max(newest, float(model.get("t", 0.0)))
            models.append((r.key.decode(), model))
        if models:
            self.engine.apply_item_models(models)
            self.metrics.item_models_applied.inc(len(models))
            self.metrics.item_model_staleness.set(max(0.0, now - newest))
        return len(models)

    def _global(self, key: bytes, value: dict[str, Any]) -> None:
        if key == SEGMENTS_KEY:
            if not self.owns_segments:
                self.engine.segmentation.adopt(value["centres"])
                self.metrics.globals_applied.labels("segments").inc()
        elif key.startswith(BLEND_PREFIX.encode()):
            self.blends[key.decode()] = value


def register(app: faust.App, settings: Settings, engine: FeedbackEngine, metrics: Metrics,
             crash: Any) -> Sharing:
    """Add the item owner's agent, table and publisher, and the replica's reader."""
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

    @app.agent(updates_topic, name="item-owner")
    async def own_items(stream: Any) -> None:
        # In batches: an item touched by several messages is written once. The
        # records go straight to the producer (write_through: Faust's buffered
        # table writes stall the worker's inputs) and are acknowledged before
        # the batch's events are acked, so a commit never passes an unwritten
        # increment.
        async for events in stream.take_events(500, within=settings.batch_max_wait_seconds):
            await sharing.own(table, events)

    @app.timer(settings.item_model_period_seconds, name="publish-item-models")
    async def publish_models() -> None:
        if app.rebalancing or app.in_recovery:
            return  # the table is not whole yet: publish once it is
        now = time.time()
        assigned = app.consumer.assignment()
        owned = {tp.partition for tp in assigned if tp.topic == settings.topic_item_updates}
        sharing.owns_segments = 0 in owned
        if sharing.owns_segments and engine.segmentation.follower:
            engine.segmentation.follower = False  # this worker re-fits the centres now
        records = [(settings.topic_item_model, k, v)
                   for k, v in sharing.due_models(table, owned, now)]
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
                    sharing.read(records, time.time())
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
