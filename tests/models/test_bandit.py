"""Thompson sampling over strategies, per segment, with delayed rewards."""

from __future__ import annotations

import pickle
import random
from collections import Counter, deque

import pytest

from models.bandit import SegmentedThompson

ARMS = ["blend", "popularity", "explore"]


def run(
    bandit: SegmentedThompson,
    ctr: dict[tuple[int, str], float],
    steps: int,
    segments: tuple[int, ...] = (0,),
    delay: int = 0,
    seed: int = 0,
) -> list[tuple[int, str]]:
    """Simulate ``steps`` decisions; a click is reported ``delay`` decisions later."""
    rng = random.Random(seed)
    pending: deque[tuple[int, int, str]] = deque()
    chosen = []
    for i in range(steps):
        segment = segments[i % len(segments)]
        arm = bandit.choose(segment, key=f"e{seed}-{i}")
        bandit.expose(segment, arm)
        if rng.random() < ctr[(segment, arm)]:
            pending.append((i + delay, segment, arm))
        while pending and pending[0][0] <= i:
            _, seg, a = pending.popleft()
            bandit.reward(seg, a)
        chosen.append((segment, arm))
    return chosen


def test_converges_to_the_best_arm_with_delayed_rewards() -> None:
    bandit = SegmentedThompson(ARMS, seed=3)
    ctr = {(0, "blend"): 0.30, (0, "popularity"): 0.20, (0, "explore"): 0.25}
    chosen = run(bandit, ctr, 6000, delay=50)
    tail = Counter(arm for _, arm in chosen[-1500:])
    assert tail["blend"] / 1500 > 0.8
    assert bandit.best(0) == "blend"
    # Every arm was still tried: exploration happened.
    assert all(bandit.stats["0"][a].trials >= 20 for a in ARMS)
    # Posterior means close to the truth for the arm with the most data.
    assert bandit.mean(0, "blend") == pytest.approx(0.30, abs=0.02)


def test_segments_learn_different_winners() -> None:
    bandit = SegmentedThompson(ARMS, seed=5)
    ctr = {
        (0, "blend"): 0.35, (0, "popularity"): 0.15, (0, "explore"): 0.2,
        (1, "blend"): 0.10, (1, "popularity"): 0.30, (1, "explore"): 0.1,
    }
    chosen = run(bandit, ctr, 8000, segments=(0, 1), delay=10)
    tail = chosen[-2000:]
    seg0 = Counter(a for s, a in tail if s == 0)
    seg1 = Counter(a for s, a in tail if s == 1)
    assert seg0.most_common(1)[0][0] == "blend"
    assert seg1.most_common(1)[0][0] == "popularity"
    assert seg1["popularity"] / sum(seg1.values()) > 0.75


def test_a_new_segment_starts_from_the_pooled_evidence() -> None:
    bandit = SegmentedThompson(ARMS, seed=1, pool_strength=50)
    run(bandit, {(0, a): c for a, c in zip(ARMS, (0.4, 0.1, 0.1), strict=True)}, 3000)
    # Segment 7 has never been seen: its choices lean on segment 0's winner at once.
    picks = Counter(bandit.choose(7, key=f"new-{i}") for i in range(300))
    assert picks["blend"] / 300 > 0.7
    isolated = SegmentedThompson(ARMS, seed=1, pool_strength=0)
    run(isolated, {(0, a): c for a, c in zip(ARMS, (0.4, 0.1, 0.1), strict=True)}, 3000)
    picks = Counter(isolated.choose(7, key=f"new-{i}") for i in range(300))
    assert picks["blend"] / 300 < 0.5  # a uniform prior: about a third each


def test_choices_are_reproducible_by_key_and_seed() -> None:
    a, b = SegmentedThompson(ARMS, seed=9), SegmentedThompson(ARMS, seed=9)
    for bandit in (a, b):
        for arm in ARMS:
            for _ in range(20):
                bandit.expose(0, arm)
            bandit.reward(0, arm, 0.5)
    keys = [f"k{i}" for i in range(200)]
    assert [a.choose(0, k) for k in keys] == [b.choose(0, k) for k in keys]
    other = SegmentedThompson(ARMS, seed=10)
    assert [other.choose(None, k) for k in keys] != [a.choose(None, k) for k in keys]


def test_horizon_forgets_old_evidence_and_follows_a_change() -> None:
    bandit = SegmentedThompson(["blend", "popularity"], seed=2, horizon=400, pool_strength=0)
    first = {(0, "blend"): 0.1, (0, "popularity"): 0.3}
    run(bandit, first, 3000, seed=1)
    assert bandit.best(0) == "popularity"
    second = {(0, "blend"): 0.35, (0, "popularity"): 0.1}
    chosen = run(bandit, second, 6000, seed=2)
    assert Counter(a for _, a in chosen[-1000:])["blend"] / 1000 > 0.7
    assert bandit.stats["0"]["blend"].trials <= 400


def test_rewards_never_exceed_exposures_and_state_pickles() -> None:
    bandit = SegmentedThompson(ARMS, seed=0)
    bandit.expose(None, "explore")
    for _ in range(5):
        bandit.reward(None, "explore")
    assert bandit.stats["none"]["explore"].successes == 1.0
    with pytest.raises(ValueError):
        bandit.reward(None, "explore", 2.0)
    with pytest.raises(KeyError):
        bandit.expose(None, "random")
    restored = pickle.loads(pickle.dumps(bandit))
    assert restored.snapshot() == bandit.snapshot()
    assert restored.choose(None, "x") == bandit.choose(None, "x")


def test_invalid_configuration() -> None:
    with pytest.raises(ValueError):
        SegmentedThompson([])
    with pytest.raises(ValueError):
        SegmentedThompson(ARMS, prior_alpha=0)
    with pytest.raises(ValueError):
        SegmentedThompson(ARMS, horizon=1)
