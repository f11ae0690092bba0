"""The Faust application: topics, the profile table, the agent, timers and views.

``build_app`` wires a :class:`~stream.processor.Processor` into Faust; all the
decisions about events live in the processor, so this module only moves bytes.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import faust
from aiokafka.errors import IllegalStateError
from faust.exceptions import ConsumerNotStarted
from faust.types import TP
from prometheus_client import REGISTRY, CollectorRegistry, disable_created_metrics

from models.engine import FeedbackEngine
from models.item_updates import Outbox
from stream import checkpoint, sharing, views
from stream.commit_guard import CommitGuard
from stream.contract import Rejected
from stream.erasure import decode_request, encode_receipt
from stream.faust import (
    PROFILE_CODEC,
    OffsetTrace,
    ProfileValue,
    TableStore,
    create_app,
    in_order,
)
from stream.health import Health, watch_broker
from stream.kafka import ssl_context
from stream.metrics import Metrics
from stream.processor import Processor, run_async
from stream.pull import Pulls
from stream.records import InputMessage, OutputMessage
from stream.refit import CustomerValueRefit
from stream.settings import Settings
from stream.stall import LoopWatch
from stream.topics import PROFILES_TABLE

log = logging.getLogger(__name__)

# Events handed to the processor at once; settings.batch_max_wait_seconds
# bounds the latency a partial batch adds.
BATCH_SIZE = 500

# Bytes per partition in one produce request. aiokafka holds one batch per
# partition and makes a sender wait once it is full, and sends one request per
# broker at a time: at Faust's 16 kB, the item owner's publication (a few kB per
# item model, thousands per period) went out three records per partition per
# round trip, stretched the 1 s period to 5-10 s, and the replica read it back
# in hundreds of small fetches that took the event loop from the inputs.
PRODUCER_BATCH_BYTES = 256 * 1024

# The models are hundreds of thousands of long-lived containers. CPython's
# full (oldest-generation) collection walks all of them, stopping the event
# loop for 0.3-1 s on a 300 MB worker each time the heap grows by a quarter:
# a pull or event arriving then waits that long. So every tick the survivors
# are frozen (gc.freeze, constant time), and collections walk only what came
# since. A cycle among frozen objects that becomes garbage is only freed by a
# full collection of everything, done once every FULL_COLLECT_SECONDS.
FULL_COLLECT_SECONDS = 3600.0


class Collector:
    """Keep CPython's cyclic collector off the models (see FULL_COLLECT_SECONDS)."""

    def __init__(self, full_every: float = FULL_COLLECT_SECONDS) -> None:
        self.full_every = full_every
        self.last_full = time.monotonic()

    def tick(self) -> None:
        now = time.monotonic()
        if now - self.last_full >= self.full_every:
            self.last_full = now
            gc.unfreeze()
            gc.collect()
        gc.freeze()


@dataclass
class FeedbackApp:
    """The Faust app and the objects the tools and tests reach into."""

    app: faust.App
    settings: Settings
    processor: Processor
    metrics: Metrics
    input_topic: Any
    output_topics: dict[str, Any]
    # (topic, partition) label sets this worker currently reports lag for.
    lag_labels: set[tuple[str, str]] = field(default_factory=set)
    # What /livez and /readyz answer; the broker's reachability.
    health: Health | None = None
    sharing: sharing.Sharing | None = None
    # What may commit the input offsets (stream/commit_guard.py).
    commit_guard: CommitGuard | None = None
    # One step at a time between processing, publishing and telling the commit
    # guard what was published: the agent's batches, the held recommendations
    # published between batches, and the revocations that drop them.
    publishing: asyncio.Lock = field(default_factory=asyncio.Lock)

    def settle(self, batch: list[InputMessage]) -> None:
        """After the outputs are acknowledged: what the commit guard may commit."""
        assert self.commit_guard is not None
        hold, release = self.processor.settle()
        self.commit_guard.hold(hold)  # processed, their recommendation still held
        self.commit_guard.done(batch)
        self.commit_guard.release(release)  # held earlier, published now


