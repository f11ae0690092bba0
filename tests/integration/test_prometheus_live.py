"""A real Prometheus scrapes a real worker on the embedded broker; every query works.

The test starts the Debian ``prometheus`` server (ops/install-prometheus.sh) on a
free loopback port with a temporary TSDB, the repository's alert rules and a 1 s
scrape interval, pointed at a worker started by the ``worker_factory`` fixture.
It replays real events (the shared ``demo`` stream, through ``feedback-stream
produce`` with some malformed on purpose) and then asks Prometheus' HTTP API:

* every alert rule's expression parses and evaluates (``/api/v1/query``), and the
  rule groups loaded from ops/prometheus/rules.yml evaluate without error;
* every query of every dashboard panel returns at least one finite value over the
  run (``/api/v1/query_range``, as Grafana draws it): a panel that never shows
  anything is a defect.

``$job`` becomes the test's job, ``$instance`` ``.*`` (all), and
``$__rate_interval`` becomes ``1m``: what Grafana computes for the compose stack
(scrape interval 15 s: max(4 x 15 s, step + 15 s) over the default 1 h range).
With a 1 s scrape interval, a ``[1m]`` window holds enough samples within seconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from tests.integration.conftest import REPO, Worker, settings_env, wait_for
from tests.shared_data import data_dir

pytestmark = pytest.mark.integration

PROM_DIR = REPO / "ops" / "prometheus"
DASHBOARD = REPO / "ops" / "grafana" / "dashboards" / "feedback-stream.json"
RATE_INTERVAL = "1m"
EVENTS = int(os.environ.get("FEEDBACK_LIVE_TEST_EVENTS", "20000"))
BAD_RATE = 0.01


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prometheus:
    """A Prometheus server process and a tiny client for its HTTP API."""

    def __init__(
        self, url: str, process: subprocess.Popen[bytes], log: Path, config_path: Path
    ) -> None:
        self.url = url
        self.process = process
        self.log = log
        self.config_path = config_path

    def set_targets(self, workers: list[Worker]) -> None:
        """Rewrite the scrape targets and reload (SIGHUP), as DNS discovery would."""
        config = yaml.safe_load(self.config_path.read_text())
        (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "feedback-worker"]
        job["static_configs"] = [{"targets": [worker_target(w) for w in workers]}]
        self.config_path.write_text(yaml.safe_dump(config))
        self.process.send_signal(signal.SIGHUP)

    def api(self, path: str, **params: Any) -> Any:
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as err:  # 400 = bad query: return its error
            body = json.load(err)
        return body

    def query(self, expr: str) -> dict[str, Any]:
        return self.api("/api/v1/query", query=expr)

    def query_range(self, expr: str, start: float, end: float, step: str = "2s") -> Any:
        return self.api("/api/v1/query_range", query=expr, start=start, end=end, step=step)

    def scalar(self, expr: str) -> float:
        result = self.query(expr)
        assert result["status"] == "success", result
        values = result["data"]["result"]
        return float(values[0]["value"][1]) if values else 0.0

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


@pytest.fixture
def demo_data() -> Path:
    return data_dir()


@pytest.fixture
def worker(worker_factory: Any) -> Worker:
    # The bandit on: the feedback-loop panels, its own included, must draw real data too.
    w: Worker = worker_factory(bandit=True)
    return w


def worker_target(worker: Worker) -> str:
    return f"127.0.0.1:{worker.settings.web_port}"


@contextlib.contextmanager
def run_prometheus(
    workers: list[Worker], tmp_path: Path, rule_for: str | None = None
) -> Iterator[Prometheus]:
    """Prometheus on a free loopback port, scraping ``workers`` every second.

    ``rule_for`` replaces every alert's ``for:`` (the rules are otherwise as
    written), so that a test can see one fire within its time."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus is not on PATH: run ops/install-prometheus.sh"
    tmp_path.mkdir(parents=True, exist_ok=True)
    # The local config of the repository, with the test's targets and fast intervals.
    config = yaml.safe_load((PROM_DIR / "prometheus.local.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(PROM_DIR / f) for f in config["rule_files"]]
    if rule_for is not None:
        rules = yaml.safe_load((PROM_DIR / "rules.yml").read_text())
        for group in rules["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    rule["for"] = rule_for
        (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
        config["rule_files"] = [str(tmp_path / "rules.yml")]
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "feedback-worker"]
    job["static_configs"] = [{"targets": [worker_target(w) for w in workers]}]
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))

    port = free_port()
    log = tmp_path / "prometheus.log"
    with open(log, "ab") as log_file:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    prom = Prometheus(f"http://127.0.0.1:{port}", process, log, config_path)
    try:

        def ready() -> bool:
            assert process.poll() is None, f"prometheus exited:\n{prom.log_tail()}"
            try:
                with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=1) as resp:
                    return bool(resp.status == 200)
            except OSError:
                return False

        assert wait_for(ready, timeout=30, interval=0.2), f"not ready:\n{prom.log_tail()}"
        yield prom
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def prometheus(worker: Worker, tmp_path: Path) -> Iterator[Prometheus]:
    with run_prometheus([worker], tmp_path / "prometheus") as prom:
        yield prom


