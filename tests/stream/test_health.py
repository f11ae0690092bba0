"""Readiness, the broker probe and the log filter, without Faust or a broker."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from stream import health
from stream.settings import Settings


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def settings(port: int) -> Settings:
    return Settings.from_env({}, bootstrap_servers=f"127.0.0.1:{port}")


async def fake_broker(answer: bytes) -> tuple[asyncio.AbstractServer, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(64)
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_probe_reports_a_closed_port() -> None:
    port = closed_port()
    error = await health.probe_broker(settings(port), timeout=1)
    assert error is not None and f"127.0.0.1:{port}" in error


async def test_probe_needs_a_kafka_answer_not_just_an_open_port() -> None:
    server, port = await fake_broker(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    async with server:
        assert "not a Kafka broker" in (await health.probe_broker(settings(port), 1) or "")
    server, port = await fake_broker(b"\x00\x00\x00\x10\x00\x00\x00\x01" + b"\x00" * 16)
    async with server:
        assert await health.probe_broker(settings(port), 1) is None


def test_readiness_names_every_reason() -> None:
    h = health.Health(settings(closed_port()))
    ready, reasons = h.readiness()
    assert not ready and reasons[0].startswith("broker unreachable")
    assert "partitions not assigned" in reasons[1]
    h.record_probe(None)
    h.set_group(lambda: True, lambda: False)
    assert h.readiness() == (False, ["profile table recovery in progress"])
    h.set_group(lambda: True, lambda: True)
    assert h.readiness_body()[0] == 200
    h.record_probe("127.0.0.1:1: refused")
    code, body = h.readiness_body()
    assert code == 503 and body["reasons"] == ["broker unreachable: 127.0.0.1:1: refused"]


def test_an_outage_is_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    class Gauge:
        value = -1.0

        def set(self, v: float) -> None:
            self.value = v

    gauge = Gauge()
    h = health.Health(settings(closed_port()), gauge=gauge)
    with caplog.at_level(logging.WARNING, logger="stream.health"):
        for _ in range(50):  # 50 failed probes in a burst: one line
            h.record_probe("refused")
        assert gauge.value == 0
        assert [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()] == [
            f"broker unreachable at {h.settings.bootstrap_servers}: refused "
            "(retrying, next log in 1 s)"
        ]
        assert h.next_retry() == health.BACKOFF_MAX
        h.record_probe(None)
    assert gauge.value == 1 and "reachable again" in caplog.records[-1].getMessage()
    assert h.next_retry() == 2.0


def test_repeat_filter_counts_what_it_dropped() -> None:
    f = health.RepeatFilter(interval=0.0)
    rec = logging.LogRecord("aiokafka.conn", logging.ERROR, "", 0, "Unable connect %s", ("x",),
                            None)
    assert f.filter(rec)
    f.interval = 3600
    dropped = [f.filter(logging.LogRecord("aiokafka.conn", logging.ERROR, "", 0,
                                          "Unable connect %s", ("y",), None)) for _ in range(5)]
    assert dropped == [False] * 5
    f.interval = 0.0
    last = logging.LogRecord("aiokafka.conn", logging.ERROR, "", 0, "Unable connect %s",
                             ("z",), None)
    assert f.filter(last) and "5 more like this" in last.getMessage()
    info = logging.LogRecord("aiokafka.conn", logging.INFO, "", 0, "m", (), None)
    assert all(f.filter(info) for _ in range(3))  # below WARNING: untouched


async def get(url: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    def fetch() -> tuple[int, str]:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    return await asyncio.get_running_loop().run_in_executor(None, fetch)


async def test_probes_answer_while_the_worker_waits_for_its_broker() -> None:
    web = closed_port()
    s = Settings.from_env({}, bootstrap_servers=f"127.0.0.1:{closed_port()}", web_port=web)
    h = health.Health(s)
    stop = asyncio.Event()
    calls: list[int] = []

    async def ready() -> None:
        calls.append(1)

    task = asyncio.create_task(health.serve_probes_until_ready(s, h, ready, stop))
    await asyncio.sleep(0.5)
    assert (await get(f"http://127.0.0.1:{web}/livez"))[0] == 200
    assert (await get(f"http://127.0.0.1:{web}/healthz"))[0] == 200
    status, body = await get(f"http://127.0.0.1:{web}/readyz")
    assert status == 503 and "broker unreachable" in body
    assert "feedback_broker_reachable 0.0" in (await get(f"http://127.0.0.1:{web}/metrics"))[1]
    stop.set()
    assert await task is False and calls == []
    with pytest.raises(OSError):  # the port is free again for Faust
        await get(f"http://127.0.0.1:{web}/livez")


async def test_the_wait_ends_when_the_broker_answers() -> None:
    server, port = await fake_broker(b"\x00\x00\x00\x10\x00\x00\x00\x01" + b"\x00" * 16)
    s = Settings.from_env({}, bootstrap_servers=f"127.0.0.1:{port}", web_port=closed_port())
    calls: list[int] = []

    async def ready() -> None:
        calls.append(1)

    async with server:
        assert await health.serve_probes_until_ready(
            s, health.Health(s), ready, asyncio.Event()) is True
    assert calls == [1]


async def test_a_taken_web_port_is_a_startup_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        s = Settings.from_env({}, web_port=port)

        async def ready() -> None:
            pass

        with pytest.raises(health.StartupError, match=f"127.0.0.1:{port} is already in use"):
            await health.serve_probes_until_ready(s, health.Health(s), ready, asyncio.Event())
