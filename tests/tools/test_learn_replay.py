"""tools.learn_replay: recorded learning calls, replayed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.learn_replay import main, record, replay_bpr, replay_cooccurrence


def test_a_replay_learns_what_the_engine_learnt() -> None:
    calls = record(600, Path("../shared/data"))
    assert len(calls["co-occurrence"]) == 600  # every event teaches co-occurrence
    assert calls["BPR"]
    # Replays are deterministic: the same state twice, and another with one call less.
    assert replay_cooccurrence(calls["co-occurrence"])[1] == replay_cooccurrence(
        calls["co-occurrence"]
    )[1]
    assert replay_cooccurrence(calls["co-occurrence"][:-1])[1] != replay_cooccurrence(
        calls["co-occurrence"]
    )[1]
    assert replay_bpr(calls["BPR"])[1] != replay_bpr(calls["BPR"][:-1])[1]


def test_bad_counts_are_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--rounds", "0"]) == 2
    assert capsys.readouterr().err.strip() == (
        "learn_replay: --events and --rounds must be at least 1"
    )


def test_against_another_checkout_replays_both_alike(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--events", "300", "--rounds", "2", "--data-dir", "../shared/data"]
    assert main([*args, "--against", "."]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "co-occurrence learn_one, 300 calls" and lines[3].startswith("BPR")
    assert [x.split(":")[0] for x in (lines[1], lines[2], lines[4], lines[5])] == [
        "  .", "  this checkout", "  .", "  this checkout"
    ]
    # the same code learns the same state
    assert lines[1].rsplit("state ", 1)[1] == lines[2].rsplit("state ", 1)[1]
    assert lines[4].rsplit("state ", 1)[1] == lines[5].rsplit("state ", 1)[1]
    assert main([*args, "--against", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"learn_replay: no models/ in {tmp_path}"
