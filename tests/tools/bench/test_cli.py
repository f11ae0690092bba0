"""The bench command line refuses bad arguments before starting anything.

Nothing here is timed.
"""

from __future__ import annotations

import pytest

from tools.bench import main


def test_cli_refuses_unknown_references() -> None:
    assert main(["--references", "raw,bogus"]) == 2
    assert main(["--events", "10"]) == 2


def test_faust_settings_reach_faust_through_its_own_environment_variables() -> None:
    from tools.bench.processes import faust_env

    env = faust_env([("stream_buffer_maxsize", "1024"), ("broker_commit_interval", "10"),
                     ("Monitor", "lean")])
    assert env == {"STREAM_BUFFER_MAXSIZE": "1024", "BROKER_COMMIT_INTERVAL": "10",
                   "FEEDBACK_FAUST_MONITOR": "lean"}


def test_cli_refuses_unknown_faust_settings() -> None:
    assert main(["--faust-setting", "stream_bufer_maxsize=1"]) == 2
    assert main(["--faust-setting", "Monitor=off"]) == 2
    assert main(["--workers", "-1"]) == 2


def test_a_faust_app_reads_those_variables_over_its_own_arguments(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import faust

    from tools.bench.processes import faust_env

    for name, value in faust_env([("stream_buffer_maxsize", "1024"),
                                  ("producer_max_batch_size", "16384")]).items():
        monkeypatch.setenv(name, value)
    conf = faust.App("bench-test", producer_max_batch_size=262144).conf
    assert conf.stream_buffer_maxsize == 1024
    assert conf.producer_max_batch_size == 16384


@pytest.mark.parametrize("rate", ["0", "-5", "fast"])
def test_cli_refuses_an_offered_rate_that_is_no_positive_number(
    rate: str, capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["--offered-rate", rate])
    assert stop.value.code == 2
    assert "--offered-rate" in capsys.readouterr().err


def test_a_fixed_offered_rate_overrides_the_fraction_of_the_measured_maximum() -> None:
    from tools.bench.phases import offered_rate

    assert offered_rate(600.0, 0.5, None) == 300.0
    assert offered_rate(600.0, 0.5, 250.0) == 250.0
    assert offered_rate(None, 0.5, 250.0) == 250.0  # nothing measured: the fixed rate still runs
    assert offered_rate(None, 0.5, None) is None
    assert offered_rate(0.0, 0.5, None) is None
