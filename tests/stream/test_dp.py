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
    LaplaceCounts,
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
    # The noise is not seedable (OpenDP's): a true scale fails one run in a
    # million. The test has power: the same draws are not those of a 1.5x
    # wider noise (p = 0.0 on 20,000 draws).
    assert chi2_pvalue(noisy, 2.0) > 1e-6
    assert chi2_pvalue(noisy, 3.0) < 1e-12


def test_released_counts_carry_discrete_laplace_noise_key_by_key() -> None:
    # LaplaceCounts draws its noise from OpenDP in blocks: each key still gets its
    # own draw of the configured law, added to its own count.
    exact = {i: 1000 * (i % 2) for i in range(DRAWS)}
    counts: LaplaceCounts[int] = LaplaceCounts(exact, sensitivity=4, epsilon=2.0)
    noise = [counts.get(i) - exact[i] for i in range(DRAWS)]  # type: ignore[operator]
    # The noise is not seedable (OpenDP's): a true scale fails one run in a
    # million, while a scale of 3 gives p = 0.0 on these 20,000 draws.
    assert chi2_pvalue(noise, 2.0) > 1e-6
    assert chi2_pvalue(noise, 3.0) < 1e-12
    assert counts.get(7) == counts.get(7)  # one draw per key for the release's life


def test_real_noise_is_laplace_with_scale_sensitivity_over_epsilon() -> None:
    noise = laplace_floats([0.0] * DRAWS, sensitivity=3.0, epsilon=1.5)  # scale 2
    # One run in a million fails the true law; the wrong ones give p < 1e-30.
    assert stats.kstest(noise, "laplace", args=(0.0, 2.0)).pvalue > 1e-6
    assert stats.kstest(noise, "laplace", args=(0.0, 2.6)).pvalue < 1e-12
    assert stats.kstest(noise, "norm", args=(0.0, 2.0 * math.sqrt(2))).pvalue < 1e-12


def test_thresholded_noise_is_discrete_laplace_and_rare_keys_stay_out() -> None:
    # 20,000 keys held by 1,000 users each: every one clears the threshold, and
    # its noise is the discrete Laplace of scale keys_per_user / epsilon = 2.
    counts = {f"k{n}": 1_000 for n in range(DRAWS)}
    noisy = threshold_counts(counts, keys_per_user=4, epsilon=2.0, delta=1e-6)
    assert len(noisy) == DRAWS
    noise = [v - 1_000 for v in noisy.values()]
    # The noise is not seedable (OpenDP's): a true scale fails one run in a
    # million, while a scale of 3 gives p = 0.0 on these 20,000 draws.
    assert chi2_pvalue(noise, 2.0) > 1e-6
    assert chi2_pvalue(noise, 3.0) < 1e-12
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
    assert noisy_top_k(counts, k=0, epsilon=1.0) == []
    with pytest.raises(ValueError) as err:
        noisy_top_k(counts, k=5, epsilon=0.0)
    assert str(err.value) == "epsilon must be a finite number > 0, got 0.0"


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
    now[0] = 59.9
    assert pub.item_summary("x") == first
    now[0] = 60.0  # a whole interval later: a new release
    pub.item_summary("x")
    assert pub.ledger.last is not None and pub.ledger.last.at == 60.0
    now[0] = 61.0
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


# -- what each release is built from (exact; fast enough for the mutation run) ----------


def test_item_release_bounds_each_user_and_splits_epsilon_over_the_three_counts() -> None:
    users = [
        UserContribution("u1", bought=["a", "b", "a"], reviewed=["a"], viewed=["c"] * 3),
        UserContribution("u2", bought=["a"], viewed=["c", "d"]),
        heavy_user(),
    ]
    pub = publisher(users, epsilon=1.5, max_items_per_user=20)
    release = pub._build_items(users)
    assert list(release) == ["buyers", "reviewers", "viewers"]
    for counts in release.values():
        assert (counts.sensitivity, counts.epsilon, counts.scale) == (20, 0.5, 40.0)
    heavy = bound_keys("heavy", heavy_user().bought, 20)
    assert release["buyers"].exact == Counter(["a", "b", "a", *heavy])
    assert release["reviewers"].exact == Counter(["a"])
    assert release["viewers"].exact == Counter(["c", "c", "d"])


