"""Attribution: which recommendation earned a click or a purchase.

Every published recommendation is an :class:`Exposure` (its id, the items, the
variant and strategy that produced it, the event time). A later click or
purchase of the same user is attributed to one exposure:

1. by id: the click carries the ``recommendation_id`` of one of the user's
   remembered exposures (the item need not be in it: the id is the producer's
   word); an id that is not remembered (too old, another user's, garbled) is
   *unmatched*, never guessed;
2. by item and time window, when no id is sent (purchases never carry one):
   the most recent exposure of that user, shown at most ``window`` seconds
   of event time before the event, that contained the item; an exposure whose
   item was already clicked is preferred, so a purchase follows its click.

Each exposure counts as *clicked* once (its first attributed click) and
*converted* once (its first attributed purchase with quantity > 0), which makes
click-through and conversion rates proportions of exposures; every attributed
click, purchase and the purchase's revenue are also counted. Returns
(quantity < 0) are not attributed.

Memory is bounded per user (the ``max_exposures`` most recent exposures, and
none older than ``retention`` seconds of event time), and the state of one user
is plain JSON (:meth:`UserExposures.to_json`), so the worker keeps it in the
user's profile, which survives restarts and rebalances through the changelog.
:class:`Attributor` holds many users in memory with a bound on their number.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from models.events import Event

__all__ = ["Attribution", "Attributor", "CompactExposure", "Exposure", "UserExposures"]

MatchedBy = Literal["id", "window"]
#: :meth:`Exposure.compact`: the positional values of :meth:`Exposure.to_json`,
#: in tuples (the items and the clicked items), as a profile holds them in memory.
CompactExposure = tuple[
    str, tuple[str, ...], str, str, float, int | None, bool, bool, tuple[str, ...]
]


@dataclass(slots=True)
class Exposure:
    """One recommendation shown to one user."""

    recommendation_id: str
    items: tuple[str, ...]
    strategy: str
    variant: str
    timestamp: float
    segment: int | None = None
    clicked: bool = False
    converted: bool = False
    clicked_items: list[str] = field(default_factory=list)

    def to_json(self) -> list[Any]:
        """Compact JSON form, positional: it lives in every user's profile (a list
        of 9 values is half the memory of a dict with 9 keys).

        ``[id, items, strategy, variant, time, segment, clicked, converted,
        clicked items]``."""
        return [
            self.recommendation_id,
            list(self.items),
            self.strategy,
            self.variant,
            self.timestamp,
            self.segment,
            self.clicked,
            self.converted,
            list(self.clicked_items),
        ]

    def compact(self) -> CompactExposure:
        """:meth:`to_json` in tuples: the items are this exposure's own tuple, and
        an exposure without clicked items holds the empty tuple (one for all)."""
        return (
            self.recommendation_id, self.items, self.strategy, self.variant,
            self.timestamp, self.segment, self.clicked, self.converted,
            tuple(self.clicked_items),
        )

    @classmethod
    def from_json(cls, data: Sequence[Any] | dict[str, Any]) -> Exposure:
        """Inverse of :meth:`to_json` and :meth:`compact`; the earlier dict form
        (short keys, as profiles in an older changelog hold it) is read too."""
        if isinstance(data, dict):
            data = [
                data["id"], data["items"], data["s"], data["v"], data["t"], data.get("seg"),
                data.get("c", False), data.get("p", False), data.get("ci", ()),
            ]
        rec_id, items, strategy, variant, t, segment, clicked, converted, clicked_items = data
        return cls(
            str(rec_id),
            tuple(items),
            str(strategy),
            str(variant),
            float(t),
            segment,
            bool(clicked),
            bool(converted),
            list(clicked_items),
        )


@dataclass(frozen=True, slots=True)
class Attribution:
    """A click or purchase credited to an exposure.

    ``first`` is true when this event made the exposure clicked (for a click)
    or converted (for a purchase) for the first time: the numerators of CTR
    and conversion rate. ``rank`` is the item's 1-based position in the
    recommendation, ``None`` if the item was not in it (an id match on
    another item).
    """

    exposure: Exposure
    kind: Literal["click", "purchase"]
    matched_by: MatchedBy
    first: bool
    revenue: float
    rank: int | None


class UserExposures:
    """The recent exposures of one user, and the attribution of their events.

    Parameters
    ----------
    window
        Seconds of event time after an exposure during which an event on one
        of its items is attributed to it without an id.
    max_exposures
        Exposures remembered (most recent first out when full).
    retention
        Exposures older than this (seconds of event time, relative to the
        newest event seen) are forgotten, even for id matches; at least
        ``window``.

    Examples
    --------
    >>> log = UserExposures(window=600)
    >>> log.expose(Exposure("r1", ("a", "b"), "blend", "blend", 100.0))
    >>> click = Event("click", "c1", "u", "b", 110.0, recommendation_id="r1")
    >>> hit = log.attribute(click)
    >>> hit.exposure.recommendation_id, hit.matched_by, hit.first, hit.rank
    ('r1', 'id', True, 2)
    >>> buy = Event("purchase", "p1", "u", "b", 200.0, quantity=2, price=5.0)
    >>> hit = log.attribute(buy)
    >>> hit.matched_by, hit.first, hit.revenue
    ('window', True, 10.0)
    >>> log.attribute(Event("purchase", "p2", "u", "b", 900.0, quantity=1, price=5.0)) is None
    True
    """

    def __init__(
        self,
        window: float = 1800.0,
        max_exposures: int = 20,
        retention: float = 86_400.0,
        exposures: Iterable[Exposure] = (),
    ) -> None:
        if window <= 0 or max_exposures < 1:
            raise ValueError("window must be > 0 and max_exposures >= 1")
        self.window = window
        self.max_exposures = max_exposures
        self.retention = max(retention, window)
        self.exposures: deque[Exposure] = deque(exposures, maxlen=max_exposures)

    # -- state -----------------------------------------------------------------
    def expose(self, exposure: Exposure) -> None:
        """Remember a recommendation shown to this user."""
        self._prune(exposure.timestamp)
        self.exposures.append(exposure)

    def to_json(self) -> list[list[Any]]:
        """The exposures as JSON (oldest first)."""
        return [e.to_json() for e in self.exposures]

    def compact(self) -> tuple[CompactExposure, ...]:
        """The exposures in :meth:`Exposure.compact` form (oldest first)."""
        return tuple(e.compact() for e in self.exposures)

    @classmethod
    def from_json(
        cls,
        data: Iterable[Sequence[Any] | dict[str, Any]] | None,
        window: float = 1800.0,
        max_exposures: int = 20,
        retention: float = 86_400.0,
    ) -> UserExposures:
        """Rebuild from :meth:`to_json` output (``None`` gives an empty log)."""
        exposures = [Exposure.from_json(d) for d in data or ()]
        return cls(window, max_exposures, retention, exposures)

    def _prune(self, now: float) -> None:
        while self.exposures and now - self.exposures[0].timestamp > self.retention:
            self.exposures.popleft()

    def fatigued(self, min_impressions: int = 3) -> set[str]:
        """Items to stop showing: clicked from a recommendation already (and not
        bought, or they would be excluded anyway), or shown in at least
        ``min_impressions`` remembered recommendations without a click; with
        ``min_impressions <= 0`` the rule is off and nothing is fatigued.

        >>> log = UserExposures()
        >>> for i in range(3):
        ...     log.expose(Exposure(f"r{i}", ("a", "b"), "blend", "blend", float(i)))
        >>> _ = log.attribute(Event("click", "c", "u", "b", 5.0, recommendation_id="r2"))
        >>> sorted(log.fatigued(3)), sorted(log.fatigued(4)), log.fatigued(0)
        (['a', 'b'], ['b'], set())
        """
        if min_impressions <= 0:
            return set()
        shown: dict[str, int] = {}
        clicked: set[str] = set()
        for exposure in self.exposures:
            clicked.update(exposure.clicked_items)
            for item in exposure.items:
                shown[item] = shown.get(item, 0) + 1
        return clicked | {i for i, n in shown.items() if n >= min_impressions}

    # -- attribution -------------------------------------------------------------
    def find(self, event: Event) -> tuple[Exposure, MatchedBy] | None:
        """The exposure ``event`` is credited to, without changing any state."""
        if event.recommendation_id is not None:
            for exposure in reversed(self.exposures):
                if exposure.recommendation_id == event.recommendation_id:
                    return exposure, "id"
            return None
        best: Exposure | None = None
        for exposure in reversed(self.exposures):
            age = event.timestamp - exposure.timestamp
            if age < 0 or age > self.window or event.item_id not in exposure.items:
                continue
            if event.type == "purchase" and event.item_id in exposure.clicked_items:
                return exposure, "window"
            if best is None:
                best = exposure
        return (best, "window") if best is not None else None

    def attribute(self, event: Event) -> Attribution | None:
        """Credit a click or a purchase (quantity > 0) to an exposure, or ``None``.

        Reviews and returns are never attributed. The exposure's clicked /
        converted flags are updated.
        """
        if event.type == "review" or (event.type == "purchase" and event.quantity <= 0):
            return None
        self._prune(event.timestamp)
        found = self.find(event)
        if found is None:
            return None
        exposure, matched_by = found
        rank = exposure.items.index(event.item_id) + 1 if event.item_id in exposure.items else None
        if event.type == "click":
            first = not exposure.clicked
            exposure.clicked = True
            if rank is not None and event.item_id not in exposure.clicked_items:
                exposure.clicked_items.append(event.item_id)  # bounded by len(items)
            return Attribution(exposure, "click", matched_by, first, 0.0, rank)
        first = not exposure.converted
        exposure.converted = True
        return Attribution(exposure, "purchase", matched_by, first, event.revenue, rank)


class Attributor:
    """Attribution for many users in memory, at most ``max_users`` of them.

    The least recently active user is forgotten first. The worker keeps each
    user's :class:`UserExposures` in that user's profile instead; this class
    serves tools and tests that have no profile store.

    Examples
    --------
    >>> att = Attributor(window=60, max_users=2)
    >>> att.expose("u1", Exposure("r1", ("a",), "blend", "blend", 0.0))
    >>> att.attribute(Event("click", "c", "u1", "a", 5.0)).matched_by
    'window'
    >>> att.expose("u2", Exposure("r2", ("a",), "popularity", "popularity", 0.0))
    >>> att.expose("u3", Exposure("r3", ("a",), "popularity", "popularity", 0.0))
    >>> att.attribute(Event("click", "c", "u1", "a", 6.0)) is None  # u1 was evicted
    True
    """

    def __init__(
        self,
        window: float = 1800.0,
        max_exposures: int = 20,
        retention: float = 86_400.0,
        max_users: int = 100_000,
    ) -> None:
        self.window = window
        self.max_exposures = max_exposures
        self.retention = retention
        self.max_users = max_users
        self.users: OrderedDict[str, UserExposures] = OrderedDict()

    def find(self, user_id: str) -> UserExposures | None:
        """The user's exposure log, now the most recently active; ``None`` if unknown."""
        log = self.users.get(user_id)
        if log is not None:
            self.users.move_to_end(user_id)
        return log

    def log(self, user_id: str) -> UserExposures:
        """The user's exposure log, made if new, now the most recently active."""
        log = self.find(user_id)
        if log is None:
            log = self.users[user_id] = UserExposures(
                self.window, self.max_exposures, self.retention
            )
            while len(self.users) > self.max_users:
                self.users.popitem(last=False)
        return log

    def expose(self, user_id: str, exposure: Exposure) -> None:
        """Remember a recommendation shown to ``user_id``."""
        self.log(user_id).expose(exposure)

    def attribute(self, event: Event) -> Attribution | None:
        """See :meth:`UserExposures.attribute`."""
        log = self.find(event.user_id)
        return None if log is None else log.attribute(event)
