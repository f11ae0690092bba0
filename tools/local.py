"""A whole service on this machine for the tools: the embedded broker and one
worker process, started together and stopped together (``make run``,
``feedback-stream simulate``)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from stream.settings import Settings
from tools import broker


@dataclass
class LocalStack:
    settings: Settings
    state_dir: Path
    worker: subprocess.Popen[bytes]

    @property
    def metrics_url(self) -> str:
        return f"{self.settings.web_url}/metrics"


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Wait until ``url`` answers, failing fast if the process behind it exits."""
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


@contextlib.contextmanager
def local_stack(
    state_dir: str | None = None,
    env_overrides: Mapping[str, str] | None = None,
    *,
    broker_port: int = 0,
    web_port: int = 0,
    prefix: str = "feedback-stream-",
    quiet: bool = False,
) -> Iterator[LocalStack]:
    """Start the broker and a ready worker on free loopback ports; logs in ``state_dir``."""
    overrides = dict(env_overrides or {})
    broker_port = broker_port or broker.free_port()
    web_port = web_port or broker.free_port()
    state = Path(state_dir or tempfile.mkdtemp(prefix=prefix))
    state.mkdir(parents=True, exist_ok=True)
    bootstrap = f"127.0.0.1:{broker_port}"
    settings = Settings.from_env(
        {**os.environ, **overrides},
        bootstrap_servers=bootstrap, web_port=web_port, web_host="127.0.0.1",
        state_dir=str(state),
    )
    if not quiet:
        print(f"starting the embedded broker on {bootstrap}; logs in {state}", file=sys.stderr)
    broker_proc = broker.start(broker_port, log_path=state / "broker.log")
    worker: subprocess.Popen[bytes] | None = None
    try:
        env = {
            **os.environ,
            **overrides,
            "FEEDBACK_BOOTSTRAP_SERVERS": bootstrap,
            "FEEDBACK_WEB_PORT": str(web_port),
            "FEEDBACK_WEB_HOST": "127.0.0.1",
            "FEEDBACK_STATE_DIR": str(state),
        }
        with open(state / "worker.log", "ab") as worker_log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "tools.cli", "worker"],
                env=env, stdout=worker_log, stderr=subprocess.STDOUT,
            )
        wait_http(f"{settings.web_url}/healthz", worker)
        yield LocalStack(settings, state, worker)
    finally:
        if worker is not None:
            stop_worker(worker)
        with contextlib.suppress(Exception):
            broker.stop(broker_proc)
