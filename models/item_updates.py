"""Learning item-side knowledge from all traffic: the user side's half.

How the stream side uses it
---------------------------
Every worker keeps learning everything locally (so one worker behaves as
before); besides, the item-side increments its own events produce are shared:

1. At start-up, per engine: ``outbox = Outbox(P); attach(engine, outbox)``
   (P: the partitions of ``feedback.item-updates``). Without it
   (``engine.outbox is None``) the engine pays nothing.
2. Per input event, BEFORE ``engine.process(event)``: ``outbox.at(src, offset)``
   with ``src = f"{topic}:{partition}"`` and the event's Kafka offset. Every
   increment learnt from the event is tagged with them (the owner's
   idempotence rests on that tag: offsets of one ``src`` must rise).
3. After each batch, BEFORE the profile writes are flushed and the input
   offsets committed: ``for partition, payload in outbox.messages(P).items()``
   send ``payload`` (bytes) to ``feedback.item-updates`` at that explicit
   ``partition`` (P = that topic's partitions; :func:`partition_of` of the item
   id, Kafka's default partitioner). Nothing is sent when the batch taught
   nothing item-side.
4. The item-owner agent (``feedback.item-updates``, table ``item_state`` keyed
   by item id): for each message, ``for item_id, entries in
   decode_updates(payload).items()``: ``state = ItemState.from_dict(table[item_id])``
   (or ``ItemState()`` if absent), ``state.apply(entries, params)`` (False: all
   duplicates, nothing to write), ``table[item_id] = state.to_dict()`` and
   remember the id as changed. ``params = ItemParams.of(engine_config)``.
   Or hold an :class:`models.item_state.ItemOwner` and mirror its ``items``.
5. Every ``FEEDBACK_ITEM_MODEL_PERIOD_SECONDS``, the owner publishes each changed
   item for which ``state.due(params)`` holds: ``state.published(now, params)``
   (a JSON-able dict; it records what it showed, so write the state back to the
   table) to the compacted ``feedback.item-model``, key = item id, value =
   ``orjson.dumps``. A changed item not yet due stays on the changed list.
6. Every worker reads ``feedback.item-model`` (all partitions, from the start)
   and calls ``engine.apply_item_models([(item_id, model_dict), ...])``: it
   OVERWRITES the local item-side state of those items with the published
   values (which already hold this worker's own increments the owner applied),
   plus this worker's own increments the model does not hold yet (above its
   per-source watermark ``w``: :meth:`Outbox.pending`), so that an owner lagging
   behind does not take back what this worker learnt since.
7. Blend weights, every period: publish ``blend_state(engine)`` to
   ``feedback.globals`` (key ``blend:<worker id>``); on reading the latest record
   of every live worker (its own included): ``merge_blend(engine, states)``.
8. Segment centres have ONE owner, the worker holding ``feedback.item-updates``
   partition 0: every period it publishes ``engine.segmentation.centres_state()``
   (``None`` before its warm-up: publish nothing) on ``feedback.globals``, key
   ``segments``; every other worker calls ``engine.segmentation.adopt(centres)``
   with the latest record, so segment ids (the keys of the shared per-segment
   popularity) mean the same segment everywhere. The owner of partition 0 must
   not adopt its own record (it stays the one that re-fits).

``feedback-stream evaluate FILE --workers W`` runs exactly these calls in one
process (:mod:`tools.scaleout`).

The records
-----------
An outbox maps item id -> entries; an entry is ``[src, offset, op, op, ...]``:
what one event taught that item, followed, when later events of the same
source taught it more in the same batch, by their offsets and ops in order:
``[src, o1, op, ..., o2, op, ...]`` (offsets rising; an integer starts the next
event's ops). An op is its kind and its arguments, inline: ``"c", "i7", 0.5``.
Most of what an event teaches is co-occurrence pairs, one per neighbour item,
so runs and inline ops spare the owner a source string and two lists per pair
to decode. The owner applies each event's
ops only if its offset is above the source's watermark, so a run is applied
event by event exactly as separate entries would be. The owner also reads an
op given as its own list (``["c", "i7", 0.5]``). The ops:

==========================  ====================================================
``["c", other_id, w]``      co-occurrence pair weight ``w`` with ``other_id``
``["p", w, t]``             popularity weight ``w`` (may be < 0) at event time t
``["s", segment, w, t]``    the same within one segment's popularity
``["b", [dq...], db]``      a BPR (taste) step of the item's vector and bias
``["b0", [q...], b]``       the vector and bias that step started from, before this
                            worker's first step of an item it has no published
                            vector of (the owner keeps the first start it gets)
``["r", [dq...], db]``      a rating-MF step of the item's vector and bias
``["r0", [q...], b]``       the same start for the rating MF
``["e", p_positive, t]``    one review's sentiment
``["$", price]``            one purchase's price
==========================  ====================================================
"""

