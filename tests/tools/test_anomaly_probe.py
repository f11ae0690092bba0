"""The anomaly probe: its River baseline, its AUC and its outlier injection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.alerts import BehaviourAnomaly
from tools.anomaly_probe import RiverTreesAnomaly, auc, inject, main


def test_the_river_baseline_scores_and_alerts_as_the_forest() -> None:
    rng = np.random.default_rng(0)
    qty, price = rng.integers(1, 13, 2000), rng.lognormal(1.0, 0.8, 2000)
    ratio, hours = rng.normal(0.0, 0.3, 2000), rng.exponential(30.0, 2000)  # ratio < 0 too
    rows = np.column_stack([qty, price, qty * price, ratio, hours]).tolist()
    rows[1500][0] = 5000.0
    river, forest = (
        RiverTreesAnomaly(300, 0.99, 0.5),
        BehaviourAnomaly(quantile=0.99, min_score=0.5, warmup=300),
    )
    for row in rows:
        assert river.score_learn_one(row) == forest.score_learn_one(row)
        assert river.threshold() == forest.threshold()


def test_auc_counts_ties_half() -> None:
    labels = np.array([False, False, True, True])
    assert auc(np.array([0.1, 0.2, 0.3, 0.4]), labels) == 1.0
    assert auc(np.array([0.4, 0.3, 0.2, 0.1]), labels) == 0.0
    assert auc(np.array([0.5, 0.5, 0.5, 0.5]), labels) == 0.5
    assert auc(np.array([0.1, 0.3, 0.3, 0.4]), labels) == 0.875


def test_inject_scales_one_percent_after_warmup() -> None:
    rows = [[1.0, 2.0, 2.0, 0.0, 1.0] for _ in range(1100)]
    out, labels = inject(rows, warmup=100, seed=0)
    assert not labels[:100].any() and 1 <= labels.sum() <= 10
    for i in np.flatnonzero(labels):
        k = out[i][0]
        assert 20.0 <= k <= 500.0 and out[i][2] == 2.0 * k and out[i][1] == 2.0
    assert rows[0] == [1.0, 2.0, 2.0, 0.0, 1.0]  # the input is left alone


def test_missing_dataset_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--data-dir", str(tmp_path / "nowhere")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("anomaly_probe: datasets folder") and err.count("\n") == 1
