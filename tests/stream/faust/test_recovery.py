"""The recovery guards as create_app installs them (stream.faust.recovery),
without a broker; tests/integration/test_reliability_*.py run them for real."""

from __future__ import annotations

import asyncio
import logging
import re
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
from faust.tables.recovery import Recovery
from faust.transport.producer import ProducerBuffer

from stream.commit_guard import CommitGuard
from stream.faust import create_app
from stream.faust.consumer import Consumer
from stream.faust.recovery import ChangelogRecovery, FlushingProducerBuffer
from stream.settings import Settings


def app_for(guards: bool, tmp_path: Any, **options: Any) -> Any:
    settings = Settings.from_env(
        {"FEEDBACK_RECOVERY_GUARDS": "1" if guards else "0", "FEEDBACK_STATE_DIR": str(tmp_path)}
    )
    guard = CommitGuard(settings.input_topics, settings.recovery_guards)
    app = create_app(settings, guard, None, broker="kafka://127.0.0.1:9",
                     datadir=str(tmp_path / "faust"), autodiscover=False, **options)
    return app, settings, guard


def test_the_guards_are_the_classes_the_app_builds(tmp_path: Any) -> None:
    app, settings, guard = app_for(True, tmp_path)
    assert isinstance(app.tables.recovery, ChangelogRecovery)
    assert app.tables.recovery.settings is settings
    assert isinstance(app.producer.buffer, FlushingProducerBuffer)
    assert issubclass(app.transport.Consumer, Consumer)
    assert app.transport.Consumer.commit_guard is guard and guard.enabled


def test_without_the_guards_faust_keeps_its_own(tmp_path: Any) -> None:
    app, _, guard = app_for(False, tmp_path)
    assert type(app.tables.recovery) is Recovery
    assert type(app.producer.buffer) is ProducerBuffer
    # The rebalance fixes of the consumer stay; its commit guard is off.
    assert issubclass(app.transport.Consumer, Consumer) and not guard.enabled


class GivesUp:
    """Faust's flush_atmost as it behaves on a loaded machine: it returns once
    no message left within its timeout, with messages still queued (here one
    message leaves per call)."""

    async def flush_atmost(self, max_messages: int | None) -> int:
        await asyncio.sleep(0)
        if self.queued:  # type: ignore[attr-defined]
            self.queued -= 1  # type: ignore[attr-defined]
        return 1

    @property
    def size(self) -> int:
        return self.queued  # type: ignore[attr-defined,no-any-return]


@pytest.mark.parametrize("buffer_class, left", [
    (FlushingProducerBuffer, 0), (ProducerBuffer, 2),  # Faust's own returns early
])
def test_flush_returns_only_once_the_buffer_is_empty(buffer_class: type, left: int) -> None:
    buffer = type("Buffer", (GivesUp, buffer_class), {})()
    buffer.queued = 3
    asyncio.run(buffer.flush())
    assert buffer.size == left


class SlowHandOver(ProducerBuffer):
    """A send that waits in aiokafka (metadata, room in a batch) until let go."""

    async def _send_pending(self, fut: Any) -> None:
        await self.gate.wait()  # type: ignore[attr-defined]
        self.sent.append(fut)  # type: ignore[attr-defined]


def test_flush_waits_for_the_message_taken_off_the_queue_and_not_yet_sent() -> None:
    class Buffer(FlushingProducerBuffer, SlowHandOver):
        pass

    async def main() -> tuple[bool, list[Any]]:
        buffer = Buffer()
        buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))
        buffer.gate, buffer.sent = asyncio.Event(), []
        await buffer.start()
        buffer.put("profile write")
        await asyncio.sleep(0.01)  # the buffer's task took it: size 0, in flight
        assert buffer.size == 0
        flush = asyncio.create_task(buffer.flush())
        await asyncio.sleep(0.05)
        returned_before_the_send = flush.done()
        buffer.gate.set()
        await flush
        await buffer.stop()
        return returned_before_the_send, buffer.sent

    returned_before_the_send, sent = asyncio.run(main())
    assert not returned_before_the_send
    assert sent == ["profile write"]


class ListOffsetsOnly(Recovery):
    """Faust's _build_highwaters as Tansu makes it answer: the ListOffsets ends."""

    listed: ClassVar[dict[Any, int]] = {}
    calls: ClassVar[list[tuple[Any, ...]]] = []

    async def _build_highwaters(
        self, consumer: Any, tps: Any, destination: Any, title: str
    ) -> None:
        self.calls.append((consumer, list(tps), title))
        # Faust leaves out a partition it got no answer for.
        destination.update({tp: self.listed[tp] - 1 for tp in tps if tp in self.listed})