from __future__ import annotations

from collections import deque
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any, overload

import numpy as np
import orjson

if TYPE_CHECKING:
    from models.engine import FeedbackEngine
    from models.events import Event
    from models.profiles import UserProfile

__all__ = [
    "ARITY",
    "Outbox",
    "apply_item_models",
    "attach",
    "blend_state",
    "decode_model",
    "decode_updates",
    "encode_model",
    "encode_updates",
    "end_offset",
    "merge_blend",
    "murmur2",
    "partition_of",
    "split_entry",
    "with_pending",
]

Entry = list[Any]  # [src, offset, op, op, ..., offset, op, ...]
Updates = dict[str, list[Entry]]
#: The arguments each op kind takes after its kind.
ARITY = {"c": 2, "p": 2, "s": 3, "b": 2, "b0": 2, "r": 2, "r0": 2, "e": 2, "$": 1}


def split_entry(entry: Entry) -> list[tuple[int, list[list[Any]]]]:
    """An entry's events: ``(offset, [op as a list, ...])`` each, in order.

    >>> split_entry(["clicks:0", 4, "c", "y", 0.5, "p", 1.0, 9.0, 6, ["c", "z", 1.0]])
    [(4, [['c', 'y', 0.5], ['p', 1.0, 9.0]]), (6, [['c', 'z', 1.0]])]
    """
    out: list[tuple[int, list[list[Any]]]] = []
    k, n = 1, len(entry)
    while k < n:
        x = entry[k]
        if type(x) is int:
            out.append((x, []))
            k += 1
        elif type(x) is list:
            out[-1][1].append(x)
            k += 1
        else:
            if x not in ARITY:
                raise ValueError(f"item updates: unknown op {x!r}")
            out[-1][1].append(entry[k : k + 1 + ARITY[x]])
            k += 1 + ARITY[x]
    return out


