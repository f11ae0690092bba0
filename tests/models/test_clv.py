"""Customer value: the formulas against lifetimes, the fits on simulated customers, the stream."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy.special import hyp2f1

from models.clv import (
    DAY,
    CustomerValue,
    SpendParams,
    TransactionParams,
    _silent_by_series,
    expected_purchases,
    expected_spend_per_purchase,
    fit_spend,
    fit_transactions,
    p_alive,
    p_no_purchase,
)
from models.engine import FeedbackEngine
from models.events import Event


def simulate(n: int, seed: int, params: TransactionParams) -> tuple[np.ndarray, ...]:
    """Customers drawn from the (M)BG/NBD itself: ``(x, t_x, T)`` in days."""
    rng = np.random.default_rng(seed)
    lam = rng.gamma(params.r, 1.0 / params.alpha, n)
    p = rng.beta(params.a, params.b, n)
    T = rng.uniform(30.0, 400.0, n)
    x, t_x = np.zeros(n), np.zeros(n)
    for i in range(n):
        t, count, last = 0.0, 0, 0.0
        alive = not (params.modified and rng.random() < p[i])
        while alive:
            t += rng.exponential(1.0 / lam[i])
            if t > T[i]:
                break
            count, last = count + 1, t
            alive = rng.random() >= p[i]
        x[i], t_x[i] = count, last
    return x, t_x, T


TRUE = TransactionParams(r=0.5, alpha=20.0, a=0.9, b=2.5)


@pytest.fixture(scope="module")
def customers() -> tuple[np.ndarray, ...]:
    return simulate(4000, 7, TRUE)


def test_mbg_fit_recovers_the_simulated_population(customers: tuple[np.ndarray, ...]) -> None:
    fit = fit_transactions(*customers, modified=True)
    assert fit.r / fit.alpha == pytest.approx(TRUE.r / TRUE.alpha, rel=0.2)
    assert fit.a / (fit.a + fit.b) == pytest.approx(TRUE.a / (TRUE.a + TRUE.b), rel=0.25)


def test_formulas_and_fits_match_lifetimes(customers: tuple[np.ndarray, ...]) -> None:
    import lifetimes  # a dev dependency (pyproject.toml)
    x, t_x, T = customers
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for modified, cls in ((True, lifetimes.ModifiedBetaGeoFitter),
                              (False, lifetimes.BetaGeoFitter)):  # fmt: skip
            theirs = cls().fit(x, t_x, T)
            ours = fit_transactions(x, t_x, T, modified=modified)
            for name in ("r", "alpha", "a", "b"):
                assert getattr(ours, name) == pytest.approx(theirs.params_[name], rel=0.02)
            fixed = TransactionParams(*(theirs.params_[k] for k in ["r", "alpha", "a", "b"]),
                                      modified=modified)  # fmt: skip
            np.testing.assert_allclose(
                expected_purchases(fixed, 90.0, x, t_x, T),
                theirs.conditional_expected_number_of_purchases_up_to_time(90.0, x, t_x, T),
                rtol=1e-6,
            )
            np.testing.assert_allclose(
                p_alive(fixed, x, t_x, T), theirs.conditional_probability_alive(x, t_x, T),
                rtol=1e-6,
            )  # fmt: skip
    rng = np.random.default_rng(3)
    n = x[x > 0]
    mean = rng.gamma(6.0, 1 / rng.gamma(4.0, 1 / 15.0, len(n)) / 6.0)
    gg = lifetimes.GammaGammaFitter().fit(n, mean)
    spend = SpendParams(gg.params_["p"], gg.params_["q"], gg.params_["v"])
    np.testing.assert_allclose(
        expected_spend_per_purchase(spend, n, mean),
        gg.conditional_expected_average_profit(n, mean),
        rtol=1e-6,
    )
    ours = fit_spend(n, mean)
    assert ours.p * ours.v / (ours.q - 1) == pytest.approx(
        spend.p * spend.v / (spend.q - 1), rel=0.02
    )


def test_silence_lowers_p_alive_and_raises_p_no_purchase() -> None:
    params = TransactionParams()
    quiet = p_alive(params, [6, 6], [100.0, 100.0], [105.0, 300.0])
    assert quiet[0] > quiet[1]
    silent = p_no_purchase(params, 90.0, [6, 6], [100.0, 100.0], [105.0, 300.0])
    assert silent[0] < silent[1]


@pytest.mark.parametrize("modified", [True, False])
def test_expected_purchases_stay_finite_at_the_rate_bound(modified: bool) -> None:
    # A fit on customers seen for hours only puts r at its bound (e^9): the closed
    # form's power underflows, its 2F1 overflows, and their product was NaN,
    # which then poisoned every user's segmentation vector through expected spend.
    params = TransactionParams(r=math.exp(9.0), alpha=5.64, a=564.9, b=2.23, modified=modified)
    got = expected_purchases(params, 90.0, [0, 0, 2], [0.0, 0.0, 0.01], [0.0, 0.0007, 0.02])
    assert np.all(np.isfinite(got)) and np.all(got > 0)
    # where the closed form is finite, the series fallback gives the same figure
    rk, upper, lower, z = 60.0, 3.2, 12.0, 0.9
    closed = (1 - z) ** rk * float(hyp2f1(rk, upper, lower, z))
    series = float(_silent_by_series(np.array(np.nan), rk, upper, lower, z))
    assert series == pytest.approx(closed, rel=1e-9)


def test_purchase_days_not_lines() -> None:
    cv = CustomerValue()
    cv.learn_one("c", 0.5 * DAY, 10.0)
    cv.learn_one("c", 0.7 * DAY, 5.0)  # same UTC day: spend only
    cv.learn_one("c", 3.2 * DAY, 20.0)
    x, t_x, T, _days, mean = cv.stats(10 * DAY)
    assert x.tolist() == [1.0]
    assert t_x[0] == pytest.approx(2.7)
    assert T[0] == pytest.approx(9.5)
    assert mean[0] == pytest.approx(17.5)
    assert cv.purchase_days == 2


def test_forget_moves_the_last_row() -> None:
    cv = CustomerValue()
    for i, user in enumerate("abc"):
        cv.learn_one(user, i * DAY, 10.0 * (i + 1))
    assert cv.forget("a") and not cv.forget("a")
    assert sorted(cv.users) == ["b", "c"] and cv.purchase_days == 2
    _x, _t_x, T, _days, mean = cv.stats(10 * DAY, np.array([cv.index["c"]]))
    assert mean[0] == 30.0 and T[0] == 8.0


def test_refits_from_the_stream_and_predicts(customers: tuple[np.ndarray, ...]) -> None:
    """Customers replayed as purchase lines: the stream's fit is the offline fit."""
    x, t_x, T = customers
    cv = CustomerValue(refit_min_new=10**9, refit_days=10**9)
    now = 500.0 * DAY
    for i in range(len(x)):
        first = now - T[i] * DAY
        cv.learn_one(f"c{i}", first, 20.0)
        # repeat purchase-days evenly spread, the last at t_x (whole days apart)
        for k in range(int(x[i])):
            cv.learn_one(f"c{i}", first + (t_x[i] - (x[i] - 1 - k)) * DAY, 30.0)
    assert not cv.maybe_refit(now)  # nothing due under these settings
    cv.refit(now)
    sx, stx, sT, _, _ = cv.stats(now)
    offline = fit_transactions(sx, stx, sT)
    assert cv.transactions.r == pytest.approx(offline.r, rel=1e-3)
    value = cv.predict_one("c0", now)
    assert value is not None and value.horizon_days == 90.0
    assert value.expected_spend == pytest.approx(
        value.expected_purchases * value.expected_spend_per_purchase
    )
    assert 0.0 < value.p_purchase <= value.p_alive <= 1.0


