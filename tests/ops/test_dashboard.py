"""The Grafana dashboard and the alert rules against the metrics the worker exports.

Every metric name a panel or a rule queries must be one that ``stream.metrics``
declares (or a standard series: ``up`` and the client library's ``process_*``),
every panel must have a query, every query must parse (promtool, offline), and
the dashboard must cover what operators need. Whether each panel really returns
data from a live worker is tests/integration/test_prometheus_live.py's job.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from stream.metrics import NAMESPACE, Metrics

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "ops" / "grafana" / "dashboards" / "feedback-stream.json"
RULES = REPO / "ops" / "prometheus" / "rules.yml"
DATASOURCES = REPO / "ops" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
# Grafana's built-in interval variables and the dashboard's own (job, instance), and
# what the offline checks put in their place.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h",
    "$job": "feedback-worker", "$instance": ".*",
}
DASHBOARD_VARIABLES = ["datasource", "job", "instance"]
PROMQL_WORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
    "group_right", "offset", "bool", "inf", "nan",
}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict[str, Any]]:
    out = []
    for p in dashboard()["panels"]:
        out.extend([p, *p.get("panels", [])])  # collapsed rows nest their panels
    return [p for p in out if p["type"] != "row"]


def dashboard_exprs() -> Iterator[tuple[str, str]]:
    for p in panels():
        for t in p.get("targets", []):
            yield f"{p['title']} [{t.get('refId')}]", t.get("expr", "")


def rule_exprs() -> Iterator[tuple[str, str]]:
    for g in yaml.safe_load(RULES.read_text())["groups"]:
        for r in g["rules"]:
            yield r.get("alert") or r["record"], r["expr"]


def substitute(expr: str) -> str:
    for var, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(var, value)
    return expr


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, labels and keywords removed)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', substitute(expr))  # string literals
    e = re.sub(r"\{[^}]*\}", "{}", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)  # ranges
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    names = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", e):
        if m.group(1).lower() not in PROMQL_WORDS:
            names.add(m.group(1))
    return names


def exported_names() -> set[str]:
    """Every series name the worker can export, from the metric families' types."""
    registry = CollectorRegistry()
    Metrics(registry)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    suffixes = {
        "counter": ["_total", "_created"],
        "histogram": ["_bucket", "_sum", "_count", "_created"],
        "summary": ["_sum", "_count", "_created"],
        "gauge": [""],
        "info": ["_info"],
        "untyped": [""],
    }
    names = {"up", "ALERTS"}  # written by Prometheus: per target, per alert
    names |= {r["record"] for g in yaml.safe_load(RULES.read_text())["groups"]
              for r in g["rules"] if "record" in r}
    for family in registry.collect():
        names.update(family.name + s for s in suffixes[family.type])
        names.update(s.name for s in family.samples)
    return names


def test_metric_name_extraction() -> None:
    expr = (
        'sum by (type, le) (rate(feedback_event_processing_seconds_bucket{type="x",le="0.1"}'
        '[$__rate_interval])) / on () group_left sum(up{job="feedback-worker"} offset 5m)'
    )
    assert metric_names(expr) == {"feedback_event_processing_seconds_bucket", "up"}