def end_offset(entry: Entry) -> int:
    """The offset of an entry's last event. The outbox records it as the entry
    grows; this reads it back for an entry put there otherwise.

    >>> end_offset(["clicks:0", 4, "c", "y", 0.5, "p", 1, 9, 6, ["c", "z", 1.0]])
    6
    """
    return split_entry(entry)[-1][0]


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash of ``data`` (Java client's ``Utils.murmur2``), unsigned 32-bit.

    >>> murmur2(b"21")
    3321034988
    """
    length = len(data)
    m = 0x5BD1E995
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    end = length & ~3
    for i in range(0, end, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    extra = length & 3
    if extra >= 3:
        h ^= data[end + 2] << 16
    if extra >= 2:
        h ^= data[end + 1] << 8
    if extra >= 1:
        h ^= data[end]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


@lru_cache(maxsize=1 << 17)
def partition_of(key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner gives ``key``: murmur2 of its
    UTF-8 bytes, ``& 0x7fffffff``, modulo ``partitions``.

    >>> partition_of("u1", 4), partition_of("u2", 4), partition_of("u2", 1)
    (0, 2, 0)
    """
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


class Outbox:
    """The item-side increments of a worker's events, per item id, until drained.

    Filled by :meth:`record` (the engine calls it once per event, before it
    learns) and by the factorisations' traces (their item steps), all tagged
    with the source set by :meth:`at`. Cost: a few list appends per pair and
    per item touched; nothing at all on an engine without an outbox.
    """

    def __init__(self, partitions: int | None = None) -> None:
        self.items: Updates = {}
        self.src = ""
        self.offset = -1
        self.taste: list[tuple[int, np.ndarray, float, np.ndarray, float]] = []
        self.rating: list[tuple[int, np.ndarray, float, np.ndarray, float]] = []
        # Factor rows whose start the owner has from this worker or has published:
        # a row's first step is preceded by its local start (the owner keeps the first).
        self.started: dict[str, set[int]] = {"b": set(), "r": set()}
        self.ids: list[str] = []  # the attached engine's catalogue ids
        # Entries drained (sent) that no published model is known to hold yet, per
        # item: re-applied over each published model of the item, so an owner
        # lagging behind this worker does not take back its own fresher learning.
        self.unconfirmed: Updates = {}
        # The offset each unconfirmed entry ends with (its last event's), in the
        # same order: :meth:`confirm` compares it with the watermarks on every
        # model read, so it is found once, when the entry is drained.
        self.ends: dict[str, list[int]] = {}
        # The item-updates partitions (None: each item is confirmed by its own
        # models only) and, per partition and source, the highest source offset a
        # published model of that partition held (see :meth:`confirm`).
        self.partitions = partitions
        self.confirmed: dict[int, dict[str, int]] = {}
        # With partitions: per (partition, source), the unconfirmed entries'
        # ``(end offset, item id)`` in drain order, each drain's sorted by end, so
        # that a watermark's advance finds the items it confirms at the front
        # instead of every unconfirmed item being compared on every model read.
        self.queued: dict[tuple[int, str], deque[tuple[int, str]]] = {}
        # The offset each of an item's entries ends with, in order (an entry's
        # source is its first element), kept on in :attr:`ends` once drained.
        self._ends: dict[str, list[int]] = {}

    def at(self, src: str, offset: int) -> None:
        """Tag what the next event teaches with ``(src, offset)``."""
        self._collect()
        self.src, self.offset = src, offset

    def _op(self, item_id: str, *op: Any) -> None:
        entries = self.items.get(item_id)
        offset = self.offset
        if entries is None:
            self.items[item_id] = [[self.src, offset, *op]]
            self._ends[item_id] = [offset]
            return
        last = entries[-1]
        if last[0] != self.src:
            entries.append([self.src, offset, *op])
            self._ends[item_id].append(offset)
            return
        ends = self._ends[item_id]
        if ends[-1] != offset:  # the next event of the run
            last.append(offset)
            ends[-1] = offset
        last.extend(op)

    def _collect(self) -> None:
        """Move the factorisations' traced steps into the current entries."""
        ids = self.ids
        for kind, trace in (("b", self.taste), ("r", self.rating)):
            started = self.started[kind]
            for row, start, start_bias, step, db in trace:
                if row not in started:
                    started.add(row)
                    self._op(ids[row], kind + "0", start.tolist(), start_bias)
                self._op(ids[row], kind, step.tolist(), db)
            trace.clear()

    def record(
        self,
        engine: FeedbackEngine,
        event: Event,
        profile: UserProfile,
        item: int,
        strength: float,
        sentiment: float | None,
    ) -> None:
        """What ``event`` will teach the item side, computed before the engine learns it."""
        rec = engine.recommender
        ids = engine.catalogue.ids
        item_id = event.item_id
        t = event.timestamp
        # The event's own item gets all its ops in one call (what one call per op
        # would append, in the same order); each neighbour its pair.
        ops: list[Any] = []
        for h, w in rec.cooccurrence.pairs(profile.history, item, strength):
            other = ids[h]
            ops += ("c", other, w)
            self._op(other, "c", item_id, w)
        ops += ("p", strength, t)
        seg = profile.segment
        if seg is not None and seg < rec.n_segments:
            ops += ("s", seg, strength, t)
        if sentiment is not None:
            ops += ("e", sentiment, t)
        if event.type == "purchase":
            ops += ("$", event.price)
        self._op(item_id, *ops)

    def drain(self) -> Updates:
        """Every entry recorded since the last drain, per item id; the outbox is
        emptied, and the entries are kept as unconfirmed until a published model
        holds them (:meth:`confirm`)."""
        self._collect()
        items, self.items = self.items, {}
        recorded, self._ends = self._ends, {}
        unconfirmed, ends, parts = self.unconfirmed, self.ends, self.partitions
        queue: list[tuple[int, str, int, str]] = []
        for item_id, entries in items.items():
            last = recorded.get(item_id)
            if last is None or len(last) != len(entries):  # not put there by recording
                last = [end_offset(e) for e in entries]
            kept = unconfirmed.get(item_id)
            if kept is None:
                unconfirmed[item_id] = list(entries)
                ends[item_id] = last
            else:
                kept.extend(entries)
                ends[item_id].extend(last)
            if parts:
                p = partition_of(item_id, parts)
                queue.extend((p, e[0], end, item_id) for e, end in zip(entries, last, strict=True))
        queue.sort(key=lambda q: q[2])
        queued = self.queued
        for p, src, end, item_id in queue:
            q = queued.get((p, src))
            if q is None:
                q = queued[(p, src)] = deque()
            q.append((end, item_id))
        return items

    def confirm(self, models: Iterable[tuple[str, Mapping[str, Any]]]) -> None:
        """Forget the unconfirmed entries that published ``models`` show applied.

        An item's model holds every entry up to its watermark ``w`` (per source,
        the highest offset applied). Besides, an owner applies the messages of
        its partition in order, and this worker sends a source's entries in
        offset order: once any model of a partition shows ``w[src] = o``, every
        entry this worker sent to that partition from ``src`` up to ``o`` has been
        applied, whichever item it was for. So the entries kept are only those the
        owners have not applied yet: bounded by their lag, not by the items'
        publication tolerance.
        """
        parts = self.partitions
        confirmed = self.confirmed
        advanced: set[tuple[int, str]] = set()
        for item_id, model in models:
            w = model.get("w")
            if not w:
                continue
            p = partition_of(item_id, parts) if parts else -1
            marks = confirmed.setdefault(p, {})
            for src, offset in w.items():
                if offset > marks.get(src, -1):
                    marks[src] = offset
                    advanced.add((p, src))
            if not parts:  # confirmed by its own model only
                entries = self.unconfirmed.get(item_id)
                if entries is not None:
                    self._keep(item_id, entries, w)
        if not parts:
            return
        # The entries a mark's advance confirms are at the front of their queue
        # (a partition re-read after a rebalance can put a lower end behind a
        # higher one: that entry is then found once the mark passes the higher).
        due: dict[str, int] = {}
        for p, src in advanced:
            q = self.queued.get((p, src))
            mark = confirmed[p][src]
            while q and q[0][0] <= mark:
                due[q.popleft()[1]] = p
        for item_id, p in due.items():
            entries = self.unconfirmed.get(item_id)
            if entries is not None:
                self._keep(item_id, entries, confirmed[p])

    def _keep(self, item_id: str, entries: list[Entry], marks: Mapping[str, int]) -> None:
        # A run's last event has its highest offset: a run partly held is kept
        # whole (re-applying it follows the owner's watermark, event by event).
        ends = self.ends[item_id]
        keep = [i for i, e in enumerate(entries) if ends[i] > marks.get(e[0], -1)]
        if len(keep) == len(entries):
            return
        if keep:
            self.unconfirmed[item_id] = [entries[i] for i in keep]
            self.ends[item_id] = [ends[i] for i in keep]
        else:
            del self.unconfirmed[item_id]
            del self.ends[item_id]

    def pending(self, item_id: str) -> list[Entry]:
        """This worker's entries for ``item_id`` that no published model is known
        to hold: the unconfirmed sent ones, then those not drained yet."""
        self._collect()
        sent = self.unconfirmed.get(item_id)
        fresh = self.items.get(item_id)
        if fresh is None:
            return sent or []
        return fresh if sent is None else sent + fresh

    def messages(self, partitions: int) -> dict[int, bytes]:
        """:meth:`drain`, split by destination partition and encoded: one payload each."""
        split: dict[int, Updates] = {}
        for item_id, entries in self.drain().items():
            split.setdefault(partition_of(item_id, partitions), {})[item_id] = entries
        return {p: encode_updates(u) for p, u in split.items()}


def attach(engine: FeedbackEngine, outbox: Outbox | None) -> None:
    """Make ``engine`` record its item-side increments into ``outbox`` (``None``: stop)."""
    engine.outbox = outbox
    taste, ratings = engine.recommender.taste, engine.ratings
    if outbox is None:
        taste.trace = ratings.trace = None
        return
    outbox.ids = engine.catalogue.ids
    taste.trace = outbox.taste
    ratings.trace = outbox.rating


def encode_updates(updates: Mapping[str, list[Entry]]) -> bytes:
    """One item-updates message: ``{item_id: [entry, ...]}`` as JSON bytes."""
    return orjson.dumps(updates)


def decode_updates(payload: bytes) -> Updates:
    """The inverse of :func:`encode_updates`; ``ValueError`` on a malformed payload."""
    updates = orjson.loads(payload)
    # orjson builds exact list/str/int types: checked by identity, in a plain
    # loop (a generator under all() costs a frame switch per entry).
    if type(updates) is not dict:
        raise ValueError(_MALFORMED)
    for entries in updates.values():
        if type(entries) is not list:
            raise ValueError(_MALFORMED)
        for e in entries:
            if type(e) is not list or len(e) < 3 or type(e[0]) is not str or type(e[1]) is not int:
                raise ValueError(_MALFORMED)
    return updates


_MALFORMED = "item updates: expected {item_id: [[src, offset, op, ...], ...]}"


# -- the item-model records -------------------------------------------------------
#: The binary form's first bytes (the JSON form, which a replica still reads,
#: starts with ``{``).
MODEL_MAGIC = b"\x00IM1"
#: Between two neighbour ids: ids hold no control character (stream.contract).
_ID_SEP = "\x1f"
_ARRAYS = ("nb", "q", "r")


def encode_model(model: Mapping[str, Any]) -> bytes:
    """One ``feedback.item-model`` record: a published model (see
    :meth:`models.item_state.ItemState.published`) in a binary form every
    replica decodes cheaply (:func:`decode_model`).

    :data:`MODEL_MAGIC`, the JSON header's length (4 bytes, little-endian), the
    header (every field but the arrays, which it gives the lengths of), the
    neighbour weights and the factor vectors as little-endian float64, then the
    neighbour ids joined by ``\\x1f``. The floats are most of a JSON model's
    bytes and of its decoding, and a replica maps only the ids new since the
    list it holds, so it splits only those.

    >>> m = {"t": 1.0, "w": {"a:0": 3}, "nb": [["y", "z"], [0.5, 1.5], 2], "m": 2.0,
    ...      "q": [0.25, -0.5], "qb": 0.1}
    >>> back = decode_model(encode_model(m))
    >>> back["nb"][0][1:], back["nb"][1].tolist(), back["nb"][2], back["q"].tolist()
    (['z'], [0.5, 1.5], 2, [0.25, -0.5])
    >>> decode_model(encode_model(m))["w"] == decode_model(orjson.dumps(m))["w"] == {"a:0": 3}
    True
    """
    head = {k: v for k, v in model.items() if k not in _ARRAYS}
    floats: list[float] = []
    ids: Sequence[str] = ()
    nb = model.get("nb")
    if nb is not None:
        ids = nb[0]
        head["nb"] = [len(ids), nb[2]]
        floats.extend(nb[1])
    for key in ("q", "r"):
        vec = model.get(key)
        if vec is not None:
            head[key] = len(vec)
            floats.extend(vec)
    header = orjson.dumps(head)
    return b"".join((
        MODEL_MAGIC, len(header).to_bytes(4, "little"), header,
        np.asarray(floats, dtype="<f8").tobytes(), _ID_SEP.join(ids).encode(),
    ))


def decode_model(payload: bytes) -> dict[str, Any]:
    """The model of a ``feedback.item-model`` record, binary (:func:`encode_model`:
    the weights and vectors then come as read-only numpy arrays, the neighbour ids
    as :class:`PackedIds`) or JSON. ``ValueError`` on a malformed payload."""
    if not payload.startswith(MODEL_MAGIC):
        model = orjson.loads(payload)
        if type(model) is not dict:
            raise ValueError("item model: expected a JSON object")
        return model
    try:
        size = int.from_bytes(payload[4:8], "little")
        model = orjson.loads(memoryview(payload)[8 : 8 + size])
        at = 8 + size
        nb, nq, nr = model.get("nb"), model.get("q"), model.get("r")
        k = 0 if nb is None else nb[0]
        total = k + (nq or 0) + (nr or 0)
        floats = np.frombuffer(payload, "<f8", total, at)
        if nb is not None:
            text = payload[at + 8 * total :].decode()
            model["nb"] = [PackedIds(text, k), floats[:k], nb[1]]
        if nq is not None:
            model["q"] = floats[k : k + nq]
        if nr is not None:
            model["r"] = floats[total - nr :]
    except (ValueError, TypeError, IndexError, UnicodeDecodeError) as exc:
        raise ValueError(f"item model: malformed binary record ({exc})") from exc
    return model


class PackedIds(Sequence[str]):
    """A published neighbour list's ids, split only as far as they are read: the
    tail ``ids[m:]`` (the ids new since the list a replica holds) splits only
    those off the end.

    >>> ids = PackedIds("a\x1fb\x1fc", 3)
    >>> ids[1:], ids[3:], len(ids), list(ids), ids[0]
    (['b', 'c'], [], 3, ['a', 'b', 'c'], 'a')
    """

    __slots__ = ("_split", "_text", "n")

    def __init__(self, text: str, n: int) -> None:
        self._text = text
        self.n = n
        self._split: list[str] | None = None

    def __len__(self) -> int:
        return self.n

    def _all(self) -> list[str]:
        if self._split is None:
            self._split = self._text.split(_ID_SEP) if self.n else []
            if len(self._split) != self.n:
                raise ValueError(f"item model: {len(self._split)} neighbour ids, not {self.n}")
        return self._split

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> list[str]: ...
    def __getitem__(self, i: int | slice) -> str | list[str]:
        if (type(i) is slice and self._split is None and i.step is None and i.stop is None
                and i.start is not None and i.start > 0):
            tail = self.n - i.start
            if tail <= 0:
                return []
            return self._text.rsplit(_ID_SEP, tail)[1:]
        return self._all()[i]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())