@pytest.mark.parametrize("regularity", [False, True])
def test_expected_spend_one_is_predict_ones_spend(regularity: bool) -> None:
    """The engine's segmentation reads only the spend: the same figure (in floats
    instead of numpy: 1 - P(silent) cancels, so an ulp of the
    transcendental functions shows at about 1e-12), unknown -> None."""
    cv = CustomerValue(regularity=regularity, seed=3)
    rng = np.random.default_rng(5)
    for i in range(300):
        first = float(rng.uniform(0.0, 200.0)) * DAY
        for k in range(int(rng.integers(1, 6))):
            cv.learn_one(f"c{i}", first + k * float(rng.uniform(3.0, 40.0)) * DAY, 10.0 + k)
    cv.refit(400.0 * DAY)
    for now in (400.0 * DAY, 700.0 * DAY):
        for user in cv.users:
            value = cv.predict_one(user, now, 30.0)
            assert value is not None
            got = cv.expected_spend_one(user, now, 30.0)
            assert got == pytest.approx(value.expected_spend, rel=1e-9, abs=1e-300)
    assert cv.expected_spend_one("nobody", 400.0 * DAY) is None


@pytest.mark.parametrize("modified", [False, True])
@pytest.mark.parametrize("k", [1, 3])
def test_expected_spend_one_matches_the_array_formulas(modified: bool, k: int) -> None:
    """Random customers and parameters, the edge cases included (no repeat, bought
    just now, the series fallback of a fit at its rate bound): the float path
    gives the array functions' value."""
    rng = np.random.default_rng(11)
    for trial in range(400):
        tp = TransactionParams(
            r=float(rng.uniform(0.05, 3.0)) if trial % 7 else 400.0,
            alpha=float(rng.uniform(0.05, 60.0)) if trial % 7 else 0.01,
            a=float(rng.uniform(1.05, 4.0)), b=float(rng.uniform(0.3, 5.0)),
            modified=modified, k=k,
        )
        cv = CustomerValue()
        cv.transactions = tp
        cv.spend = SpendParams(float(rng.uniform(1.5, 9.0)), float(rng.uniform(1.5, 9.0)),
                               float(rng.uniform(1.0, 50.0)))
        first = float(rng.uniform(0.0, 100.0)) * DAY
        cv.learn_one("c", first, float(rng.uniform(0.0, 80.0)))
        t = first
        for _ in range(int(rng.integers(0, 5))):
            t += float(rng.uniform(1.0, 30.0)) * DAY
            cv.learn_one("c", t, float(rng.uniform(0.0, 80.0)))
        now = t + float(rng.choice([0.0, rng.uniform(0.0, 200.0) * DAY]))
        h = float(rng.uniform(1.0, 365.0))
        x, t_x, T, days, mean = cv.stats(now, np.array([cv.index["c"]]))
        want = float((expected_purchases(tp, h, x, t_x, T)
                      * expected_spend_per_purchase(cv.spend, days, mean))[0])
        assert cv.expected_spend_one("c", now, h) == pytest.approx(want, rel=1e-9, abs=1e-300)


