"""Churn risk from each customer's own purchase rhythm."""

from __future__ import annotations

import heapq
import math

from models.profiles import DAY, UserProfile


class ChurnModel:
    """A BG/NBD-style churn score with point estimates, plus a heap of due dates.

    Each customer is assumed to buy at their own rate while "alive" (mean gap
    ``g`` between orders, their own mean shrunk towards the population's by
    ``prior_orders`` pseudo-gaps) and to drop out after any order with a
    probability that shrinks with their number of repeat orders
    (``a / (a + b + repeats)``, the mean of a Beta(a, b) posterior). After
    ``R`` days without an order,

    ``P(alive) = (1 - p) e^(-R/g) / ((1 - p) e^(-R/g) + p)``

    and the churn risk over a horizon ``H`` is ``1 - P(alive) (1 - e^(-H/g))``,
    the probability of no order within ``H``. A customer with a steady weekly
    rhythm is at risk after a few silent weeks; one who buys twice a year is not.

    Alerts are driven by :meth:`due`: each new order schedules the moment the
    customer becomes overdue (``overdue_factor`` times their expected gap after
    the order) in a heap, so a periodic check pops only what has fallen due
    (amortised O(log users) per order, never a scan of all users).

    Parameters
    ----------
    horizon_days
        Horizon of the churn risk.
    overdue_factor
        Gaps of silence, relative to the customer's rhythm, that raise an alert.
    min_orders
        Orders needed before a customer can be alerted on (a rhythm needs two).
    prior_orders
        Pseudo-gaps at the population mean that a customer's mean gap is shrunk to.
    dropout_a, dropout_b
        Beta prior of the per-order dropout probability.

    Examples
    --------
    >>> from collections import deque
    >>> model = ChurnModel()
    >>> steady = UserProfile("u", 0.0, 0.0, deque())
    >>> steady.orders, steady.gap_sum, steady.last_order_time = 10, 9 * 7 * DAY, 63 * DAY
    >>> model.risk(steady, now=66 * DAY) < model.risk(steady, now=120 * DAY)
    True
    """

    def __init__(
        self,
        horizon_days: float = 90.0,
        overdue_factor: float = 3.0,
        min_orders: int = 3,
        prior_orders: float = 1.0,
        dropout_a: float = 1.0,
        dropout_b: float = 3.0,
    ) -> None:
        self.horizon_days = horizon_days
        self.overdue_factor = overdue_factor
        self.min_orders = min_orders
        self.prior_orders = prior_orders
        self.dropout_a = dropout_a
        self.dropout_b = dropout_b
        self.population_gap_sum = 0.0
        self.population_gap_n = 0
        self.heap: list[tuple[float, str, int]] = []

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
        if profile.last_order_time is None:
            return None
        g = self.expected_gap_days(profile)
        recency = max(0.0, now - profile.last_order_time) / DAY
        p_drop = self.dropout_a / (self.dropout_a + self.dropout_b + max(profile.orders - 1, 0))
        stay = (1.0 - p_drop) * math.exp(-min(recency / g, 700.0))
        p_alive = stay / (stay + p_drop)
        return 1.0 - p_alive * (1.0 - math.exp(-self.horizon_days / g))

    def observe_order(self, profile: UserProfile, previous_order_time: float | None) -> None:
        """Learn from a new order of ``profile`` and schedule when it falls overdue."""
        if previous_order_time is not None and profile.last_order_time is not None:
            gap = profile.last_order_time - previous_order_time
            if gap > 0:
                self.population_gap_sum += gap
                self.population_gap_n += 1
        profile.churn_version += 1
        if profile.orders >= self.min_orders and profile.last_order_time is not None:
            due = profile.last_order_time + self.overdue_factor * self.expected_gap_days(
                profile
            ) * DAY
            heapq.heappush(self.heap, (due, profile.user_id, profile.churn_version))

    def due(self, now: float) -> list[tuple[str, int]]:
        """Pop every ``(user id, version)`` whose due date is at or before ``now``."""
        out: list[tuple[str, int]] = []
        while self.heap and self.heap[0][0] <= now:
            _, user_id, version = heapq.heappop(self.heap)
            out.append((user_id, version))
        return out
