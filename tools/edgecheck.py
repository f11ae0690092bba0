"""Try the edges a user meets and check the service behaves: ``python -m tools.edgecheck``.

Each case runs the real command line in a subprocess and checks what a user
sees: an error is one line on stderr and a non-zero exit, no process is left
behind (checked with psutil), a stopped ``run`` prints its true summary and
removes its temporary folder, and ``/readyz`` follows the broker within 30 s.
``tests/integration/test_edges.py`` runs the same cases under pytest.

Usage: ``python -m tools.edgecheck [--only NAME ...] [--json]``; the exit code
is the number of failed cases.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "tools.cli"]


@dataclass
class Result:
    name: str
    ok: bool
    seen: str
    problems: list[str] = field(default_factory=list)


class Check:
    """Collects the failed expectations of one case."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def expect(self, condition: bool, problem: str) -> None:
        if not condition:
            self.problems.append(problem)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEEDBACK_")}
    if "FEEDBACK_DATA_DIR" in os.environ:
        env["FEEDBACK_DATA_DIR"] = os.environ["FEEDBACK_DATA_DIR"]
    env.update(extra)
    return env


def run_cli(args: list[str], timeout: float = 60.0, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], cwd=REPO, env=_env(**env), capture_output=True, text=True,
        timeout=timeout,
    )


def processes_mentioning(text: str) -> list[Any]:
    """Live processes whose command line contains ``text`` (a port, a folder)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        with contextlib.suppress(psutil.Error):
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if any(text in part for part in proc.info["cmdline"] or ()):
                found.append(proc)
    return found


def alive(pids: list[int]) -> list[int]:
    import psutil

    left = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                left.append(pid)
    return left


def one_error_line(check: Check, proc: subprocess.CompletedProcess[str], code: int | None = None,
                   mentions: str = "") -> str:
    """The error must be one line on stderr, no traceback, and a non-zero exit."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    check.expect(proc.returncode != 0, f"exit code {proc.returncode}, expected non-zero")
    if code is not None:
        check.expect(proc.returncode == code, f"exit code {proc.returncode}, expected {code}")
    check.expect(len(lines) == 1, f"{len(lines)} stderr lines, expected 1: {lines[:4]}")
    check.expect("Traceback" not in proc.stderr, "a traceback on stderr")
    if mentions:
        check.expect(mentions in proc.stderr, f"the error does not mention {mentions!r}")
    return lines[-1] if lines else ""


@contextlib.contextmanager
def listening(port: int) -> Iterator[None]:
    """Something else listening on ``port``: a plain socket that never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        yield


def http_status(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")
    except OSError as exc:
        return 0, str(exc)


def wait_for(predicate: Callable[[], bool], timeout: float, step: float = 0.25) -> float | None:
    """Seconds until ``predicate()`` held, ``None`` if it did not within ``timeout``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(step)
    return None


# ---------------------------------------------------------------------------
# The cases: each returns what it saw (one line) and records failed expectations.


def case_taken_port_broker(check: Check) -> str:
    port = free_port()
    with listening(port):
        proc = run_cli(["broker", "--port", str(port)])
        line = one_error_line(check, proc, mentions=str(port))
    check.expect(not processes_mentioning(f"127.0.0.1:{port}"), "a broker left running")
    return line


def case_taken_port_run(check: Check) -> str:
    port = free_port()
    with listening(port):
        proc = run_cli(["run", "--broker-port", str(port), "--duration", "5"])
        line = one_error_line(check, proc, mentions=str(port))
    check.expect(not processes_mentioning(f"127.0.0.1:{port}"), "a process left running")
    return line


def case_no_broker_topics(check: Check) -> str:
    port = free_port()
    proc = run_cli(["topics", "--bootstrap-servers", f"127.0.0.1:{port}"])
    return one_error_line(check, proc, code=1, mentions=f"127.0.0.1:{port}")


def case_no_broker_produce(check: Check) -> str:
    port = free_port()
    with tempfile.NamedTemporaryFile("wb", suffix=".jsonl", delete=False) as f:
        f.write(b'{"type":"click","event_id":"e1","user_id":"u1","item_id":"i1",'
                b'"timestamp":"2024-01-01T00:00:00Z"}\n')
    try:
        proc = run_cli(["produce", "--file", f.name, "--bootstrap-servers", f"127.0.0.1:{port}"])
    finally:
        os.unlink(f.name)
    return one_error_line(check, proc, code=1, mentions=f"127.0.0.1:{port}")