def test_refit_schedule() -> None:
    cv = CustomerValue(refit_fraction=0.5, refit_min_new=3, refit_days=7.0)
    for i in range(3):
        cv.learn_one(f"c{i}", i * DAY, 10.0)
    assert cv.maybe_refit(3 * DAY) and cv.fits == 1
    cv.learn_one("c0", 4 * DAY, 10.0)  # 1 new of 4: neither fraction nor a week
    assert not cv.maybe_refit(5 * DAY)
    assert cv.maybe_refit(10.5 * DAY) and cv.fits == 2  # a week since the last fit
    assert not cv.maybe_refit(30 * DAY)  # nothing new


def test_alive_due_is_when_p_alive_crosses_the_threshold() -> None:
    cv = CustomerValue()
    cv.transactions = TransactionParams(r=0.6, alpha=50.0, a=0.8, b=1.2)
    for day in (0, 20, 45):
        cv.learn_one("c", day * DAY, 15.0)
    due = cv.alive_due("c", 0.3)
    assert due is not None and due > 45 * DAY
    i = np.array([cv.index["c"]])
    assert cv.predict_rows(due, 90.0, i)["p_alive"][0] == pytest.approx(0.3, abs=1e-6)
    assert cv.predict_rows(due - DAY, 90.0, i)["p_alive"][0] > 0.3


def test_engine_keeps_customer_value_per_user() -> None:
    engine = FeedbackEngine()
    t = 1_700_000_000.0
    for k in range(4):
        engine.process(Event("purchase", f"p{k}", "u1", "i1", t + k * 10 * DAY, quantity=2,
                             price=5.0))  # fmt: skip
    engine.process(Event("purchase", "r", "u1", "i1", t + 31 * DAY, quantity=-1, price=5.0))
    engine.process(Event("click", "c", "u2", "i1", t + 31 * DAY))
    engine.tick(t + 32 * DAY)
    summary = engine.user_summary("u1")
    assert summary is not None
    value = summary["customer_value"]
    assert value["horizon_days"] == 90.0 and value["expected_purchases"] > 0
    # the return is not a purchase-day; a click-only user has no value yet
    assert engine.customer_value.repeats[engine.customer_value.index["u1"]] == 3
    assert engine.user_summary("u2")["customer_value"] is None  # type: ignore[index]
    engine.forget("u1")
    assert engine.customer_value_of("u1") is None


def weekly_customer() -> tuple[FeedbackEngine, float]:
    """An engine whose one customer bought weekly for six weeks, and their churn check's date."""
    engine = FeedbackEngine()
    t = 1_700_000_000.0
    for week in range(6):
        engine.process(Event("purchase", f"w{week}", "weekly", "tea", t + week * 7 * DAY,
                             quantity=1, price=4.0))  # fmt: skip
    due = engine.profiles["weekly"].churn_due
    assert due is not None
    return engine, due


