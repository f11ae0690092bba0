"""``python -m tools.sensor_cost`` runs every Monitor choice; nothing here is timed."""

from __future__ import annotations

import orjson
import pytest

from tools.sensor_cost import main, per_event_us


def test_it_prints_each_monitor_choice_and_no_sensor(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--events", "50", "--rounds", "1"]) == 0
    out = orjson.loads(capsys.readouterr().out)
    assert set(out["sensor_us_per_event"]) == {"faust", "lean", "none"}


def test_the_faust_monitor_counts_the_events_it_is_timed_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import tools.sensor_cost as tool

    apps = []
    real = tool._delegate

    def spy(monitor: str | None) -> object:
        sensors = real(monitor)
        apps.append(sensors.app)
        return sensors

    monkeypatch.setattr(tool, "_delegate", spy)
    per_event_us("faust", 30)
    assert apps[0].monitor.events_total == 30  # the hooks ran, through the app's sensors


def test_it_refuses_bad_arguments() -> None:
    assert main(["--events", "0"]) == 2
