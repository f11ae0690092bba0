"""The reference loops: each runs in its own process, started by
:func:`tools.bench.processes.run_reference`."""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

from tools.bench.processes import SAMPLE_SECONDS

REFERENCES = ("raw", "faust-decode", "faust-send")


def _progress_printer(counter: Callable[[], int]) -> Callable[[], None]:
    # Straight to file descriptor 1: Faust's worker redirects sys.stdout to its logger.
    def emit() -> None:
        os.write(1, f"P {time.monotonic():.4f} {counter()}\n".encode())

    return emit


async def _raw_loop(args: argparse.Namespace) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    servers = args.bootstrap_servers.split(",")
    consumer = AIOKafkaConsumer(
        *args.topics.split(","), bootstrap_servers=servers, group_id=args.app_id,
        auto_offset_reset="earliest", session_timeout_ms=6000, heartbeat_interval_ms=1000,
    )
    producer = AIOKafkaProducer(bootstrap_servers=servers, acks="all")
    await consumer.start()
    await producer.start()
    count = 0
    emit = _progress_printer(lambda: count)

    async def ticker() -> None:
        while True:
            emit()
            await asyncio.sleep(SAMPLE_SECONDS / 2)

    task = asyncio.create_task(ticker())
    try:
        while count < args.events:
            batches = await consumer.getmany(timeout_ms=200, max_records=1000)
            futures = []
            for recs in batches.values():
                for rec in recs:
                    event = orjson.loads(rec.value)
                    out = orjson.dumps({"event_id": event["event_id"]})
                    futures.append(await producer.send(args.output, out, key=rec.key))
            if futures:
                await asyncio.gather(*futures)
            count += len(futures)
        emit()
    finally:
        task.cancel()
        await producer.stop()
        await consumer.stop()


def _faust_reference(args: argparse.Namespace, send: bool) -> None:
    import faust

    from stream.faust.monitor import MONITORS

    # Faust's own Monitor unless the bench passes --faust-setting Monitor=...
    monitor = MONITORS[os.environ.get("FEEDBACK_FAUST_MONITOR", "faust")]
    app = faust.App(
        args.app_id,
        broker=[f"kafka://{s}" for s in args.bootstrap_servers.split(",")],
        store="memory://",
        autodiscover=False,
        web_enabled=False,
        topic_partitions=args.partitions,
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.0,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        datadir=str(Path(args.state_dir) / f"faust-{args.app_id}"),
        Monitor=monitor,
    )
    source = app.topic(
        *args.topics.split(","), key_type=bytes, key_serializer="raw", value_serializer="raw"
    )
    output = app.topic(args.output, key_serializer="raw", value_serializer="raw")
    count = 0
    emit = _progress_printer(lambda: count)

    @app.agent(source)
    async def agent(stream: Any) -> None:
        nonlocal count
        async for key, value in stream.items():
            event = orjson.loads(value)
            if send:
                await output.send(key=key, value=orjson.dumps({"event_id": event["event_id"]}))
            count += 1

    @app.timer(SAMPLE_SECONDS / 2)
    async def progress() -> None:
        emit()

    faust.Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()


def reference_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="tools.bench _reference")
    p.add_argument("kind", choices=REFERENCES)
    p.add_argument("--bootstrap-servers", required=True)
    p.add_argument("--topics", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--app-id", required=True)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--events", type=int, required=True)
    p.add_argument("--state-dir", required=True)
    args = p.parse_args(argv)
    if args.kind == "raw":
        asyncio.run(_raw_loop(args))
    else:
        _faust_reference(args, send=args.kind == "faust-send")
    return 0
