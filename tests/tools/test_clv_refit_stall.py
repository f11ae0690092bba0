"""The loop-stall measurement of the customer-value refit."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tools.clv_refit_stall import main


def write_purchases(path: Path, customers: int = 60) -> None:
    lines = []
    for c in range(customers):
        for k in range(1 + c % 4):
            day = 1 + (c + 7 * k) % 27
            lines.append(orjson.dumps({
                "type": "purchase", "event_id": f"p{c}-{k}", "user_id": f"u{c}",
                "item_id": f"i{k}", "timestamp": f"2024-03-{day:02d}T10:00:00Z",
                "quantity": 1, "price": 5.0 + c % 9,
            }))  # fmt: skip
    path.write_bytes(b"\n".join(lines) + b"\n")


def test_both_modes_refit_and_report_their_stalls(tmp_path: Path, capsys) -> None:
    path = tmp_path / "p.jsonl"
    write_purchases(path)
    assert main([str(path), "--repeats", "1"]) == 0
    out = orjson.loads(capsys.readouterr().out)
    assert out["customers"] == 60
    for mode in ("inline", "thread"):
        assert out[mode]["refit_seconds"] > 0
        assert out[mode]["max_stall_ms"] >= out[mode]["p99_gap_ms"] > 0


def test_a_missing_file_is_one_line(tmp_path: Path, capsys) -> None:
    assert main([str(tmp_path / "none.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such file" in err


def test_repeats_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main([str(tmp_path / "x.jsonl"), "--repeats", "0"])