def broker_credentials(settings: Settings) -> Any:
    """Faust credentials for the configured security protocol (None for PLAINTEXT)."""
    context = ssl_context(settings)
    if settings.security_protocol.startswith("SASL"):
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
    # Over item-updates too: the item owner holds its offsets until it has
    # written the period's changelog records (stream/sharing.py).
    guarded = [*settings.input_topics] + ([settings.topic_item_updates]
                                         if settings.share_items else [])
    commit_guard = CommitGuard(guarded, settings.recovery_guards)
    trace = OffsetTrace(settings.input_topics) if settings.trace_offsets else None
    app = create_app(
        settings,
        commit_guard,
        trace,
        broker=[f"kafka://{s.strip()}" for s in settings.bootstrap_servers.split(",")],
        broker_credentials=broker_credentials(settings),
        store=f"{settings.table_store}://",
        table_standby_replicas=settings.table_standby_replicas,
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
        producer_max_batch_size=PRODUCER_BATCH_BYTES,
        datadir=f"{settings.state_dir}/faust",
        web_in_thread=False,
        web_application_options={"middlewares": [views.gate_middleware(settings, metrics)]},
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
            settings.topic_erasure,
            settings.topic_erasure_done,
        )
    }
    # Erasure requests: the same partitions as the inputs (co-partitioned by Faust's
    # assignor), so the worker that owns a user's events gets their request.
    erasure_topic = app.topic(
        settings.topic_erasure, key_type=bytes, key_serializer="raw", value_serializer="raw",
        allow_empty=True,
    )
    profiles = app.Table(
        PROFILES_TABLE,
        default=None,
        partitions=settings.partitions,
        schema=faust.Schema(key_type=str, key_serializer="raw", value_serializer=PROFILE_CODEC),
        value_type=ProfileValue,  # what makes Faust use the profile codec
    )
    models = checkpoint.load_or_new(settings) if engine is None else checkpoint.Models(engine)
    engine = models.engine
    processor = Processor(
        settings, engine, TableStore(profiles, settings), metrics, bandit=models.bandit,
        debounce=True,
    )
    models.bandit = processor.bandit  # what the checkpoints save is what the processor learns
    if settings.recommend_publish_drained:
        processor.highwater = fetched_highwater(app)
    health = Health(settings, gauge=metrics.broker_reachable)
    health.set_group(
        # Faust counts a rebalance from the first join, and ends it once the
        # assigned partitions' tables are recovered.
        joined=lambda: app.rebalancing_count > 0 and not app.rebalancing,
        recovered=lambda: (
            app.tables.recovery.completed.is_set()  # type: ignore[attr-defined]
            and not app.in_recovery
        ),
    )
    fa = FeedbackApp(
        app, settings, processor, metrics, input_topic, outputs, health=health,
        commit_guard=commit_guard,
    )
    if settings.share_items:
        processor.share_items(Outbox(settings.partitions))
        fa.sharing = sharing.register(app, settings, engine, metrics, app.crash, commit_guard)

    publishing = fa.publishing
    settle = fa.settle

    @app.agent(input_topic)
    async def process(stream: Any) -> None:
        if trace is not None:
            trace.watch_fetch_positions()  # the worker has configured logging by now
        async for events in stream.take_events(
            BATCH_SIZE, within=settings.batch_max_wait_seconds
        ):
            # Never past a record Faust lost: learned after the records that
            # follow it, its item increments would be skipped by the owners.
            events = in_order(app, events)
            if not events:
                continue
            batch = [
                InputMessage(m.topic, m.partition, m.offset, m.key, m.value, m.timestamp, e)
                for e in events
                for m in (e.message,)
            ]
            await process_batch(fa, batch)
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
                    await publish(fa, await run_async(processor.publish_due_in_slices()))
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

    collector = Collector()

    # The customer-value refit fits in a worker thread (stream/refit.py), not in the tick.
    processor.refit_customer_value_in_tick = False
    clv_refit = CustomerValueRefit(engine, metrics.clv_refit_seconds)

    @app.timer(settings.tick_interval_seconds)
    async def refit_customer_value() -> None:
        if processor.max_event_time:
            await clv_refit.run_once(processor.max_event_time)

    @app.timer(settings.tick_interval_seconds)
    async def tick() -> None:
        collector.tick()
        await publish(fa, processor.tick())
        await update_lag(fa)
        metrics.users_tracked.set(len(engine.profiles))
        metrics.items_tracked.set(len(engine.catalogue))
        metrics.set_information(
            engine.information.report(len(engine.catalogue)), engine.shift.last
        )

    loop_watch = LoopWatch(metrics.event_loop_lag_seconds, settings.loop_stall_log_seconds)

    @app.task
    async def watch_loop() -> None:
        await loop_watch.run()

    @app.task
    async def broker_watch() -> None:
        # Readiness follows the broker within one probe interval (2 s while it
        # answers), whatever Faust's own clients are doing.
        await watch_broker(health)

    @app.timer(settings.eviction_interval_seconds)
    async def evict() -> None:
        # Bounded work: at most settings.evictions_per_tick users per call. Never
        # between a batch's learning and its profile writes (the agent's lock).
        async with publishing:
            processor.evict()

    # Periodic and final (graceful stop) checkpoints, consistent with the
    # profile changelog: see stream/checkpoint.py.
    checkpoint_now = checkpoint.register(app, settings, models, metrics, between=publishing)

    @app.agent(erasure_topic)
    async def erase(stream: Any) -> None:
        async for event in stream.events():
            await erase_one(event.message)

    async def erase_one(m: Any) -> None:
        """Carry out one erasure request (docs/privacy.md): forget the user, publish
        the tombstones, write a checkpoint without them, then the receipt."""
        try:
            request = decode_request(m.value, m.key)
        except Rejected as rejection:
            bad = InputMessage(m.topic, m.partition, m.offset, m.key, m.value, m.timestamp)
            async with publishing:
                await publish(fa, [processor.dead_letter(bad, rejection)])
            return
        async with publishing:
            outputs, erased = processor.erase(request.user_id)
            await publish(fa, outputs)
            settle([])
            # Commit the input records processed so far (what the commit guard
            # allows): the user's events learned before the request must not be
            # read again after a crash and bring them back as a "new" user.
            await app.consumer.commit(set(settings.input_topics))
        # Before the receipt, and before the request's offset is committed: a
        # crash until then replays the request; a restart from an older
        # checkpoint cannot bring the user back once this one is written.
        await checkpoint_now()
        receipt = encode_receipt(request, erased, time.time())
        await publish(fa, [OutputMessage(settings.topic_erasure_done, m.key, receipt)])
        metrics.erasures.inc()
        log.info("erasure request %s carried out", request.request_id)

    views.register(app, settings, engine, metrics.registry, profiles, health, Pulls(processor))
    return fa


