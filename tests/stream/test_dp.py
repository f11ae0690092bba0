"""Differential privacy of the published item and segment statistics (stream/dp.py).

The statistical tests draw many releases: the noise must have the configured
distribution and scale, and releases on two datasets one user apart must not
differ by more than the guarantee allows.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
import pytest
from scipy import stats

from models.engine import EngineConfig, FeedbackEngine
from models.events import Event
from stream.dp import (
    FALLBACK_REASON,
    BudgetExhausted,
    BudgetLedger,
    DPConfig,
    DPPublisher,
    UserContribution,
    bound_keys,
    distinct_counts,
    engine_contributions,
    laplace_counts,
    laplace_floats,
    noisy_top_k,
    private_reason,
    release_segments,
    release_threshold,
    threshold_counts,
    user_pairs,
)

DRAWS = 20_000


# -- the noise has the configured distribution and scale -------------------------------


def discrete_laplace_pmf(k: np.ndarray, scale: float) -> np.ndarray:
    q = math.exp(-1.0 / scale)
    return (1 - q) / (1 + q) * q ** np.abs(k)


def chi2_pvalue(noise: Sequence[int], scale: float) -> float:
    """Goodness of fit of integer noise to the discrete Laplace of ``scale``."""
    edge = int(3 * scale)
    bins = np.arange(-edge, edge + 1)
    observed = np.array([np.sum(np.asarray(noise) == b) for b in bins], dtype=float)
    expected = discrete_laplace_pmf(bins, scale) * len(noise)
    tails = len(noise) - observed.sum()
    expected_tails = len(noise) - expected.sum()
    result = stats.chisquare(np.append(observed, tails), np.append(expected, expected_tails))
    return float(result.pvalue)


def test_count_noise_is_discrete_laplace_with_scale_sensitivity_over_epsilon() -> None:
    noisy = laplace_counts([0] * DRAWS, sensitivity=4, epsilon=2.0)  # scale 2
    assert chi2_pvalue(noisy, 2.0) > 1e-3
    # The test has power: the same draws are not those of a 1.5x wider noise.
    assert chi2_pvalue(noisy, 3.0) < 1e-6


def test_real_noise_is_laplace_with_scale_sensitivity_over_epsilon() -> None:
    noise = laplace_floats([0.0] * DRAWS, sensitivity=3.0, epsilon=1.5)  # scale 2
    assert stats.kstest(noise, "laplace", args=(0.0, 2.0)).pvalue > 1e-3
    assert stats.kstest(noise, "laplace", args=(0.0, 2.6)).pvalue < 1e-6
    assert stats.kstest(noise, "norm", args=(0.0, 2.0 * math.sqrt(2))).pvalue < 1e-6


def test_thresholded_noise_is_discrete_laplace_and_rare_keys_stay_out() -> None:
    # 20,000 keys held by 1,000 users each: every one clears the threshold, and
    # its noise is the discrete Laplace of scale keys_per_user / epsilon = 2.
    counts = {f"k{n}": 1_000 for n in range(DRAWS)}
    noisy = threshold_counts(counts, keys_per_user=4, epsilon=2.0, delta=1e-6)
    assert len(noisy) == DRAWS
    noise = [v - 1_000 for v in noisy.values()]
    assert chi2_pvalue(noise, 2.0) > 1e-3
    assert chi2_pvalue(noise, 3.0) < 1e-6
    # Keys one user holds come out with probability below delta (here: never).
    threshold = release_threshold(4, 2.0, 1e-6)
    rare = threshold_counts({f"r{n}": 1 for n in range(DRAWS)}, 4, 2.0, 1e-6)
    assert rare == {} and threshold > 4


def test_top_k_selects_with_permute_and_flip_probabilities() -> None:
    # Report-noisy-max with exponential noise of scale k/eps = 1 (permute-and-flip):
    # two candidates one apart, P(best) = 1 - e^{-1} / 2 (0.816; a Gumbel, i.e.
    # exponential-mechanism, selection would give e / (e + 1) = 0.731).
    runs = 6000
    wins = sum(noisy_top_k({"a": 11, "b": 10}, k=1, epsilon=1.0) == ["a"] for _ in range(runs))
    expected = 1 - math.exp(-1) / 2
    assert abs(wins / runs - expected) < 4 * math.sqrt(expected * (1 - expected) / runs)


def test_top_k_returns_k_distinct_keys_best_first_at_large_epsilon() -> None:
    counts = {f"i{n}": n * 100 for n in range(30)}
    assert noisy_top_k(counts, k=5, epsilon=1e4) == ["i29", "i28", "i27", "i26", "i25"]
    assert sorted(noisy_top_k({"a": 1, "b": 2}, k=5, epsilon=1.0)) == ["a", "b"]
    assert noisy_top_k({}, k=5, epsilon=1.0) == []
    with pytest.raises(ValueError, match="epsilon"):
        noisy_top_k(counts, k=5, epsilon=0.0)


# -- neighbouring datasets, one user apart ---------------------------------------------


def assert_within_guarantee(
    release: Callable[[list[UserContribution]], Sequence[float]],
    users: list[UserContribution],
    extra: UserContribution,
    epsilon: float,
    runs: int = 3000,
) -> None:
    """For each released figure X and events {X <= t}, {X > t} with enough mass,
    P_D(S) <= e^eps P_D'(S) both ways, up to the sampling error of ``runs`` draws."""
    a = np.array([release(users) for _ in range(runs)], dtype=float)
    b = np.array([release([*users, extra]) for _ in range(runs)], dtype=float)
    # Four standard errors of each side's estimate, the other's multiplied by e^eps:
    # the popularity case sits exactly on the bound, so no less will do.
    bound = math.exp(epsilon)
    slack = 4 * math.sqrt(0.25 / runs) * (1 + bound)
    for x, y in zip(a.T, b.T, strict=True):
        for t in np.unique(np.quantile(np.concatenate([x, y]), np.linspace(0.05, 0.95, 19))):
            for pa, pb in (((x <= t).mean(), (y <= t).mean()), ((x > t).mean(), (y > t).mean())):
                if min(pa, pb) < 0.05:
                    continue
                assert pa <= bound * pb + slack, (t, pa, pb)
                assert pb <= bound * pa + slack, (t, pa, pb)


