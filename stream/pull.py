"""Recommendations on request: what ``GET /recommendations/{user_id}`` and
``GET /items/{item_id}/similar`` answer (Faust-free; the views only route).

A pulled list is ranked from the live models exactly like a published one:
the user's experiment variant (or the bandit) picks the strategy, fatigued
items are left out, and the answer has the topic's format, with
``"trigger_event_type": "request"``. It is an *exposure* like the topic's: a
click that carries its ``recommendation_id``, or a click or purchase of one of
its items within the attribution window, is credited to it with the same
metrics. The exposure waits in :class:`PulledExposures` (memory) until the
user's next event, which moves it into the user's stored exposure log (the
profile, a changelogged table): a restart before that event forgets it.

Exposure times are event time, as attribution is: the latest event time the
worker has seen (on a live stream, about now).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from models.attribution import Exposure, UserExposures
from stream.contract import MAX_ID_CHARS, format_timestamp
from stream.published import similar_items

if TYPE_CHECKING:
    from stream.processor import Processor

#: Largest ``k`` a request may ask for.
MAX_K = 100
_PULL_NAMESPACE = uuid.UUID("6f1c2a57-3f0e-4b0a-9c53-2f1d5e8a7b10")


class BadRequest(ValueError):
    """A request parameter is invalid: the message says which and why (HTTP 400)."""


class PulledExposures:
    """Pulled lists not yet in their user's stored log, at most ``max_users`` users.

    Each user's pending log keeps at most ``max_exposures``; the user whose
    first pending pull is oldest is dropped first when full.
    """

    def __init__(
        self, window: float = 1800.0, max_exposures: int = 20, max_users: int = 100_000
    ) -> None:
        self.window = window
        self.max_exposures = max_exposures
        self.max_users = max_users
        self.pending: dict[str, UserExposures] = {}

    def log_of(self, user_id: str) -> UserExposures:
        """``user_id``'s pending log (created empty)."""
        log = self.pending.get(user_id)
        if log is None:
            log = self.pending[user_id] = UserExposures(self.window, self.max_exposures)
            if len(self.pending) > self.max_users:
                del self.pending[next(iter(self.pending))]
        return log

    def merge(self, user_id: str, log: UserExposures) -> bool:
        """Move ``user_id``'s pending exposures into ``log``; True if there were any."""
        waiting = self.pending.pop(user_id, None)
        if waiting is None or not waiting.exposures:
            return False
        for exposure in waiting.exposures:
            log.expose(exposure)
        return True

    def forget(self, user_id: str) -> None:
        self.pending.pop(user_id, None)


def parse_k(raw: str | None, default: int) -> int:
    """``k`` of a request: an integer in 1..:data:`MAX_K` (``default`` when absent)."""
    if raw is None or raw == "":
        return default
    try:
        k = int(raw)
    except ValueError:
        raise BadRequest(f"k must be an integer between 1 and {MAX_K}, got {raw[:40]!r}") from None
    if not 1 <= k <= MAX_K:
        raise BadRequest(f"k must be between 1 and {MAX_K}, got {k}")
    return k


def parse_id(name: str, raw: str | None) -> str | None:
    """An id parameter (user, item, session): 1..256 printable characters, or absent."""
    if raw is None:
        return None
    if not raw or len(raw) > MAX_ID_CHARS or not raw.isprintable():
        raise BadRequest(
            f"{name} must be 1 to {MAX_ID_CHARS} printable characters, got {raw[:40]!r}"
        )
    return raw


def items_json(recs: list[Any]) -> list[dict[str, Any]]:
    return [
        {"rank": i + 1, "item_id": r.item_id, "score": round(r.score, 6), "reason": r.reason}
        for i, r in enumerate(recs)
    ]


class Pulls:
    """Answers pull requests from a :class:`~stream.processor.Processor`'s live state."""

    def __init__(self, processor: Processor, clock: Callable[[], float] = time.time) -> None:
        self.processor = processor
        self.clock = clock
        self.requests = 0

    def recommend(
        self,
        user_id: str,
        k: int,
        item_id: str | None = None,
        session_id: str | None = None,
        stored_id: str | None = None,
    ) -> dict[str, Any]:
        """The topic-format recommendation for ``user_id`` (``stored_id``: its
        pseudonym when ids are pseudonymised), recorded as a pending exposure."""
        p = self.processor
        stored = stored_id or user_id
        now = self.clock()
        self.requests += 1
        event_time = p.max_event_time or now
        rec_id = str(uuid.uuid5(_PULL_NAMESPACE, f"pull:{stored}:{now!r}:{self.requests}"))
        profile = p.profiles.get(stored)
        segment = profile.segment if profile is not None else None
        variant, strategy = p.choose(stored, segment, rec_id)
        log = p.exposures_of(profile) if profile is not None else None
        items = p.publishable(p.loop.recommend(
            p.engine, stored, strategy, log, key=rec_id, k=k,
            session_id=session_id, item_id=item_id,
        ))
        if items:
            exposure = Exposure(
                rec_id, tuple(r.item_id for r in items), strategy, variant, event_time, segment
            )
            p.expose_pulled(stored, exposure)
        return {
            "recommendation_id": rec_id,
            "user_id": user_id,
            "items": items_json(items),
            "strategy": strategy,
            "variant": variant,
            "trigger_event_id": None,
            "trigger_event_type": "request",
            "event_time": _rfc3339(event_time),
            "generated_at": _rfc3339(now),
        }

    def similar(self, item_id: str, k: int) -> dict[str, Any]:
        """Items used together with ``item_id``, from the DP neighbour release
        (:func:`stream.published.similar_items`); any id answers."""
        return similar_items(self.processor.publisher, item_id, k)


def _rfc3339(stamp: float) -> str:
    return format_timestamp(stamp, timespec="milliseconds")
