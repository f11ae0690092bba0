"""tools.sharing_profile: every stage of the item-sharing path timed, offline."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests.shared_data import data_dir
from tools.sharing_profile import STAGES, main


def test_every_stage_runs_and_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    root = data_dir("online_retail")
    assert main(["--events", "600", "--batch", "100", "--publish-every", "2",
                 "--data-dir", str(root)]) == 0
    out = dict(line.split() for line in capsys.readouterr().out.splitlines())
    for stage in STAGES:
        assert float(out[f"{stage}_us_per_event"]) > 0.0
    # runs: fewer entries than the pairs they carry, and models reach the replica
    assert 0.0 < float(out["entries_per_event"]) < 10.0
    assert float(out["models_per_event"]) > 0.0


def test_workers_are_their_own_replicas(capsys: pytest.CaptureFixture[str]) -> None:
    root = data_dir("online_retail")
    args = ["--events", "600", "--batch", "100", "--publish-every", "2", "--partitions", "4",
            "--lag", "1", "--data-dir", str(root)]
    assert main([*args, "--workers", "2"]) == 0
    out = dict(line.split() for line in capsys.readouterr().out.splitlines())
    for stage in STAGES:
        assert float(out[f"{stage}_us_per_event"]) > 0.0
    assert float(out["models_per_event"]) > 0.0


def test_the_replica_s_slices_and_models_are_timed(capsys: pytest.CaptureFixture[str]) -> None:
    root = data_dir("online_retail")
    args = ["--events", "600", "--batch", "100", "--publish-every", "2", "--partitions", "4",
            "--lag", "2", "--workers", "1", "--data-dir", str(root)]
    assert main([*args, "--read-slices"]) == 0
    out = {k: float(v) for k, v in
           (line.split() for line in capsys.readouterr().out.splitlines())}
    assert 0.0 < out["replica_model_ms_p50"] <= out["replica_model_ms_max"]
    assert out["replica_model_ms_max"] <= out["replica_chunk_ms_max"]
    assert out["replica_chunk_ms_p50"] <= out["replica_chunk_ms_p99"] <= out["replica_chunk_ms_max"]
    assert main(args) == 0
    assert "replica_chunk_ms_p50" not in capsys.readouterr().out


def test_bad_arguments_are_one_line_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--batch", "0"]) == 2
    assert capsys.readouterr().err.strip() == "sharing_profile: --batch must be >= 1"
    assert main(["--lag", "-1"]) == 2
    assert capsys.readouterr().err.strip() == "sharing_profile: --lag must be >= 0"


def test_a_saved_run_is_compared_with_another(capsys: pytest.CaptureFixture[str],
                                              tmp_path: Path) -> None:
    """--save / --against: the same code gives the same owner outputs and replicas;
    a replica's number moved, or an owner's output changed, is reported."""
    root = data_dir("online_retail")
    args = ["--events", "600", "--batch", "100", "--publish-every", "2", "--partitions", "4",
            "--lag", "1", "--workers", "2", "--data-dir", str(root)]
    saved = tmp_path / "run.json"
    assert main([*args, "--save", str(saved)]) == 0
    capsys.readouterr()

    def against() -> dict[str, float]:
        assert main([*args, "--against", str(saved)]) == 0
        out = dict(line.split() for line in capsys.readouterr().out.splitlines())
        return {k: float(out[k]) for k in
                ("owner_same", "replica_max_rel_diff", "replica_shape_diffs")}

    assert against() == {"owner_same": 1.0, "replica_max_rel_diff": 0.0,
                         "replica_shape_diffs": 0.0}
    learnt = orjson.loads(saved.read_bytes())
    items = learnt["replicas"][1]["items"]
    item = next(i for i, s in items.items() if s["nb"])
    other = next(iter(items[item]["nb"]))
    items[item]["nb"][other] *= 1 + 1e-6
    learnt["owner"]["models"] = "0" * 64
    saved.write_bytes(orjson.dumps(learnt))
    moved = against()
    assert moved["owner_same"] == 0.0 and moved["replica_shape_diffs"] == 0.0
    assert moved["replica_max_rel_diff"] == pytest.approx(1e-6, rel=1e-3)
    del items[item]["nb"][other]
    saved.write_bytes(orjson.dumps(learnt))
    assert against()["replica_shape_diffs"] == 1.0