def test_dashboard_is_well_formed() -> None:
    d = dashboard()
    assert d["uid"] == "feedback-stream" and d["title"]
    assert d["schemaVersion"] >= 36
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert list(variables) == DASHBOARD_VARIABLES
    assert variables["datasource"]["query"] == "prometheus"
    every = [*d["panels"], *(q for p in d["panels"] for q in p.get("panels", []))]
    ids = [p["id"] for p in every]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    provisioned = yaml.safe_load(DATASOURCES.read_text())["datasources"][0]["uid"]
    assert variables["datasource"]["current"]["value"] == provisioned
    uid = "${datasource}"  # every panel follows the datasource variable
    occupied: set[tuple[int, int]] = set()
    for p in d["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        cells = {(g["y"] + dy, g["x"] + dx) for dy in range(g["h"]) for dx in range(g["w"])}
        assert not cells & occupied, f"panel {p['title']!r} overlaps another"
        occupied |= cells
    for p in panels():
        assert p["title"] and p.get("description"), "every panel says what it shows"
        assert p["datasource"]["uid"] == uid, f"{p['title']}: not the provisioned datasource"
        targets = p.get("targets", [])
        assert targets, f"panel {p['title']!r} has no query"
        ref_ids = [t["refId"] for t in targets]
        assert len(ref_ids) == len(set(ref_ids)), p["title"]
        for t in targets:
            assert t.get("expr", "").strip(), f"panel {p['title']!r} has an empty query"
            assert t["datasource"]["uid"] == uid


def test_only_grafana_builtin_variables() -> None:
    for where, expr in dashboard_exprs():
        leftover = re.findall(r"\$\{?\w+", substitute(expr))
        assert not leftover, f"{where}: unknown variable {leftover}"


@pytest.mark.parametrize(
    "source", [dashboard_exprs, rule_exprs], ids=["dashboard", "rules"]
)
def test_every_metric_queried_is_exported(source: Any) -> None:
    known = exported_names()
    assert f"{NAMESPACE}_events_total" in known  # the helper itself works
    for where, expr in source():
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        unknown = names - known
        assert not unknown, f"{where}: {sorted(unknown)} not exported by the worker"


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """promtool has no offline PromQL parser, but it parses recording rules: wrap each."""
    tool = shutil.which("promtool")
    assert tool, "promtool is not on PATH: run ops/install-prometheus.sh"
    rules = [
        {"record": f"dashboard:query_{i}", "expr": substitute(expr)}
        for i, (_, expr) in enumerate(dashboard_exprs())
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([tool, "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_dashboard_covers_what_operators_need() -> None:
    """The issue's list: throughput by type, latency percentiles, lag, dead letters by
    reason, recommendations and alerts emitted, hit rate, rating error, sentiment,
    segment sizes."""
    exprs = [e for _, e in dashboard_exprs()]

    def has(*parts: str) -> bool:
        return any(all(p in e for p in parts) for e in exprs)

    assert has("feedback_events_total", "by (type)")
    for q in ("0.5", "0.95", "0.99"):
        assert has(f"histogram_quantile({q}", "feedback_event_processing_seconds_bucket")
    assert has("histogram_quantile(0.99", "feedback_event_to_recommendation_seconds_bucket")
    assert has("feedback_consumer_lag_messages", "by (topic)")
    assert has("feedback_deadletter_total", "by (reason")
    assert has("feedback_recommendations_emitted_total", "by (strategy)")
    assert has("feedback_alerts_emitted_total", "by (kind")
    assert has("feedback_model_hits_total", "feedback_model_positive_events_total")
    assert has("feedback_model_rating_absolute_error_sum", "_count")
    assert has("feedback_review_sentiment_positive_probability")
    assert has("feedback_segment_users", "by (segment)")
    # the information measures (docs/models.md)
    assert has("feedback_recommendation_list_entropy_bits", "by (strategy)")
    assert has("feedback_recommendation_catalogue_coverage_ratio", "by (strategy)")
    assert has("feedback_recommendation_exposure_gini", "by (strategy)")
    assert has("feedback_behaviour_divergence_bits", "by (distribution)")


def test_every_worker_series_follows_the_job_and_instance_variables() -> None:
    for where, expr in dashboard_exprs():
        for m in re.finditer(r"(?<![\w:])(feedback_\w+|process_\w+|up)\b(\{[^}]*\})?", expr):
            assert m.group(2) and 'job=~"$job"' in m.group(2), f"{where}: {m.group(0)}"
            assert 'instance=~"$instance"' in m.group(2), f"{where}: {m.group(0)}"


def unit_of(panel: dict[str, Any], series: str) -> tuple[str, str]:
    """(unit, axis placement) of a series, after the panel's overrides."""
    unit = panel["fieldConfig"]["defaults"].get("unit", "")
    axis = panel["fieldConfig"]["defaults"].get("custom", {}).get("axisPlacement", "auto")
    for o in panel["fieldConfig"].get("overrides", []):
        if re.search(o["matcher"]["options"], series):
            for prop in o["properties"]:
                if prop["id"] == "unit":
                    unit = prop["value"]
                if prop["id"] == "custom.axisPlacement":
                    axis = prop["value"]
    return unit, axis


def test_units() -> None:
    by_title = {p["title"]: p for p in panels()}
    assert unit_of(by_title["Alerts emitted per minute"], "x")[0] == "opm"
    assert unit_of(by_title["Worker CPU (share of one core)"], "x")[0] == "percentunit"
    revenue = by_title["Attributed revenue per hour, by currency"]
    assert "by (currency" in revenue["targets"][0]["expr"]
    assert unit_of(revenue, "GBP blend")[0] == "currencyGBP"
    assert unit_of(revenue, "EUR blend")[0] == "currencyEUR"
    assert revenue["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] == "none"
    for p in panels():
        if p["type"] in ("timeseries", "stat"):
            assert p["fieldConfig"]["defaults"].get("unit") not in (None, ""), p["title"]
        assert not ("* 60" in " ".join(t["expr"] for t in p.get("targets", []))
                    and unit_of(p, "")[0] != "opm"), f"{p['title']}: per minute needs opm"


def test_one_unit_per_axis() -> None:
    """Series of different units in one panel are on different axes (legend names
    stand in for the series names the overrides match)."""
    for p in panels():
        if p["type"] != "timeseries":
            continue
        axes: dict[str, set[str]] = {}
        for t in p["targets"]:
            legend = re.sub(r"\{\{\w+\}\}", "x", t.get("legendFormat", ""))
            unit, axis = unit_of(p, legend)
            if unit.startswith("currency"):
                continue  # one axis per currency by construction: never summed
            axes.setdefault(axis, set()).add(unit)
        for axis, units in axes.items():
            assert len(units) == 1, f"{p['title']}: units {units} on the {axis} axis"


def test_firing_alerts_panel() -> None:
    exprs = [e for _, e in dashboard_exprs()]
    assert 'ALERTS{alertstate=~"firing|pending"}' in exprs
