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
   per-source watermark ``w``: :meth:`Outbox.pending`, added as their running
   sums, :class:`PendingSums`), so that an owner lagging behind does not take
   back what this worker learnt since.
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

import math
from collections import deque
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any, overload

import numpy as np
import orjson

from models.catalogue import grown

if TYPE_CHECKING:
    from models.engine import FeedbackEngine
    from models.events import Event
    from models.profiles import UserProfile

__all__ = [
    "ARITY",
    "Outbox",
    "PendingSums",
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
        # item: added over each published model of the item, so an owner lagging
        # behind this worker does not take back its own fresher learning.
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
        # Per item whose model came while it had unconfirmed entries: their
        # running total, kept as entries are drained and confirmed, so that a
        # model adds them in one step (:meth:`with_pending`) instead of replaying
        # them all: an owner's lag grows the entries, not the cost of a model.
        self.sums: dict[str, PendingSums] = {}
        # The popularity's and the segments' decay per second (see :func:`attach`).
        self.rates = _rates(None)

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
                total = self.sums.get(item_id)
                if total is not None:
                    for e, end in zip(entries, last, strict=True):
                        total.add(e, end, self.rates)
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
        if not keep:
            del self.unconfirmed[item_id]
            del self.ends[item_id]
            self.sums.pop(item_id, None)
            return
        kept = self.unconfirmed[item_id] = [entries[i] for i in keep]
        kept_ends = self.ends[item_id] = [ends[i] for i in keep]
        total = self.sums.get(item_id)
        if total is None:
            return
        if 2 * len(keep) < len(entries):  # fewer to add again than to take out
            self.sums[item_id] = PendingSums.of(kept, kept_ends, self.rates)
            return
        left = set(keep)
        for i, e in enumerate(entries):
            if i not in left:
                total.remove(e, self.rates)
        total.settle(kept, kept_ends)

    def pending(self, item_id: str) -> list[Entry]:
        """This worker's entries for ``item_id`` that no published model is known
        to hold: the unconfirmed sent ones, then those not drained yet."""
        self._collect()
        sent = self.unconfirmed.get(item_id)
        fresh = self.items.get(item_id)
        if fresh is None:
            return sent or []
        return fresh if sent is None else sent + fresh

    def with_pending(self, item_id: str, model: Mapping[str, Any], params: Any
                     ) -> tuple[Mapping[str, Any], dict[str, float]]:
        """:func:`with_pending` of :meth:`pending`: the unconfirmed entries added in
        one step (:class:`PendingSums`, replayed instead when their sums do not fit
        the model), then those not drained yet (one batch at most) replayed."""
        self._collect()
        sent = self.unconfirmed.get(item_id)
        fresh = self.items.get(item_id)
        pairs: dict[str, float] = {}
        if sent:
            total = self.sums.get(item_id)
            if total is None:
                total = self.sums[item_id] = PendingSums.of(sent, self.ends[item_id], self.rates)
            if not total.fits(model):
                return with_pending(item_id, model, sent + fresh if fresh else sent, params)
            model, pairs = total.over(model, params)
        if fresh:
            model, more = with_pending(item_id, model, fresh, params)
            if more:
                pairs = dict(pairs)
                for other, w in more.items():
                    pairs[other] = pairs.get(other, 0.0) + w
        return model, pairs

    def messages(self, partitions: int) -> dict[int, bytes]:
        """:meth:`drain`, split by destination partition and encoded: one payload each."""
        split: dict[int, Updates] = {}
        for item_id, entries in self.drain().items():
            split.setdefault(partition_of(item_id, partitions), {})[item_id] = entries
        return {p: encode_updates(u) for p, u in split.items()}


class PendingSums:
    """An item's unconfirmed entries, summed: what replaying them event by event
    over a published model adds to it (:func:`with_pending`), kept so that a
    model takes it in one step (:meth:`over`), whatever the number of entries.

    A running total: :meth:`add` as entries are sent, :meth:`remove` as models
    confirm them, so each op is read once when it comes and once when it goes,
    never on a model's application. Every part is a sum (the co-occurrence pairs
    and mass, the counts, the factor steps, the prices' total) or a decayed sum
    kept as of its latest event time; a sum removed to nothing is dropped, not
    left at a rounding residue. The reviews are kept as a list and stepped in
    order over the model (a sentiment step is not a sum): one per review of the
    item, few.

    Equal to the replay up to the floats' rounding (sums associated in another
    order) whenever it :meth:`fits` the model: every event above the model's
    watermark of its source, each source's offsets rising from op to op, and no
    negative popularity weight (a returned purchase: the replay clamps at zero).
    Otherwise the caller replays the entries.
    """

    __slots__ = ("count", "dq", "dqb", "dr", "drb", "first", "irregular", "last", "mass",
                 "negative", "odd", "pairs", "price", "price_n", "qn", "recent", "reviews",
                 "rn", "segments", "uses")

    def __init__(self) -> None:
        self.pairs: dict[str, float] = {}
        self.uses: dict[str, int] = {}  # how many ops each pair sums
        self.mass = 0.0
        self.count = 0.0
        self.recent: list[float] | None = None  # [sum, as of time, ops]
        self.segments: dict[int, list[float]] = {}  # segment -> [sum, as of time, ops]
        self.dq: np.ndarray | None = None
        self.dqb = 0.0
        self.qn = 0
        self.dr: np.ndarray | None = None
        self.drb = 0.0
        self.rn = 0
        self.price = 0.0  # the prices' total
        self.price_n = 0
        self.reviews: list[tuple[str, int, float, float]] = []  # (src, offset, p, t)
        self.negative = 0  # popularity ops of negative weight
        self.odd = 0  # entries whose offsets do not rise within them
        # Per source: the first offset and the last entry's end of the entries
        # summed, and whether an entry starts at or below an earlier one's end.
        self.first: dict[str, int] = {}
        self.last: dict[str, int] = {}
        self.irregular = False

    @classmethod
    def of(cls, entries: Sequence[Entry], ends: Sequence[int], rates: tuple[float, float]
           ) -> PendingSums:
        """The sums of ``entries`` (``ends``: their end offsets; ``rates``: the
        popularity's and the segments' decay per second)."""
        s = cls()
        for entry, end in zip(entries, ends, strict=True):
            s.add(entry, end, rates)
        return s

    def add(self, entry: Entry, end: int, rates: tuple[float, float]) -> None:
        """Add an entry sent after those summed (``end``: its last event's offset)."""
        self._fold(entry, True, rates)
        src, first, last = entry[0], entry[1], self.last
        if last.get(src, -1) >= first:
            self.irregular = True
        self.first.setdefault(src, first)
        last[src] = max(last.get(src, -1), end)

    def remove(self, entry: Entry, rates: tuple[float, float]) -> None:
        """Take an entry added before back out; :meth:`settle` once all are out."""
        self._fold(entry, False, rates)

    def settle(self, entries: Sequence[Entry], ends: Sequence[int]) -> None:
        """After :meth:`remove`: the sources' offsets and their order from the
        ``entries`` left (``ends``: theirs), and the sums emptied set to exact zeros.

        The entries confirmed end at or below a watermark the entries left end
        above, so a source's last end stays; its first offset is its first entry
        left, found from the front; an order that held still holds."""
        if self.irregular:
            first: dict[str, int] = {}
            last: dict[str, int] = {}
            irregular = False
            for entry, end in zip(entries, ends, strict=True):
                src = entry[0]
                if last.get(src, -1) >= entry[1]:
                    irregular = True
                first.setdefault(src, entry[1])
                last[src] = max(last.get(src, -1), end)
            self.first, self.last, self.irregular = first, last, irregular
        else:
            first, wanted = {}, len(self.first)
            for entry in entries:
                if entry[0] not in first:
                    first[entry[0]] = entry[1]
                    if len(first) == wanted:
                        break
            self.last = {src: self.last[src] for src in first}
            self.first = first
        if not self.pairs:
            self.mass = 0.0
        if self.recent is None:
            self.count = 0.0
        if not self.qn:
            self.dq, self.dqb = None, 0.0
        if not self.rn:
            self.dr, self.drb = None, 0.0
        if not self.price_n:
            self.price = 0.0

    def _fold(self, entry: Entry, adding: bool, rates: tuple[float, float]) -> None:
        pairs, uses = self.pairs, self.uses
        sign = 1.0 if adding else -1.0
        mass = 0.0
        src, offset, prev, odd = entry[0], -1, -1, False
        k, n = 1, len(entry)
        while k < n:
            x = entry[k]
            if x == "c":  # most ops: inline, as ItemState.apply reads them
                other, w = entry[k + 1], entry[k + 2]
                k += 3
            elif type(x) is int:
                odd |= x <= prev
                prev = offset = x
                k += 1
                continue
            else:
                if type(x) is list:
                    op: list[Any] = x
                    k += 1
                else:
                    arity = ARITY.get(x)
                    if arity is None:
                        raise ValueError(f"item updates: unknown op {x!r}")
                    op = entry[k : k + 1 + arity]
                    k += 1 + arity
                kind = op[0]
                if kind != "c":
                    self._op(op, adding, src, offset, rates)
                    continue
                other, w = op[1], op[2]
            mass += w
            if adding:
                if other in pairs:
                    pairs[other] += w
                    uses[other] += 1
                else:
                    pairs[other] = w
                    uses[other] = 1
            else:
                left = uses[other] - 1
                if left:
                    pairs[other] -= w
                    uses[other] = left
                else:
                    del pairs[other], uses[other]
        self.mass += sign * mass
        if odd:
            self.odd += 1 if adding else -1

    def _op(self, op: list[Any], adding: bool, src: str, offset: int,
            rates: tuple[float, float]) -> None:
        """Every op but a pair's, added or removed."""
        kind = op[0]
        sign = 1 if adding else -1
        if kind == "p":
            self.count += sign * op[1]
            self.negative += sign * (op[1] < 0)
            self.recent = _decayed_sum(self.recent, op[1], op[2], sign, rates[0])
        elif kind == "s":
            self.negative += sign * (op[2] < 0)
            acc = _decayed_sum(self.segments.get(op[1]), op[2], op[3], sign, rates[1])
            if acc is None:
                del self.segments[op[1]]
            else:
                self.segments[op[1]] = acc
        elif kind in ("b", "r"):
            total = self.dq if kind == "b" else self.dr
            if total is None:
                total = np.array(op[1], dtype=float)
            elif adding:
                total += op[1]
            else:
                total -= op[1]
            if kind == "b":
                self.dq, self.dqb, self.qn = total, self.dqb + sign * op[2], self.qn + sign
            else:
                self.dr, self.drb, self.rn = total, self.drb + sign * op[2], self.rn + sign
        elif kind == "e":
            if adding:
                self.reviews.append((src, offset, op[1], op[2]))
            else:
                self.reviews = [r for r in self.reviews if r[0] != src or r[1] != offset]
        elif kind == "$":
            self.price += sign * op[1]
            self.price_n += sign
        elif kind not in ("b0", "r0"):  # a start: no effect over a published vector
            raise ValueError(f"item updates: unknown op {kind!r}")

    def fits(self, model: Mapping[str, Any]) -> bool:
        """Whether :meth:`over` ``model`` is what replaying the entries gives."""
        if self.irregular or self.odd or self.negative:
            return False
        w = model.get("w") or {}
        return all(first > w.get(src, -1) for src, first in self.first.items())

    def over(self, model: Mapping[str, Any], params: Any
             ) -> tuple[dict[str, Any], dict[str, float]]:
        """``model`` with the sums added, as :func:`with_pending` returns it: the
        parts the model shares, and the pairs apart (not to be modified)."""
        out = dict(model)
        w = dict(model.get("w") or {})
        for src, last in self.last.items():
            if last > w.get(src, -1):
                w[src] = last
        out["w"] = w
        pairs: dict[str, float] = {}
        if model.get("nb") is not None:
            out["m"] = model["m"] + self.mass
            pairs = self.pairs
        if "p" in model and self.recent is not None:
            out["p"] = _decayed_over(model["p"], self.recent, _LN2 / params.trending_half_life)
            out["n"] = model["n"] + self.count
        if "s" in model and self.segments:
            rate = _LN2 / params.segment_half_life
            segs = {int(k): v for k, v in model["s"].items()}
            for seg, acc in self.segments.items():
                old = segs.get(seg)
                segs[seg] = acc[:2] if old is None else _decayed_over(old, acc, rate)
            out["s"] = {str(k): v for k, v in segs.items()}
        if "q" in model and self.dq is not None:
            out["q"] = np.asarray(model["q"], dtype=float) + self.dq
            out["qb"] = model["qb"] + self.dqb
        if "r" in model and self.dr is not None:
            out["r"] = np.asarray(model["r"], dtype=float) + self.dr
            out["rb"] = model["rb"] + self.drb
            out["rn"] = model["rn"] + self.rn
        if "e" in model and self.reviews:
            from models.sentiment import ItemSentiment

            track = ItemSentiment(params.sentiment_fast, params.sentiment_slow)
            st = list(model["e"])
            for _, _, p_positive, t in self.reviews:
                track.step(st, p_positive, t)
            out["e"] = st
        if "$" in model and self.price_n:
            mean, n = model["$"]
            total = n + self.price_n
            out["$"] = [mean + (self.price - self.price_n * mean) / total, total]
        return out, pairs


_LN2 = math.log(2.0)


def _rates(params: Any) -> tuple[float, float]:
    """The popularity's and the segments' decay per second under ``params``
    (:class:`models.item_state.ItemParams`; None: its defaults)."""
    if params is None:
        from models.item_state import ItemParams

        params = ItemParams()
    return _LN2 / params.trending_half_life, _LN2 / params.segment_half_life


def _decayed_sum(acc: list[float] | None, w: float, t: float, sign: int, rate: float
                 ) -> list[float] | None:
    """A decayed sum ``[sum, as of time, ops]`` with ``w`` at time ``t`` added
    (``sign`` 1) or taken back out (-1: added before, so ``acc``'s time is the
    later); None once it sums no op."""
    if sign > 0:
        if acc is None:
            return [w, t, 1]
        value, at, n = acc
        if t >= at:
            return [value * math.exp(-rate * (t - at)) + w, t, n + 1]
        return [value + w * math.exp(-rate * (at - t)), at, n + 1]
    assert acc is not None
    if acc[2] <= 1:
        return None
    return [acc[0] - w * math.exp(-rate * (acc[1] - t)), acc[1], acc[2] - 1]


def _decayed_over(base: Sequence[float], acc: list[float], rate: float) -> list[float]:
    """A published ``[value, at]`` with a decayed sum added, as of the later time."""
    value, at = base
    total, t = acc[0], acc[1]
    if t >= at:
        return [value * math.exp(-rate * (t - at)) + total, t]
    return [value + total * math.exp(-rate * (at - t)), at]


def attach(engine: FeedbackEngine, outbox: Outbox | None) -> None:
    """Make ``engine`` record its item-side increments into ``outbox`` (``None``: stop)."""
    engine.outbox = outbox
    taste, ratings = engine.recommender.taste, engine.ratings
    if outbox is None:
        taste.trace = ratings.trace = None
        return
    from models.item_state import ItemParams

    outbox.ids = engine.catalogue.ids
    outbox.rates = _rates(ItemParams.of(engine.config))
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
    if outbox is not None:
        from models.item_state import ItemParams

        # Not pruned: the pending pairs are applied apart (below).
        params = replace(ItemParams.of(engine.config), max_neighbours=1 << 40)
        models = list(models)
        outbox.confirm(models)
    n = 0
    for item_id, model in models:
        if n:
            yield
        n += 1
        pairs: dict[str, float] = {}
        if outbox is not None:
            model, pairs = outbox.with_pending(item_id, model, params)
        idx = cat.add(item_id)
        nb = model.get("nb")
        if nb is not None:
            co = rec.cooccurrence
            co.assign(idx, nb[0], nb[1], model["m"], cat.add, nb[2], known=cat.index)
            if pairs:
                index = cat.index
                others = [index[o] if o in index else cat.add(o) for o in pairs]
                co.add_pairs(idx, others, list(pairs.values()))
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
    engine.item_price = grown(engine.item_price, idx + 1)  # the same array when long enough
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
