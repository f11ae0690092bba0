"""The drivers: the same simulation through the broker and a worker, or straight into a
:class:`~stream.processor.Processor`."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import orjson

from stream.settings import Settings
from tools.simulate.behaviour import Simulation
from tools.simulate.metrics import Samples, parse_metrics, wait_drained


async def drive_broker(
    sim: Simulation,
    settings: Settings,
    rate: float,
    duration: float,
    max_events: int,
    drain_seconds: float = 10.0,
    progress: bool = True,
    metrics_url: str | None = None,
) -> Samples | None:
    """Warm up, then produce organic events at ``rate``, react to every
    recommendation, and drain. Returns the worker's metrics at the end of the
    warm-up (``None`` without ``metrics_url``)."""
    from aiokafka import AIOKafkaConsumer

    from stream.kafka import client_kwargs, create_topics, producer

    await create_topics(settings)
    prod = producer(settings, linger_ms=5)
    consumer = AIOKafkaConsumer(
        settings.topic_recommendations, **client_kwargs(settings),
        auto_offset_reset="earliest", enable_auto_commit=False, group_id=None,
    )
    await prod.start()
    await consumer.start()
    loop = asyncio.get_running_loop()
    stop_organic = asyncio.Event()
    last_rec = [loop.time()]

    async def send(event: dict[str, Any]) -> None:
        await prod.send(
            settings.topic_of(event["type"]),
            orjson.dumps(event),
            key=str(event["user_id"]).encode(),
        )

    async def organic() -> None:
        begin = loop.time()
        last_report = begin
        while not stop_organic.is_set():
            if max_events and sim.organic >= max_events:
                break
            if duration and loop.time() - begin >= duration:
                break
            event = sim.next_organic()
            if event is None:
                break
            await send(event)
            ahead = sim.organic / rate - (loop.time() - begin)
            if ahead > 0:
                await asyncio.sleep(ahead)
            if progress and loop.time() - last_report >= 5.0:
                last_report = loop.time()
                print(
                    f"[{loop.time() - begin:5.0f} s] organic {sim.organic:,} | recommendations "
                    f"{sim.received:,} | clicks {sim.clicks:,} | purchases {sim.purchases:,}",
                    file=sys.stderr, flush=True,
                )
        stop_organic.set()

    async def reactions() -> None:
        while True:
            if stop_organic.is_set() and loop.time() - last_rec[0] > drain_seconds:
                return
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for record in records:
                    last_rec[0] = loop.time()
                    try:
                        rec = orjson.loads(record.value)
                    except orjson.JSONDecodeError:
                        continue
                    for event in sim.react(rec):
                        await send(event)

    async def warmup() -> Samples | None:
        pending = []
        while (event := sim.next_warmup()) is not None:
            pending.append(await prod.send(
                settings.topic_of(event["type"]), orjson.dumps(event),
                key=str(event["user_id"]).encode(),
            ))
            if len(pending) >= 1000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        if progress:
            print(f"warm-up: {sim.warmed:,} past reviews sent", file=sys.stderr, flush=True)
        if metrics_url is None:
            await asyncio.sleep(drain_seconds)
            return None
        await loop.run_in_executor(None, wait_drained, metrics_url, sim.warmed, 600.0)
        # Then the users' reactions to the warm-up's recommendations, until quiet.
        while True:
            while loop.time() - last_rec[0] < 3.0:
                await asyncio.sleep(0.5)
            await prod.flush()
            target = sim.produced
            samples = await loop.run_in_executor(
                None, wait_drained, metrics_url, target, 600.0
            )
            if loop.time() - last_rec[0] >= 3.0 and sim.produced == target:
                return samples

    try:
        reacting = asyncio.create_task(reactions())
        baseline = await warmup()
        await organic()
        await reacting
        await prod.flush()
    finally:
        await consumer.stop()
        await prod.stop()
    return baseline


def drive_in_process(
    sim: Simulation, settings: Settings, max_events: int, latency_events: int = 50
) -> tuple[Samples, Samples]:
    """The same loop without a broker: events go straight to a :class:`Processor`.

    A recommendation's reaction is delivered ``latency_events`` organic events
    later, as the broker's round trip would. For tuning; the bars are measured
    through the broker.
    """
    from prometheus_client import CollectorRegistry, generate_latest

    from models.engine import FeedbackEngine
    from stream.metrics import Metrics
    from stream.processor import DictStore, InputMessage, Processor

    registry = CollectorRegistry()
    proc = Processor(settings, FeedbackEngine(), DictStore(), Metrics(registry))
    pending: list[tuple[int, dict[str, Any]]] = []
    offset = 0

    def handle(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        nonlocal offset
        msgs = []
        for e in events:
            offset += 1
            msgs.append(InputMessage(
                settings.topic_of(e["type"]), 0, offset, str(e["user_id"]).encode(), orjson.dumps(e)
            ))
        return [
            orjson.loads(o.value) for o in proc.handle(msgs)
            if o.topic == settings.topic_recommendations and o.value is not None
        ]

    while (warm := sim.next_warmup()) is not None:
        recs = handle([warm])
        while recs:
            recs = [r for rec in recs for r in handle(sim.react(rec))]
    baseline = parse_metrics(generate_latest(registry).decode())
    while sim.organic < max_events:
        event = sim.next_organic()
        if event is None:
            break
        for rec in handle([event]):
            pending.append((sim.organic + latency_events, rec))
        due = [rec for at, rec in pending if at <= sim.organic]
        pending = [(at, rec) for at, rec in pending if at > sim.organic]
        for rec in due:
            for rec2 in handle(sim.react(rec)):
                pending.append((sim.organic + latency_events, rec2))
    while pending:
        due = [rec for _, rec in pending]
        pending = []
        for rec in due:
            pending.extend((0, r) for r in handle(sim.react(rec)))
    return baseline, parse_metrics(generate_latest(registry).decode())
