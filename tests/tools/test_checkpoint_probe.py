"""tools.checkpoint_probe: what a checkpoint costs the batches, offline (nothing here is timed)."""

from __future__ import annotations

import orjson
import pytest

from tests.shared_data import data_dir
from tools.checkpoint_probe import main


def test_each_round_reports_its_batches_and_the_fork(capsys: pytest.CaptureFixture[str]) -> None:
    root = data_dir("online_retail", "womens_clothing_reviews")
    assert main(["--events", "300", "--users", "50", "--round-events", "60", "--batch", "10",
                 "--data-dir", str(root)]) == 0
    out = orjson.loads(capsys.readouterr().out)
    rounds = {r["round"]: r for r in out["rounds"]}
    assert [r["round"] for r in out["rounds"]] == ["idle", "fork", "fork+freeze", "idle"]
    for r in out["rounds"]:
        assert r["batch_cpu_ms_p50"] is not None and r["batch_cpu_ms_p50"] >= 0.0
        assert r["minor_faults_per_batch"] >= 0.0
    for mode in ("fork", "fork+freeze"):
        assert rounds[mode]["fork_cpu_ms"] is not None and rounds[mode]["fork_ms"] > 0.0
        assert rounds[mode]["fork_minor_faults"] >= 0
        assert rounds[mode]["child_seconds"] > 0.0
    assert rounds["idle"]["fork_ms"] is None and rounds["idle"]["child_seconds"] is None
