"""Churn risk from each customer's own purchase rhythm."""

from __future__ import annotations

import heapq
import math
from typing import Literal

from models.profiles import DAY, UserProfile


class ChurnModel:
    """BG/NBD churn risk with population-level priors, plus a heap of due dates.

    The score is the beta-geometric / negative-binomial model of Fader, Hardie
    and Lee (2005) evaluated with fixed heterogeneity priors instead of a
    fitted likelihood: while "alive", a customer orders at a Poisson rate drawn
    from Gamma(``r``, ``alpha``); after each repeat order they drop out with a
    probability drawn from Beta(``dropout_a``, ``dropout_b``). ``alpha`` is set
    online so that the prior mean rate ``r / alpha`` equals the population's
    observed repeat-order rate (repeat orders per customer-day, kept as two
    running sums). For a customer with ``x`` repeat orders, the last at age
    ``t_x`` days, now aged ``T`` days,

    ``P(alive) = 1 / (1 + a / (b + x - 1) * ((alpha + T) / (alpha + t_x)) ** (r + x))``
    (1 when ``x = 0``) and the churn risk over a horizon ``H`` is
    ``1 - P(alive) * (1 - ((alpha + T) / (alpha + T + H)) ** (r + x))``,
    the probability of no order within ``H`` days. Unlike recency alone it
    weighs the silence against the customer's own frequency: a silent month
    means little for a twice-a-year buyer and a lot for a weekly one.

    Alerts are driven by :meth:`due`: each new order schedules the moment the
    customer becomes overdue (``overdue_factor`` times their mean gap between
    orders, shrunk towards the population's) in a heap, so a periodic check
    pops only what has fallen due (O(log n) per order, never a scan of all
    users).

    Parameters
    ----------
    horizon_days
        Horizon of the churn risk.
    overdue_factor
        Gaps of silence, relative to the customer's rhythm, that raise an alert.
    min_orders
        Orders needed before a customer can be alerted on.
    prior_orders
        Pseudo-gaps at the population mean that a customer's mean gap is shrunk to.
    r
        Shape of the Gamma prior of purchase rates (lower: more heterogeneous).
    dropout_a, dropout_b
        Beta prior of the per-order dropout probability (mean ``a / (a + b)``).

    Examples
    --------
    >>> from collections import deque
    >>> model = ChurnModel()
    >>> weekly = UserProfile("w", 0.0, 0.0, deque())
    >>> weekly.orders, weekly.first_order_time, weekly.last_order_time = 10, 0.0, 63 * DAY
    >>> weekly.gap_sum = 63 * DAY
    >>> model.risk(weekly, now=66 * DAY) < model.risk(weekly, now=150 * DAY)
    True
    """

    def __init__(
        self,
        horizon_days: float = 90.0,
        overdue_factor: float = 3.0,
        min_orders: int = 3,
        prior_orders: float = 1.0,
        r: float = 0.5,
        dropout_a: float = 0.5,
        dropout_b: float = 5.0,
    ) -> None:
        self.horizon_days = horizon_days
        self.overdue_factor = overdue_factor
        self.min_orders = min_orders
        self.prior_orders = prior_orders
        self.r = r
        self.dropout_a = dropout_a
        self.dropout_b = dropout_b
        self.population_gap_sum = 0.0
        self.population_gap_n = 0
        self.customers = 0
        self.first_order_sum = 0.0
        self.repeat_orders = 0
        self.heap: list[tuple[float, str, int]] = []

    def population_rate(self, now: float) -> float:
        """Repeat orders per customer-day over all customers so far (1/30 before any)."""
        exposure = (self.customers * now - self.first_order_sum) / DAY
        if self.repeat_orders == 0 or exposure <= 0:
            return 1.0 / 30.0
        return self.repeat_orders / exposure

    def population_gap_days(self) -> float:
        """Mean gap between consecutive orders over all customers (30 days before any)."""
        if self.population_gap_n == 0:
            return 30.0
        return self.population_gap_sum / self.population_gap_n / DAY

    def expected_gap_days(self, profile: UserProfile) -> float:
        """The customer's mean gap between orders, shrunk towards the population's."""
        repeats = max(profile.orders - 1, 0)
        prior = self.prior_orders
        gap = (profile.gap_sum / DAY + prior * self.population_gap_days()) / (repeats + prior)
        return max(gap, 1.0 / 24.0)

    def risk(self, profile: UserProfile, now: float) -> float | None:
        """P(no order within the horizon) at event time ``now``; ``None`` without orders."""
        first, last = profile.first_order_time, profile.last_order_time
        if first is None or last is None:
            return None
        x = max(profile.orders - 1, 0)
        age = max(now - first, 0.0) / DAY
        t_x = max(last - first, 0.0) / DAY
        r = self.r
        alpha = r / self.population_rate(now)
        p_alive = 1.0
        if x > 0:
            log_ratio = (r + x) * math.log((alpha + age) / (alpha + t_x))
            odds = self.dropout_a / (self.dropout_b + x - 1) * math.exp(min(log_ratio, 700.0))
            p_alive = 1.0 / (1.0 + odds)
        p_silent = math.exp((r + x) * math.log((alpha + age) / (alpha + age + self.horizon_days)))
        return 1.0 - p_alive * (1.0 - p_silent)

    def learn_one(
        self,
        profile: UserProfile,
        previous_order_time: float | None,
        due: float | Literal["overdue"] | None = "overdue",
    ) -> None:
        """Learn from a new order of ``profile`` and schedule its churn check.

        ``due`` is the event time of the check: by default the moment the
        customer falls ``overdue_factor`` times their mean gap overdue; the
        engine passes the moment the customer-value model's P(alive) falls
        below its threshold (``None``: no check). Only customers with at least
        ``min_orders`` orders are scheduled.
        """
        if previous_order_time is None:
            if profile.first_order_time is not None:
                self.customers += 1
                self.first_order_sum += profile.first_order_time
        else:
            self.repeat_orders += 1
            if profile.last_order_time is not None:
                gap = profile.last_order_time - previous_order_time
                if gap > 0:
                    self.population_gap_sum += gap
                    self.population_gap_n += 1
        profile.churn_version += 1
        profile.churn_due = None
        if profile.orders >= self.min_orders and profile.last_order_time is not None:
            if due == "overdue":
                due = profile.last_order_time + self.overdue_factor * self.expected_gap_days(
                    profile
                ) * DAY
            if due is not None:
                self.schedule(profile, due, new_version=False)

    def schedule(self, profile: UserProfile, due: float, new_version: bool = True) -> None:
        """Push a churn check of ``profile`` at event time ``due`` (replacing any pending)."""
        if new_version:
            profile.churn_version += 1
        profile.churn_due = due
        heapq.heappush(self.heap, (due, profile.user_id, profile.churn_version))

    def forget(self, user_id: str) -> int:
        """Drop the user's due dates from the heap (O(heap)): an erased user leaves
        no id behind, where eviction lets stale entries lapse. Returns how many."""
        kept = [entry for entry in self.heap if entry[1] != user_id]
        removed = len(self.heap) - len(kept)
        if removed:
            heapq.heapify(kept)
            self.heap = kept
        return removed

    def due(self, now: float) -> list[tuple[str, int, float]]:
        """Pop every ``(user id, version, due date)`` whose due date is at or before ``now``.

        An entry is current only if the profile still has that version and due
        date (``UserProfile.churn_due``): a later order supersedes it, and so
        does a profile started afresh after eviction, whose versions count from
        0 again but whose due dates are its own.
        """
        out: list[tuple[str, int, float]] = []
        while self.heap and self.heap[0][0] <= now:
            due, user_id, version = heapq.heappop(self.heap)
            out.append((user_id, version, due))
        return out
