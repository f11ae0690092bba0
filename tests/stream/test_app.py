"""The Faust app as build_app wires it, without a broker."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from models.engine import FeedbackEngine
from stream.app import build_app
from stream.settings import Settings


@pytest.mark.parametrize("raw, expected", [("1", True), ("0", False)])
def test_the_offset_trace_is_a_validated_setting_the_consumer_receives(
    raw: str, expected: bool, tmp_path: object
) -> None:
    settings = Settings.from_env(
        {"FEEDBACK_TRACE_OFFSETS": raw, "FEEDBACK_STATE_DIR": str(tmp_path)}
    )
    fa = build_app(settings, engine=FeedbackEngine(), registry=CollectorRegistry())
    assert settings.trace_offsets is expected
    assert (fa.app.transport.Consumer.offset_trace is not None) is expected


@pytest.mark.parametrize("raw, expected", [(None, 1), ("0", 0), ("2", 2)])
def test_the_table_standbys_are_a_setting_faust_receives(
    raw: str | None, expected: int, tmp_path: object
) -> None:
    env = {"FEEDBACK_STATE_DIR": str(tmp_path)}
    if raw is not None:
        env["FEEDBACK_TABLE_STANDBY_REPLICAS"] = raw
    fa = build_app(Settings.from_env(env), engine=FeedbackEngine(), registry=CollectorRegistry())
    assert fa.app.conf.table_standby_replicas == expected


async def test_lag_is_dropped_not_frozen_while_the_broker_is_unreachable(tmp_path: object) -> None:
    from types import SimpleNamespace

    from faust.types import TP

    from stream.app import update_lag
    from stream.health import Health
    from stream.metrics import Metrics

    settings = Settings.from_env({"FEEDBACK_STATE_DIR": str(tmp_path)})

    class Consumer:
        def assignment(self) -> set[TP]:
            return {TP(settings.topic_clicks, 0)}

        def highwater(self, tp: TP) -> int:
            return 120

        async def position(self, tp: TP) -> int:
            return 100

    registry = CollectorRegistry()
    metrics = Metrics(registry)
    health = Health(settings, gauge=metrics.broker_reachable)
    fa = SimpleNamespace(app=SimpleNamespace(consumer=Consumer()), settings=settings,
                         metrics=metrics, lag_labels=set(), health=health)
    labels = {"topic": settings.topic_clicks, "partition": "0"}
    health.record_probe(None)
    await update_lag(fa)  # type: ignore[arg-type]
    assert registry.get_sample_value("feedback_consumer_lag_messages", labels) == 20
    health.record_probe("127.0.0.1:9092: refused")
    await update_lag(fa)  # type: ignore[arg-type]
    assert registry.get_sample_value("feedback_consumer_lag_messages", labels) is None
    assert registry.get_sample_value("feedback_broker_reachable") == 0


def test_the_worker_answers_liveness_and_readiness(tmp_path: object) -> None:
    settings = Settings.from_env({"FEEDBACK_STATE_DIR": str(tmp_path)})
    fa = build_app(settings, engine=FeedbackEngine(), registry=CollectorRegistry())
    paths = {str(path) for path in fa.app.web.views}
    assert {"/livez", "/healthz", "/readyz", "/metrics"} <= paths
    assert fa.health is not None and not fa.health.readiness()[0]


async def test_a_pull_is_answered_between_two_events_of_a_batch_not_after_it(
    tmp_path: object,
) -> None:
    import asyncio

    import orjson

    from stream.app import process_batch
    from stream.processor import DictStore, InputMessage
    from stream.pull import Pulls

    # A slice far below one event's work: the worker pauses after every event.
    settings = Settings.from_env(
        {"FEEDBACK_STATE_DIR": str(tmp_path), "FEEDBACK_BATCH_SLICE_SECONDS": "1e-9"}
    )
    registry = CollectorRegistry()
    fa = build_app(settings, engine=FeedbackEngine(), registry=registry)

    class Producer:
        async def send(self, *args: object) -> asyncio.Future[None]:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done

    fa.app.producer = Producer()  # type: ignore[assignment]
    fa.processor.profiles = DictStore()  # the Faust table needs a running app
    n = 40
    batch = [
        InputMessage(settings.topic_clicks, 0, i, f"u{i % 5}".encode(), orjson.dumps({
            "type": "click", "event_id": f"e{i}", "user_id": f"u{i % 5}",
            "item_id": f"i{i % 9}", "timestamp": f"2024-01-01T10:00:{i:02d}Z",
        }))
        for i in range(n)
    ]

    def processed() -> float:
        labels = {"type": "click", "outcome": "processed"}
        return registry.get_sample_value("feedback_events_total", labels) or 0.0

    seen_by_pull: list[float] = []

    async def pull() -> None:
        while processed() == 0:  # the batch has begun
            await asyncio.sleep(0)
        # An HTTP request takes a few turns of the event loop before its view runs.
        for _ in range(3):
            await asyncio.sleep(0)
        body = Pulls(fa.processor).recommend("u1", 5)
        assert body["items"]
        seen_by_pull.append(processed())

    await asyncio.gather(process_batch(fa, batch), pull())
    assert processed() == n
    assert 0 < seen_by_pull[0] < n  # answered while the batch was still running


def test_the_collector_freezes_survivors_and_frees_frozen_cycles_at_a_full_collection() -> None:
    import gc
    import weakref

    from stream.app import Collector

    class Node:
        other: object = None

    def cycle() -> weakref.ref[Node]:
        a, b = Node(), Node()
        a.other, b.other = b, a
        return weakref.ref(a)

    try:
        alive = cycle()
        Collector(full_every=float("inf")).tick()  # frozen: collections skip it
        gc.collect()
        assert alive() is not None and gc.get_freeze_count() > 0
        Collector(full_every=0.0).tick()  # the periodic full collection
        assert alive() is None
    finally:
        gc.unfreeze()


def test_the_producer_sends_many_item_models_per_partition_per_request(tmp_path: object) -> None:
    """aiokafka sends one request per broker at a time and holds one batch per
    partition: the batch must take an owner's publication (thousands of item
    models of a few kB) in a few round trips, not three records per trip."""
    from models.item_state import ItemParams, ItemState
    from models.item_updates import encode_model

    settings = Settings.from_env({}, state_dir=str(tmp_path))
    fa = build_app(settings, engine=FeedbackEngine(), registry=CollectorRegistry())
    state = ItemState()
    entries = [["c:0", 1, "p", 1.0, 0.0] + [x for k in range(50)
                                             for x in ("c", f"neighbour-{k}", 1.0)]]
    state.apply(entries, ItemParams(), "x")
    model = encode_model(state.published(0.0, ItemParams()))
    assert fa.app.conf.producer_max_batch_size >= 50 * len(model)


def test_the_fetch_wait_is_a_setting_the_worker_consumer_gets(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    from faust.transport.drivers import aiokafka as aiokafka_driver

    from stream.faust.consumer import ConsumerThread

    settings = Settings.from_env(
        {"FEEDBACK_FETCH_MAX_WAIT_SECONDS": "0.02", "FEEDBACK_STATE_DIR": str(tmp_path)}
    )
    fa = build_app(settings, engine=FeedbackEngine(), registry=CollectorRegistry())
    consumer_class = fa.app.transport.Consumer
    # Faust's own builder hard-codes 1,500 ms.
    monkeypatch.setattr(aiokafka_driver.AIOKafkaConsumerThread, "_create_worker_consumer",
                        lambda self, transport: SimpleNamespace(_fetch_max_wait_ms=1500))
    thread = ConsumerThread.__new__(ConsumerThread)
    thread.consumer = consumer_class.__new__(consumer_class)
    assert thread._create_worker_consumer(None)._fetch_max_wait_ms == 20


def test_the_profile_changelog_reads_and_writes_compact_records(tmp_path: object) -> None:
    import asyncio

    from faust.serializers.codecs import get_codec
    from faust.types import Message

    from stream.stored_profile import StoredProfile, new_stored_profile

    fa = build_app(
        Settings.from_env({"FEEDBACK_STATE_DIR": str(tmp_path)}),
        engine=FeedbackEngine(), registry=CollectorRegistry(),
    )
    table = fa.processor.profiles.table  # type: ignore[attr-defined]
    topic = table.changelog_topic
    profile = new_stored_profile("u")
    profile.count("purchase")
    previous = get_codec("json").dumps(profile.to_json())  # a record as Faust's json codec wrote it
    raw, _ = topic.prepare_value(profile, table.value_serializer)
    assert raw == previous

    def message(offset: int, value: bytes | None) -> Message:
        return Message(topic.get_topic_name(), 0, offset, 0.0, 0, [], b'"u"', value, None)

    async def decode() -> tuple[object, object]:
        channel = topic.clone_using_queue(fa.app.FlowControlQueue())
        restored = await channel.decode(message(0, previous))
        tombstone = await channel.decode(message(1, None))
        return restored.value, tombstone.value

    restored, tombstone = asyncio.run(decode())
    assert isinstance(restored, StoredProfile) and restored == profile
    assert tombstone is None


def test_the_processor_reads_the_consumers_fetched_high_water_marks(tmp_path: object) -> None:
    """The debounce's drained partitions come from the consumer's last fetch; a
    partition it has not fetched, or has lost to a rebalance (aiokafka asserts),
    has no mark, so its last user stays held."""
    from faust.exceptions import ConsumerNotStarted
    from faust.types import TP

    from stream.app import fetched_highwater

    class Consumer:
        def highwater(self, tp: TP) -> int | None:
            if tp.partition == 2:
                raise AssertionError("partition not assigned")
            if tp.partition == 3:
                raise ConsumerNotStarted("Consumer thread not yet started")
            return {("clicks", 0): 42}.get((tp.topic, tp.partition))

    class App:
        consumer = Consumer()

    highwater = fetched_highwater(App())  # type: ignore[arg-type]
    assert highwater("clicks", 0) == 42
    assert highwater("clicks", 1) is None
    assert highwater("clicks", 2) is None
    assert highwater("clicks", 3) is None
    # The worker's processor is given the app's, unless the setting is off.
    for raw, given in ((None, True), ("0", False)):
        env = {"FEEDBACK_STATE_DIR": str(tmp_path)}
        if raw is not None:
            env["FEEDBACK_RECOMMEND_PUBLISH_DRAINED"] = raw
        fa = build_app(Settings.from_env(env), engine=FeedbackEngine(),
                       registry=CollectorRegistry())
        assert (fa.processor.highwater is not None) is given
