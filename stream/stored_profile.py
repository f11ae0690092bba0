"""The stored profile: the per-user record the worker keeps in its profile
table, backed by a compacted changelog topic.

On the changelog it is a JSON object (:meth:`StoredProfile.to_json`, the keys
below); in memory it is a :class:`StoredProfile`, a slotted record that holds
the same fields in less space: every user of the worker has one, for as long
as the retention horizon keeps them (docs/performance.md, "Memory in
process"). The profile table's codec (:mod:`stream.faust.profile_codec`)
encodes a record to that JSON and decodes JSON into a record, also when the
table is restored from its changelog; :meth:`StoredProfile.from_json` reads the
records earlier releases wrote too.

Not to be confused with :class:`models.profiles.UserProfile` (the models'
features of a user) nor with what ``GET /users/{id}`` answers
(:func:`stream.views.profile_view`).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, Protocol

import orjson

from models.attribution import CompactExposure, Exposure
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

# Keys an earlier release wrote that are no longer part of the record: read
# (a TableStore tombstone may need the partition), never written back.
_RETIRED_KEYS: Final = frozenset({"partition"})
_WIRE_KEYS: Final = frozenset({
    "user_id", "events", "first_event_time", "last_event_time", "segment",
    "recent_event_ids", "recommendations", "recommendation_id", "recommended_at",
    "variant", "exposures", HELD_TRIGGER,
})


class Shared:
    """One copy of each string it is shown, at most ``capacity`` of them.

    Item ids, reasons, strategy and variant names come back in every profile
    (a reason such as "bought together with 85123A" is formatted anew for
    every list, an id decoded anew from every changelog record): the profile
    keeps the first copy. When full it starts afresh, so that the strings it
    holds for nobody stay bounded.

    >>> shared = Shared(capacity=2)
    >>> a = shared("".join(["x", "y"]))
    >>> shared("".join(["x", "y"])) is a
    True
    """

    __slots__ = ("capacity", "strings")

    def __init__(self, capacity: int = 1 << 15) -> None:
        self.capacity = capacity
        self.strings: dict[str, str] = {}

    def __call__(self, value: str) -> str:
        strings = self.strings
        shared = strings.get(value)
        if shared is None:
            if len(strings) >= self.capacity:
                strings.clear()
            shared = strings[value] = value
        return shared


_shared = Shared()


class StoredProfile:
    """One user's stored profile, in memory.

    The wire form (:meth:`to_json`) is a JSON object: ``user_id``, ``events``
    (count per event type), ``first_event_time``, ``last_event_time``,
    ``segment``, ``recent_event_ids`` (the de-duplication window, oldest first),
    ``recommendations`` (one flat list ``[item_id, score, reason, ...]``),
    ``recommendation_id``, ``recommended_at`` (event time of the latest trigger
    answered), ``variant``, ``exposures`` (the attribution log, see
    :meth:`models.attribution.Exposure.to_json`) and, while a recommendation is
    held, ``pending_trigger``.

    In memory the three counts are slots of their own, the id window and the
    exposure log are tuples (an exposure without clicks holds the empty
    tuple), the latest exposure's items are the recommendation's own tuple,
    and the scores are packed doubles (the rounded values the JSON
    carries, exactly: 10 take 113 bytes, 10 float objects 240). Keys it does
    not know (a later release's) are kept in ``extra`` and written back.

    >>> p = StoredProfile("u")
    >>> p.count("click"); p.events
    {'click': 1, 'purchase': 0, 'review': 0}
    >>> p.recommend("r1", ("a", "b"), [0.5, 0.25], ["popular right now"] * 2, 10.0, "blend")
    >>> p.to_json()["recommendations"]
    ['a', 0.5, 'popular right now', 'b', 0.25, 'popular right now']
    >>> StoredProfile.from_json(p.to_json()).to_json() == p.to_json()
    True
    """

    __slots__ = (  # noqa: RUF023 (in the wire form's order)
        "user_id", "clicks", "purchases", "reviews", "first_event_time", "last_event_time",
        "segment", "recent_event_ids", "rec_items", "rec_scores", "rec_reasons",
        "recommendation_id", "recommended_at", "variant", "exposures", "held_trigger", "extra",
    )

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        self.clicks = 0
        self.purchases = 0
        self.reviews = 0
        self.first_event_time: float | None = None
        self.last_event_time: float | None = None
        self.segment: int | None = None
        self.recent_event_ids: tuple[str, ...] = ()
        self.rec_items: tuple[str, ...] = ()
        self.rec_scores = b""  # packed doubles, see scores()
        self.rec_reasons: tuple[str, ...] = ()
        self.recommendation_id: str | None = None
        self.recommended_at: float | None = None
        self.variant: str | None = None
        self.exposures: tuple[CompactExposure, ...] = ()
        self.held_trigger: str | None = None  # HELD_TRIGGER on the wire
        self.extra: dict[str, Any] | None = None

    # -- the counts and the recommendation ------------------------------------------
    @property
    def events(self) -> dict[str, int]:
        """The count per event type, as the wire form and ``GET /users`` carry it."""
        return {"click": self.clicks, "purchase": self.purchases, "review": self.reviews}

    def count(self, event_type: str) -> None:
        if event_type == "click":
            self.clicks += 1
        elif event_type == "purchase":
            self.purchases += 1
        elif event_type == "review":
            self.reviews += 1
        else:
            raise ValueError(f"unknown event type {event_type!r}")

    def recommend(
        self, recommendation_id: str, items: tuple[str, ...], scores: Sequence[float],
        reasons: Iterable[str], at: float | None, variant: str | None,
    ) -> None:
        """Store the user's latest recommendation; ``items`` is kept as given (the
        exposure logged for it holds the same tuple), ``scores`` as doubles."""
        self.rec_items = items
        self.rec_scores = struct.pack(f"{len(scores)}d", *scores)
        self.rec_reasons = tuple(_shared(r) for r in reasons)
        self.recommendation_id = recommendation_id
        self.recommended_at = at
        self.variant = variant

    def scores(self) -> list[float]:
        """The latest recommendation's scores."""
        return list(struct.unpack(f"{len(self.rec_scores) // 8}d", self.rec_scores))

    def recommendations(self) -> list[dict[str, Any]]:
        """The latest recommendation as ``{"item_id", "score", "reason"}`` dicts."""
        return [
            {"item_id": i, "score": s, "reason": r}
            for i, s, r in zip(self.rec_items, self.scores(), self.rec_reasons, strict=True)
        ]

    @property
    def legacy_partition(self) -> int | None:
        """The changelog partition an earlier release wrote into the record, if any."""
        return self.extra.get("partition") if self.extra else None

    # -- the wire form ------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """The changelog's JSON object, its arrays as lists or tuples (JSON
        encoders write both as arrays: the id window and the exposure log go
        as they are held)."""
        flat: list[Any] = []
        for triple in zip(self.rec_items, self.scores(), self.rec_reasons, strict=True):
            flat.extend(triple)
        record: dict[str, Any] = {
            "user_id": self.user_id,
            "events": self.events,
            "first_event_time": self.first_event_time,
            "last_event_time": self.last_event_time,
            "segment": self.segment,
            "recent_event_ids": self.recent_event_ids,
            "recommendations": flat,
            "recommendation_id": self.recommendation_id,
            "recommended_at": self.recommended_at,
            "variant": self.variant,
            "exposures": self.exposures,
        }
        if self.held_trigger is not None:
            record[HELD_TRIGGER] = self.held_trigger
        if self.extra:
            record.update((k, v) for k, v in self.extra.items() if k not in _RETIRED_KEYS)
        return record

    __json__ = to_json  # what Faust's JSON codec calls on an object it does not know

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> StoredProfile:
        """A record from its wire form, or from the form an earlier release wrote:
        recommendations as dicts, exposures as dicts, without ``variant`` or
        ``exposures``, with its ``partition``."""
        p = cls(str(record["user_id"]))
        events = record.get("events") or {}
        p.clicks = int(events.get("click", 0))
        p.purchases = int(events.get("purchase", 0))
        p.reviews = int(events.get("review", 0))
        p.first_event_time = record.get("first_event_time")
        p.last_event_time = record.get("last_event_time")
        p.segment = record.get("segment")
        p.recent_event_ids = tuple(record.get("recent_event_ids") or ())
        recs = expand_recommendations(record.get("recommendations") or [])
        p.recommend(
            record.get("recommendation_id"),  # type: ignore[arg-type]
            tuple(_shared(str(r["item_id"])) for r in recs),
            [float(r["score"]) for r in recs],
            (str(r["reason"]) for r in recs),
            record.get("recommended_at"),
            record.get("variant"),
        )
        p.exposures = compact_exposures(record.get("exposures") or (), p.rec_items)
        p.held_trigger = record.get(HELD_TRIGGER)
        extra = {k: v for k, v in record.items() if k not in _WIRE_KEYS}
        p.extra = extra or None
        return p

    # -- read by wire key (tools, tests): a copy built from the wire form ----------------
    def wire(self) -> dict[str, Any]:
        """:meth:`to_json` as a JSON decoder gives it back (lists for arrays)."""
        return orjson.loads(orjson.dumps(self.to_json()))

    def __getitem__(self, key: str) -> Any:
        return self.wire()[key]

    def __contains__(self, key: object) -> bool:
        return key in self.to_json()

    def get(self, key: str, default: Any = None) -> Any:
        return self.wire().get(key, default)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StoredProfile):
            return NotImplemented
        return self.to_json() == other.to_json()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"StoredProfile({self.to_json()!r})"


def compact_exposures(
    raw: Iterable[Sequence[Any] | Mapping[str, Any]], items: tuple[str, ...] = ()
) -> tuple[CompactExposure, ...]:
    """An exposure log in its compact form, ids and names shared; an exposure
    that showed ``items`` (the profile's latest recommendation) holds that tuple."""
    out = []
    for data in raw:
        e = Exposure.from_json(data)  # type: ignore[arg-type]
        shown = items if e.items == items else tuple(_shared(i) for i in e.items)
        out.append((
            e.recommendation_id, shown, _shared(e.strategy), _shared(e.variant), e.timestamp,
            e.segment, e.clicked, e.converted, tuple(_shared(i) for i in e.clicked_items),
        ))
    return tuple(out)


def new_stored_profile(user_id: str) -> StoredProfile:
    return StoredProfile(user_id)


def from_changelog(record: StoredProfile | Mapping[str, Any]) -> StoredProfile:
    """A profile table value as a :class:`StoredProfile`: the record itself, or
    one decoded from a JSON object (see :meth:`StoredProfile.from_json`).

    >>> p = from_changelog({**new_stored_profile("u").to_json(), "partition": 3})
    >>> "partition" in p.to_json(), p.user_id, p.legacy_partition
    (False, 'u', 3)
    """
    if isinstance(record, StoredProfile):
        return record
    return StoredProfile.from_json(record)


def update_stored_profile(
    profile: StoredProfile, event: Event, outcome: Outcome, window: int
) -> None:
    """Count ``event`` in the profile and remember its id (the last ``window``)."""
    profile.count(event.type)
    first, last = profile.first_event_time, profile.last_event_time
    if first is None or event.timestamp < first:
        profile.first_event_time = event.timestamp
    if last is None or event.timestamp > last:
        profile.last_event_time = event.timestamp
    profile.segment = outcome.segment
    ids = profile.recent_event_ids
    if len(ids) >= window:
        ids = ids[len(ids) - window + 1:]
    profile.recent_event_ids = (*ids, event.event_id)


def recommendation_json(rec: Recommendation) -> dict[str, Any]:
    return {"item_id": rec.item_id, "score": round(float(rec.score), 6), "reason": rec.reason}


def compact_recommendations(recs: Sequence[dict[str, Any]]) -> list[Any]:
    """The wire form of a profile's recommendations: one flat list
    ``[item_id, score, reason, item_id, score, reason, ...]``."""
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


def is_inactive(profile: StoredProfile, before: float) -> bool:
    """True if the profile's last event is older than ``before`` (event time)."""
    last = profile.last_event_time
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
