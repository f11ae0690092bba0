"""tools/evaluate.py: metrics, baselines and the command line on small files."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import pytest

from tools import evaluate

KEYS = {
    "positives", "hr_at_10", "hr_at_10_popularity", "rmse", "mae", "rmse_biased_mf",
    "mae_biased_mf", "sentiment_macro_f1", "sentiment_macro_f1_lexicon",
    "segmentation_silhouette", "segmentation_silhouette_offline_kmeans", "churn_auc",
    "churn_auc_recency", "alerts_by_kind", "events_per_second", "attribution",
}  # fmt: skip


def write(path: Path, rows: list[dict]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return path


def ratings_file(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(400):
        ts = 1_600_000_000 + i * 60
        rows.append(
            {
                "type": "review",
                "event_id": f"r{i}",
                "user_id": f"u{rng.integers(20)}",
                "item_id": f"m{rng.integers(30)}",
                "timestamp": f"2020-09-13T12:{(ts // 60) % 60:02d}:00Z",
                "rating": float(rng.integers(1, 6)),
            }
        )
    rows.append({"type": "review", "event_id": "bad"})  # rejected, counted
    return write(tmp_path / "ratings.jsonl", rows)


def test_json_output_has_every_key_and_nulls_where_unsupported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = ratings_file(tmp_path)
    assert evaluate.main([str(path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) >= KEYS
    assert result["rejected_lines"] == 1
    assert result["rmse"] > 0 and result["rmse_biased_mf"] > 0
    # HR@10 is a share of the positives; 10 of 30 items hit some of them, never all.
    hits = result["hr_at_10"] * result["positives"]
    assert result["positives"] > 0 and abs(hits - round(hits)) < 1e-9
    assert 0 < result["hr_at_10"] < 1
    # no text, no purchases, no clicks: those metrics are null
    assert result["sentiment_macro_f1"] is None and result["churn_auc"] is None
    assert result["attribution"] is None


def test_attribution_report_per_strategy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(1)
    rows = []
    for i in range(600):  # users who browse an item, then often buy it a minute later
        user, item, minute = f"u{rng.integers(25)}", f"sku{rng.integers(12)}", 2 * i
        for kind, m in (("click", minute), ("purchase", minute + 1)):
            if kind == "purchase" and rng.random() < 0.5:
                continue
            rows.append({"type": kind, "event_id": f"{kind}{i}", "user_id": user,
                         "item_id": item, "quantity": 1, "price": 2.0,
                         "timestamp": f"2021-01-01T{m // 60:02d}:{m % 60:02d}:00Z"})
    path = write(tmp_path / "shop.jsonl", rows)
    assert evaluate.main([str(path), "--json", "--variants", "blend,popularity"]) == 0
    report = json.loads(capsys.readouterr().out)["attribution"]
    assert set(report) == {"blend", "popularity", "blend_vs_popularity"}
    for strategy in ("blend", "popularity"):
        r = report[strategy]
        assert r["exposures"] > 0
        assert 0 <= r["ctr"]["lower"] <= r["ctr"]["value"] <= r["ctr"]["upper"] <= 1
        assert r["revenue"] == 2.0 * r["attributed_purchases"]
    assert sum(report[s]["attributed_clicks"] for s in ("blend", "popularity")) > 0
    assert evaluate.main([str(path), "--variants", ""]) == 0
    assert "attributed in the replay" not in capsys.readouterr().out
    assert evaluate.main([str(path)]) == 0
    assert "explore" in capsys.readouterr().out


def test_table_limit_and_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = ratings_file(tmp_path)
    assert evaluate.main([str(path), "--limit", "300", "--plot", str(tmp_path / "plots")]) == 0
    out = capsys.readouterr().out
    assert "300 events" in out and "HR@10" in out and "River BiasedMF" in out
    assert (tmp_path / "plots" / "hit_rate.png").stat().st_size > 0
    assert (tmp_path / "plots" / "rating_error.png").exists()


def test_churn_metrics_on_purchases(tmp_path: Path) -> None:
    rows = []
    n = 0
    for c in range(60):
        every = 5 + c  # customers with different rhythms; the first half stop early
        last_day = 300 if c % 2 else 150
        for day in range(0, last_day, every):
            n += 1
            month, dom = divmod(day, 28)
            stamp = f"2021-{month + 1:02d}-{dom + 1:02d}T10:{c % 60:02d}:00Z"
            rows.append(
                {
                    "type": "purchase",
                    "event_id": f"p{n}",
                    "user_id": f"c{c}",
                    "item_id": "x",
                    "quantity": 1,
                    "price": 3.0,
                    "timestamp": stamp,
                }
            )
    rows.sort(key=lambda r: str(r["timestamp"]))
    events, rejected = evaluate.read_events(write(tmp_path / "p.jsonl", rows))
    assert rejected == 0
    result = evaluate.evaluate(events)
    assert result["churn_customers"] == 60
    assert result["churn_auc"] is not None and result["churn_auc"] > 0.9
    assert result["rmse"] is None


def test_metric_helpers() -> None:
    assert evaluate.roc_auc(np.array([1.0, 2.0]), np.array([1, 0])) == 0.0
    assert evaluate.roc_auc(np.array([1.0, 1.0]), np.array([1, 0])) == 0.5
    assert evaluate.roc_auc(np.array([1.0]), np.array([1])) is None
    assert evaluate.macro_f1([True, False], [True, False]) == 1.0
    x = np.vstack([np.zeros((5, 2)), np.ones((5, 2)) * 10])
    labels = evaluate.kmeans(x, 2, seed=0)
    assert evaluate.silhouette(x, labels) == pytest.approx(1.0)
    assert evaluate.silhouette(x, np.zeros(10, dtype=int)) is None


def test_popularity_baseline_excludes_seen_items() -> None:
    base = evaluate.PopularityBaseline()
    from models.events import Event

    for i, item in enumerate(["a", "a", "a", "b", "b", "c"]):
        base.learn_one(Event("purchase", f"e{i}", f"u{i}", item, 0.0, quantity=1))
    assert base.hit("new", "a", 1)
    assert not base.hit("new", "b", 1) and base.hit("new", "b", 2)
    base.learn_one(Event("purchase", "x", "me", "a", 0.0, quantity=1))
    assert base.hit("me", "b", 1)  # "a" is excluded for me
    assert not base.hit("me", "a", 10)  # already seen
    assert not base.hit("me", "never-seen", 10)


def test_bench_mode(capsys: pytest.CaptureFixture[str]) -> None:
    assert evaluate.main(["--bench-items", "300", "--bench-events", "500", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["catalogue_items"] == 300 and result["events"] == 500
    assert result["events_per_second"] == pytest.approx(500 / result["seconds"])


def test_plots_of_short_series_draw_a_curve_over_the_event_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """13 ratings, 40 positives: every point is drawn, at the event count it was measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    captured: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    real_savefig = plt.Figure.savefig

    def capture(fig: plt.Figure, path: Path, **kwargs: object) -> None:
        ax = fig.axes[0]
        captured[Path(path).name] = [(line.get_xdata(), line.get_ydata()) for line in ax.lines]
        assert ax.get_xlabel() == "events replayed"
        assert ax.get_xlim()[1] == 500
        real_savefig(fig, path, **kwargs)

    series = {
        "events": 500,
        "hits": [i % 4 == 0 for i in range(40)], "pop_hits": [False] * 40,
        "hit_at": list(range(10, 410, 10)),
        "err": [0.5] * 13, "mf_err": [1.0] * 13, "err_at": list(range(30, 420, 30)),
        "sent_truth": [], "sent_pred": [], "lex_pred": [], "sent_at": [],
        "alert_at": [(100, "churn_risk"), (300, "churn_risk")],
    }
    monkeypatch.setattr(plt.Figure, "savefig", capture)
    written = evaluate.write_plots(series, tmp_path)
    assert sorted(p.name for p in written) == ["alerts.png", "hit_rate.png", "rating_error.png"]
    (hx, hy), _ = captured["hit_rate.png"]
    assert list(hx) == series["hit_at"] and len(hy) == 40 and hy[0] == 1.0
    (ex, ey), (_, mfy) = captured["rating_error.png"]
    assert list(ex) == series["err_at"] and list(ey) == [0.5] * 13 and list(mfy) == [1.0] * 13
    ((ax_, ay),) = captured["alerts.png"]
    assert list(ax_) == [0, 100, 300, 500] and list(ay) == [0, 1, 2, 2]