def case_missing_file(check: Check) -> str:
    proc = run_cli(["produce", "--file", "/nonexistent/events.jsonl"])
    return one_error_line(check, proc, code=2, mentions="/nonexistent/events.jsonl")


def case_missing_data_dir(check: Check) -> str:
    proc = run_cli(["run", "--data-dir", "/nonexistent/data", "--duration", "5"])
    return one_error_line(check, proc, code=2, mentions="/nonexistent/data")


def case_bad_dataset(check: Check) -> str:
    proc = run_cli(["run", "--dataset", "imdb", "--duration", "5"])
    return one_error_line(check, proc, code=2, mentions="imdb")


def case_bad_address(check: Check) -> str:
    proc = run_cli(["topics"], FEEDBACK_BOOTSTRAP_SERVERS="kafka:notaport")
    return one_error_line(check, proc, code=2, mentions="FEEDBACK_BOOTSTRAP_SERVERS")


def case_unknown_variable(check: Check) -> str:
    proc = run_cli(["topics"], FEEDBACK_PARTITON="8", FEEDBACK_BOOTSTRAP_SERVERS="kafka:x")
    warning = [line for line in proc.stderr.splitlines() if "FEEDBACK_PARTITON" in line]
    check.expect(len(warning) == 1, f"expected one warning naming FEEDBACK_PARTITON: {warning}")
    check.expect(bool(warning) and "FEEDBACK_PARTITIONS" in warning[0],
                 "the warning does not suggest FEEDBACK_PARTITIONS")
    return warning[0] if warning else proc.stderr.strip()[:200]


