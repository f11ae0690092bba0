"""Liveness, readiness and the broker's reachability, for the worker's HTTP probes.

``/livez`` says the process runs; ``/readyz`` says the worker does its job: the
broker answers, the consumer group gave it its partitions and the profile table
is recovered. The broker is probed on a timer (TCP connect, and a Kafka
ApiVersions round trip on PLAINTEXT listeners), so readiness follows a broker
that dies or comes back within one probe interval, whatever Faust's own clients
are doing. While the broker is unreachable the worker keeps running and retries
with backoff; it says so once per retry interval in its log, in
``feedback_broker_reachable`` and in ``/readyz``.

Nothing here imports Faust: the worker hands in what it knows
(:meth:`Health.set_group`), and the tests drive this module alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from stream.settings import Settings

log = logging.getLogger(__name__)

# Seconds between retries of an unreachable broker: doubled each time up to the cap.
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
# ApiVersions v0 request: size, api_key 18, version 0, correlation id 1, client id "h".
_API_VERSIONS = bytes.fromhex("0000000b" "0012" "0000" "00000001" "0001") + b"h"


def backoff(attempt: int, first: float = BACKOFF_FIRST, cap: float = BACKOFF_MAX) -> float:
    """Seconds to wait before retry ``attempt`` (0-based).

    >>> [backoff(i) for i in range(7)]
    [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    """
    return float(min(cap, first * 2 ** min(attempt, 30)))


def bootstrap_addresses(settings: Settings) -> list[tuple[str, int]]:
    """``(host, port)`` of each bootstrap server (already validated by the settings)."""
    out = []
    for server in settings.bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        out.append((host.strip("[]"), int(port)))
    return out


async def probe_broker(settings: Settings, timeout: float = 3.0) -> str | None:
    """``None`` when a bootstrap server answers, else why none did (one line).

    On PLAINTEXT the server must answer a Kafka ApiVersions request: a port that
    accepts connections is not yet a broker. With TLS or SASL a TCP connection is
    the check (the handshake belongs to the Kafka clients).
    """
    plaintext = settings.security_protocol == "PLAINTEXT"
    errors = []
    for host, port in bootstrap_addresses(settings):
        writer = None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), timeout
            )
            if plaintext:
                writer.write(_API_VERSIONS)
                await writer.drain()
                header = await asyncio.wait_for(reader.readexactly(8), timeout)
                if header[4:8] != b"\x00\x00\x00\x01":
                    raise ConnectionError("not a Kafka broker (unexpected answer)")
            return None
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            reason = str(exc) or type(exc).__name__
            if isinstance(exc, asyncio.IncompleteReadError):
                reason = "connection closed before an answer"
            errors.append(f"{host}:{port}: {reason}")
        finally:
            if writer is not None:
                writer.close()
    return "; ".join(errors)


@dataclass
class Health:
    """What the probes answer. The worker updates it; the HTTP views read it."""

    settings: Settings
    # The gauge to keep in step with the broker's state (a prometheus Gauge).
    gauge: Any = None
    started: float = field(default_factory=time.monotonic)
    # None: not probed yet.
    broker_error: str | None = "not checked yet"
    # Set by the worker from Faust's state; the defaults are "not yet".
    group_joined: Callable[[], bool] = lambda: False
    recovered: Callable[[], bool] = lambda: False
    _failures: int = 0
    _last_logged: float = -1e9

    @property
    def broker_ok(self) -> bool:
        return self.broker_error is None

    def set_group(self, joined: Callable[[], bool], recovered: Callable[[], bool]) -> None:
        self.group_joined, self.recovered = joined, recovered

    def record_probe(self, error: str | None) -> None:
        """Record a probe's outcome; log a change of state, and an outage once per interval."""
        now = time.monotonic()
        if error is None:
            if self._failures:
                log.warning("broker reachable again at %s after %d failed checks",
                            self.settings.bootstrap_servers, self._failures)
            self._failures = 0
        else:
            # At most once per retry interval, however often the probe runs.
            if now - self._last_logged >= backoff(max(0, self._failures - 1)):
                log.warning("broker unreachable at %s: %s (retrying, next log in %.0f s)",
                            self.settings.bootstrap_servers, error, backoff(self._failures))
                self._last_logged = now
            self._failures += 1
        self.broker_error = error
        if self.gauge is not None:
            self.gauge.set(1 if error is None else 0)

    def next_retry(self) -> float:
        """Seconds until the next probe: short while healthy, backing off while not."""
        return 2.0 if self._failures == 0 else backoff(self._failures - 1)

    def readiness(self) -> tuple[bool, list[str]]:
        """``(ready, reasons it is not)``."""
        reasons = []
        if self.broker_error is not None:
            reasons.append(f"broker unreachable: {self.broker_error}")
        if not self.group_joined():
            reasons.append("partitions not assigned yet (joining the consumer group)")
        elif not self.recovered():
            reasons.append("profile table recovery in progress")
        return not reasons, reasons

    def readiness_body(self) -> tuple[int, dict[str, Any]]:
        ready, reasons = self.readiness()
        if ready:
            return 200, {"status": "ready", "app_id": self.settings.app_id}
        return 503, {"status": "not ready", "app_id": self.settings.app_id, "reasons": reasons}

    def liveness_body(self) -> dict[str, Any]:
        return {
            "status": "ok", "app_id": self.settings.app_id,
            "uptime_seconds": round(time.monotonic() - self.started, 1),
        }


async def watch_broker(health: Health, stop: asyncio.Event | None = None) -> None:
    """Probe the broker forever (or until ``stop``), at :meth:`Health.next_retry` intervals."""
    while stop is None or not stop.is_set():
        health.record_probe(await probe_broker(health.settings))
        delay = health.next_retry()
        if stop is None:
            await asyncio.sleep(delay)
            continue
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)


