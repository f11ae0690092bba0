"""Faust's main sensor: the worker's choice of Monitor, and what the lean one keeps."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from faust.sensors import Monitor
from faust.types import TP
from prometheus_client import CollectorRegistry

from models.engine import FeedbackEngine
from stream.app import build_app
from stream.faust.monitor import LeanMonitor
from stream.settings import Settings, SettingsError


@pytest.mark.parametrize("raw, expected", [(None, LeanMonitor), ("lean", LeanMonitor),
                                           ("faust", Monitor)])
def test_the_monitor_is_a_setting_faust_installs(
    raw: str | None, expected: type, tmp_path: object
) -> None:
    env = {"FEEDBACK_STATE_DIR": str(tmp_path)}
    if raw is not None:
        env["FEEDBACK_FAUST_MONITOR"] = raw
    fa = build_app(Settings.from_env(env), engine=FeedbackEngine(), registry=CollectorRegistry())
    assert type(fa.app.monitor) is expected


def test_an_unknown_monitor_is_refused_at_start_up() -> None:
    with pytest.raises(SettingsError, match="FEEDBACK_FAUST_MONITOR must be one of"):
        Settings.from_env({"FEEDBACK_FAUST_MONITOR": "off"})


def test_the_lean_monitor_keeps_only_when_each_partition_last_took_an_event() -> None:
    monitor = LeanMonitor()
    tp = TP("feedback.clicks", 3)
    stream = SimpleNamespace(task_owner=None)
    message = SimpleNamespace(time_in=None)
    monitor.on_message_in(tp, 7, message)  # type: ignore[arg-type]
    state = monitor.on_stream_event_in(tp, 7, stream, None)  # type: ignore[arg-type]
    monitor.on_stream_event_out(tp, 7, stream, None, state)  # type: ignore[arg-type]
    monitor.on_message_out(tp, 7, message)  # type: ignore[arg-type]
    # What Faust's consumer reads for its "stream idle" warning.
    assert tp in monitor.stream_inbound_time
    assert monitor.events_total == 0 and monitor.messages_received_total == 0
    assert message.time_in is None
    assert not monitor.events_runtime