# -- the workers' replicas ------------------------------------------------------
def apply_item_models(engine: FeedbackEngine, models: Iterable[tuple[str, Mapping[str, Any]]]
                      ) -> int:
    """Overwrite ``engine``'s item-side state of each ``(item_id, model)`` published by
    :meth:`models.item_state.ItemState.published`; unknown ids (items or neighbours)
    join the catalogue. Returns the number of models applied."""
    steps = apply_item_models_in_steps(engine, models)
    while True:
        try:
            next(steps)
        except StopIteration as end:
            return int(end.value)


def apply_item_models_in_steps(
    engine: FeedbackEngine, models: Iterable[tuple[str, Mapping[str, Any]]]
) -> Generator[None, None, int]:
    """:func:`apply_item_models`, pausing (yielding ``None``) after each model but
    the last; returns the number of models applied. ``models`` are confirmed
    (:meth:`Outbox.confirm`) all at once before the first is applied, so what
    each model shows with this worker's pending entries on top does not depend on
    where the caller pauses; the engine is whole at every pause (between two
    models)."""
    cat = engine.catalogue
    rec = engine.recommender
    outbox = engine.outbox
    params = None
    if outbox is not None:
        models = list(models)
        outbox.confirm(models)
    n = 0
    for item_id, model in models:
        if n:
            yield
        n += 1
        pairs: dict[str, float] = {}
        if outbox is not None:
            pending = outbox.pending(item_id)
            if pending:
                if params is None:
                    from models.item_state import ItemParams

                    # Not pruned: the pending pairs are applied apart (below).
                    params = replace(ItemParams.of(engine.config), max_neighbours=1 << 40)
                model, pairs = with_pending(item_id, model, pending, params)
        idx = cat.add(item_id)
        nb = model.get("nb")
        if nb is not None:
            co = rec.cooccurrence
            co.assign(idx, nb[0], nb[1], model["m"], cat.add, nb[2])
            if pairs:
                co.add_pairs(idx, [cat.add(other) for other in pairs], list(pairs.values()))
        pop = model.get("p")
        if pop is not None:
            rec.popularity.assign(idx, pop[0], pop[1], model["n"])
        for seg, (value, at) in (model.get("s") or {}).items():
            s = int(seg)
            if s < rec.n_segments:
                rec.segment_popularity[s].assign(idx, value, at)
        q = model.get("q")
        if q is not None:
            rec.taste.set_item(idx, np.asarray(q), model["qb"])
            if outbox is not None:
                outbox.started["b"].add(idx)
        r = model.get("r")
        if r is not None:
            engine.ratings.set_item(idx, np.asarray(r), model["rb"], model["rn"])
            if outbox is not None:
                outbox.started["r"].add(idx)
        e = model.get("e")
        if e is not None:
            engine.item_sentiment.state[item_id] = list(e)
        price = model.get("$")
        if price is not None:
            _set_price(engine, idx, price[0], price[1])
    return n


