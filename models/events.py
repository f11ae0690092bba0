"""The typed event the models learn from.

The stream layer validates raw JSON against the event contract and hands the
models one :class:`Event` per input message; the evaluation tools build the same
objects from JSONL files, so the worker and the benchmarks run identical code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

EventType = Literal["click", "purchase", "review"]
EVENT_TYPES: tuple[EventType, ...] = ("click", "purchase", "review")


@dataclass(frozen=True, slots=True)
class Event:
    """One validated click, purchase or review.

    ``timestamp`` is Unix seconds (UTC) taken from the event itself: models never
    read the wall clock, so replays and tests control time.

    >>> e = Event("purchase", "e1", "u1", "i1", 1_700_000_000.0, quantity=2, price=3.5)
    >>> e.revenue
    7.0
    """

    type: EventType
    event_id: str
    user_id: str
    item_id: str
    timestamp: float
    session_id: str | None = None
    recommendation_id: str | None = None
    quantity: int = 0
    price: float = 0.0
    currency: str | None = None
    order_id: str | None = None
    rating: float | None = None
    text: str | None = None
    title: str | None = None

    @property
    def revenue(self) -> float:
        """Signed value of a purchase line (negative for a return)."""
        return self.quantity * self.price if self.type == "purchase" else 0.0

    @property
    def is_positive(self) -> bool:
        """A purchase with quantity > 0 or a review rated 4 or more."""
        if self.type == "purchase":
            return self.quantity > 0
        if self.type == "review":
            return self.rating is not None and self.rating >= 4
        return False