def _signal_run(check: Check, sig: signal.Signals) -> str:
    import psutil

    proc = subprocess.Popen(
        [*CLI, "run", "--rate", "400"], cwd=REPO, env=_env(), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    state_dir = ""
    children: list[int] = []
    before = [0, 0]
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 120
        # Wait for the stack and for the first status line (events are flowing).
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            match = re.search(r"logs in (\S+)", line)
            if match:
                state_dir = match.group(1)
            if line.startswith("["):
                # The status line before the signal: counts the summary cannot go below.
                status = re.search(r"produced ([\d,]+) \| in ([\d,]+)", line)
                if status:
                    before = [int(g.replace(",", "")) for g in status.groups()]
                break
        children = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        check.expect(len(children) >= 2, f"expected a broker and a worker child, saw {children}")
        proc.send_signal(sig)
        started = time.monotonic()
        out, err = proc.communicate(timeout=90)
        took = time.monotonic() - started
    except BaseException:
        proc.kill()
        for pid in alive(children):
            os.kill(pid, signal.SIGKILL)
        raise
    check.expect(proc.returncode == 0, f"exit code {proc.returncode} after {sig.name}")
    check.expect("Traceback" not in err and "destroyed but it is pending" not in err,
                 "a traceback or a pending-task warning on stderr")
    summary: dict[str, Any] = {}
    with contextlib.suppress(orjson.JSONDecodeError, IndexError):
        summary = orjson.loads(out.strip().splitlines()[-1])
    check.expect(summary.get("stopped") == sig.name, f"summary: {summary or out[-300:]}")
    produced, seen = summary.get("events_produced", 0), summary.get("events_in", 0)
    check.expect(produced > 0, "the summary counts no event produced")
    # True counts: at least what the status line showed before the signal, the
    # worker never counts more than was produced, and its counts add up. (On a
    # loaded machine the worker may still be behind when the signal comes: the
    # summary then says so instead of waiting for it.)
    check.expect(produced >= before[0] > 0 and seen >= before[1],
                 f"summary {produced}/{seen} below the status line's {before}")
    check.expect(seen <= produced, f"events_in {seen} > events_produced {produced}")
    check.expect(
        summary.get("events_processed", 0) + summary.get("duplicates", 0)
        + summary.get("dead_letter", 0) == seen,
        "processed + duplicates + dead letters != events in",
    )
    left = alive(children)
    check.expect(not left, f"children still running: {left}")
    check.expect(bool(state_dir) and not Path(state_dir).exists(),
                 f"temporary folder {state_dir or '?'} not removed")
    return (f"{sig.name} -> exit {proc.returncode} in {took:.1f} s, "
            f"{len(children)} children stopped, summary {orjson.dumps(summary).decode()}")


def case_sigterm_run(check: Check) -> str:
    return _signal_run(check, signal.SIGTERM)


def case_sigint_run(check: Check) -> str:
    return _signal_run(check, signal.SIGINT)


@contextlib.contextmanager
def broker_process(port: int) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [*CLI, "broker", "--port", str(port)], cwd=REPO, env=_env(), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        proc.stdout.readline()  # the "broker on ..." line: it answers from now on
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(15)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def case_sigterm_broker(check: Check) -> str:
    import psutil

    port = free_port()
    with broker_process(port) as proc:
        tansu = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        check.expect(len(tansu) == 1, f"expected one broker child, saw {tansu}")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    check.expect(proc.returncode == 0, f"exit code {proc.returncode}")
    check.expect(not alive(tansu), "Tansu still running after SIGTERM")
    check.expect(not processes_mentioning(f"127.0.0.1:{port}"), "a process still serves the port")
    return f"exit {proc.returncode}: {err.strip()}"


def case_consume(check: Check) -> str:
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    with broker_process(port), tempfile.TemporaryDirectory() as tmp:
        events = Path(tmp) / "events.jsonl"
        events.write_bytes(b"".join(
            orjson.dumps({"type": "click", "event_id": f"e{i}", "user_id": f"u{i % 3}",
                          "item_id": f"i{i}", "timestamp": "2024-01-01T00:00:00Z"}) + b"\n"
            for i in range(9)
        ))
        opts = ["--bootstrap-servers", bootstrap]
        made = run_cli(["topics", *opts])
        check.expect(made.returncode == 0, f"topics: {made.stderr.strip()[-200:]}")
        sent = run_cli(["produce", "--file", str(events), "--quiet", *opts])
        check.expect(sent.returncode == 0, f"produce: {sent.stderr.strip()[-200:]}")
        got = run_cli(["consume", "feedback.clicks", "--from-beginning", "--json", "--key", "u1",
                       "--count", "3", *opts], timeout=60)
        check.expect(got.returncode == 0, f"consume exit {got.returncode}: {got.stderr[-300:]}")
        rows = [orjson.loads(line) for line in got.stdout.splitlines() if line.strip()]
        check.expect(len(rows) == 3, f"expected 3 messages, got {len(rows)}")
        check.expect(all(r["key"] == "u1" and r["value"]["user_id"] == "u1" for r in rows),
                     "--key u1 let other keys through")
        headers = run_cli(["consume", "feedback.clicks", "--from-beginning", "--headers",
                           "--count", "1", *opts])
        check.expect(headers.stdout.startswith("feedback.clicks["),
                     f"--headers output: {headers.stdout[:120]!r}")
        missing = run_cli(["consume", "feedback.nope", *opts])
        one_error_line(check, missing, code=1, mentions="feedback.nope")
    unreachable = run_cli(["consume", "feedback.clicks", "--bootstrap-servers", bootstrap])
    one_error_line(check, unreachable, code=1, mentions=bootstrap)
    return f"{len(rows)} messages keyed u1; missing topic: {missing.stderr.strip()}"


@dataclass
class WorkerRun:
    proc: subprocess.Popen[bytes]
    url: str
    log: str = ""


@contextlib.contextmanager
def worker_process(bootstrap: str) -> Iterator[WorkerRun]:
    """``feedback-stream worker`` against ``bootstrap``; killed if still running at the
    end, its log kept in ``.log``."""
    web = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        with open(state / "worker.log", "ab") as log:
            proc = subprocess.Popen(
                [*CLI, "worker"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                env=_env(FEEDBACK_BOOTSTRAP_SERVERS=bootstrap, FEEDBACK_WEB_PORT=str(web),
                         FEEDBACK_STATE_DIR=str(state), FEEDBACK_APP_ID=f"edge-{web}"),
            )
        run = WorkerRun(proc, f"http://127.0.0.1:{web}")
        try:
            yield run
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            run.log = (state / "worker.log").read_text(errors="replace")


def _stop_in(proc: subprocess.Popen[bytes], limit: float) -> float:
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(limit + 20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return time.monotonic() - started


def case_readyz(check: Check) -> str:
    port = free_port()
    with broker_process(port) as broker, worker_process(f"127.0.0.1:{port}") as worker:
        url = worker.url
        live = wait_for(lambda: http_status(url + "/livez")[0] == 200, 60)
        check.expect(live is not None, "/livez never answered 200")
        first = http_status(url + "/readyz")
        ready = wait_for(lambda: http_status(url + "/readyz")[0] == 200, 60)
        check.expect(ready is not None, "/readyz never answered 200")
        check.expect(http_status(url + "/healthz")[0] == 200, "/healthz is not 200")
        broker.send_signal(signal.SIGTERM)
        broker.wait(20)
        gone = wait_for(lambda: http_status(url + "/readyz")[0] == 503, 30)
        check.expect(gone is not None, "/readyz still 200 30 s after the broker died")
        after = http_status(url + "/readyz")
        check.expect(http_status(url + "/livez")[0] == 200, "/livez not 200 without broker")
        took = _stop_in(worker.proc, 10)
        check.expect(took <= 10, f"worker took {took:.1f} s to stop after SIGTERM")
    check.expect("Traceback" not in worker.log, "a traceback in the worker log")
    return (f"first {first[0]}, ready after {ready or 0:.1f} s; broker killed -> 503 after "
            f"{gone or 0:.1f} s ({after[1].strip()[:120]}); stopped in {took:.1f} s")


def case_worker_no_broker(check: Check) -> str:
    with worker_process(f"127.0.0.1:{free_port()}") as worker:
        live = wait_for(lambda: http_status(worker.url + "/livez")[0] == 200, 60)
        check.expect(live is not None, "/livez never answered while the broker is down")
        time.sleep(12)  # a few retry intervals
        check.expect(worker.proc.poll() is None, f"worker exited with {worker.proc.returncode}")
        status, body = http_status(worker.url + "/readyz")
        check.expect(status == 503, f"/readyz answered {status} without a broker")
        took = _stop_in(worker.proc, 10)
        check.expect(took <= 10, f"worker took {took:.1f} s to stop after SIGTERM")
    unreachable = [line for line in worker.log.splitlines() if "unreachable" in line]
    check.expect(1 <= len(unreachable) <= 6,
                 f"{len(unreachable)} 'unreachable' log lines in ~15 s, expected 1-6")
    check.expect("Traceback" not in worker.log, "a traceback in the worker log")
    return (f"kept retrying; /readyz {status} {body.strip()[:100]}; "
            f"{len(unreachable)} log lines; stopped in {took:.1f} s")


CASES: dict[str, Callable[[Check], str]] = {
    "taken port (broker)": case_taken_port_broker,
    "taken port (run)": case_taken_port_run,
    "no broker (topics)": case_no_broker_topics,
    "no broker (produce)": case_no_broker_produce,
    "missing file": case_missing_file,
    "missing data folder": case_missing_data_dir,
    "bad dataset": case_bad_dataset,
    "bad address": case_bad_address,
    "unknown FEEDBACK_ variable": case_unknown_variable,
    "SIGTERM on run": case_sigterm_run,
    "SIGINT on run": case_sigint_run,
    "SIGTERM on broker": case_sigterm_broker,
    "consume": case_consume,
    "worker without broker": case_worker_no_broker,
    "/readyz before and after the broker dies": case_readyz,
}


def run_case(name: str) -> Result:
    check = Check()
    try:
        seen = CASES[name](check)
    except Exception as exc:  # a case that cannot even run is a failed case
        check.problems.append(f"{type(exc).__name__}: {exc}")
        seen = ""
    return Result(name, not check.problems, seen, check.problems)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.edgecheck", description=__doc__)
    parser.add_argument("--only", nargs="+", choices=list(CASES), metavar="CASE")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        import psutil  # noqa: F401
    except ImportError:
        print("edgecheck: needs psutil (pip install -e '.[dev]')", file=sys.stderr)
        return 2
    failed = 0
    for name in args.only or CASES:
        result = run_case(name)
        failed += not result.ok
        if args.json:
            print(orjson.dumps(result.__dict__).decode(), flush=True)
            continue
        print(f"{'ok  ' if result.ok else 'FAIL'} {name}: {result.seen}", flush=True)
        for problem in result.problems:
            print(f"       - {problem}", flush=True)
    return failed


if __name__ == "__main__":
    sys.exit(main())
