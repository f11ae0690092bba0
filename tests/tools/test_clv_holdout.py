"""evaluate --holdout-from: customer value frozen at a date, checked against what followed."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import pytest

from tools import evaluate
from tools.clv_holdout import _group_bounds, top_decile_share

START = datetime(2020, 1, 1, tzinfo=UTC).timestamp()
DAY = 86_400.0


def customers_file(tmp_path: Path, n: int = 300, days: int = 400, seed: int = 5) -> Path:
    """Purchases drawn from an MBG/NBD population with Gamma-Gamma spend, time-ordered."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(n):
        lam = rng.gamma(0.8, 1 / 15.0)
        p = rng.beta(1.0, 3.0)
        nu = rng.gamma(4.0, 1 / 60.0)
        t = rng.uniform(0, 90)
        alive = True
        while alive and t < days:
            qty = int(rng.integers(1, 4))
            price = round(float(rng.gamma(5.0, 1 / nu)) / qty, 2)
            rows.append((t, {
                "type": "purchase", "event_id": f"e{c}-{t:.3f}", "user_id": f"c{c}",
                "item_id": f"i{rng.integers(40)}", "quantity": qty, "price": price,
            }))  # fmt: skip
            alive = rng.random() >= p
            t += rng.exponential(1 / lam)
    rows.sort(key=lambda r: r[0])
    lines = []
    for t, row in rows:
        stamp = datetime.fromtimestamp(START + t * DAY, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        lines.append(orjson.dumps({**row, "timestamp": stamp}) + b"\n")
    path = tmp_path / "customers.jsonl"
    path.write_bytes(b"".join(lines))
    return path


def test_holdout_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = customers_file(tmp_path)
    assert evaluate.main([str(path), "--json", "--holdout-from", "2020-10-27"]) == 0
    result = json.loads(capsys.readouterr().out)
    cutoff = datetime(2020, 10, 27, tzinfo=UTC).timestamp()
    buyers_before = {
        row["user_id"] for row in map(orjson.loads, path.read_bytes().splitlines())
        if datetime.fromisoformat(row["timestamp"].replace("Z", "+00:00")).timestamp() < cutoff
    }  # fmt: skip
    assert result["clv_customers"] == len(buyers_before)
    assert result["clv_horizon_days"] > 60
    # on data drawn from the model's own family the model beats repeating past rates
    assert result["clv_purchases_mae"] < result["clv_purchases_mae_naive"]
    assert result["clv_spend_mae"] < result["clv_spend_mae_naive"]
    assert 0.5 < result["churn_auc"] <= 1 and 0 <= result["churn_brier"] < 0.25
    for what in ("purchases", "spend"):
        for stat in ("mean", "median"):
            assert result[f"clv_{what}_mae_oracle_group_{stat}"] > 0
    assert result["clv_actual_to_past_rate"] > 0
    for what in ("purchases", "spend"):
        assert result[f"clv_{what}_rmse"] >= result[f"clv_{what}_mae"]
        assert result[f"clv_{what}_rmse_naive"] >= result[f"clv_{what}_mae_naive"]
        assert 0 < result[f"clv_{what}_top_decile_share_naive"] <= 1
        assert 0.1 < result[f"clv_{what}_top_decile_share"] <= 1
    assert result["clv_params"]["fits"] >= 1
    lifetimes = result["lifetimes"]
    for convention in ("same_statistics", "own_convention"):
        assert lifetimes[convention]["purchases_mae"] > 0
    information = result["information"]
    for measure in ("list_entropy", "catalogue_coverage", "exposure_gini"):
        assert set(information[measure]) == {"blend", "popularity", "explore"}
    assert information["catalogue_coverage"]["popularity"] <= 1.0


def test_bad_holdout_date_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = customers_file(tmp_path, n=5)
    with pytest.raises(SystemExit) as exc:
        evaluate.main([str(path), "--holdout-from", "next tuesday"])
    assert exc.value.code == 2
    assert "--holdout-from: not a date: 'next tuesday'" in capsys.readouterr().err


def test_oracle_group_bounds() -> None:
    # two groups: one-off buyers with a naive forecast of 0, and 5-repeat buyers
    x = np.array([0, 0, 0, 5, 5])
    naive = np.array([0.0, 0.0, 0.0, 3.0, 3.0])
    actual = np.array([0.0, 0.0, 3.0, 4.0, 6.0])
    bounds = _group_bounds(x, naive, actual, 10 * actual)
    # group means 1 and 5: |errors| 1 1 2 1 1; group medians 0 and 5: 0 0 3 1 1
    assert bounds["clv_purchases_mae_oracle_group_mean"] == pytest.approx(6 / 5)
    assert bounds["clv_purchases_mae_oracle_group_median"] == pytest.approx(5 / 5)
    assert bounds["clv_spend_mae_oracle_group_mean"] == pytest.approx(60 / 5)


def test_top_decile_share() -> None:
    actual = np.arange(20, dtype=float)  # total 190; the top two made 19 + 18
    assert top_decile_share(actual, actual) == pytest.approx(37 / 190)
    assert top_decile_share(-actual, actual) == pytest.approx(1 / 190)
    # ties (a naive forecast of 0 for most customers) are ranked in customer order
    assert top_decile_share(np.zeros(20), actual) == pytest.approx(1 / 190)
    assert np.isnan(top_decile_share(np.ones(3), np.zeros(3)))
