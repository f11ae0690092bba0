"""tools.handle_profile: the py-spy raw summary."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.shared_data import data_dir
from tools.handle_profile import RankingClock, main, summarise


def test_inclusive_shares_count_a_function_once_per_sample(tmp_path: Path) -> None:
    raw = tmp_path / "spy.txt"
    raw.write_text(
        "run (a.py:1);handle (p.py:5);score (r.py:9) 3\n"
        "run (a.py:1);handle (p.py:5);handle (p.py:7) 1\n"
        "run (a.py:1);decode (c.py:2) 4\n"
    )
    shares = dict((name, share) for share, name in summarise(raw, 10))
    assert shares == {"run (a.py)": 1.0, "decode (c.py)": 0.5, "handle (p.py)": 0.5,
                      "score (r.py)": 0.375}


def test_a_missing_raw_file_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "none.txt"
    assert main(["--summarise", str(missing)]) == 2
    assert capsys.readouterr().err.strip() == f"handle_profile: no such file: {missing}"


def test_the_run_counts_the_rankings_it_times(capsys: pytest.CaptureFixture[str]) -> None:
    root = data_dir("online_retail", "womens_clothing_reviews")
    assert main(["--events", "900", "--batch", "50", "--data-dir", str(root)]) == 0
    rate, rankings = capsys.readouterr().out.splitlines()
    assert rate.startswith("600 events timed: ")
    calls = int(rankings.split(" rankings")[0].replace(",", ""))
    assert 0 < calls < 600
    assert f"({calls / 600:.3f} per event)" in rankings and "us of CPU each" in rankings


def test_the_ranking_clock_counts_calls_and_passes_results_through() -> None:
    class Proc:
        def _recommend(self, x: int) -> int:
            return x + 1

    proc = Proc()
    clock = RankingClock(proc)
    assert proc._recommend(1) == 2 and proc._recommend(2) == 3
    assert clock.calls == 2 and clock.seconds >= 0.0
    clock.reset()
    assert (clock.calls, clock.seconds) == (0, 0.0)


def test_digest_is_reproducible_and_moves_with_what_is_emitted(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Two runs give the same hashes (no wall clock, no DP noise in them); an
    # engine that recommends differently gives another recommendations hash.
    args = ["--digest", "1500", "--data-dir", "../shared/data"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0
    assert capsys.readouterr().out == first
    assert "feedback.recommendations:" in first and "segments:" in first

    from models.recommender import BlendedRecommender

    original = BlendedRecommender.__init__

    def faster(self: BlendedRecommender, *a: object, **k: object) -> None:
        original(self, *a, **k)  # type: ignore[arg-type]
        self.blend_lr = 0.5

    monkeypatch.setattr(BlendedRecommender, "__init__", faster)
    assert main(args) == 0
    changed = capsys.readouterr().out
    line = [x for x in changed.splitlines() if x.startswith("feedback.recommendations:")]
    assert line and line[0] not in first
