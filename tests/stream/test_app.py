"""The Faust app as build_app wires it, without a broker."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from models.engine import FeedbackEngine
from stream.app import build_app
from stream.settings import Settings


@pytest.mark.parametrize("raw, expected", [("1", True), ("0", False)])
def test_the_offset_trace_is_a_validated_setting_the_consumer_receives(
    raw: str, expected: bool, tmp_path: object
) -> None:
    settings = Settings.from_env(
        {"FEEDBACK_TRACE_OFFSETS": raw, "FEEDBACK_STATE_DIR": str(tmp_path)}
    )
    fa = build_app(settings, engine=FeedbackEngine(), registry=CollectorRegistry())
    assert settings.trace_offsets is expected
    assert (fa.app.transport.Consumer.offset_trace is not None) is expected


async def test_lag_is_dropped_not_frozen_while_the_broker_is_unreachable(tmp_path: object) -> None:
    from types import SimpleNamespace

    from faust.types import TP

    from stream.app import update_lag
    from stream.health import Health
    from stream.metrics import Metrics

    settings = Settings.from_env({"FEEDBACK_STATE_DIR": str(tmp_path)})

    class Consumer:
        def assignment(self) -> set[TP]:
            return {TP(settings.topic_clicks, 0)}

        def highwater(self, tp: TP) -> int:
            return 120

        async def position(self, tp: TP) -> int:
            return 100

    registry = CollectorRegistry()
    metrics = Metrics(registry)
    health = Health(settings, gauge=metrics.broker_reachable)
    fa = SimpleNamespace(app=SimpleNamespace(consumer=Consumer()), settings=settings,
                         metrics=metrics, lag_labels=set(), health=health)
    labels = {"topic": settings.topic_clicks, "partition": "0"}
    health.record_probe(None)
    await update_lag(fa)  # type: ignore[arg-type]
    assert registry.get_sample_value("feedback_consumer_lag_messages", labels) == 20
    health.record_probe("127.0.0.1:9092: refused")
    await update_lag(fa)  # type: ignore[arg-type]
    assert registry.get_sample_value("feedback_consumer_lag_messages", labels) is None
    assert registry.get_sample_value("feedback_broker_reachable") == 0


def test_the_worker_answers_liveness_and_readiness(tmp_path: object) -> None:
    settings = Settings.from_env({"FEEDBACK_STATE_DIR": str(tmp_path)})
    fa = build_app(settings, engine=FeedbackEngine(), registry=CollectorRegistry())
    paths = {str(path) for path in fa.app.web.views}
    assert {"/livez", "/healthz", "/readyz", "/metrics"} <= paths
    assert fa.health is not None and not fa.health.readiness()[0]
