"""The command line's answers to user errors: one line, a non-zero exit, no broker needed."""

from __future__ import annotations

import socket
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest

from tools import broker, cli, consume


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str]]:
    code = cli.main(list(argv))
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, err


def closed_port() -> int:
    return broker.free_port()


def test_missing_file_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, err = run(capsys, "produce", "--file", str(tmp_path / "nope.jsonl"))
    assert code == 2
    assert err == [f"feedback-stream: --file {tmp_path / 'nope.jsonl'}: no such file"]


def test_missing_data_dir_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, err = run(capsys, "produce", "--dataset", "demo", "--data-dir", str(tmp_path / "x"))
    assert code == 2 and len(err) == 1 and str(tmp_path / "x") in err[0]


def test_dataset_with_missing_files_names_the_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, err = run(capsys, "run", "--dataset", "cdnow", "--data-dir", str(tmp_path))
    assert code == 2 and len(err) == 1 and "CDNOW_master.txt.gz" in err[0]


def test_unreadable_dataset_file_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "movielens_latest_small").mkdir()
    bad = tmp_path / "movielens_latest_small" / "ratings.csv"
    bad.write_bytes(b"userId,movieId\n\xff\xfe\x00garbage\n")
    code, err = run(capsys, "convert", "movielens", "--out", "-", "--data-dir", str(tmp_path))
    assert code != 0 and len(err) == 1 and str(bad) in err[0]


def test_bad_bootstrap_address_is_a_setting_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEEDBACK_BOOTSTRAP_SERVERS", "kafka:notaport")
    code, err = run(capsys, "topics")
    assert code == 2
    assert err == ["feedback-stream: invalid setting: FEEDBACK_BOOTSTRAP_SERVERS: "
                   "port of 'kafka:notaport' is not a number in 1..65535"]


@pytest.mark.parametrize("command", [["topics"], ["consume", "feedback.alerts"]])
def test_unreachable_broker_is_one_line(
    capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    port = closed_port()
    code, err = run(capsys, *command, "--bootstrap-servers", f"127.0.0.1:{port}")
    assert code == 1
    assert len(err) == 1 and f"cannot reach the Kafka broker at 127.0.0.1:{port}" in err[0]


def test_unknown_feedback_variable_is_warned_about(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEEDBACK_PARTITON", "8")
    monkeypatch.setenv("FEEDBACK_BOOTSTRAP_SERVERS", "kafka:x")
    _, err = run(capsys, "topics")
    assert err[0] == ("feedback-stream: warning: FEEDBACK_PARTITON is not a setting and is "
                      "ignored (did you mean FEEDBACK_PARTITIONS?)")


def test_taken_port_is_refused_before_starting_anything() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(broker.BrokerError, match=f"127.0.0.1:{port} is already in use"):
            broker.start(port)


def test_a_bug_still_raises() -> None:
    assert cli.user_error(ZeroDivisionError("x")) == (None, 1)


def record(**fields: object) -> SimpleNamespace:
    base: dict[str, object] = {
        "topic": "feedback.deadletter", "partition": 2, "offset": 7, "timestamp": 1700000000000,
        "key": b"u1", "value": b'{"a":1}', "headers": [("deadletter.reason", b"missing_field")],
    }
    return SimpleNamespace(**{**base, **fields})


def test_consume_renders_plain_headers_and_json() -> None:
    assert consume.render(record(), as_json=False, headers=False) == '{"a":1}'
    assert consume.render(record(), as_json=False, headers=True).splitlines() == [
        "feedback.deadletter[2]@7 key=u1", "  deadletter.reason: missing_field", '{"a":1}',
    ]
    as_json = orjson.loads(consume.render(record(value=b"\xff not json"), as_json=True,
                                         headers=False))
    assert as_json["headers"] == {"deadletter.reason": "missing_field"}
    assert as_json["value"] == "\ufffd not json" and as_json["key"] == "u1"
    assert orjson.loads(consume.render(record(), as_json=True, headers=False))["value"] == {"a": 1}


def test_evaluate_of_a_missing_or_empty_file_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, err = run(capsys, "evaluate", str(tmp_path / "nope.jsonl"))
    missing = tmp_path / "nope.jsonl"
    assert code == 2 and err == [f"feedback-stream evaluate: {missing}: no such file"]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("not json\n")
    code, err = run(capsys, "evaluate", str(empty))
    assert code == 2 and len(err) == 1 and "no valid event" in err[0]


def test_a_sigterm_right_after_the_broker_line_stops_the_broker(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The line says the broker answers, so a caller may signal at once: the
    interrupt that arrives as the line is written still stops Tansu (exit 0)."""
    started = SimpleNamespace(pid=4242, wait=lambda: 0)
    stopped: list[object] = []
    monkeypatch.setattr(broker, "start", lambda port, host: started)
    monkeypatch.setattr(broker, "stop", stopped.append)
    lines: list[str] = []

    def print_then_interrupt(*args: object, **kwargs: object) -> None:
        lines.append(" ".join(map(str, args)))
        if len(lines) == 1:  # the signal lands as the first line is written
            raise KeyboardInterrupt

    monkeypatch.setattr("builtins.print", print_then_interrupt)
    try:
        code = cli.cmd_broker(SimpleNamespace(port=1, host="127.0.0.1"))
    except KeyboardInterrupt:
        pytest.fail("the interrupt escaped the command: Tansu left running")
    assert (code, stopped) == (0, [started])
    assert lines[-1] == "broker on 127.0.0.1:1 stopped"