class RepeatFilter(logging.Filter):
    """Lets one record per (logger, message template) through per ``interval`` seconds.

    A Kafka client whose broker is gone logs the same connection error tens of
    times a second; this keeps one a interval and counts the rest, which the
    next record that passes reports.

    >>> f = RepeatFilter(interval=60, prefixes=("aiokafka",))
    >>> rec = lambda: logging.LogRecord("aiokafka.conn", 40, "", 0, "down %s", ("x",), None)
    >>> [f.filter(rec()) for _ in range(3)]
    [True, False, False]
    >>> f.filter(logging.LogRecord("stream.app", 40, "", 0, "down %s", ("x",), None))
    True
    """

    def __init__(self, interval: float = 30.0,
                 prefixes: tuple[str, ...] = ("aiokafka", "faust", "mode")) -> None:
        super().__init__()
        self.interval = interval
        self.prefixes = prefixes
        self.seen: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not record.name.startswith(self.prefixes):
            return True
        key = (record.name, str(record.msg))
        now = time.monotonic()
        last, suppressed = self.seen.get(key, (-1e18, 0))
        if now - last < self.interval:
            self.seen[key] = (last, suppressed + 1)
            return False
        if suppressed:
            window = now - last
            record.msg = f"{record.msg} ({suppressed} more like this in the last {window:.0f} s)"
        self.seen[key] = (now, 0)
        if len(self.seen) > 1000:  # bounded: forget the oldest
            for old in sorted(self.seen, key=lambda k: self.seen[k][0])[:500]:
                del self.seen[old]
        return True


class StartupError(RuntimeError):
    """The worker cannot start as configured; the message says why, in one line."""


async def serve_probes_until_ready(
    settings: Settings, health: Health, ready: Callable[[], Any], stop: asyncio.Event
) -> bool:
    """Before Faust runs: answer /livez, /healthz, /readyz and /metrics on the
    worker's port while the broker is probed with backoff; once it answers, await
    ``ready()`` (creating the topics), which may raise a Kafka error to go on
    waiting. ``True`` once ``ready()`` returned, ``False`` if ``stop`` was set.
    """
    import errno

    from aiohttp import web
    from aiokafka.errors import KafkaError
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

    registry = CollectorRegistry()
    health.gauge = Gauge(
        "feedback_broker_reachable", "1 when the broker answers (the worker is starting).",
        registry=registry,
    )

    async def live(request: web.Request) -> web.Response:
        return web.json_response(health.liveness_body())

    async def readyz(request: web.Request) -> web.Response:
        status, body = health.readiness_body()
        return web.json_response(body, status=status)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    site_app = web.Application()
    site_app.add_routes([web.get("/livez", live), web.get("/healthz", live),
                         web.get("/readyz", readyz), web.get("/metrics", metrics)])
    runner = web.AppRunner(site_app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.web_host, settings.web_port).start()
    except OSError as exc:
        await runner.cleanup()
        what = "is already in use" if exc.errno == errno.EADDRINUSE else f"failed: {exc}"
        raise StartupError(
            f"web port {settings.web_host}:{settings.web_port} {what} (FEEDBACK_WEB_PORT)"
        ) from None
    try:
        while not stop.is_set():
            error = await probe_broker(settings)
            if error is None:
                try:
                    await ready()
                except KafkaError as exc:  # the broker went away again, or is not ready yet
                    error = f"{type(exc).__name__}: {exc}"
                else:
                    health.record_probe(None)
                    return True
            health.record_probe(error)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), health.next_retry())
        return False
    finally:
        # Faust binds the same port next.
        await runner.cleanup()
