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

``$__rate_interval`` becomes ``1m``: what Grafana computes for the compose stack
(scrape interval 15 s: max(4 x 15 s, step + 15 s) over the default 1 h range).
With a 1 s scrape interval, a ``[1m]`` window holds enough samples within seconds.
"""

from __future__ import annotations

import json
import math
import os
import shutil
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

import pytest
import yaml

from tests.integration.conftest import REPO, Worker, settings_env, wait_for

pytestmark = pytest.mark.integration

PROM_DIR = REPO / "ops" / "prometheus"
DASHBOARD = REPO / "ops" / "grafana" / "dashboards" / "feedback-stream.json"
DATA = REPO.parent / "shared" / "data"
RATE_INTERVAL = "1m"
EVENTS = int(os.environ.get("FEEDBACK_LIVE_TEST_EVENTS", "20000"))
BAD_RATE = 0.01


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prometheus:
    """A Prometheus server process and a tiny client for its HTTP API."""

    def __init__(self, url: str, process: subprocess.Popen[bytes], log: Path) -> None:
        self.url = url
        self.process = process
        self.log = log

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
    if not DATA.is_dir():
        pytest.skip(f"shared datasets not found at {DATA}")
    return DATA


@pytest.fixture
def worker(worker_factory: Any) -> Worker:
    w: Worker = worker_factory()
    return w


@pytest.fixture
def prometheus(worker: Worker, tmp_path: Path) -> Iterator[Prometheus]:
    """Prometheus on a free loopback port, scraping ``worker`` every second."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus is not on PATH: run ops/install-prometheus.sh"
    # The local config of the repository, with the test's target and fast intervals.
    config = yaml.safe_load((PROM_DIR / "prometheus.local.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(PROM_DIR / f) for f in config["rule_files"]]
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "feedback-worker"]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{worker.settings.web_port}"]}]
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))

    port = free_port()
    log = tmp_path / "prometheus.log"
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
            "--log.level=warn",
        ],
        stdout=open(log, "ab"),  # noqa: SIM115 (closed with the process)
        stderr=subprocess.STDOUT,
    )
    prom = Prometheus(f"http://127.0.0.1:{port}", process, log)
    try:

        def ready() -> bool:
            assert process.poll() is None, f"prometheus exited:\n{prom.log_tail()}"
            try:
                with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=1) as resp:
                    return resp.status == 200
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


def dashboard_targets() -> list[tuple[str, str, str]]:
    """(panel title, refId, expr with Grafana's interval variable substituted)."""
    out = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for p in [panel, *panel.get("panels", [])]:
            for t in p.get("targets", []):
                expr = t["expr"].replace("$__rate_interval", RATE_INTERVAL)
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


def replay_demo(worker: Worker) -> dict[str, Any]:
    """`feedback-stream produce --dataset demo` into the worker's topics (real data)."""
    env = {**os.environ, **settings_env(worker.settings)}
    result = subprocess.run(
        [
            sys.executable, "-m", "tools.cli", "produce",
            "--dataset", "demo", "--data-dir", str(DATA),
            "--limit", str(EVENTS), "--bad-rate", str(BAD_RATE), "--quiet",
        ],
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
            if finite_values(result) == 0:
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
