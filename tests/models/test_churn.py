"""BG/NBD churn risk."""

from __future__ import annotations

from collections import deque

from models.churn import ChurnModel
from models.profiles import DAY, UserProfile


def customer(orders: int, first: float, last: float, user_id: str = "c") -> UserProfile:
    p = UserProfile(user_id, first, last, deque())
    p.orders, p.first_order_time, p.last_order_time = orders, first, last
    p.gap_sum = last - first
    return p


def risk(model: ChurnModel, profile: UserProfile, now: float) -> float:
    value = model.risk(profile, now)
    assert value is not None and 0.0 <= value <= 1.0
    return value


def test_silence_matters_more_for_frequent_buyers() -> None:
    model = ChurnModel()
    frequent = customer(20, 0.0, 100 * DAY)  # an order every 5 days
    rare = customer(2, 0.0, 100 * DAY)  # two orders 100 days apart
    # 60 silent days: alarming for the first, ordinary for the second
    assert risk(model, frequent, 160 * DAY) > 0.95
    assert risk(model, rare, 160 * DAY) < 0.7
    assert risk(model, frequent, 101 * DAY) < 0.05


def test_risk_grows_with_recency_and_falls_with_frequency() -> None:
    model = ChurnModel()
    a = customer(5, 0.0, 50 * DAY)
    risks = [risk(model, a, (50 + d) * DAY) for d in (0, 30, 90, 300)]
    assert risks == sorted(risks)
    loyal = customer(30, 0.0, 50 * DAY)
    assert risk(model, loyal, 55 * DAY) < risk(model, customer(2, 0.0, 50 * DAY), 55 * DAY)


def test_no_orders_no_risk() -> None:
    p = UserProfile("c", 0.0, 0.0, deque())
    assert ChurnModel().risk(p, 10.0) is None


def test_population_rate_follows_the_customers() -> None:
    model = ChurnModel()
    assert model.population_rate(0.0) == 1 / 30  # prior before any repeat order
    a = customer(1, 0.0, 0.0, "a")
    model.learn_one(a, None)
    a.orders, a.last_order_time = 2, 10 * DAY
    model.learn_one(a, 0.0)
    assert abs(model.population_rate(20 * DAY) - 1 / 20) < 1e-12


def test_due_dates_pop_in_order() -> None:
    model = ChurnModel(min_orders=2, overdue_factor=2.0)
    fast = customer(3, 0.0, 10 * DAY, "fast")
    slow = customer(3, 0.0, 100 * DAY, "slow")
    model.learn_one(fast, 5 * DAY)
    model.learn_one(slow, 50 * DAY)
    assert model.due(11 * DAY) == []
    assert [u for u, *_ in model.due(40 * DAY)] == ["fast"]
    assert [u for u, *_ in model.due(10_000 * DAY)] == ["slow"]
