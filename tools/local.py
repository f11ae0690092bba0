"""A whole service on this machine for the tools: the embedded broker and one
worker process, started together and stopped together (``make run``,
``feedback-stream simulate``)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from stream.settings import Settings
from tools import broker


class LocalStackError(RuntimeError):
    """The local broker or worker could not start or died; the message says why."""


@dataclass
class LocalStack:
    settings: Settings  # the first worker's
    state_dir: Path
    worker: subprocess.Popen[bytes]
    # Every worker of the consumer group, the first one included, by web port.
    workers: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def metrics_url(self) -> str:
        """The first worker's /metrics; with several workers, every worker's,
        comma-separated (:func:`tools.simulate.metrics.fetch_metrics` sums them)."""
        host = self.settings.web_url.rsplit(":", 1)[0]
        ports = list(self.workers) or [self.settings.web_port]
        return ",".join(f"{host}:{port}/metrics" for port in ports)

    def check_workers(self) -> None:
        """Raise :class:`LocalStackError` naming the first worker that has exited."""
        for i, (port, proc) in enumerate((self.workers or {0: self.worker}).items()):
            if proc.poll() is not None:
                log = self.state_dir / ("worker.log" if i == 0 else f"worker-{i}.log")
                reason = last_log_line(log)
                raise LocalStackError(
                    f"worker {i} (port {port}) exited with code {proc.returncode}"
                    f"{': ' + reason if reason else ''} (logs in {self.state_dir})"
                )


def partitions_for(workers: int, at_least: int = 4) -> int:
    """A partition count that gives each of ``workers`` the same share: Faust's
    co-partitioned assignor fills workers up to ceil(partitions / workers)
    each, so 4 partitions over 3 workers would leave one idle.

    >>> partitions_for(1), partitions_for(2), partitions_for(3), partitions_for(8)
    (4, 4, 6, 8)
    """
    return workers * -(-at_least // workers)


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Wait until ``url`` answers 2xx, failing fast if the process behind it exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with code {proc.returncode} during start-up")
        with contextlib.suppress(OSError):
            urllib.request.urlopen(url, timeout=1).close()
            return
        time.sleep(0.25)
    raise TimeoutError(f"worker did not answer {url} within {timeout:.0f} s")


def stop_worker(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM (the worker writes its final checkpoint), SIGKILL if it hangs."""
    broker.stop(proc, timeout)


def last_log_line(path: Path) -> str:
    """The last line of a log that looks like an error (else the last line)."""
    try:
        lines = path.read_text(errors="replace").splitlines()[-200:]
    except OSError:
        return ""
    lines = [line.strip() for line in lines if line.strip()]
    for line in reversed(lines):
        if " ERROR " in line or " CRITICAL " in line or "Error" in line:
            return line
    return lines[-1] if lines else ""


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt, as Ctrl-C does, for the duration of the block.

    So ``kill PID`` runs the same clean-up as Ctrl-C (children stopped, summary
    printed) instead of the default SIGTERM action, which ends the process at
    once and leaves its children running.
    """

    def raise_interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def local_stack(
    state_dir: str | None = None,
    env_overrides: Mapping[str, str] | None = None,
    *,
    broker_port: int = 0,
    web_port: int = 0,
    prefix: str = "feedback-stream-",
    quiet: bool = False,
    workers: int = 1,
) -> Iterator[LocalStack]:
    """Start the broker and ``workers`` ready workers (one consumer group) on free
    loopback ports; logs in ``state_dir``.

    Without ``state_dir`` a temporary folder holds the logs and checkpoints; it
    is removed at the end, unless something failed: then the error names it.
    A taken port, a broker that does not come up or a worker that exits during
    start-up raise :class:`LocalStackError` (or ``BrokerError``) with one line.
    """
    overrides = dict(env_overrides or {})
    # Ports asked for are checked before anything starts or any folder is made.
    if broker_port:
        broker.check_port_free("127.0.0.1", broker_port, "broker port")
    if web_port:
        broker.check_port_free("127.0.0.1", web_port, "web port")
    broker_port = broker_port or broker.free_port()
    web_port = web_port or broker.free_port()
    temporary = not state_dir
    state = Path(state_dir or tempfile.mkdtemp(prefix=prefix))
    state.mkdir(parents=True, exist_ok=True)
    bootstrap = f"127.0.0.1:{broker_port}"
    failed = False
    broker_proc: subprocess.Popen[bytes] | None = None
    worker: subprocess.Popen[bytes] | None = None
    started: dict[int, subprocess.Popen[bytes]] = {}
    if workers > 1:
        overrides.setdefault("FEEDBACK_PARTITIONS", str(partitions_for(workers)))
    try:
        settings = Settings.from_env(
            {**os.environ, **overrides},
            bootstrap_servers=bootstrap, web_port=web_port, web_host="127.0.0.1",
            state_dir=str(state),
        )
        if not quiet:
            print(f"starting the embedded broker on {bootstrap}; logs in {state}",
                  file=sys.stderr, flush=True)
        broker_proc = broker.start(broker_port, log_path=state / "broker.log")
        ports = [web_port] + [broker.free_port() for _ in range(workers - 1)]
        for i, port in enumerate(ports):
            env = {
                **os.environ,
                **overrides,
                "FEEDBACK_BOOTSTRAP_SERVERS": bootstrap,
                "FEEDBACK_WEB_PORT": str(port),
                "FEEDBACK_WEB_HOST": "127.0.0.1",
                "FEEDBACK_STATE_DIR": str(state),
            }
            log_name = "worker.log" if i == 0 else f"worker-{i}.log"
            with open(state / log_name, "ab") as worker_log:
                started[port] = subprocess.Popen(
                    [sys.executable, "-m", "tools.cli", "worker"],
                    env=env, stdout=worker_log, stderr=subprocess.STDOUT,
                    start_new_session=True, preexec_fn=broker.die_with_parent(),
                )
            worker = started[web_port]
        for i, (port, proc) in enumerate(started.items()):
            try:
                wait_http(f"http://127.0.0.1:{port}/readyz", proc)
            except (RuntimeError, TimeoutError) as exc:
                failed = True
                reason = last_log_line(state / ("worker.log" if i == 0 else f"worker-{i}.log"))
                raise LocalStackError(
                    f"{exc}{': ' + reason if reason else ''} (logs in {state})"
                ) from None
        assert worker is not None
        yield LocalStack(settings, state, worker, started)
    except (Exception, KeyboardInterrupt) as exc:
        failed = failed or not isinstance(exc, KeyboardInterrupt)
        raise
    finally:
        for proc in started.values():
            stop_worker(proc)
        if broker_proc is not None:
            broker.stop(broker_proc)
        if temporary and not failed:
            shutil.rmtree(state, ignore_errors=True)

