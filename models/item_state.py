"""The item owner's half: one item's authoritative statistics, learnt from all traffic.

An :class:`ItemState` is what the owner of an item's partition keeps in its
changelogged table (``to_dict``/``from_dict``); it applies the entries of
:mod:`models.item_updates` idempotently and publishes a compact model that
:func:`models.item_updates.apply_item_models` writes over every worker's replica.

Idempotence: per source topic-partition the state keeps the highest offset it
has applied (``applied``). An entry of offset ``o`` from ``src`` is applied only
if ``o > applied[src]``, and the counters and the watermark are written in the
same changelog record, so a re-sent batch (a crash before the input offsets
were committed, or the owner re-reading its topic) is skipped item by item,
exactly, without any atomicity across items.

Changelog volume: an item's record holds up to ``2 * max_neighbours`` neighbour
weights, most of its bytes, while a batch changes a few of them. So the
changelog form (:meth:`ItemState.changelog`, :meth:`ItemState.from_changelog`)
keeps the neighbours of a big item in a separate *snapshot* record, written
again only when the list was pruned or a quarter of it changed, and the item's
own record carries, besides everything else, the absolute weights of the
neighbours changed since that snapshot. Snapshots alternate between two keys by
generation, and the item's record names the generation it extends, so a crash
between writing a snapshot and the item's record leaves the previous pair
whole: the table always rebuilds to a state some applied prefix produced, with
its watermark, and the re-read increments apply on top of it exactly once.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from models.item_updates import ARITY, Entry, Updates, murmur2

if TYPE_CHECKING:
    from models.engine import EngineConfig

__all__ = ["ItemOwner", "ItemParams", "ItemState", "is_snapshot_key", "snapshot_key"]

#: Neighbour lists up to this long stay inside the item's own record.
INLINE_NEIGHBOURS = 32
#: A new snapshot once the neighbours changed since the last one are more than
#: this fraction of the list (the item's record then carries at most that much).
SNAPSHOT_FRACTION = 0.25
_SNAPSHOT_SEP = "\x1f"
_LN2 = math.log(2.0)


def snapshot_key(item_id: str, generation: int) -> str:
    """The table key of an item's neighbour snapshot of ``generation`` (two alternate)."""
    return f"{item_id}{_SNAPSHOT_SEP}{generation % 2}"


def is_snapshot_key(key: str) -> bool:
    """Whether a table key is a neighbour snapshot's rather than an item's."""
    return _SNAPSHOT_SEP in key


@dataclass(frozen=True, slots=True)
class ItemParams:
    """The engine settings the owner needs (take them from the workers' config)."""

    max_neighbours: int = 200
    trending_half_life: float = 86_400.0
    segment_half_life: float = 7 * 86_400.0
    n_factors: int = 16
    rating_factors: int = 10
    sentiment_fast: float = 0.15
    sentiment_slow: float = 0.02
    seed: int = 42
    # An item is published again once its co-occurrence mass, its all-time
    # popularity or its factor steps moved by this fraction since it last was
    # (a new item at once): the bytes and the replicas' work follow what changes.
    publish_tolerance: float = 0.05

    @classmethod
    def of(cls, config: EngineConfig) -> ItemParams:
        """The parameters matching an :class:`models.engine.EngineConfig`."""
        return cls(
            max_neighbours=config.max_neighbours,
            trending_half_life=config.trending_half_life_s,
            segment_half_life=config.segment_half_life_s,
            n_factors=config.n_factors,
            rating_factors=config.rating_factors,
            seed=config.seed,
        )


def initial_vector(item_id: str, n: int, seed: int) -> list[float]:
    """A factor vector's start, the same on every owner: N(0, 0.1) seeded by the id."""
    rng = np.random.default_rng([murmur2(item_id.encode()), seed])
    return rng.normal(0.0, 0.1, n).tolist()


def _floats(values: Any) -> list[float]:
    """A published vector as a list of floats (a decoded binary model's are arrays)."""
    return values.tolist() if isinstance(values, np.ndarray) else list(values)


def _decayed(value: float, at: float | None, w: float, t: float, rate: float
             ) -> tuple[float, float]:
    """``(value, at)`` after adding ``w`` at time ``t`` to a weight decaying at ``rate``."""
    if at is None:
        return max(0.0, w), t
    if t >= at:
        return max(0.0, value * math.exp(-rate * (t - at)) + w), t
    return max(0.0, value + w * math.exp(-rate * (at - t))), at