def test_pair_release_bounds_each_user_and_spends_the_whole_epsilon() -> None:
    users = [UserContribution("u1", sequence=["a", "b", "a", "c"]),
             UserContribution("u2", sequence=["b", "a"]), heavy_user()]
    pub = publisher(users, epsilon=2.0, max_pairs_per_user=1)
    pairs = pub._build_pairs(users)
    assert (pairs.sensitivity, pairs.epsilon, pairs.scale) == (1, 2.0, 0.5)
    assert sum(pairs.exact.values()) == 3  # one pair per user
    assert pairs.exact[("a", "b")] >= 1 and pairs.exact[("x", "y")] == 1


def test_segment_release_spends_half_of_epsilon_on_sizes_and_half_on_sums(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import stream.dp

    calls: list[tuple[str, int, float, float]] = []

    def spy(name: str, real: Callable[..., list[float]]) -> Callable[..., list[float]]:
        def mechanism(values: Sequence[float], sensitivity: float, epsilon: float) -> list[float]:
            calls.append((name, len(values), sensitivity, epsilon))
            return real(values, sensitivity, epsilon)
        return mechanism

    monkeypatch.setattr(stream.dp, "laplace_counts", spy("counts", stream.dp.laplace_counts))
    monkeypatch.setattr(stream.dp, "laplace_floats", spy("floats", stream.dp.laplace_floats))
    bounds = {"f": (0.0, 1.0), "g": (0.0, 2.0), "h": (1.0, 5.0)}
    release_segments([(0, {"f": 0.5})], n_segments=4, epsilon=3.0, bounds=bounds)
    # Sizes: L1 sensitivity 1; sums: one user moves each of the d scaled features by <= 1.
    assert calls == [("counts", 4, 1, 1.5), ("floats", 12, 3.0, 1.5)]


def test_segment_sizes_and_centres_are_exact_at_a_huge_epsilon() -> None:
    bounds = {"f": (0.0, 10.0), "g": (1.0, 5.0), "h": (-4.0, 4.0)}
    inf, nan = float("inf"), float("nan")
    members = [
        (0, {"f": 2.0, "g": 2.0, "h": 1.0}), (0, {"f": 4.0, "g": 4.0, "h": 3.0}),  # (3, 3, 2)
        # Clipped to 10; NaN counts as 0, then clipped to 1; +inf counts as 0.
        (1, {"f": 50.0, "g": nan, "h": inf}),
        # Clipped to 0; a missing feature sits at its lower bound; -inf counts as 0.
        (1, {"f": -5.0, "h": -inf}),
        (2, {"f": 7.0, "g": 4.5, "h": nan}),  # one member: the centre is that member
        (3, {"f": 1.0}),  # g and h missing: their lower bounds (h's is not 0)
        (4, {"f": 1.0}), (-1, {"f": 1.0}),  # outside 0..n_segments-1: left out
    ]
    release = release_segments(members, n_segments=4, epsilon=1e9, bounds=bounds)
    assert release.sizes == {0: 2, 1: 2, 2: 1, 3: 1}
    assert release.centres[0] == pytest.approx({"f": 3.0, "g": 3.0, "h": 2.0}, abs=1e-6)
    assert release.centres[1] == pytest.approx({"f": 5.0, "g": 1.0, "h": 0.0}, abs=1e-6)
    assert release.centres[2] == pytest.approx({"f": 7.0, "g": 4.5, "h": 0.0}, abs=1e-6)
    assert release.centres[3] == pytest.approx({"f": 1.0, "g": 1.0, "h": -4.0}, abs=1e-6)
    empty = release_segments([], n_segments=2, epsilon=1e9, bounds=bounds)
    # No members: size 0, centre at the lower bounds (a sum of ~0 over a size of at least 1).
    assert empty.sizes == {0: 0, 1: 0}
    assert empty.centres[0] == pytest.approx({"f": 0.0, "g": 1.0, "h": -4.0}, abs=1e-6)


def test_segment_centres_stay_within_bounds_whatever_the_noise() -> None:
    bounds = {"f": (2.0, 4.0)}
    for seed in range(20):
        release = release_segments([(0, {"f": 3.0})] * (seed % 3), n_segments=3, epsilon=0.05,
                                   bounds=bounds)
        assert all(s >= 0 for s in release.sizes.values())
        assert all(2.0 <= c["f"] <= 4.0 for c in release.centres.values())


def test_the_publisher_releases_from_its_source_with_its_settings() -> None:
    users = [UserContribution(f"u{n}", bought=[f"i{n}"] * 1, reviewed=[f"i{n}"])
             for n in range(40)]
    users += [UserContribution(f"v{n}", bought=["best"], segment=1,
                               features={"log_orders": 1.0}) for n in range(200)]
    pub = publisher(users, epsilon=1e6, top_k=3)
    assert pub.popular()[0] == "best" and len(pub.popular()) == 3
    assert len(pub.popular(k=2)) == 2 and len(pub.popular(k=10)) == 3  # never above top_k
    summary = pub.item_summary("best")
    assert summary == {"item_id": "best", "buyers": 200, "reviewers": 0, "viewers": 0}
    assert [s["item_id"] for s in pub.item_summaries(["i1", "nope"])] == ["i1", "nope"]
    assert pub.item_summaries(["i1"])[0]["reviewers"] == 1
    segments = pub.segments()
    assert segments.sizes == {0: 0, 1: 200, 2: 0, 3: 0, 4: 0}
    assert segments.centres[1]["log_orders"] == pytest.approx(1.0, abs=1e-3)


def test_noisy_counts_below_zero_are_published_as_zero() -> None:
    pub = publisher([], epsilon=0.01)  # scale 2000 on every count: half the draws are < 0
    summaries = pub.item_summaries([f"i{n}" for n in range(50)])
    assert all(s[k] >= 0 for s in summaries for k in ("buyers", "reviewers", "viewers"))
    assert sum(s["buyers"] == 0 for s in summaries) > 10


def test_bought_together_answers_at_and_above_the_support_only() -> None:
    users = [UserContribution(f"u{n}", sequence=["a", "b"]) for n in range(20)]
    at = publisher(users, epsilon=1e9, min_pair_support=20)
    assert at.bought_together("a", "b") == 20 and at.bought_together("b", "a") == 20
    above = publisher(users, epsilon=1e9, min_pair_support=21)
    assert above.bought_together("a", "b") is None


def test_every_pair_reason_is_checked_and_other_reasons_pass_through() -> None:
    supported = publisher([UserContribution(f"u{n}", sequence=["x", "y"]) for n in range(30)],
                          epsilon=1e9, min_pair_support=30)
    unsupported = publisher([], epsilon=1e9, min_pair_support=1)
    from stream.dp import PAIR_REASONS

    for prefix in PAIR_REASONS:
        assert private_reason("y", f"{prefix}x (2.0x)", supported) == prefix + "x"
        assert private_reason("y", f"{prefix}x", unsupported) == FALLBACK_REASON
    assert private_reason("y", "trending (x)", unsupported) == "trending (x)"


def test_the_ledger_keeps_its_account_and_says_what_is_left() -> None:
    ledger = BudgetLedger(limit=3.0)
    assert ledger.last is None and ledger.remaining == 3.0
    ledger.charge("pairs", 1.0, delta=1e-6, at=5.0)
    ledger.charge("items", 1.5, at=7.0)
    assert ledger.spent_epsilon == 2.5 and ledger.spent_delta == 1e-6
    assert ledger.last is not None
    assert (ledger.last.release, ledger.last.epsilon, ledger.last.delta, ledger.last.at) == (
        "items", 1.5, 0.0, 7.0)
    with pytest.raises(BudgetExhausted, match=r"'segments' needs epsilon 1, 0\.5 of 3 left"):
        ledger.charge("segments", 1.0)
    ledger.charge("segments", 0.5)  # exactly up to the limit
    assert ledger.remaining == 0.0 and ledger.releases() == {"pairs": 1, "items": 1,
                                                              "segments": 1}
    unlimited = BudgetLedger()
    for _ in range(5):
        unlimited.charge("popularity", 100.0)
    assert unlimited.spent_epsilon == 500.0
    for bad in [(0.0, 0.0), (math.inf, 0.0), (1.0, -0.1), (1.0, 1.0)]:
        with pytest.raises(ValueError, match="epsilon > 0 and 0 <= delta < 1"):
            unlimited.charge("x", *bad)
    for limit in (-1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="budget limit"):
            BudgetLedger(limit)


@pytest.mark.parametrize("field, value", [
    ("epsilon", 0.0), ("epsilon", math.inf), ("max_items_per_user", 0),
    ("max_pairs_per_user", 0), ("top_k", 0), ("min_pair_support", 0),
    ("interval_seconds", -1.0), ("budget", -1.0), ("segment_top_k", 0), ("delta", 0.0),
    ("delta", 1.0),
])
def test_a_bad_dp_setting_is_refused(field: str, value: float) -> None:
    with pytest.raises(ValueError):
        DPConfig(**{field: value}).validate()  # type: ignore[arg-type]
    fine = {"epsilon": 0.1, "interval_seconds": 0.0, "budget": 0.0, "delta": 0.5}
    DPConfig(**{field: fine.get(field, 1)}).validate()  # type: ignore[arg-type]


def test_bounding_keeps_all_keys_up_to_the_limit_and_pairs_ignore_repeats() -> None:
    keys = ["f", "e", "d", "c", "b", "a"]
    assert bound_keys("u", keys, 6) == keys  # all of them, in their own order
    # Each user's own choice among more: not the same sample for everyone.
    many = [f"i{n}" for n in range(60)]
    sequence = [x for n in range(0, 60, 2) for x in (many[n], many[n + 1])]
    assert len({tuple(user_pairs(f"u{n}", sequence, 5)) for n in range(5)}) > 1
    assert len({tuple(bound_keys(f"u{n}", many, 5)) for n in range(5)}) > 1
    assert len(bound_keys("u", ["a", "b", "c", "d"], 3)) == 3
    assert bound_keys("u", ["a", "b"], 0) == []
    assert user_pairs("u", ["b", "a", "a", "b"], 10) == [("a", "b")]
    assert user_pairs("u", ["c", "c"], 10) == []


def test_engine_contributions_carry_segment_features_and_recency_in_days() -> None:
    from models.profiles import SEGMENT_FEATURES

    engine = FeedbackEngine(EngineConfig(seed=1, segment_warmup=4))
    t = 1_700_000_000.0
    for u in range(6):  # u5 is the newest: the engine's clock is its review's time
        engine.process(Event("purchase", f"p{u}", f"u{u}", "x", t + u * 86_400.0,
                             quantity=1, price=5.0))
        engine.process(Event("review", f"r{u}", f"u{u}", "y", t + u * 86_400.0 + 1,
                             rating=4.0, text="good"))
    by_user = {c.user_id: c for c in engine_contributions(engine)}
    for u in range(6):
        c = by_user[f"u{u}"]
        assert c.bought == ["x"] and c.reviewed == ["y"] and c.viewed == []
        assert c.segment is not None and c.segment == engine.segment_of(f"u{u}")
        assert c.features is not None
        assert list(c.features) == [*SEGMENT_FEATURES, "recency_days"]
        assert c.features["recency_days"] == pytest.approx(5 - u)
        assert c.features["log_orders"] == pytest.approx(math.log1p(1))
        # The coordinates the segmentation clusters on, expected spend included (the
        # profile alone does not know it).
        assert c.features["log_expected_spend"] > 0.0
        row = engine.segmentation.vectors[engine.segmentation.index[f"u{u}"]]
        assert [c.features[n] for n in SEGMENT_FEATURES] == pytest.approx(row.tolist())


# -- the thresholded neighbour release and the per-segment top items -------------------


@pytest.mark.parametrize("keys_per_user, epsilon, delta", [(1, 1.0, 1e-6), (10, 1.0, 1e-6),
                                                           (4, 2.0, 1e-3)])
def test_the_release_threshold_is_the_smallest_the_privacy_map_allows(
    keys_per_user: int, epsilon: float, delta: float
) -> None:
    import opendp.prelude as dp

    threshold = release_threshold(keys_per_user, epsilon, delta)
    space = (dp.map_domain(dp.atom_domain(T=int), dp.atom_domain(T=int)),
             dp.l01inf_distance(dp.absolute_distance(T=int)))
    d_in = (keys_per_user, keys_per_user, 1)

    def spent(t: int) -> tuple[float, float]:
        m = dp.m.make_laplace_threshold(*space, scale=keys_per_user / epsilon, threshold=t)
        eps, dlt = m.map(d_in)
        return float(eps), float(dlt)

    assert spent(threshold)[1] <= delta and spent(threshold)[0] <= epsilon * (1 + 1e-9)
    assert spent(threshold - 1)[1] > delta
    for bad in (0.0, 1.0):
        with pytest.raises(ValueError, match="delta must be in"):
            threshold_counts({"a": 1}, keys_per_user, epsilon, bad)


def test_neighbours_are_the_pairs_above_the_threshold_best_first() -> None:
    users = ([UserContribution(f"b{n}", sequence=["a", "b"]) for n in range(30)]
             + [UserContribution(f"c{n}", sequence=["c", "a"]) for n in range(10)]
             + [UserContribution(f"e{n}", sequence=["a", "e"]) for n in range(10)]
             + [UserContribution("d", sequence=["a", "d"])])  # one customer: never shown
    pub = publisher(users, epsilon=1e6, max_pairs_per_user=2, delta=1e-6)
    assert pub.neighbour_threshold() == release_threshold(2, 1e6, 1e-6) == 2
    assert pub.neighbours("a", 5) == [("b", 30), ("c", 10), ("e", 10)]  # ties by id
    assert pub.neighbours("a", 1) == [("b", 30)]
    assert pub.neighbours("b", 5) == [("a", 30)] and pub.neighbours("c", 5) == [("a", 10)]
    assert pub.neighbours("d", 5) == [] and pub.neighbours("unknown", 5) == []
    assert pub.ledger is not None
    # The only (epsilon, delta) release: its delta is charged to the ledger.
    assert pub.ledger.spent_delta == pytest.approx(6 * 1e-6)
    assert pub.ledger.releases() == {"neighbours": 6}


def test_segment_items_are_each_segments_own_best_sellers() -> None:
    users = ([UserContribution(f"s0-{n}", bought=["x", f"own{n}"], segment=0) for n in range(50)]
             + [UserContribution(f"s0b-{n}", reviewed=["y"], segment=0) for n in range(20)]
             + [UserContribution(f"s2-{n}", bought=["z"], segment=2) for n in range(40)]
             + [UserContribution(f"out-{n}", bought=["w"], segment=9) for n in range(99)]
             + [UserContribution(f"none-{n}", bought=["w"]) for n in range(99)])
    pub = DPPublisher(lambda: users, DPConfig(epsilon=1e6, interval_seconds=0.0,
                                              segment_top_k=2), n_segments=3)
    assert pub.segment_items() == {0: ["x", "y"], 1: [], 2: ["z"]}
    # Over a public catalogue, every segment's list is full, zero counts included.
    catalogue = ["x", "y", "z", "w", "v"]
    over = DPPublisher(lambda: users, DPConfig(epsilon=1e6, interval_seconds=0.0,
                                               segment_top_k=2), n_segments=3,
                       domain=lambda: catalogue)
    lists = over.segment_items()
    assert lists[0] == ["x", "y"] and lists[2][0] == "z"
    assert all(len(items) == 2 and set(items) <= set(catalogue) for items in lists.values())


def test_popularity_chooses_from_the_catalogue_when_it_has_one() -> None:
    users = [UserContribution(f"u{n}", bought=["a"]) for n in range(20)]
    held = publisher(users, epsilon=1e6, top_k=3)
    assert held.popular() == ["a"]
    catalogue = DPPublisher(lambda: users, DPConfig(epsilon=1e6, interval_seconds=0.0, top_k=3),
                            domain=lambda: ["a", "b", "c", "d"])
    ranked = catalogue.popular()
    assert ranked[0] == "a" and len(ranked) == 3 and set(ranked) <= {"a", "b", "c", "d"}
