"""The Faust application: topics, the profile table, the agent, timers and views.

``build_app`` wires a :class:`~stream.processor.Processor` into Faust; all the
decisions about events live in the processor, so this module only moves bytes.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import faust
from aiokafka.errors import IllegalStateError
from faust.streams import _current_event
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import TP
from prometheus_client import REGISTRY, CollectorRegistry, disable_created_metrics

from models.engine import FeedbackEngine
from stream import checkpoint, offset_trace, recovery
from stream.metrics import Metrics
from stream.processor import InputMessage, OutputMessage, Processor
from stream.settings import Settings
from stream.stored_profile import StoredProfile
from stream.topics import PROFILES_TABLE

log = logging.getLogger(__name__)

# Events handed to the processor at once; settings.batch_max_wait_seconds
# bounds the latency a partial batch adds.
BATCH_SIZE = 500
# Faust hard-codes the consumer's fetch_max_wait_ms=1500. Kafka answers a waiting
# fetch as soon as data arrives, but the embedded broker (Tansu) waits it out,
# which added 0.4-0.7 s to the median event-to-recommendation latency. A short
# wait only costs idle fetch requests, on any broker.
FETCH_MAX_WAIT_MS = 100


class _ConsumerThread(aiokafka_driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Read by aiokafka when the consumer starts and builds its fetcher.
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        return consumer


class _Consumer(aiokafka_driver.Consumer):
    """Faust's aiokafka consumer with two fixes for input records lost on rebalance.

    The main cause of issue 5's rebalance loss (docs/reliability.md; upstream
    write-up in docs/faust-rebalance-record-loss.md):

    1. Faust's fetch loop passes its *live* set of active partitions to the
       consumer thread, which reads it later in aiokafka's ``fetched_records``.
       A rebalance or table recovery pauses partitions meanwhile; when the set
       is empty by then, aiokafka returns the buffered records of *every*
       assigned partition (an empty filter means "all"), and Faust's
       ``getmany`` then discards the records of the paused input partitions.
       aiokafka's position has moved past them, so they are never delivered
       unless something seeks back.
    2. ``perform_seek`` seeks back only to committed offsets: aiokafka's
       ``seek_to_committed`` skips a partition whose committed offset is
       missing or 0, so a partition nobody has committed yet keeps whatever
       position the discarded fetches left it at.

    ``_getmany`` hands the thread a copy of the set, and ``seek_to_committed``
    seeks input partitions without a committed offset to their beginning (the
    ``consumer_auto_offset_reset="earliest"`` start), so every ``perform_seek``
    puts every input partition back at its first unprocessed record.
    """

    # Faust builds the consumer itself, so the setting arrives as a class
    # attribute of the subclass build_app installs.
    trace_offsets = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.trace_offsets:
            self.callback = offset_trace.trace_callback(self, self.callback)

    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _getmany(self, active_partitions: set[TP] | None, timeout: float) -> Any:
        if active_partitions is None:  # client-only apps: every partition, as Faust means
            return await super()._getmany(None, timeout)
        requested = set(active_partitions)
        if not requested:
            return {}
        return await super()._getmany(requested, timeout)

    async def seek_to_committed(self) -> Any:
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


@dataclass
class FeedbackApp:
    """The Faust app and the objects the HTTP views and tests reach into."""

    app: faust.App
    settings: Settings
    processor: Processor
    metrics: Metrics
    input_topic: Any
    output_topics: dict[str, Any]
    # (topic, partition) label sets this worker currently reports lag for.
    lag_labels: set[tuple[str, str]] = field(default_factory=set)


def broker_credentials(settings: Settings) -> Any:
    """Faust credentials for the configured security protocol (None for PLAINTEXT)."""
    proto = settings.security_protocol
    context: ssl.SSLContext | None = None
    if proto in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=settings.ssl_cafile or None)
        if settings.ssl_certfile:
            context.load_cert_chain(settings.ssl_certfile, settings.ssl_keyfile or None)
    if proto.startswith("SASL"):
        return faust.SASLCredentials(
            username=settings.sasl_username,
            password=settings.sasl_password,
            mechanism=settings.sasl_mechanism,
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def build_app(
    settings: Settings,
    engine: FeedbackEngine | None = None,
    registry: CollectorRegistry = REGISTRY,
) -> FeedbackApp:
    # The *_created series only double the scrape size; Grafana never uses them.
    disable_created_metrics()
    metrics = Metrics(registry)
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{s.strip()}" for s in settings.bootstrap_servers.split(",")],
        broker_credentials=broker_credentials(settings),
        store=f"{settings.table_store}://",
        autodiscover=False,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        canonical_url=settings.canonical_url,
        broker_session_timeout=settings.session_timeout_seconds,
        broker_heartbeat_interval=settings.heartbeat_seconds,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        datadir=f"{settings.state_dir}/faust",
        web_in_thread=False,
    )
    app.transport.Consumer = type(  # type: ignore[misc]
        "_Consumer", (_Consumer,), {"trace_offsets": settings.trace_offsets}
    )
    raw = {"key_type": str, "key_serializer": "raw", "value_serializer": "raw"}
    input_topic = app.topic(
        settings.topic_clicks,
        settings.topic_purchases,
        settings.topic_reviews,
        key_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        allow_empty=True,
    )
    outputs = {
        name: app.topic(name, partitions=settings.partitions, **raw)  # type: ignore[arg-type]
        for name in (
            settings.topic_recommendations,
            settings.topic_alerts,
            settings.topic_deadletter,
        )
    }
    profiles = app.Table(
        PROFILES_TABLE,
        default=None,
        partitions=settings.partitions,
        schema=faust.Schema(key_type=str, key_serializer="raw", value_serializer="json"),
    )
    models = checkpoint.load_or_new(settings) if engine is None else checkpoint.Models(engine)
    engine = models.engine
    processor = Processor(
        settings, engine, TableStore(profiles, settings), metrics, bandit=models.bandit,
        debounce=True,
    )
    models.bandit = processor.bandit  # what the checkpoints save is what the processor learns
    fa = FeedbackApp(app, settings, processor, metrics, input_topic, outputs)
    commit_guard = recovery.CommitGuard(settings.input_topics, bool(settings.recovery_guards))
    recovery.guard_changelog_recovery(app, settings)
    trace = offset_trace.OffsetTrace(settings.input_topics) if settings.trace_offsets else None

    # One step at a time between processing, publishing and telling the commit
    # guard what was published: the agent's batches, the held recommendations
    # published between batches, and the revocations that drop them.
    publishing = asyncio.Lock()

    def settle(batch: list[InputMessage]) -> None:
        """After the outputs are acknowledged: what the commit guard may commit."""
        hold, release = processor.settle()
        commit_guard.hold(hold)  # processed, their recommendation still held
        commit_guard.done(batch)
        commit_guard.release(release)  # held earlier, published now

    @app.agent(input_topic)
    async def process(stream: Any) -> None:
        # Before the first message can be acked (see stream/recovery.py).
        commit_guard.install(app.consumer)
        recovery.guard_producer_flush(app.producer, settings)
        if trace is not None:
            trace.install(app.consumer)
        async for events in stream.take_events(
            BATCH_SIZE, within=settings.batch_max_wait_seconds
        ):
            batch = [
                InputMessage(m.topic, m.partition, m.offset, m.key, m.value, m.timestamp, e)
                for e in events
                for m in (e.message,)
            ]
            async with publishing:
                await publish(fa, processor.handle(batch))
                settle(batch)
            if trace is not None:
                trace.batch(e.message for e in events)

    @app.task
    async def publish_held() -> None:
        # Held recommendations whose users' triggers stopped while no batch
        # came (stream/debounce.py).
        pause = max(0.005, settings.recommend_debounce_seconds / 4)
        while True:
            await asyncio.sleep(pause)
            if not processor.debounce.enabled:
                continue
            try:
                async with publishing:
                    await publish(fa, processor.publish_due())
                    settle([])
            except Exception as exc:  # as an agent's failure would: the held stay uncommitted
                log.exception("publishing held recommendations failed")
                await app.crash(exc)
                return

    async def drop_held(sender: Any, revoked: set[TP], **kwargs: Any) -> None:
        # The next owner of these partitions reads the held trigger records
        # again and holds their recommendations; publishing them here would race
        # its profile writes.
        parts = {(tp.topic, tp.partition) for tp in revoked}
        async with publishing:
            dropped = processor.drop_held(parts)
            commit_guard.forget(parts)
        if dropped:
            log.info("revoked: %d held recommendations left to the next owner", dropped)

    # mode types the handler of a Signal[Set[TP]] so that no async def matches it.
    app.on_partitions_revoked.connect(drop_held)  # type: ignore[arg-type]

    @app.timer(settings.tick_interval_seconds)
    async def tick() -> None:
        await publish(fa, processor.tick())
        await update_lag(fa)
        metrics.users_tracked.set(len(engine.profiles))
        metrics.items_tracked.set(len(engine.catalogue))

    @app.timer(settings.eviction_interval_seconds)
    async def evict() -> None:
        # Bounded work: at most settings.evictions_per_tick users per call.
        processor.evict()

    # Periodic and final (graceful stop) checkpoints, consistent with the
    # profile changelog: see stream/checkpoint.py.
    checkpoint.register(app, settings, models, metrics)

    from stream import views

    views.register(fa, profiles)
    return fa


class TableStore:
    """The profile table as a :class:`~stream.processor.ProfileStore`.

    Faust writes a table change to the changelog partition of the *current*
    event; after ``take_events`` there is none, so each write names its source
    event explicitly (the user's latest event in the batch).
    """

    def __init__(self, table: Any, settings: Settings) -> None:
        self.table = table
        self.inputs = set(settings.input_topics)
        # The changelog partition of each profile written here: where its
        # tombstone must go (kept out of the stored profile itself).
        self.partitions: dict[str, int] = {}

    def get(self, user_id: str) -> StoredProfile | None:
        return self.table.get(user_id)

    def put(self, user_id: str, profile: StoredProfile, source: InputMessage) -> None:
        self.partitions[user_id] = source.partition
        token = _current_event.set(weakref.ref(source.context))
        try:
            self.table[user_id] = profile
        finally:
            _current_event.reset(token)

    def delete(self, user_ids: Sequence[str]) -> int:
        """Delete profiles: a tombstone in the changelog partition each was written
        to, so compaction drops it and a restart or a rebalance does not bring it
        back. A profile of a partition this worker no longer owns (revoked since it
        was written) is only dropped from memory: its new owner decides."""
        store = self.table.data
        # Partitions of the profiles restored from the changelog (Faust's memory
        # store records them; those written since are in self.partitions).
        restored = getattr(store, "_key_partition", {})
        owned = {
            tp.partition for tp in self.table.app.assignor.assigned_actives()
            if tp.topic in self.inputs or tp.topic == self.table.changelog_topic_name
        }
        deleted = 0
        for user_id in user_ids:
            written = self.partitions.pop(user_id, None)
            profile = store.get(user_id)
            if profile is None:
                continue
            # A record written by an earlier release may still carry its partition.
            partition = (
                written if written is not None
                else profile.get("partition", restored.get(user_id))
            )
            if partition in owned:
                self.table.send_changelog(partition, user_id, None, value_serializer="raw")
            del store[user_id]
            restored.pop(user_id, None)
            deleted += 1
        return deleted

    def keys(self) -> Iterable[str]:
        return self.table.data.keys()

    def __len__(self) -> int:
        return len(self.table)


async def publish(fa: FeedbackApp, messages: list[OutputMessage]) -> None:
    """Hand every output to the producer and wait for the broker's acknowledgements."""
    if not messages:
        return
    # Straight to the producer: the bytes are final, and Topic.send's per-record
    # FutureMessage, callbacks and buffer hop cost more than the send itself
    # (the trivial per-event-send agent of tools/bench.py shows it).
    send = fa.app.producer.send
    futures = [await send(m.topic, m.key, m.value, None, None, m.headers or None) for m in messages]
    await asyncio.gather(*futures)


async def update_lag(fa: FeedbackApp) -> None:
    """Lag and high-water gauges for the input partitions this worker owns now.

    Partitions revoked by a rebalance lose their series here; a frozen value left
    behind would count the partition twice and show lag that no longer exists.
    """
    consumer = fa.app.consumer
    inputs = set(fa.settings.input_topics)
    current: set[tuple[str, str]] = set()
    for tp in consumer.assignment():
        if tp.topic not in inputs:
            continue
        try:
            highwater = consumer.highwater(tp)
            position = await consumer.position(TP(tp.topic, tp.partition))
        except (AssertionError, IllegalStateError):
            # Revoked by a rebalance since assignment() was read (aiokafka asserts
            # in highwater()); this crashed a worker in a rebalance test run.
            continue
        if highwater is None or position is None:
            continue
        labels = (tp.topic, str(tp.partition))
        current.add(labels)
        fa.metrics.input_highwater.labels(*labels).set(highwater)
        fa.metrics.consumer_lag.labels(*labels).set(max(0, highwater - position))
    for labels in fa.lag_labels - current:
        fa.metrics.input_highwater.remove(*labels)
        fa.metrics.consumer_lag.remove(*labels)
    fa.lag_labels = current