def recovery_over(listed: dict[Any, int], settings: Settings) -> Any:
    cls = type("Recovery", (ChangelogRecovery, ListOffsetsOnly), {"listed": listed, "calls": []})
    cls.settings = settings
    return cls.__new__(cls)


def test_recovery_reads_to_the_end_a_fetch_reports(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from faust.types import TP

    from stream.faust import recovery

    settings = Settings.from_env({})
    short, empty, exact = TP("cl", 0), TP("cl", 1), TP("cl", 2)
    asked: list[dict[Any, int]] = []

    async def fetch(s: Settings, hints: dict[Any, int]) -> dict[Any, int]:
        assert s is settings
        asked.append(dict(hints))
        return {short: 14, empty: 0, exact: 5}

    monkeypatch.setattr(recovery, "fetch_highwaters", fetch)
    unanswered = TP("cl", 3)
    rec = recovery_over({short: 10, empty: 0, exact: 5}, settings)
    destination: dict[Any, int] = {}
    consumer = object()
    asyncio.run(rec._build_highwaters(
        consumer, [short, empty, exact, unanswered], destination, "Active"))
    assert rec.calls == [(consumer, [short, empty, exact, unanswered], "Active")]
    # Ends, from Faust's "last offset"; no answer from Faust counts as an empty log.
    assert asked == [{short: 10, empty: 0, exact: 5, unanswered: 0}]
    assert destination == {short: 13, empty: -1, exact: 4}
    assert [r.getMessage() for r in caplog.records] == [
        "Active changelog cl[0]: ListOffsets says end 10, Fetch says 14; reading to 14",
        f"no Fetch high watermark for {[unanswered]}; using ListOffsets",
    ]


def test_recovery_keeps_list_offsets_when_a_fetch_fails_or_misses(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from faust.types import TP

    from stream.faust import recovery

    tp0, tp1 = TP("cl", 0), TP("cl", 1)
    rec = recovery_over({tp0: 10, tp1: 3}, Settings.from_env({}))

    async def fails(s: Settings, hints: dict[Any, int]) -> dict[Any, int]:
        raise ConnectionError("broker gone")

    monkeypatch.setattr(recovery, "fetch_highwaters", fails)
    destination: dict[Any, int] = {}
    asyncio.run(rec._build_highwaters(None, [tp0, tp1], destination, "Active"))
    assert destination == {tp0: 9, tp1: 2}
    assert [r.getMessage() for r in caplog.records] == [
        "could not fetch changelog high watermarks; using ListOffsets"
    ]

    async def partial(s: Settings, hints: dict[Any, int]) -> dict[Any, int]:
        return {tp0: 12}

    monkeypatch.setattr(recovery, "fetch_highwaters", partial)
    caplog.clear()
    destination = {}
    asyncio.run(rec._build_highwaters(None, [tp0, tp1], destination, "Standby"))
    assert destination == {tp0: 11, tp1: 2}
    assert [r.getMessage() for r in caplog.records][-1] == (
        f"no Fetch high watermark for {[tp1]}; using ListOffsets"
    )

    called: list[object] = []

    async def never(s: Settings, hints: dict[Any, int]) -> dict[Any, int]:
        called.append(hints)
        return {}

    monkeypatch.setattr(recovery, "fetch_highwaters", never)
    asyncio.run(rec._build_highwaters(None, [], {}, "Active"))
    assert called == []  # nothing to recover: no fetch


def test_the_producer_buffer_is_wired_like_fausts(tmp_path: Any) -> None:
    loop = asyncio.new_event_loop()
    try:
        app, _, _ = app_for(True, tmp_path, loop=loop)
        producer = app.producer
        buffer = producer.buffer
        assert buffer.app is app
        # The producer is the app's: its loop and its place in the app's service tree.
        assert producer.loop is loop and buffer.loop is loop
        assert producer.beacon.parent is app.beacon
        # Faust's own buffer is detached: the producer's only child is the flushing one.
        assert list(producer.beacon.children) == [buffer.beacon]
        assert not hasattr(buffer, "threaded_producer")
    finally:
        loop.close()


def test_a_threaded_producer_hands_its_thread_to_the_flushing_buffer(tmp_path: Any) -> None:
    app, _, _ = app_for(True, tmp_path, producer_threaded=True)
    producer = app.producer
    assert isinstance(producer.buffer, FlushingProducerBuffer)
    assert producer.threaded_producer is not None
    assert producer.buffer.threaded_producer is producer.threaded_producer


class SlowRounds(GivesUp):
    """Each round of flush_atmost takes ``round_seconds`` of a fake clock that
    starts far from 0 (the warning measures time since the flush began)."""

    round_seconds: float = 0.0
    now: float = 5000.0

    async def flush_atmost(self, max_messages: int | None) -> int:
        self.now += self.round_seconds
        return await super().flush_atmost(max_messages)


def flush_with_rounds(queued: int, round_seconds: float) -> None:
    buffer = type("Buffer", (SlowRounds, FlushingProducerBuffer), {})()
    buffer.queued, buffer.round_seconds = queued, round_seconds

    async def run() -> None:
        loop = asyncio.get_running_loop()
        loop.time = lambda: buffer.now  # type: ignore[method-assign]
        await buffer.flush()

    asyncio.run(run())
    assert buffer.size == 0


@pytest.mark.parametrize("queued, round_seconds, warns", [
    (2, 5.0, False),  # done after exactly 10 s: no warning
    (3, 0.1, False),
    (4, 3.5, True),  # 10.5 s after the start, one message still queued
    (5, 3.0, True),  # 12 s
])
def test_a_flush_warns_only_past_10_seconds(
    queued: int, round_seconds: float, warns: bool, caplog: pytest.LogCaptureFixture
) -> None:
    flush_with_rounds(queued, round_seconds)
    messages = [r.getMessage() for r in caplog.records]
    warning = "producer flush: 1 messages still queued, 0 being handed to aiokafka, after 10 s"
    assert messages == ([warning] if warns else [])


def test_a_long_flush_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    buffer = type("Buffer", (GivesUp, FlushingProducerBuffer), {})()
    buffer.queued = 4

    async def run() -> None:
        loop = asyncio.get_running_loop()
        ticks = iter(range(0, 1000, 6))  # each look at the clock: 6 s later
        loop.time = lambda: float(next(ticks))  # type: ignore[method-assign]
        await buffer.flush()

    asyncio.run(run())
    assert buffer.size == 0
    (message,) = [r.getMessage() for r in caplog.records]  # once, not at every round
    assert re.fullmatch(
        r"producer flush: [1-3] messages still queued, 0 being handed to aiokafka, after 10 s",
        message)


class Seeks:
    """A consumer that records what recovery seeks."""

    def __init__(self) -> None:
        self.seeks: dict[Any, int] = {}

    async def seek_wait(self, offsets: dict[Any, int]) -> None:
        # aiokafka's consumer.seek refuses the same.
        for offset in offsets.values():
            if not isinstance(offset, int) or offset < 0:
                raise ValueError("Offset must be a positive integer")
        self.seeks.update(offsets)


def test_a_changelog_partition_without_a_start_offset_is_read_from_the_start(
    tmp_path: Any,
) -> None:
    """A standby made while a rebalance interrupted recovery can reach the seek
    with no offset (None): Faust passed it to aiokafka, whose ValueError crashed
    the recovery service and the worker (seen in the three-worker restart test)."""
    from collections import Counter

    from faust.types import TP

    app, _, _ = app_for(True, tmp_path)
    recovery = app.tables.recovery
    known, unknown, below = TP("cl", 0), TP("cl", 1), TP("cl", 2)
    offsets: Counter[Any] = Counter({known: 41, below: -2})
    offsets[unknown] = None  # type: ignore[assignment]
    consumer = Seeks()
    asyncio.run(recovery._seek_offsets(consumer, {known, unknown, below}, offsets, "standby"))
    assert consumer.seeks == {known: 41, unknown: 0, below: 0}
    assert offsets[unknown] == -1  # as Faust records "nothing read yet"


def test_only_a_missing_or_impossible_start_offset_is_reset_and_logged(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from faust.types import TP

    app, _, _ = app_for(True, tmp_path)
    recovery = app.tables.recovery
    unknown, nothing_read, first, below = (TP("cl", p) for p in range(4))
    offsets: dict[Any, Any] = {unknown: None, nothing_read: -1, first: 0, below: -2}
    consumer = Seeks()
    with caplog.at_level(logging.WARNING, logger="stream.faust.recovery"):
        asyncio.run(recovery._seek_offsets(consumer, list(offsets), offsets, "active"))
    assert offsets == {unknown: -1, nothing_read: -1, first: 0, below: -1}
    assert sorted(r.getMessage() for r in caplog.records) == [
        "active changelog cl[0]: no start offset (None); reading from the start",
        "active changelog cl[3]: no start offset (-2); reading from the start",
    ]


def test_the_consumer_polls_a_bounded_number_of_records(tmp_path: Any) -> None:
    app, _, _ = app_for(True, tmp_path)
    assert app.conf.broker_max_poll_records == app.transport.Consumer.poll_records == 200
    with pytest.raises(ValueError, match="stream_buffer_maxsize"):
        app_for(True, tmp_path, stream_buffer_maxsize=300)