def with_pending(item_id: str, model: Mapping[str, Any], pending: list[Entry],
                 params: Any) -> tuple[Mapping[str, Any], dict[str, float]]:
    """``model`` with this worker's ``pending`` entries that it does not hold (above
    its watermark ``w``) applied on top, as the owner will apply them: the parts
    the model shares, no others. The neighbour list stays the publisher's (its
    mass includes the pending pairs): the pending pairs' weights come apart, in
    the order first met, for the replica to add after it, so that the list's head
    stays keyed to the publisher's list (see ``ItemCooccurrence.assign``) and the
    list is not rebuilt here. ``params``: the owner's, with ``max_neighbours``
    high enough that the pending pairs alone are never pruned.

    >>> from models.item_state import ItemParams
    >>> model = {"t": 1.0, "w": {"a:0": 4}, "p": [3.0, 1.0], "n": 3.0,
    ...          "nb": [["y"], [1.0], 0], "m": 1.0}
    >>> mine = [["a:0", 4, ["p", 1.0, 1.0]], ["a:0", 5, ["p", 1.0, 1.0], ["c", "z", 0.5],
    ...         ["c", "y", 0.25]]]
    >>> out, pairs = with_pending("x", model, mine, ItemParams())
    >>> out["n"], out["nb"], out["m"], pairs  # offset 4 is in the model already
    (4.0, [['y'], [1.0], 0], 1.75, {'z': 0.5, 'y': 0.25})
    """
    from models.item_state import ItemState

    state = ItemState.from_model(model, neighbours=False)
    if not state.apply(pending, params, item_id):
        return model, {}
    mine = state.published(model["t"], params)
    merged = {k: mine.get(k, v) for k, v in model.items()}
    nb = model.get("nb")
    if nb is None:
        return merged, {}
    merged["nb"] = nb
    merged["m"] = state.mass
    return merged, state.neighbours


