"""Bounded per-user state: inactive users are forgotten by the models and the
profile store alike, a bounded number per call (the worker runs it on its own
timer, ``stream/app.py``)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING

from prometheus_client import Counter

from models.engine import FeedbackEngine
from stream.stored_profile import is_inactive

if TYPE_CHECKING:
    from stream.stored_profile import ProfileStore

__all__ = ["Eviction"]


class Eviction:
    """Forget inactive users, in the models and in the profile store alike.

    Parameters
    ----------
    engine, profiles
        The models and the stored profiles, which forget the same users.
    evicted
        The counter of users forgotten, labelled by reason (``inactive``, ``cap``).
    retention
        Seconds of event time after which an inactive user is forgotten (0: never).
    max_users
        Users the models keep at most (0: no cap).
    per_tick
        Users forgotten at most per call.
    held
        The users whose recommendation is held (the debounce): the user cap
        never evicts them, or they would be ranked as unknown users.
    forget
        Told every user forgotten (the processor drops its caches).
    """

    def __init__(
        self,
        engine: FeedbackEngine,
        profiles: ProfileStore,
        evicted: Counter,
        *,
        retention: float,
        max_users: int,
        per_tick: int,
        held: Collection[str] = (),
        forget: Callable[[str], object] = lambda user_id: None,
    ) -> None:
        self.engine = engine
        self.profiles = profiles
        self.evicted = evicted
        self.retention = retention
        self.max_users = max_users
        self.per_tick = per_tick
        self.held = held
        self.forget = forget
        # Profile ids the sweep still has to look at (see _sweep_profiles).
        self._sweep: list[str] = []

    def evict(self, max_event_time: float) -> int:
        """Forget inactive users; ``max_event_time`` is the newest event time seen.

        Users whose last event is older than ``retention`` before
        ``max_event_time`` go first (least recently active first; a pending
        churn alert keeps its user, see ``FeedbackEngine.evict_inactive``), then,
        with ``max_users``, the least recently active beyond the cap. A sweep
        over the profile store then finds profiles the models do not know (taken
        over from another worker with its partitions) that are just as inactive.
        At most ``per_tick`` users are forgotten and about as many
        profiles read per call, so the pause is bounded whatever the number of
        users. Returns the number of users forgotten.
        """
        budget = self.per_tick
        total = 0
        before = None
        if self.retention > 0 and max_event_time:
            before = max_event_time - self.retention
            total += self._evicted(self.engine.evict_inactive(before, budget), "inactive")
        if self.max_users > 0 and total < budget:
            total += self._evicted(
                self.engine.evict_least_recent(self.max_users, budget - total, self.held),
                "cap",
            )
        if before is not None and total < budget:
            total += self._evicted(self._sweep_profiles(before, budget - total), "inactive")
        return total

    def _evicted(self, user_ids: Sequence[str], reason: str) -> int:
        """Delete the profiles of users forgotten for ``reason`` and count them."""
        if user_ids:
            self.profiles.delete(user_ids)
            for user_id in user_ids:
                self.forget(user_id)
        self.evicted.labels(reason).inc(len(user_ids))
        return len(user_ids)

    def _sweep_profiles(self, before: float, limit: int) -> list[str]:
        """Read up to ``limit`` stored profiles round robin; return those unknown to
        the models and inactive since before ``before``. A pass over the store
        takes a snapshot of its keys (8 bytes per user), refreshed once it is
        read through."""
        if not self._sweep:
            self._sweep = list(self.profiles.keys())
            self._sweep.reverse()  # popped from the end: oldest-stored first
        known = self.engine.profiles
        stale: list[str] = []
        for _ in range(min(limit, len(self._sweep))):
            user_id = self._sweep.pop()
            if user_id in known:
                continue  # the models' own eviction decides for this one
            profile = self.profiles.get(user_id)
            if profile is not None and is_inactive(profile, before):
                stale.append(user_id)
        return stale
