"""Variant assignment and the statistics of experiments."""

from __future__ import annotations

import math
import random
import subprocess
import sys

import pytest

from models.experiments import (
    Experiment,
    compare,
    compare_with_control,
    parse_variants,
    rate_ratio,
    wilson,
)

VARIANTS = {"blend": 1.0, "popularity": 1.0, "explore": 1.0}


def test_assignment_is_stable_across_processes() -> None:
    users = [f"user-{i}" for i in range(200)]
    here = [Experiment(VARIANTS, salt="exp-7").variant_of(u) for u in users]
    code = (
        "from models.experiments import Experiment\n"
        "e = Experiment({'blend': 1.0, 'popularity': 1.0, 'explore': 1.0}, salt='exp-7')\n"
        "print(','.join(e.variant_of(f'user-{i}') for i in range(200)))\n"
    )
    # A fresh interpreter has another hash() seed: the assignment must not depend on it.
    other = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
    ).stdout.strip().split(",")
    assert here == other


def test_salt_reshuffles_and_weights_are_respected() -> None:
    users = [f"u{i}" for i in range(20_000)]
    a = Experiment(VARIANTS, salt="one")
    b = Experiment(VARIANTS, salt="two")
    same = sum(a.variant_of(u) == b.variant_of(u) for u in users) / len(users)
    assert 0.28 < same < 0.39  # independent assignments agree about a third of the time
    weighted = Experiment({"blend": 8.0, "popularity": 1.0, "explore": 1.0}, salt="w")
    shares = weighted.shares(users)
    assert shares["blend"] == pytest.approx(0.8, abs=0.015)
    assert shares["popularity"] == pytest.approx(0.1, abs=0.01)
    # One variant: everybody in it.
    assert Experiment({"blend": 1.0}).shares(users[:100]) == {"blend": 1.0}


def test_parse_variants_rejects_bad_input() -> None:
    assert parse_variants("blend:3,explore") == {"blend": 3.0, "explore": 1.0}
    for bad in ("", "blend,blend", "blend:0", "blend:-1", "blend:x", "random"):
        with pytest.raises(ValueError):
            parse_variants(bad)


def test_wilson_interval_matches_reference_values() -> None:
    # Reference: Newcombe (1998), Table I: 81/263 -> 0.2553 .. 0.3662.
    r = wilson(81, 263)
    assert (round(r.lower, 4), round(r.upper, 4)) == (0.2553, 0.3662)
    zero = wilson(0, 10)
    assert zero.lower == 0.0 and 0.0 < zero.upper < 0.35
    full = wilson(10, 10)
    assert full.upper == 1.0 and full.lower > 0.65
    with pytest.raises(ValueError):
        wilson(5, 3)


def test_wilson_coverage_is_close_to_95_percent() -> None:
    rng = random.Random(3)
    p, n, covered, runs = 0.12, 400, 0, 2000
    for _ in range(runs):
        s = sum(rng.random() < p for _ in range(n))
        r = wilson(s, n)
        covered += r.lower <= p <= r.upper
    assert 0.93 <= covered / runs <= 0.97


def test_z_test_false_positive_rate_and_power() -> None:
    rng = random.Random(11)
    n = 1000

    def draw(p: float) -> int:
        return sum(rng.random() < p for _ in range(n))

    false_pos = sum(compare("a", draw(0.2), n, "b", draw(0.2), n).significant for _ in range(400))
    assert false_pos / 400 < 0.09  # nominal 5%
    power = sum(compare("a", draw(0.26), n, "b", draw(0.2), n).significant for _ in range(200))
    assert power / 200 > 0.8


def test_comparison_statement_and_small_samples() -> None:
    c = compare("blend", 300, 1000, "popularity", 150, 1000, what="CTR")
    assert c.significant and c.p_value < 1e-10
    assert c.ratio == pytest.approx(2.0)
    assert c.ratio_lower < 2.0 < c.ratio_upper
    assert "significant at alpha=0.05" in c.statement and "not significant" not in c.statement
    tiny = compare("blend", 4, 10, "popularity", 0, 10)
    assert not tiny.significant and "too few data" in tiny.statement
    same = compare("blend", 200, 1000, "popularity", 200, 1000)
    assert not same.significant and same.p_value == pytest.approx(1.0)


def test_rate_ratio_interval_contains_the_truth_mostly() -> None:
    rng = random.Random(5)
    hits = 0
    for _ in range(500):
        a = sum(rng.random() < 0.3 for _ in range(600))
        b = sum(rng.random() < 0.2 for _ in range(600))
        _, lo, hi = rate_ratio(a, 600, b, 600)
        hits += lo <= 1.5 <= hi
    assert hits / 500 > 0.92
    assert all(math.isnan(x) for x in rate_ratio(0, 10, 3, 10))


def test_bonferroni_correction_against_a_control() -> None:
    counts = {"popularity": (100, 1000), "blend": (135, 1000), "explore": (101, 1000)}
    out = compare_with_control(counts, "popularity")
    assert out["blend"].alpha == pytest.approx(0.025)
    # p for blend is about 0.014: significant alone at 5%, and still under 2.5%.
    assert out["blend"].significant and not out["explore"].significant
    with pytest.raises(KeyError):
        compare_with_control(counts, "missing")
