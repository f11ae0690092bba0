"""Per-user features maintained online, one event at a time, in bounded memory."""

from __future__ import annotations

import math
from collections.abc import Iterable, MutableSequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.events import Event

#: Names of the segmentation coordinates, in :func:`segment_vector` order.
SEGMENT_FEATURES: tuple[str, ...] = (
    "log_orders",
    "log_order_value",
    "log_clicks",
    "log_reviews",
    "rating_mean",
    "sentiment_mean",
    "return_rate",
    "log_purchase_gap_days",
    "log_expected_spend",
)

#: A new order starts when a purchase has another order id or comes this long after the last.
ORDER_GAP_SECONDS = 3600.0
DAY = 86_400.0


class History(list[tuple[int, float]]):
    """A user's last ``maxlen`` interactions ``(item, strength)``, oldest first.

    A list that drops its oldest entry when an append goes past ``maxlen``: the
    semantics of ``deque(maxlen=...)`` without its fixed 64-slot block (760
    bytes even for one entry, the largest per-user object when most users have
    a few events; this is about 100 bytes at one entry).

    >>> h = History(2)
    >>> for i in range(3):
    ...     h.append((i, 1.0))
    >>> h, h.maxlen
    ([(1, 1.0), (2, 1.0)], 2)
    """

    __slots__ = ("maxlen",)

    def __init__(self, maxlen: int, entries: Iterable[tuple[int, float]] = ()) -> None:
        super().__init__(entries)
        self.maxlen = maxlen
        if len(self) > maxlen:
            del self[: len(self) - maxlen]

    def append(self, entry: tuple[int, float]) -> None:
        super().append(entry)
        if len(self) > self.maxlen:
            del self[0]

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickle restores list items before slot state: rebuild through __init__.
        return (History, (self.maxlen, list(self)))


@dataclass(slots=True)
class UserProfile:
    """Everything the engine remembers about one user.

    Counters and running sums only, plus two bounded containers: ``history``
    (the last ``history_size`` interactions, for co-occurrence) and ``seen``
    (the last ``max_seen`` distinct items interacted with and how, insertion-ordered,
    oldest evicted first) so memory per user is bounded whatever their activity.
    """

    user_id: str
    first_seen: float
    last_seen: float
    history: MutableSequence[tuple[int, float]]  # a History in the engine
    seen: dict[int, str] = field(default_factory=dict)
    clicks: int = 0
    sessions: int = 0
    last_session: str | None = None
    purchase_lines: int = 0
    returns: int = 0
    orders: int = 0
    last_order_id: str | None = None
    first_order_time: float | None = None
    last_order_time: float | None = None
    gap_sum: float = 0.0
    revenue: float = 0.0
    reviews: int = 0
    rating_sum: float = 0.0
    rating_n: int = 0
    sentiment_sum: float = 0.0
    sentiment_n: int = 0
    segment: int | None = None
    churn_version: int = 0
    # Event time at which the churn alert of ``churn_version`` falls due; None
    # when none is pending (fewer orders, or already checked). An evictable user
    # has none pending: the alert of a user who goes quiet fires before eviction.
    churn_due: float | None = None
    vector: np.ndarray | None = None

    def mark_seen(self, item: int, kind: str, max_seen: int) -> None:
        """Mark ``item`` as seen through ``kind``, evicting the oldest beyond ``max_seen``.

        A purchase or review overrides a click (recommendations exclude only
        items bought or reviewed; the hit metric excludes every seen item).
        """
        old = self.seen.get(item)
        if old is None:
            self.seen[item] = kind
            if len(self.seen) > max_seen:
                del self.seen[next(iter(self.seen))]
        elif old == "click":
            self.seen[item] = kind

    def learn_one(self, event: Event, sentiment: float | None) -> bool:
        """Update the counters with ``event``; returns True when it starts a new order."""
        t = event.timestamp
        self.last_seen = max(self.last_seen, t)
        new_order = False
        if event.type == "click":
            self.clicks += 1
            if event.session_id is None or event.session_id != self.last_session:
                self.sessions += 1
                self.last_session = event.session_id
        elif event.type == "purchase":
            self.purchase_lines += 1
            self.revenue += event.revenue
            if event.quantity < 0:
                self.returns += 1
            else:
                new_order = (
                    self.last_order_time is None
                    or (event.order_id is not None and event.order_id != self.last_order_id)
                    or (event.order_id is None and t - self.last_order_time > ORDER_GAP_SECONDS)
                )
                if new_order:
                    if self.last_order_time is not None and t > self.last_order_time:
                        self.gap_sum += t - self.last_order_time
                    if self.first_order_time is None:
                        self.first_order_time = t
                    self.orders += 1
                    self.last_order_time = (
                        t if self.last_order_time is None else max(t, self.last_order_time)
                    )
                self.last_order_id = event.order_id
        else:
            self.reviews += 1
            if event.rating is not None:
                self.rating_sum += event.rating
                self.rating_n += 1
            if sentiment is not None:
                self.sentiment_sum += sentiment
                self.sentiment_n += 1
        return new_order

    @property
    def mean_gap_days(self) -> float | None:
        """Mean days between orders, ``None`` before the second order."""
        if self.orders < 2:
            return None
        return self.gap_sum / (self.orders - 1) / DAY

    def segment_vector(self, expected_spend: float = 0.0) -> np.ndarray:
        """The segmentation coordinates (log-compressed where heavy-tailed).

        Averages a user does not have (no rating yet) sit at neutral values so
        that they do not pull the user towards an extreme. ``expected_spend`` is
        the customer-value model's spend over its horizon (0 before a purchase),
        as of the user's latest event.
        """
        order_value = max(self.revenue, 0.0) / self.orders if self.orders else 0.0
        gap = self.mean_gap_days
        return np.array(
            [
                math.log1p(self.orders),
                math.log1p(order_value),
                math.log1p(self.clicks),
                math.log1p(self.reviews),
                self.rating_sum / self.rating_n if self.rating_n else 3.0,
                self.sentiment_sum / self.sentiment_n if self.sentiment_n else 0.5,
                self.returns / self.purchase_lines if self.purchase_lines else 0.0,
                math.log1p(gap) if gap is not None else 0.0,
                math.log1p(max(expected_spend, 0.0)),
            ]
        )

    def summary(self, now: float) -> dict[str, Any]:
        """JSON-able features of this user at event time ``now``."""
        return {
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "recency_days": max(0.0, now - self.last_seen) / DAY,
            "clicks": self.clicks,
            "sessions": self.sessions,
            "purchase_lines": self.purchase_lines,
            "orders": self.orders,
            "returns": self.returns,
            "return_rate": self.returns / self.purchase_lines if self.purchase_lines else 0.0,
            "monetary": self.revenue,
            "days_since_last_order": (
                max(0.0, now - self.last_order_time) / DAY
                if self.last_order_time is not None
                else None
            ),
            "mean_days_between_orders": self.mean_gap_days,
            "reviews": self.reviews,
            "rating_mean": self.rating_sum / self.rating_n if self.rating_n else None,
            "sentiment_mean": self.sentiment_sum / self.sentiment_n if self.sentiment_n else None,
            "segment": self.segment,
            "items_remembered": len(self.seen),
        }
