"""The stored profile: the per-user record the worker keeps in its profile
table, backed by a compacted changelog topic.

It is plain JSON on the changelog, so :class:`StoredProfile` is a TypedDict:
the record is its own wire form, read and written without a copy per event
(a profile is read and written for every user of every batch).
:func:`from_changelog` is the one way in from the wire, and fills in what a
record written by an earlier release lacks.

Not to be confused with :class:`models.profiles.UserProfile` (the models'
features of a user) nor with what ``GET /users/{id}`` answers
(:func:`stream.views.profile_view`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, NotRequired, Protocol, TypedDict

from models.engine import Outcome, Recommendation
from models.events import Event
from stream.records import InputMessage

__all__ = [
    "HELD_TRIGGER",
    "StoredProfile",
    "compact_recommendations",
    "expand_recommendations",
    "from_changelog",
    "is_inactive",
    "new_stored_profile",
    "update_stored_profile",
]

# The key naming the trigger whose recommendation is held (stream/debounce.py),
# so that a replay after a crash or a rebalance holds it again. Its wire name
# stays "pending_trigger", which workers of the previous release read too.
HELD_TRIGGER: Final = "pending_trigger"



class StoredProfile(TypedDict):
    user_id: str
    events: dict[str, int]  # count per event type
    first_event_time: float | None
    last_event_time: float | None
    segment: int | None
    recent_event_ids: list[str]  # the de-duplication window, oldest first
    recommendations: list[Any]  # compact form, see compact_recommendations
    recommendation_id: str | None
    recommended_at: float | None  # event time of the latest trigger answered
    variant: str | None
    exposures: list[Any]  # models.attribution.UserExposures.to_json()
    pending_trigger: NotRequired[str]  # HELD_TRIGGER: present while held


# Keys an earlier release wrote that are no longer part of the record.
_RETIRED_KEYS = ("partition",)


def new_stored_profile(user_id: str) -> StoredProfile:
    return {
        "user_id": user_id,
        "events": {"click": 0, "purchase": 0, "review": 0},
        "first_event_time": None,
        "last_event_time": None,
        "segment": None,
        "recent_event_ids": [],
        "recommendations": [],
        "recommendation_id": None,
        "recommended_at": None,
        "variant": None,
        "exposures": [],
    }


def from_changelog(record: Mapping[str, Any]) -> StoredProfile:
    """A changelog value as a :class:`StoredProfile`, in place when it is a dict
    (the table's own copy): keys an earlier release wrote and no longer uses are
    dropped, and the optional ones it did not write get their defaults.

    >>> p = from_changelog({**new_stored_profile("u"), "partition": 3})
    >>> "partition" in p, p["user_id"]
    (False, 'u')
    """
    profile: dict[str, Any] = record if isinstance(record, dict) else dict(record)
    for key in _RETIRED_KEYS:
        profile.pop(key, None)
    profile.setdefault("variant", None)
    profile.setdefault("exposures", [])
    return profile  # type: ignore[return-value]


def update_stored_profile(
    profile: StoredProfile, event: Event, outcome: Outcome, window: int
) -> None:
    """Count ``event`` in the profile and remember its id (the last ``window``)."""
    profile["events"][event.type] += 1
    first, last = profile["first_event_time"], profile["last_event_time"]
    if first is None or event.timestamp < first:
        profile["first_event_time"] = event.timestamp
    if last is None or event.timestamp > last:
        profile["last_event_time"] = event.timestamp
    profile["segment"] = outcome.segment
    ids = profile["recent_event_ids"]
    ids.append(event.event_id)
    if len(ids) > window:
        del ids[: len(ids) - window]


def recommendation_json(rec: Recommendation) -> dict[str, Any]:
    return {"item_id": rec.item_id, "score": round(float(rec.score), 6), "reason": rec.reason}


def compact_recommendations(recs: Sequence[dict[str, Any]]) -> list[Any]:
    """The profile's form of its current recommendations: one flat list
    ``[item_id, score, reason, item_id, score, reason, ...]``. It lives in every
    profile: 10 dicts took about 2 kB per user, 10 triples 1 kB, this 0.3 kB."""
    return [value for r in recs for value in (r["item_id"], r["score"], r["reason"])]


def expand_recommendations(recs: Sequence[Any]) -> list[dict[str, Any]]:
    """Inverse of :func:`compact_recommendations`; the list of dicts an earlier
    release stored passes as is."""
    if recs and isinstance(recs[0], dict):
        return list(recs)
    return [
        {"item_id": recs[i], "score": recs[i + 1], "reason": recs[i + 2]}
        for i in range(0, len(recs) - 2, 3)
    ]


def is_inactive(profile: Mapping[str, Any], before: float) -> bool:
    """True if the profile's last event is older than ``before`` (event time)."""
    last = profile.get("last_event_time")
    return last is None or last < before


class ProfileStore(Protocol):
    """Per-user stored profiles: a Faust table in the worker, :class:`DictStore` in tests.

    ``put`` stores the profile as given: where it came from (``source``, the
    user's latest input record in the batch, whose partition the changelog
    record goes to) is the store's to remember, never written into the profile.
    """

    def get(self, user_id: str) -> StoredProfile | None: ...

    def put(self, user_id: str, profile: StoredProfile, source: InputMessage) -> None: ...

    def delete(self, user_ids: Sequence[str]) -> int:
        """Forget these users' profiles (durably); returns how many existed."""
        ...

    def keys(self) -> Iterable[str]: ...

    def __len__(self) -> int: ...