def dashboard_targets() -> list[tuple[str, str, str]]:
    """(panel title, refId, expr with Grafana's interval variable substituted).

    ``or vector(0)`` (a panel draws 0 rather than "no data") is left out: with it
    a query returns data whatever the worker exports.
    """
    out = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for p in [panel, *panel.get("panels", [])]:
            for t in p.get("targets", []):
                expr = (t["expr"].replace("$__rate_interval", RATE_INTERVAL)
                        .replace("$job", "feedback-worker").replace("$instance", ".*"))
                expr = re.sub(r"\s+or\s+vector\(0\)", "", expr)
                assert "vector(" not in expr, f"{p['title']}: {expr}"
                out.append((p["title"], t["refId"], expr))
    return out


def alert_exprs() -> list[tuple[str, str]]:
    groups = yaml.safe_load((PROM_DIR / "rules.yml").read_text())["groups"]
    return [(r.get("alert") or r["record"], r["expr"]) for g in groups for r in g["rules"]]


def finite_values(result: dict[str, Any]) -> int:
    return sum(
        1
        for series in result["data"]["result"]
        for _, v in series["values"]
        if math.isfinite(float(v))
    )


def replay_demo(worker: Worker, limit: int = EVENTS) -> dict[str, Any]:
    """`feedback-stream produce --dataset demo` into the worker's topics (real data)."""
    return produce(
        worker,
        "--dataset", "demo", "--data-dir", str(data_dir()),
        "--limit", str(limit), "--bad-rate", str(BAD_RATE),
    )


def demo_slices(path: Path, sizes: list[int]) -> list[Path]:
    """Consecutive slices of the demo stream as contract JSONL files (distinct events)."""
    from stream.contract import encode_event
    from tools.datasets import demo_stream

    def line(event: Any) -> bytes:  # contract dicts (or Event objects)
        return (orjson.dumps(event) if isinstance(event, dict) else encode_event(event)) + b"\n"

    stream = demo_stream(data_dir(), limit=sum(sizes))
    files = []
    for i, size in enumerate(sizes):
        file = path / f"demo-{i}.jsonl"
        file.write_bytes(b"".join(line(e) for e in itertools.islice(stream, size)))
        files.append(file)
    return files