@dataclass(slots=True)
class ItemState:
    """One item's statistics learnt from every worker's events.

    Examples
    --------
    >>> s = ItemState()
    >>> entries = [["clicks:0", 7, ["p", 1.0, 100.0], ["c", "y", 0.5]]]
    >>> s.apply(entries, ItemParams()), s.apply(entries, ItemParams())  # re-sent: skipped
    (1, 0)
    >>> s.count, s.neighbours, s.applied
    (1.0, {'y': 0.5}, {'clicks:0': 7})
    >>> ItemState.from_dict(s.to_dict()) == s
    True
    """

    applied: dict[str, int] = field(default_factory=dict)
    neighbours: dict[str, float] = field(default_factory=dict)
    epoch: int = 0  # bumped when the neighbours are pruned (their order changes)
    mass: float = 0.0
    count: float = 0.0
    recent: float = 0.0
    recent_at: float | None = None
    segments: dict[int, list[float]] = field(default_factory=dict)  # segment -> [value, at]
    taste: list[float] | None = None
    taste_bias: float = 0.0
    rating: list[float] | None = None
    rating_bias: float = 0.0
    rating_count: float = 0.0
    sentiment: list[float] | None = None  # models.sentiment.ItemSentiment's five numbers
    price: float = 0.0
    price_n: float = 0.0
    steps: int = 0  # factor steps applied
    shown: list[float] | None = None  # (mass, count, steps) when last published
    # The changelog form's bookkeeping (not part of the statistics): the
    # generation of the neighbour snapshot the item's record extends (None: the
    # neighbours are inline), that snapshot's epoch, and the neighbours changed
    # since it, in the order they were first changed (new ones in insertion order).
    generation: int | None = field(default=None, compare=False, repr=False)
    snapshot_epoch: int = field(default=0, compare=False, repr=False)
    touched: dict[str, None] = field(default_factory=dict, compare=False, repr=False)
    # The neighbours changed since the last changelog write.
    pending: set[str] = field(default_factory=set, compare=False, repr=False)

    def due(self, params: ItemParams) -> bool:
        """Whether the item changed enough since it was last published (see
        :attr:`ItemParams.publish_tolerance`); never published: True."""
        if self.shown is None:
            return True
        mass, count, steps = self.shown
        tol = params.publish_tolerance
        return (
            abs(self.mass - mass) > tol * mass
            or abs(self.count - count) > tol * count
            or self.steps - steps > tol * steps
        )

    def apply(self, entries: Iterable[Entry], params: ItemParams, item_id: str = "") -> int:
        """Apply the events newer than their source's watermark; how many entries
        had at least one (see :mod:`models.item_updates` for an entry's run of events).

        ``item_id`` seeds the factor vectors' start (:func:`initial_vector`).
        """
        changed = 0
        applied = self.applied
        # Co-occurrence ops are most of the entries (one per neighbour an event
        # touches): applied inline, the mass summed locally, no per-op call.
        nb, touched, pending = self.neighbours, self.touched, self.pending
        limit = 2 * params.max_neighbours
        mass = self.mass
        for entry in entries:
            # A run of one source's events: each event's ops follow its offset;
            # an op is inline (kind, arguments) or a list of its own.
            src = entry[0]
            mark = applied.get(src, -1)
            fresh = live = False
            k, n = 1, len(entry)
            while k < n:
                x = entry[k]
                if x == "c":  # the common op first: no arity lookup, no unpacking
                    if live:
                        other, w = entry[k + 1], entry[k + 2]
                        nb[other] = nb.get(other, 0.0) + w
                        touched[other] = None
                        pending.add(other)
                        mass += w
                        if len(nb) > limit:
                            self._prune(params.max_neighbours)
                            nb, touched, pending = self.neighbours, self.touched, self.pending
                    k += 3
                    continue
                if type(x) is int:
                    live = x > mark
                    if live:
                        mark, fresh = x, True
                    k += 1
                    continue
                if type(x) is list:
                    kind, op, at = x[0], x, 0
                    k += 1
                else:
                    arity = ARITY.get(x)
                    if arity is None:
                        raise ValueError(f"item updates: unknown op {x!r}")
                    kind, op, at = x, entry, k
                    k += 1 + arity
                if not live:
                    continue
                if kind == "c":
                    other, w = op[at + 1], op[at + 2]
                    nb[other] = nb.get(other, 0.0) + w
                    touched[other] = None
                    pending.add(other)
                    mass += w
                    if len(nb) > limit:
                        self._prune(params.max_neighbours)
                        nb, touched, pending = self.neighbours, self.touched, self.pending
                else:
                    self._op(op if op is x else entry[at:k], params, item_id)
            if fresh:
                applied[src] = mark
                changed += 1
        self.mass = mass
        return changed

    def _op(self, op: list[Any], params: ItemParams, item_id: str) -> None:
        """Every op but a co-occurrence pair's (inline in :meth:`apply`)."""
        kind = op[0]
        if kind == "p":
            self.count = max(0.0, self.count + op[1])
            rate = _LN2 / params.trending_half_life
            self.recent, self.recent_at = _decayed(self.recent, self.recent_at, op[1], op[2], rate)
        elif kind == "s":
            seg = self.segments.get(op[1])
            rate = _LN2 / params.segment_half_life
            value, at = _decayed(seg[0], seg[1], op[2], op[3], rate) if seg else _decayed(
                0.0, None, op[2], op[3], rate
            )
            self.segments[op[1]] = [value, at]
        elif kind == "b0":
            if self.taste is None:
                self.taste, self.taste_bias = list(op[1]), op[2]
        elif kind == "r0":
            if self.rating is None:
                self.rating, self.rating_bias = list(op[1]), op[2]
        elif kind == "b":
            if self.taste is None:
                self.taste = initial_vector(item_id, params.n_factors, params.seed)
            self.taste = [a + b for a, b in zip(self.taste, op[1], strict=True)]
            self.taste_bias += op[2]
            self.steps += 1
        elif kind == "r":
            if self.rating is None:
                self.rating = initial_vector(item_id, params.rating_factors, params.seed + 1)
            self.rating = [a + b for a, b in zip(self.rating, op[1], strict=True)]
            self.rating_bias += op[2]
            self.rating_count += 1
            self.steps += 1
        elif kind == "e":
            from models.sentiment import ItemSentiment

            track = ItemSentiment(params.sentiment_fast, params.sentiment_slow)
            if self.sentiment is None:
                self.sentiment = track.start(op[1], op[2])
            track.step(self.sentiment, op[1], op[2])
        elif kind == "$":
            self.price_n += 1
            self.price += (op[1] - self.price) / self.price_n
        else:
            raise ValueError(f"item updates: unknown op {kind!r}")

    def _prune(self, keep: int) -> None:
        top = heapq.nlargest(keep, self.neighbours.items(), key=lambda kv: kv[1])
        self.neighbours = dict(top)
        self.epoch += 1
        self.touched = {k: None for k in self.touched if k in self.neighbours}
        self.pending &= self.neighbours.keys()

    def published(self, now: float, params: ItemParams) -> dict[str, Any]:
        """The compact model every worker's replica takes (see ``apply_item_models``);
        remembers what it showed, for :meth:`due`."""
        self.shown = [self.mass, self.count, float(self.steps)]
        # "w": per source partition, the highest offset the model holds; a worker
        # re-applies its own increments above it (models.item_updates.Outbox.pending).
        model: dict[str, Any] = {"t": now, "w": dict(self.applied)}
        if self.neighbours:
            # Every neighbour kept (at most 2 x max_neighbours, as a worker keeps), in
            # the dict's stable order: a replica maps only the ids new since (see
            # ItemCooccurrence.assign).
            model["nb"] = [list(self.neighbours), list(self.neighbours.values()), self.epoch]
            model["m"] = self.mass
        if self.recent_at is not None:
            model["p"] = [self.recent, self.recent_at]
            model["n"] = self.count
        if self.segments:
            model["s"] = {str(k): v for k, v in self.segments.items()}
        if self.taste is not None:
            model["q"], model["qb"] = self.taste, self.taste_bias
        if self.rating is not None:
            model["r"], model["rb"], model["rn"] = self.rating, self.rating_bias, self.rating_count
        if self.sentiment is not None:
            model["e"] = self.sentiment
        if self.price_n:
            model["$"] = [self.price, self.price_n]
        return model

    @classmethod
    def from_model(cls, model: Mapping[str, Any], neighbours: bool = True) -> ItemState:
        """The state a published model shows (the inverse of :meth:`published`, but
        for the factor step count, which it does not carry), for a replica to
        apply its own increments the model does not hold yet. ``neighbours=False``:
        the neighbour list left empty (its mass and epoch kept), so that applying
        entries leaves there only the weights they add.

        >>> s = ItemState()
        >>> _ = s.apply([["a:0", 3, ["p", 2.0, 10.0], ["c", "y", 0.5]]], ItemParams(), "x")
        >>> back = ItemState.from_model(s.published(20.0, ItemParams()))
        >>> back.count, back.neighbours, back.applied
        (2.0, {'y': 0.5}, {'a:0': 3})
        >>> ItemState.from_model(s.published(20.0, ItemParams()), neighbours=False).neighbours
        {}
        """
        state = cls(applied=dict(model.get("w") or {}))
        nb = model.get("nb")
        if nb is not None:
            if neighbours:
                state.neighbours = dict(zip(nb[0], _floats(nb[1]), strict=True))
            state.epoch = nb[2]
            state.mass = model["m"]
        pop = model.get("p")
        if pop is not None:
            state.recent, state.recent_at = pop
            state.count = model["n"]
        state.segments = {int(k): list(v) for k, v in (model.get("s") or {}).items()}
        if "q" in model:
            state.taste, state.taste_bias = _floats(model["q"]), model["qb"]
        if "r" in model:
            state.rating, state.rating_bias = _floats(model["r"]), model["rb"]
            state.rating_count = model["rn"]
        if "e" in model:
            state.sentiment = list(model["e"])
        if "$" in model:
            state.price, state.price_n = model["$"]
        return state

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able record for the changelogged table."""
        return {
            "applied": self.applied,
            "nb": self.neighbours,
            "epoch": self.epoch,
            "mass": self.mass,
            "count": self.count,
            "recent": [self.recent, self.recent_at],
            "seg": {str(k): v for k, v in self.segments.items()},
            "taste": [self.taste, self.taste_bias],
            "rating": [self.rating, self.rating_bias, self.rating_count],
            "sent": self.sentiment,
            "price": [self.price, self.price_n],
            "steps": self.steps,
            "shown": self.shown,
        }

    def changelog(self, item_id: str) -> list[tuple[str, dict[str, Any]]]:
        """The table records to write for the item now, in order: a neighbour
        snapshot when one is due, then the item's record: :meth:`to_dict`, with
        ``nb`` the neighbours changed since the snapshot and ``gen`` the
        snapshot's generation; or just :meth:`to_dict` when the list is short or
        more than :data:`SNAPSHOT_FRACTION` of it changed since the last write.
        A new snapshot is due after a whole record, a prune, or once more than
        that fraction changed since the snapshot.

        Write them in this order to one partition (the item's); the state
        :meth:`from_changelog` rebuilds is then this one, or after a crash
        between the two, the previous one with its watermark.

        Examples
        --------
        >>> s, p = ItemState(), ItemParams()
        >>> entries = [["c:0", k, ["c", f"n{k}", 1.0]] for k in range(40)]
        >>> s.apply(entries, p, "x")
        40
        >>> [(key, len(r["nb"])) for key, r in s.changelog("x")]  # all new: whole
        [('x', 40)]
        >>> s.apply([["c:0", 40, ["c", "n3", 0.5]]], p, "x")
        1
        >>> [(key, len(r["nb"])) for key, r in s.changelog("x")]  # snapshot, record
        [('x\\x1f0', 40), ('x', 0)]
        >>> s.apply([["c:0", 41, ["c", "n5", 0.5]]], p, "x")
        1
        >>> [(key, r["nb"]) for key, r in s.changelog("x")]  # the change only
        [('x', {'n5': 1.5})]
        """
        out: list[tuple[str, dict[str, Any]]] = []
        nb = self.neighbours
        changed_now = len(self.pending)
        self.pending.clear()
        if len(nb) <= INLINE_NEIGHBOURS or changed_now > SNAPSHOT_FRACTION * len(nb):
            # Short, or this batch alone changed much of it: the whole record
            # costs about what its changes would.
            self.generation = None
            self.touched.clear()
            out.append((item_id, self.to_dict()))
            return out
        if (
            self.generation is None
            or self.snapshot_epoch != self.epoch
            or len(self.touched) > SNAPSHOT_FRACTION * len(nb)
        ):
            self.generation = 0 if self.generation is None else self.generation + 1
            self.snapshot_epoch = self.epoch
            self.touched.clear()
            # Its watermark too: what the snapshot reflects, for whoever reads the
            # table (the item's record is the one whose watermark counts).
            out.append((snapshot_key(item_id, self.generation), {
                "gen": self.generation, "epoch": self.epoch, "nb": dict(nb),
                "applied": dict(self.applied),
            }))
        record = self.to_dict()
        record["nb"] = {k: nb[k] for k in self.touched}
        record["gen"] = self.generation
        out.append((item_id, record))
        return out

    @classmethod
    def from_changelog(cls, record: Mapping[str, Any],
                       get: Callable[[str], Mapping[str, Any] | None],
                       item_id: str) -> ItemState:
        """The state :meth:`changelog` wrote: the item's ``record``, completed from
        its neighbour snapshot ``get(snapshot_key(item_id, gen))``."""
        gen = record.get("gen")
        if gen is None:
            return cls.from_dict(record)
        snap = get(snapshot_key(item_id, gen))
        if snap is None or snap["gen"] != gen:
            found = None if snap is None else snap["gen"]
            raise ValueError(f"item {item_id!r}: neighbour snapshot {gen} missing (found {found})")
        changed = record["nb"]
        neighbours = dict(snap["nb"])
        neighbours.update(changed)  # changed keep their place, new ones follow in order
        state = cls.from_dict({**record, "nb": neighbours})
        state.generation = gen
        state.snapshot_epoch = snap["epoch"]
        state.touched = dict.fromkeys(changed)
        return state

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ItemState:
        """The inverse of :meth:`to_dict`."""
        return cls(
            applied=dict(d["applied"]),
            neighbours=dict(d["nb"]),
            epoch=d["epoch"],
            mass=d["mass"],
            count=d["count"],
            recent=d["recent"][0],
            recent_at=d["recent"][1],
            segments={int(k): list(v) for k, v in d["seg"].items()},
            taste=d["taste"][0],
            taste_bias=d["taste"][1],
            rating=d["rating"][0],
            rating_bias=d["rating"][1],
            rating_count=d["rating"][2],
            sentiment=d["sent"],
            price=d["price"][0],
            price_n=d["price"][1],
            steps=d.get("steps", 0),
            shown=d.get("shown"),
        )


class ItemOwner:
    """The states of the items of one partition, and which changed since the last publish.

    Examples
    --------
    >>> owner = ItemOwner(ItemParams())
    >>> owner.apply({"x": [["clicks:0", 1, ["p", 1.0, 0.0]]]})
    (1, 0)
    >>> [(item, model["n"]) for item, model in owner.publish(now=5.0)], owner.publish(6.0)
    ([('x', 1.0)], [])
    """

    def __init__(self, params: ItemParams) -> None:
        self.params = params
        self.items: dict[str, ItemState] = {}
        self.changed: set[str] = set()
        # Changed since the last publish: the only items whose due() may have
        # turned true (a state and what it last showed change only here).
        self._fresh: set[str] = set()

    def apply(self, updates: Updates) -> tuple[int, int]:
        """Apply decoded updates; ``(entries applied, entries skipped as duplicates)``."""
        applied = skipped = 0
        for item_id, entries in updates.items():
            state = self.items.get(item_id)
            if state is None:
                state = self.items[item_id] = ItemState()
            fresh = state.apply(entries, self.params, item_id)
            if fresh:
                self.changed.add(item_id)
                self._fresh.add(item_id)
            applied += fresh
            skipped += len(entries) - fresh
        return applied, skipped

    def publish(self, now: float) -> list[tuple[str, dict[str, Any]]]:
        """The models of the changed items that are :meth:`ItemState.due`, as of event
        time ``now``; the others wait for a later call."""
        params, items = self.params, self.items
        due = sorted(i for i in self._fresh if items[i].due(params))
        self._fresh.clear()
        self.changed.difference_update(due)
        return [(i, items[i].published(now, params)) for i in due]