def pairs_file(tmp_path: Path) -> Path:
    """Every customer buys one of 60 pairs, first item then second: the second is a hit
    only for an engine that knows the pair, i.e. has seen an earlier buyer of it."""
    rng = np.random.default_rng(3)
    rows = []
    t = 1_600_000_000
    for user in range(600):
        k = int(rng.integers(60))
        for step, item in enumerate((f"a{k}", f"b{k}")):
            t += 60
            rows.append({
                "type": "purchase", "event_id": f"e{user}-{step}", "user_id": f"c{user}",
                "item_id": item, "quantity": 1, "price": 5.0,
                "timestamp": datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            })  # fmt: skip
    return write(tmp_path / "pairs.jsonl", rows)


def _run(path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    assert evaluate.main([str(path), "--json", "--variants", "", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_workers_report_the_same_keys_and_sharing_restores_the_hit_rate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = pairs_file(tmp_path)
    plain = _run(path, capsys)
    one = _run(path, capsys, "--workers", "1")
    shared = _run(path, capsys, "--workers", "4")
    alone = _run(path, capsys, "--workers", "4", "--share", "none")
    assert set(one) == set(shared) == set(alone) == set(plain) | {"scaleout"}
    assert shared["scaleout"]["workers"] == 4
    assert len(shared["scaleout"]["events_by_worker"]) == 4
    assert min(shared["scaleout"]["events_by_worker"]) > 0
    assert shared["scaleout"]["item_update_entries_applied"] > 0
    assert shared["scaleout"]["item_update_entries_skipped"] == 0
    # one worker through the owner learns what the plain engine learns
    assert one["hr_at_10"] == pytest.approx(plain["hr_at_10"], abs=0.01)
    # four workers: each sees a quarter of the buyers of a pair unless they share
    assert shared["hr_at_10"] >= plain["hr_at_10"] - 0.02
    assert alone["hr_at_10"] < shared["hr_at_10"] - 0.1


def test_two_workers_on_a_small_file_give_a_silhouette(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Half the pairs file per worker fits customer value on a few hours of
    # history; a NaN there reached the segment features and the silhouette.
    out = _run(pairs_file(tmp_path), capsys, "--workers", "2")
    assert out["segment_users"] > 0
    assert -1.0 <= out["segmentation_silhouette"] <= 1.0


def test_workers_with_the_attribution_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The replay's strategies reach the user's worker with their session context;
    # list information needs one catalogue numbering, so it is measured without workers.
    path = pairs_file(tmp_path)
    assert evaluate.main([str(path), "--json", "--workers", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["attribution"]["blend"]["exposures"] > 0
    assert out["information"] is None
    assert evaluate.main([str(path), "--json"]) == 0
    information = json.loads(capsys.readouterr().out)["information"]
    assert "blend" in information["list_entropy"] and "blend" in information["exposure_gini"]


def test_workers_bad_arguments_exit_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = ratings_file(tmp_path)
    for args in (["--workers", "0"], ["--share", "cooccurrence,nope"],
                 ["--item-model-period", "0"]):  # fmt: skip
        with pytest.raises(SystemExit) as exit_info:
            evaluate.main([str(path), "--workers", "2", *args] if args[0] != "--workers"
                          else [str(path), *args])  # fmt: skip
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("feedback-stream evaluate: error:")


def test_changelog_volume_is_measured_beside_whole_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = pairs_file(tmp_path)
    out = _run(path, capsys, "--workers", "4", "--changelog")["scaleout"]
    assert out["changelog_records"] > 0
    assert 0 < out["changelog_bytes"] <= out["changelog_bytes_whole_records"]
    assert out["changelog_records"] >= out["changelog_records_whole_records"] > 0
    assert "changelog_bytes" not in _run(path, capsys, "--workers", "4")["scaleout"]
    with pytest.raises(SystemExit):
        evaluate.main([str(path), "--changelog"])
    assert "--changelog needs --workers" in capsys.readouterr().err


def test_shift_only_counts_the_detectors_alerts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Clicks over 60 items; in the shifted copy, from event 20,000 on, a third go to 3 items."""
    rng = np.random.default_rng(5)
    start, n = 20_000, 26_000

    def clicks(shifted: bool) -> list[dict]:
        rows = []
        for i in range(n):
            item = f"i{rng.integers(60)}"
            if shifted and i >= start and rng.random() < 1 / 3:
                item = f"i{rng.integers(3)}"
            t = datetime.fromtimestamp(1_600_000_000 + 60 * i, UTC)
            rows.append({"type": "click", "event_id": f"c{i}", "user_id": f"u{rng.integers(500)}",
                         "item_id": item, "timestamp": t.strftime("%Y-%m-%dT%H:%M:%SZ")})
        return rows

    for shifted in (False, True):
        path = write(tmp_path / f"clicks-{shifted}.jsonl", clicks(shifted))
        assert evaluate.main([str(path), "--shift-only", "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["events"] == n and out["comparisons"] == n // 500 - 11
        assert out["per_100k_events"] == pytest.approx(1e5 * out["behaviour_shift"] / n)
        if shifted:
            assert start < out["alerts"][0]["event"] <= start + 2_000
            assert out["alerts"][0]["items"] > 0.02
        else:
            assert out["behaviour_shift"] == 0
