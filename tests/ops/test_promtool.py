"""Prometheus configuration and alert rules, checked by Prometheus' own promtool.

``promtool test rules`` runs ops/prometheus/rules.test.yml: synthetic series fed
through the real rule engine, asserting which alerts fire, when, with which
labels and rendered annotations. promtool comes from ops/install-prometheus.sh.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PROM = REPO / "ops" / "prometheus"
CONFIGS = ["prometheus.yml", "prometheus.local.yml"]
SEVERITIES = {"critical", "warning"}
REQUIRED_ALERTS = {
    "FeedbackWorkerDown",
    "FeedbackNoEventsProcessed",
    "FeedbackConsumerLagHigh",
    "FeedbackDeadLetterRateHigh",
    "FeedbackProcessingLatencyHigh",
    "FeedbackRecommendationQualityDropping",
    "FeedbackAlertFlood",
}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    assert tool, "promtool is not on PATH: run ops/install-prometheus.sh"
    return subprocess.run(
        [tool, *args], capture_output=True, text=True, timeout=120, cwd=PROM
    )


def alert_rules() -> list[dict]:
    groups = yaml.safe_load((PROM / "rules.yml").read_text())["groups"]
    return [r for g in groups for r in g["rules"] if "alert" in r]


@pytest.mark.parametrize("config", CONFIGS)
def test_promtool_check_config(config: str) -> None:
    result = promtool("check", "config", config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    assert "1 rule files found" in result.stdout, "the rules must be loaded by every config"


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", "rules.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    groups = yaml.safe_load((PROM / "rules.yml").read_text())["groups"]
    assert f"SUCCESS: {sum(len(g['rules']) for g in groups)} rules found" in result.stdout


def test_promtool_rule_unit_tests() -> None:
    result = promtool("test", "rules", "rules.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_unit_tested_firing() -> None:
    """Each alert appears in rules.test.yml at least once with a non-empty exp_alerts."""
    tests = yaml.safe_load((PROM / "rules.test.yml").read_text())["tests"]
    fired = {
        case["alertname"]
        for t in tests
        for case in t.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    names = {r["alert"] for r in alert_rules()}
    assert names - fired == set(), f"alerts never shown firing in a unit test: {names - fired}"


def test_alerts_follow_the_conventions() -> None:
    rules = alert_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)), "duplicate alert names"
    assert set(names) >= REQUIRED_ALERTS
    runbook = (REPO / "docs" / "operations.md").read_text().lower()
    for rule in rules:
        name = rule["alert"]
        assert rule.get("for"), f"{name}: no `for:` (pages on one bad scrape)"
        assert rule["labels"]["severity"] in SEVERITIES, name
        notes = rule["annotations"]
        assert notes.get("summary") and notes.get("description"), name
        anchor = f"docs/operations.md#{name.lower()}"
        assert notes.get("runbook_url") == anchor, name
        # The runbook has a section whose heading makes that anchor.
        assert f"### {name.lower()}" in runbook, f"docs/operations.md has no section {name}"