def produce(worker: Worker, *args: str) -> dict[str, Any]:
    """`feedback-stream produce ARGS` against the worker's topics; its JSON summary."""
    env = {**os.environ, **settings_env(worker.settings)}
    result = subprocess.run(
        [sys.executable, "-m", "tools.cli", "produce", *args, "--quiet"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    stats: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return stats


@pytest.mark.timeout(900)
def test_prometheus_scrapes_worker_and_every_query_returns_data(
    demo_data: Path, worker: Worker, prometheus: Prometheus
) -> None:
    prom = prometheus
    start = time.time()
    # The target is discovered and scraped: `up` is 1.
    assert wait_for(lambda: prom.scalar('up{job="feedback-worker"}') == 1, 30), (
        prom.api("/api/v1/targets")
    )

    stats = replay_demo(worker)
    sent = stats["sent"]
    assert sent >= EVENTS * 0.9 and stats["bad_injected"] > 0, stats

    # Every message (good or bad) handled by the worker and seen by Prometheus.
    assert wait_for(
        lambda: prom.scalar("sum(feedback_events_total)") >= sent, timeout=240, interval=1
    ), (
        f"Prometheus sees {prom.scalar('sum(feedback_events_total)')} of {sent} events;"
        f" worker log:\n{worker.log()[-3000:]}"
    )

    # Panels: poll until every query has drawn something, or report those that never do.
    targets = dashboard_targets()
    empty: list[str] = []

    def all_panels_have_data() -> bool:
        empty.clear()
        for title, ref, expr in targets:
            result = prom.query_range(expr, start, time.time())
            assert result["status"] == "success", f"{title} [{ref}]: {result}"
            # The firing-alerts table is empty on a healthy run by design; its query
            # must still evaluate (checked above).
            if finite_values(result) == 0 and not expr.startswith("ALERTS{"):
                empty.append(f"{title} [{ref}]: {expr}")
        return not empty

    assert wait_for(all_panels_have_data, timeout=90, interval=3), (
        "dashboard queries that returned no data over the run:\n  " + "\n  ".join(empty)
    )

    # Alert rules: each expression parses and evaluates against the live data.
    for name, expr in alert_exprs():
        result = prom.query(expr)
        assert result["status"] == "success", f"{name}: {result.get('error')}"

    # The rule groups Prometheus loaded from rules.yml evaluate without error.
    groups = prom.api("/api/v1/rules")["data"]["groups"]
    loaded = {r["name"]: r for g in groups for r in g["rules"]}
    assert set(loaded) == {name for name, _ in alert_exprs()}
    assert wait_for(
        lambda: all(
            r["health"] == "ok"
            for g in prom.api("/api/v1/rules")["data"]["groups"]
            for r in g["rules"]
        ),
        timeout=10,
    ), [(n, r["health"], r.get("lastError")) for n, r in loaded.items()]

    # A healthy worker on a short, clean run pages no one.
    firing = [
        a["labels"]["alertname"]
        for a in prom.api("/api/v1/alerts")["data"]["alerts"]
        if a["state"] == "firing"
    ]
    assert "FeedbackWorkerDown" not in firing and "FeedbackNoWorkerUp" not in firing


def test_worker_metrics_pass_promtool_lint(worker: Worker) -> None:
    """The live exposition follows Prometheus' naming and format rules."""
    tool = shutil.which("promtool")
    assert tool, "promtool is not on PATH: run ops/install-prometheus.sh"
    status, body = worker.get("/metrics")
    assert status == 200 and b"feedback_events_total" in body
    result = subprocess.run(
        [tool, "check", "metrics"], input=body, capture_output=True, timeout=30
    )
    assert result.returncode == 0, (result.stdout + result.stderr).decode()


@pytest.mark.timeout(600)
def test_a_dead_letter_flood_on_the_worker_fires_its_alert(
    demo_data: Path, worker: Worker, tmp_path: Path
) -> None:
    """A third of the input is bad: the worker's own counters, scraped by the live
    Prometheus with the rules as written (but ``for: 10s``), fire the alert."""
    with run_prometheus([worker], tmp_path / "prometheus", rule_for="10s") as prom:
        assert wait_for(lambda: prom.scalar('up{job="feedback-worker"}') == 1, 30)

        def firing() -> dict[str, Any]:
            alerts = prom.api("/api/v1/alerts")["data"]["alerts"]
            return {a["labels"]["alertname"]: a for a in alerts if a["state"] == "firing"}

        stats = produce(worker, "--dataset", "demo", "--data-dir", str(demo_data),
                        "--limit", "3000", "--bad-rate", "0.3")
        assert stats["bad_injected"] > 500, stats
        assert wait_for(lambda: "FeedbackDeadLetterRateHigh" in firing(), 180, interval=2), (
            prom.api("/api/v1/alerts")
        )
        alert = firing()["FeedbackDeadLetterRateHigh"]
        assert alert["labels"]["severity"] == "warning"
        assert 0.05 < float(alert["value"]) < 1
        assert worker.metric("feedback_deadletter_total") > 500


@pytest.mark.timeout(600)
def test_scaling_out_moves_partitions_as_the_dashboard_shows(
    demo_data: Path, worker_factory: Any, tmp_path: Path
) -> None:
    """`docker compose up --scale worker=2` while traffic flows, on the embedded broker.

    One worker owns every input partition and processes events; a second joins
    the consumer group. Once the group has settled, every partition must be
    reported by exactly one worker (the lag and assignment panels and the lag
    alert count each partition once: a revoked partition's frozen gauge would
    show phantom lag), and both workers must process events.
    """
    first: Worker = worker_factory()
    with run_prometheus([first], tmp_path / "prometheus") as prom:
        partitions = first.settings.partitions * len(first.settings.input_topics)
        owned = "count by (topic, partition) (feedback_consumer_lag_messages)"

        def reported_by(expect: set[int]) -> bool:
            counts = [int(r["value"][1]) for r in prom.query(owned)["data"]["result"]]
            return len(counts) == partitions and set(counts) == expect

        before, after = demo_slices(tmp_path, [3000, 3000])
        sent = produce(first, "--file", str(before))["sent"]
        assert wait_for(lambda: prom.scalar("sum(feedback_events_total)") >= sent, 240, 1)
        assert wait_for(lambda: reported_by({1}), 30), "one worker reports every partition"

        second: Worker = worker_factory(
            settings=dataclasses.replace(
                first.settings, web_port=free_port(), state_dir=str(tmp_path / "second")
            )
        )
        # Prometheus picks up the new replica as DNS discovery would: reload the targets.
        prom.set_targets([first, second])
        assert wait_for(lambda: prom.scalar('sum(up{job="feedback-worker"})') == 2, 30)
        # Produce the second slice only once the group has rebalanced: events sent
        # while the second worker is still joining all go to the first one.
        by_instance = "count by (instance) (feedback_consumer_lag_messages)"
        assert wait_for(
            lambda: len(prom.query(by_instance)["data"]["result"]) == 2 and reported_by({1}),
            timeout=60, interval=1,
        ), "the second worker never got partitions"
        second_slice_at = time.time()
        sent += produce(first, "--file", str(after))["sent"]
        assert wait_for(lambda: prom.scalar("sum(feedback_events_total)") >= sent, 120, 1), (
            f"{prom.scalar('sum(feedback_events_total)')} of {sent} events handled after the"
            f" rebalance; lag: {prom.query('feedback_consumer_lag_messages > 0')['data']}\n"
            f"first worker's log:\n{first.log()[-4000:]}\n"
            f"second worker's log:\n{second.log()[-4000:]}"
        )

        assert wait_for(lambda: reported_by({1}), timeout=30, interval=1), (
            "partitions reported by more than one worker after the rebalance:\n"
            + json.dumps(prom.query(f"{owned} > 1")["data"]["result"])
        )
        per_worker = prom.query(by_instance)
        assert len(per_worker["data"]["result"]) == 2, "both workers own partitions"
        # Over the whole time since the second slice, however long the loaded
        # machine took to handle it (a fixed [1m] window could end too early).
        window = int(time.time() - second_slice_at) + 10
        busy = f"count(sum by (instance) (increase(feedback_events_total[{window}s])) > 0)"
        assert prom.scalar(busy) == 2, "both workers processed events"