def heavy_user(item: str = "x") -> UserContribution:
    """One user who bought ``item`` 500 times and 300 other items: bounding must cap them."""
    items = [item] * 500 + [f"other{n}" for n in range(300)]
    return UserContribution("heavy", bought=items, sequence=[item, "y"] * 200)


def crowd(n: int, item: str = "x") -> list[UserContribution]:
    return [
        UserContribution(f"u{i}", bought=[item, f"own{i}"], sequence=[item, "y"])
        for i in range(n)
    ]


def publisher(users: list[UserContribution], **config: object) -> DPPublisher:
    return DPPublisher(lambda: users, DPConfig(interval_seconds=0.0, **config))  # type: ignore[arg-type]


def test_item_counts_on_neighbouring_datasets_differ_within_epsilon() -> None:
    def release(users: list[UserContribution]) -> Sequence[float]:
        return [publisher(users, epsilon=1.0).item_summary("x")["buyers"]]

    assert_within_guarantee(release, crowd(40), heavy_user(), epsilon=1.0, runs=2000)


def test_pair_counts_on_neighbouring_datasets_differ_within_epsilon() -> None:
    def release(users: list[UserContribution]) -> Sequence[float]:
        pairs = publisher(users, epsilon=1.0, min_pair_support=1)._build_pairs(users)
        count = pairs.get(("x", "y"))
        assert count is not None
        return [count]

    assert_within_guarantee(release, crowd(40), heavy_user(), epsilon=1.0, runs=2000)


def test_popularity_list_on_neighbouring_datasets_differs_within_epsilon() -> None:
    users = crowd(10, "a") + crowd(9, "b")

    def release(us: list[UserContribution]) -> Sequence[float]:
        return [float(publisher(us, epsilon=1.0, top_k=1).popular() == ["a"])]

    assert_within_guarantee(release, users, heavy_user("b"), epsilon=1.0, runs=3000)


def test_segment_release_on_neighbouring_datasets_differs_within_epsilon() -> None:
    members = [
        UserContribution(f"u{i}", segment=0, features={"log_orders": 1.0, "return_rate": 0.1})
        for i in range(30)
    ]
    outlier = UserContribution("o", segment=0, features={"log_orders": 1e9, "return_rate": 50.0})

    def release(us: list[UserContribution]) -> Sequence[float]:
        segments = publisher(us, epsilon=1.0).segments()
        return [segments.sizes[0], segments.centres[0]["return_rate"]]

    assert_within_guarantee(release, members, outlier, epsilon=1.0, runs=1500)


# -- contribution bounding -------------------------------------------------------------


def test_a_user_adds_at_most_one_to_an_item_and_at_most_the_bound_in_all() -> None:
    user = heavy_user()
    bounded = bound_keys(user.user_id, user.bought, 20)
    assert len(bounded) == 20 and len(set(bounded)) == 20
    counts = distinct_counts([bounded])
    assert max(counts.values()) == 1
    assert len(user_pairs("heavy", list(user.sequence), 10)) == 1  # one distinct pair


