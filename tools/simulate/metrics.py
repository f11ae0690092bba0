"""Reading the worker's attribution counters, and the simulator's own counts in the same form."""

from __future__ import annotations

import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass

from models.experiments import Rate, wilson
from tools.simulate.behaviour import Tally

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_metrics(text: str) -> Samples:
    """Prometheus text -> ``{(sample name, sorted labels): value}``."""
    from prometheus_client.parser import text_string_to_metric_families

    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return out


def fetch_metrics(url: str) -> Samples:
    """GET ``url`` (a worker's /metrics) and parse it."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        return parse_metrics(resp.read().decode())


def sum_by(samples: Samples, name: str, label: str) -> dict[str, float]:
    """Sum of ``name``'s samples grouped by the value of ``label``."""
    out: dict[str, float] = defaultdict(float)
    for (sample, labels), value in samples.items():
        if sample == name:
            out[dict(labels).get(label, "")] += value
    return dict(out)


@dataclass
class Counts:
    """Exposures, clicked and converted recommendations and revenue, per label value."""

    exposures: dict[str, int]
    clicked: dict[str, int]
    converted: dict[str, int]
    revenue: dict[str, float]
    clicks: dict[str, int]

    @classmethod
    def from_metrics(cls, samples: Samples, label: str) -> Counts:
        """The worker's attribution counters grouped by ``label`` (variant or strategy)."""

        def ints(name: str) -> dict[str, int]:
            return {k: round(v) for k, v in sum_by(samples, name, label).items()}

        return cls(
            ints("feedback_recommendation_exposures_total"),
            ints("feedback_recommendations_clicked_total"),
            ints("feedback_recommendations_converted_total"),
            sum_by(samples, "feedback_attributed_revenue_total", label),
            ints("feedback_attributed_clicks_total"),
        )

    @classmethod
    def from_tally(cls, tally: Tally) -> Counts:
        """The simulator's own counts (ground truth of what it did)."""
        return cls(
            dict(tally.exposures), dict(tally.clicked), dict(tally.converted), {},
            dict(tally.clicked),
        )

    def rates(self) -> tuple[dict[str, Rate], dict[str, Rate]]:
        """CTR and conversion rate per label value, with Wilson intervals."""
        ctr, conv = {}, {}
        for key, n in sorted(self.exposures.items()):
            ctr[key] = wilson(min(self.clicked.get(key, 0), n), n)
            conv[key] = wilson(min(self.converted.get(key, 0), n), n)
        return ctr, conv


def subtract(final: Samples, baseline: Samples | None) -> Samples:
    """Counter samples of the measured phase: ``final - baseline``."""
    if baseline is None:
        return final
    return {key: value - baseline.get(key, 0.0) for key, value in final.items()}


def wait_drained(url: str, produced: int, timeout: float = 300.0) -> Samples:
    """Metrics once the worker has processed at least ``produced`` events (bounded wait)."""
    deadline = time.monotonic() + timeout
    samples = fetch_metrics(url)
    while time.monotonic() < deadline:
        done = sum(v for (n, _), v in samples.items() if n == "feedback_events_total")
        if done >= produced:
            break
        time.sleep(0.5)
        samples = fetch_metrics(url)
    return samples