def _set_price(engine: FeedbackEngine, idx: int, mean: float, count: float) -> None:
    from models.catalogue import grown

    engine.item_price = grown(engine.item_price, idx + 1)
    engine.item_price_n = grown(engine.item_price_n, idx + 1)
    engine.item_price[idx] = mean
    engine.item_price_n[idx] = count


# -- blend weights: periodic averaging ---------------------------------------------
def blend_state(engine: FeedbackEngine) -> dict[str, Any]:
    """This worker's blend record for the averaging: ``{"steps", "weights"}``.

    ``steps`` counts the positive events ranked (each one blend step at most).
    """
    return {"steps": engine.hits_seen, "weights": engine.recommender.weights.tolist()}


def merge_blend(engine: FeedbackEngine, states: Iterable[Mapping[str, Any]]) -> bool:
    """Set the blend weights to the step-weighted mean of ``states`` (the latest
    record of every live worker, this one's included); False if none has a step.

    >>> from models.engine import FeedbackEngine
    >>> e = FeedbackEngine()
    >>> merge_blend(e, [{"steps": 1, "weights": [0.0] * 6}, {"steps": 3, "weights": [4.0] * 6}])
    True
    >>> e.recommender.weights.tolist()
    [3.0, 3.0, 3.0, 3.0, 3.0, 3.0]
    """
    total = 0.0
    acc = np.zeros_like(engine.recommender.weights)
    for state in states:
        steps = float(state["steps"])
        if steps > 0:
            acc += steps * np.asarray(state["weights"], dtype=float)
            total += steps
    if total <= 0:
        return False
    engine.recommender.weights[:] = acc / total
    return True