def test_bounding_samples_evenly_rather_than_the_first_items() -> None:
    items = [f"i{n:04d}" for n in range(1000)]
    chosen = Counter(int(k[1:]) // 500 for u in range(50) for k in bound_keys(f"u{u}", items, 20))
    assert chosen[0] > 300 and chosen[1] > 300  # both halves of the history are sampled
    assert bound_keys("u1", items, 20) == bound_keys("u1", list(reversed(items)), 20)


def test_segment_features_are_clipped_to_their_bounds() -> None:
    members = [(0, {"return_rate": 50.0, "log_orders": -3.0})] * 1000
    release = release_segments(members, n_segments=2, epsilon=1.0)
    assert 0.0 <= release.centres[0]["return_rate"] <= 1.0
    assert release.centres[0]["log_orders"] >= 0.0
    assert abs(release.sizes[0] - 1000) < 40


# -- the ledger and the publisher ------------------------------------------------------


def test_ledger_adds_up_the_releases_and_enforces_its_limit() -> None:
    ledger = BudgetLedger(limit=2.5)
    ledger.charge("popularity", 1.0)
    ledger.charge("popularity", 1.0)
    assert ledger.by_release() == {"popularity": 2.0}
    assert ledger.releases() == {"popularity": 2}
    assert ledger.remaining == pytest.approx(0.5)
    with pytest.raises(BudgetExhausted):
        ledger.charge("segments", 1.0)
    assert ledger.spent_epsilon == 2.0
    assert BudgetLedger().remaining is None
    with pytest.raises(ValueError):
        ledger.charge("x", -1.0)


def test_publisher_charges_once_per_interval_and_answers_from_cache_in_between() -> None:
    now = [0.0]
    users = crowd(50)
    pub = DPPublisher(lambda: users, DPConfig(interval_seconds=60.0), clock=lambda: now[0])
    first = pub.item_summary("x")
    assert pub.item_summary("x") == first
    assert pub.ledger is not None and pub.ledger.releases() == {"items": 1}
    now[0] = 61.0
    pub.item_summary("x")
    pub.popular()
    assert pub.ledger.releases() == {"items": 2, "popularity": 1}
    assert pub.ledger.by_release() == {"items": 2.0, "popularity": 1.0}


def test_publisher_keeps_its_last_release_once_the_budget_is_spent() -> None:
    now = [0.0]
    pub = DPPublisher(
        lambda: crowd(50), DPConfig(interval_seconds=1.0, budget=1.0), clock=lambda: now[0]
    )
    first = pub.popular()
    now[0] = 10.0
    assert pub.popular() == first
    with pytest.raises(BudgetExhausted):
        pub.segments()  # nothing released yet and no budget left


def test_unknown_items_answer_like_known_ones() -> None:
    pub = publisher(crowd(50), epsilon=1.0)
    summary = pub.item_summary("never-seen")
    assert set(summary) == {"item_id", "buyers", "reviewers", "viewers"}
    assert summary["buyers"] >= 0


def test_pair_reasons_need_dp_support() -> None:
    popular_pair = publisher(crowd(500), epsilon=1.0, min_pair_support=20)
    assert private_reason("y", "bought together with x", popular_pair) == "bought together with x"
    # Two customers, noise of scale 1: reaching 20 takes a draw of 18 (p ~ 1e-8).
    rare_pair = publisher(crowd(2), epsilon=10.0, min_pair_support=20)
    assert private_reason("y", "bought together with x", rare_pair) == FALLBACK_REASON
    assert private_reason("y", "a best seller", rare_pair) == "a best seller"
    # A figure computed from exact counts after the item id is not published.
    assert private_reason("y", "bought together with x (3.1x more often than chance)",
                          popular_pair) == "bought together with x"


def test_engine_contributions_read_the_current_users_only() -> None:
    engine = FeedbackEngine(EngineConfig(seed=1))
    t = 1_700_000_000.0
    for i, (user, item, kind) in enumerate(
        [("a", "x", "purchase"), ("a", "y", "purchase"), ("b", "x", "click")]
    ):
        engine.process(Event(kind, f"e{i}", user, item, t + i, quantity=1))  # type: ignore[arg-type]
    by_user = {c.user_id: c for c in engine_contributions(engine)}
    assert by_user["a"].bought == ["x", "y"] and by_user["a"].sequence == ["x", "y"]
    assert by_user["b"].viewed == ["x"] and by_user["b"].bought == []
    engine.forget("a")
    assert [c.user_id for c in engine_contributions(engine)] == ["b"]


def test_a_release_noises_a_bounded_number_of_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    import stream.dp

    monkeypatch.setattr(stream.dp, "MAX_NOISED_KEYS", 3)
    counts = stream.dp.LaplaceCounts({"a": 5}, sensitivity=1, epsilon=1.0)
    assert all(counts.get(k) is not None for k in ("a", "b", "c"))
    assert counts.get("d") is None and counts.get("a") is not None and len(counts) == 3