def test_churn_alert_comes_from_p_alive() -> None:
    engine, due = weekly_customer()
    assert due == engine.customer_value.alive_due("weekly", engine.config.churn_alive_threshold)
    assert engine.tick(due - DAY) == []
    alerts = engine.tick(due)
    assert [a.kind for a in alerts] == ["churn_risk"]
    assert alerts[0].value >= alerts[0].threshold == 0.5
    assert "P(still a customer) 0.50" in alerts[0].message


def test_churn_check_follows_a_refit() -> None:
    """Parameters refitted before the check (less dropout): checked again later, no alert."""
    engine, due = weekly_customer()
    engine.customer_value.transactions = TransactionParams(r=0.25, alpha=10.0, a=0.05, b=5.0)
    assert engine.tick(due) == []
    later = engine.profiles["weekly"].churn_due
    assert later is not None and later > due
    assert [a.kind for a in engine.tick(later)] == ["churn_risk"]


def regular_customers(
    n: int = 800, k: int = 4, end: float = 300.0, horizon: float = 90.0, seed: int = 7
) -> tuple[list[list[float]], np.ndarray]:
    """Customers with Erlang-k gaps (wholesale-like re-orders): days before ``end``,
    and their purchase-days in the ``horizon`` after it."""
    rng = np.random.default_rng(seed)
    histories, future = [], np.zeros(n)
    for c in range(n):
        mean_gap = rng.gamma(2.0, 20.0)
        t, days = rng.uniform(0, 150), []
        while t < end + horizon:
            if t < end:
                days.append(t)
            else:
                future[c] += 1
            t += rng.gamma(k, mean_gap / k) + 1.0
        histories.append(days)
    return histories, future


def test_regularity_is_fitted_and_shrinks_regular_buyers_less() -> None:
    histories, future = regular_customers()
    models = {}
    for regular in (True, False):
        cv = CustomerValue(regularity=regular)
        for c, days in enumerate(histories):
            for day in days:
                cv.learn_one(f"c{c}", day * DAY, 10.0)
        cv.refit(300 * DAY)  # the first refit tries every k
        models[regular] = cv
    assert models[True].transactions.k >= 3
    assert models[False].transactions.k == 1
    rows = np.array([models[True].index[f"c{c}"] for c in range(len(histories))])
    mae = {
        regular: float(np.mean(np.abs(
            cv.predict_rows(300 * DAY, 90.0, rows)["expected_purchases"] - future)))
        for regular, cv in models.items()
    }  # fmt: skip
    assert mae[True] < 0.96 * mae[False]  # 0.908 vs 0.970 with this seed


def test_regularity_is_searched_again_when_repeat_purchases_double() -> None:
    # The same 400 customers (their number never grows, like CDNOW's cohort) buy
    # like clockwork for 150 days, then at Poisson gaps. Once their repeat
    # purchase-days have doubled, a refit tries k's neighbours again and the
    # likelihood moves k down.
    rng = np.random.default_rng(3)
    lines = []
    for c in range(400):
        t = rng.uniform(0, 10)
        while t < 600:
            lines.append((t, f"c{c}"))
            t += (rng.gamma(6.0, 15.0 / 6.0) if t < 150 else rng.exponential(15.0)) + 1.0
    cv = CustomerValue(regularity=True)
    lines.sort()
    for t, user in lines:
        if t >= 150 and cv.fits == 0:
            cv.refit(150 * DAY)  # the first search, on clockwork gaps
        cv.learn_one(user, t * DAY, 10.0)
    k_regular = cv.transactions.k
    assert k_regular >= 3
    assert len(cv) == 400 and cv.purchase_days - len(cv) >= 2 * cv.regularity_checked_at
    cv.refit(600 * DAY)
    assert cv.transactions.k == k_regular - 1


def test_alive_due_under_regular_gaps() -> None:
    cv = CustomerValue(regularity=True)
    cv.transactions = TransactionParams(r=2.0, alpha=40.0, a=0.5, b=3.0, k=3)
    for day in (0, 20, 41, 60):
        cv.learn_one("c", day * DAY, 10.0)
    due = cv.alive_due("c", 0.5)
    assert due is not None and due > 60 * DAY
    assert cv.predict_one("c", due).p_alive == pytest.approx(0.5, abs=1e-3)
    assert cv.predict_one("c", due - 5 * DAY).p_alive > 0.5