async def process_batch(fa: FeedbackApp, batch: list[InputMessage]) -> None:
    """Process, publish and write one batch of input records, then let the commit
    guard commit their offsets.

    The batch's item updates and outputs are acknowledged before its profile
    writes are made (the profiles are the de-duplication ledger: an event they
    record is never processed again), and before its offsets may be committed
    (settle). The processing and the writes run in slices: the event loop
    answers HTTP pulls between two events, not after the whole batch.
    """
    processor = fa.processor
    async with fa.publishing:
        await publish(fa, await run_async(processor.handle_in_slices(batch, write=False)))
        await run_async(processor.write_profiles_in_slices())
        fa.settle(batch)


async def publish(fa: FeedbackApp, messages: list[OutputMessage]) -> None:
    """Hand every output to the producer and wait for the broker's acknowledgements."""
    if not messages:
        return
    # Straight to the producer: the bytes are final, and Topic.send's per-record
    # FutureMessage, callbacks and buffer hop cost more than the send itself
    # (the bench's trivial per-event-send agent shows it).
    send = fa.app.producer.send
    futures = [
        await send(m.topic, m.key, m.value, m.partition, None, m.headers or None)
        for m in messages
    ]
    await asyncio.gather(*futures)


def fetched_highwater(app: faust.App) -> Callable[[str, int], int | None]:
    """An input partition's high-water mark as of the consumer's last fetch of
    it, or None when not known: not fetched yet, revoked (aiokafka asserts), or
    no consumer running (Faust raises)."""

    def highwater(topic: str, partition: int) -> int | None:
        try:
            mark = app.consumer.highwater(TP(topic, partition))
        except (AssertionError, IllegalStateError, ConsumerNotStarted):
            return None
        return mark if isinstance(mark, int) else None

    return highwater


async def update_lag(fa: FeedbackApp) -> None:
    """Lag and high-water gauges for the input partitions this worker owns now.

    Partitions revoked by a rebalance lose their series here; a frozen value left
    behind would count the partition twice and show lag that no longer exists.
    """
    consumer = fa.app.consumer
    inputs = set(fa.settings.input_topics)
    current: set[tuple[str, str]] = set()
    # Without a broker the high-water marks are the last ones fetched: no lag is
    # better than a stale one (a frozen 0 looks healthy); the broker alert speaks.
    reachable = fa.health is None or fa.health.broker_ok
    for tp in consumer.assignment() if reachable else ():
        if tp.topic not in inputs:
            continue
        try:
            highwater = consumer.highwater(tp)
            position = await consumer.position(TP(tp.topic, tp.partition))
        except (AssertionError, IllegalStateError):
            # Revoked by a rebalance since assignment() was read: aiokafka asserts
            # in highwater(), which must not crash the timer.
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
