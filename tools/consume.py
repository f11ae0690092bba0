"""``feedback-stream consume TOPIC``: read any topic from the command line, kcat-like.

The reader assigns itself every partition of the topic (no consumer group), so
it starts at once, never joins or disturbs the workers' group, and commits
nothing. Messages are printed in the order they arrive from each partition.

Plain output is one value a line; ``--headers`` adds a line naming the
partition, offset and key, then the headers, before each value; ``--json``
prints one object a line with every field, the value parsed when it is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from typing import Any, TextIO

import orjson

from stream.settings import Settings


class ConsumeError(RuntimeError):
    """The topic cannot be read as asked; the message says why."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("topic", help="topic to read, e.g. feedback.recommendations")
    parser.add_argument(
        "--from-beginning", action="store_true",
        help="start at the oldest message kept (default: only messages produced from now on)",
    )
    parser.add_argument("--headers", action="store_true", help="print each message's headers")
    parser.add_argument("--key", help="only the messages with this key (e.g. a user id)")
    parser.add_argument("--count", type=int, help="stop after printing this many messages")
    parser.add_argument(
        "--json", action="store_true",
        help="one JSON object a line: topic, partition, offset, timestamp, key, headers, value",
    )
    parser.add_argument(
        "--exit", action="store_true",
        help="stop at the end of the topic instead of waiting for new messages (kcat -e)",
    )


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("utf-8", errors="replace")


def render(record: Any, *, as_json: bool, headers: bool) -> str:
    """One message as the command prints it (a record of aiokafka's ``getmany``)."""
    value = _text(record.value)
    if as_json:
        parsed: Any = value
        if record.value is not None:
            with contextlib.suppress(orjson.JSONDecodeError):
                parsed = orjson.loads(record.value)
        return orjson.dumps({
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "timestamp_ms": record.timestamp,
            "key": _text(record.key),
            "headers": {k: _text(v) for k, v in (record.headers or ())},
            "value": parsed,
        }).decode()
    if not headers:
        return "" if value is None else value
    lines = [f"{record.topic}[{record.partition}]@{record.offset} key={_text(record.key)}"]
    lines += [f"  {k}: {_text(v)}" for k, v in (record.headers or ())]
    lines.append("" if value is None else value)
    return "\n".join(lines)


async def consume(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    """Print the topic's messages to ``out``; returns how many were printed."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import TopicPartition

    from stream.kafka import client_kwargs

    consumer = AIOKafkaConsumer(**client_kwargs(settings), enable_auto_commit=False)
    printed = 0
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await consumer.start()
        topics = await consumer.topics()
        if args.topic not in topics:
            known = ", ".join(sorted(t for t in topics if not t.startswith("__"))[:12])
            raise ConsumeError(
                f"topic {args.topic!r} does not exist on {settings.bootstrap_servers}"
                f" (topics: {known or 'none'})"
            )
        parts = [
            TopicPartition(args.topic, p)
            for p in sorted(consumer.partitions_for_topic(args.topic) or ())
        ]
        consumer.assign(parts)
        if args.from_beginning:
            await consumer.seek_to_beginning(*parts)
        else:
            await consumer.seek_to_end(*parts)
        # With --exit: the end of each partition as it is now.
        ends = await consumer.end_offsets(parts) if args.exit else {}
        key = args.key.encode() if args.key is not None else None
        while not stop.is_set():
            if ends and await _at_end(consumer, ends):
                break
            fetch = asyncio.ensure_future(consumer.getmany(timeout_ms=500))
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait({fetch, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not fetch.done():
                fetch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await fetch
                break
            for records in fetch.result().values():
                for record in records:
                    if key is not None and record.key != key:
                        continue
                    print(render(record, as_json=args.json, headers=args.headers),
                          file=out, flush=True)
                    printed += 1
                    if args.count is not None and printed >= args.count:
                        return printed
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await consumer.stop()
    return printed


async def _at_end(consumer: Any, ends: dict[Any, int]) -> bool:
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return False
    return True


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.count is not None and args.count < 1:
        raise ConsumeError("--count must be at least 1")
    try:
        printed = asyncio.run(consume(settings, args, sys.stdout))
    except BrokenPipeError:  # `consume ... | head`: the reader went away, not an error
        # Python's recipe: no second BrokenPipeError when stdout is flushed at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    print(f"{printed} message{'s' if printed != 1 else ''} from {args.topic}", file=sys.stderr)
    return 0
