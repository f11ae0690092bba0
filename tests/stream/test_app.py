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
