"""What the worker publishes about items and segments goes through stream/dp.py."""

from __future__ import annotations

import orjson
from prometheus_client import CollectorRegistry

from models.engine import FeedbackEngine
from stream.dp import FALLBACK_REASON, PAIR_REASONS
from stream.metrics import Metrics
from stream.processor import DictStore, InputMessage, Processor
from stream.settings import Settings

NOW = 1_800_000_000.0


def run(**overrides: object) -> tuple[list[str], Processor, CollectorRegistry]:
    """Reasons published when 30 customers bought a then b, and one more bought a."""
    settings = Settings.from_env({}, **overrides)
    registry = CollectorRegistry()
    proc = Processor(settings, FeedbackEngine(), DictStore(), Metrics(registry),
                     clock=lambda: NOW)
    events = []
    for u in range(30):
        for i, item in enumerate(("a", "b")):
            events.append({"type": "purchase", "event_id": f"u{u}-{i}", "user_id": f"u{u}",
                           "item_id": item, "timestamp": f"2024-01-01T10:{u:02d}:0{i}Z",
                           "quantity": 1, "price": 1.0})
    events.append({"type": "purchase", "event_id": "new", "user_id": "new", "item_id": "a",
                   "timestamp": "2024-01-01T11:00:00Z", "quantity": 1, "price": 1.0})
    out = proc.handle([
        InputMessage(settings.topic_purchases, 0, n, str(e["user_id"]).encode(),
                     orjson.dumps(e), NOW) for n, e in enumerate(events)
    ])
    new = [orjson.loads(o.value) for o in out if o.key == b"new" and o.value]
    return [i["reason"] for i in new[-1]["items"]], proc, registry


def test_a_supported_pair_keeps_its_bought_together_reason() -> None:
    reasons, _, _ = run(dp_epsilon=1e6, dp_min_pair_support=20)  # 30 customers: supported
    assert "bought together with a" in reasons


def test_an_unsupported_pair_gets_the_generic_reason() -> None:
    reasons, _, _ = run(dp_epsilon=1e6, dp_min_pair_support=31)  # 30 < 31
    assert not any(r.startswith(PAIR_REASONS) for r in reasons)
    assert FALLBACK_REASON in reasons


def test_segment_sizes_and_the_ledger_reach_the_metrics() -> None:
    _, proc, registry = run(dp_epsilon=1e6, dp_interval_seconds=3600)
    proc.tick()
    proc.tick()
    spent = registry.get_sample_value("feedback_dp_epsilon_spent", {"release": "segments"})
    assert spent == 1e6  # one release, cached for the interval
    assert registry.get_sample_value("feedback_dp_releases", {"release": "pairs"}) == 1
    sizes = [s.value for m in registry.collect() if m.name == "feedback_segment_users"
             for s in m.samples]
    exact = proc.engine.segment_sizes()
    assert sorted(round(v) for v in sizes) == sorted(
        exact.get(j, 0) for j in range(proc.engine.config.n_segments)
    )
