"""Item-to-item co-occurrence over each user's recent history."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import numpy as np

from models.catalogue import grown


def _floats(array: np.ndarray) -> memoryview[float]:
    """A float64 array's buffer as Python floats (reads and writes in place)."""
    return cast("memoryview[float]", array.data)


class Neighbours:
    """One item's weighted neighbours: numpy arrays plus a slot index for O(1) updates.

    Scoring reads ``keys[:n]`` and ``values[:n]`` directly, with no per-call
    conversion from a dict.
    """

    __slots__ = ("keys", "n", "published", "slots", "values")

    def __init__(self) -> None:
        self.slots: dict[int, int] = {}
        self.keys = np.zeros(8, dtype=np.int64)
        self.values = np.zeros(8)
        self.n = 0
        # (epoch, length) of the last published list assigned, while its ids are the
        # first entries in that order (see ItemCooccurrence.assign); None otherwise.
        self.published: tuple[int, int] | None = None

    def __len__(self) -> int:
        return self.n

    def add(self, item: int, weight: float) -> None:
        """Add ``weight`` to the pair with ``item``."""
        slot = self.slots.get(item)
        if slot is None:
            self.append(item, weight)
        else:
            values = self.values  # a float read and a write: cheaper than a numpy ``+=``
            values[slot] = values.item(slot) + weight

    def append(self, item: int, weight: float) -> None:
        """Start the pair with ``item``, known to be absent, at ``weight``."""
        slot = self.n
        if slot == self.keys.shape[0]:
            self.keys = grown(self.keys, slot + 1)
            self.values = grown(self.values, slot + 1)
        self.slots[item] = slot
        self.keys[slot] = item
        self.values[slot] = weight
        self.n = slot + 1

    def put_range(self, start: int, keys: Any, values: Any) -> None:
        """Write ``keys`` and ``values`` at ``start`` on, growing the arrays if short,
        and end the list after them (the caller keeps ``slots``)."""
        end = start + len(keys)
        if end > self.keys.shape[0]:
            self.keys = grown(self.keys, end)
            self.values = grown(self.values, end)
        self.keys[start:end] = keys
        self.values[start:end] = values
        self.n = end

    def get(self, item: int) -> float:
        """Weight of the pair with ``item`` (0 if absent)."""
        slot = self.slots.get(item)
        return 0.0 if slot is None else float(self.values[slot])

    def prune(self, keep: int) -> None:
        """Keep only the ``keep`` heaviest neighbours."""
        if self.n <= keep:
            return
        top = np.argpartition(-self.values[: self.n], keep - 1)[:keep]
        top.sort()
        self.keys = self.keys[top].copy()
        self.values = self.values[top].copy()
        self.n = keep
        self.slots = {int(k): i for i, k in enumerate(self.keys.tolist())}
        self.published = None


class ItemCooccurrence:
    """Weighted, sequence-aware item-to-item co-occurrence with bounded neighbour lists.

    When a user interacts with item ``j`` (strength ``w``), every item ``h`` of
    their recent history (strength ``w_h``, ``d`` steps back) gains
    ``min(w, w_h) * gamma ** d`` with ``j``, symmetrically: items used close
    together in a user's sequence count more. A user's score for candidate ``j``
    is ``sum_h r_h * C[h, j] / (m_h ** 0.5 * m_j ** alpha)`` where ``r_h`` weighs
    recent history more and ``m`` is each item's total co-occurrence mass
    (cosine-like normalisation, so that best sellers do not co-occur with
    everything).

    Memory per item is bounded: a neighbour list longer than ``2 * max_neighbours``
    is cut back to its ``max_neighbours`` heaviest entries.

    Parameters
    ----------
    max_neighbours
        Neighbours kept per item after pruning.
    gamma
        Decay of the pair weight per step of distance in the user's history.
    alpha
        Exponent of the candidate-mass normalisation (0: raw counts, 0.5: cosine).

    Examples
    --------
    >>> co = ItemCooccurrence()
    >>> co.learn_one([], 0, 1.0)
    >>> co.learn_one([(0, 1.0)], 1, 1.0)   # 0 then 1
    >>> co.learn_one([], 2, 1.0)
    >>> s = co.scores([(0, 1.0)], 3)
    >>> int(s.argmax()), float(s[2])
    (1, 0.0)
    """

    def __init__(
        self, max_neighbours: int = 200, gamma: float = 0.9, alpha: float = 0.5, pmi: bool = False
    ) -> None:
        self.max_neighbours = max_neighbours
        self.gamma = gamma
        self.alpha = alpha
        # Score by positive PMI instead of the cosine-like normalisation (an option,
        # measured in docs/models.md; the reasons report PMI either way).
        self.pmi = pmi
        self.neighbours: list[Neighbours] = []
        self._mass = np.zeros(16)
        self._norm = np.ones(16)  # (mass + 1) ** -alpha, kept in step with _mass

    def _ensure(self, item: int) -> None:
        while len(self.neighbours) <= item:
            self.neighbours.append(Neighbours())
        if item >= self._mass.shape[0]:
            self._mass = grown(self._mass, item + 1)
            norm = np.ones(self._mass.shape[0])
            norm[: self._norm.shape[0]] = self._norm
            self._norm = norm

    def learn_one(self, history: Sequence[tuple[int, float]], item: int, weight: float) -> None:
        """Record ``item`` (strength ``weight`` > 0) after ``history`` (most recent last)."""
        self._ensure(item)
        if weight <= 0.0:
            return
        neighbours = self.neighbours
        nb_item = neighbours[item]
        item_slots = nb_item.slots
        # Python float reads and writes through memoryviews: a numpy scalar
        # ``a[i] += w`` costs about twice as much, and these run up to
        # 2 x history_size times per event. Same float additions, same order.
        item_view = _floats(nb_item.values)
        mass, norm = _floats(self._mass), _floats(self._norm)
        # Many cells are new (15 of the 32 an event updates on the demo replay):
        # item's new entries are numbered here and written after the loop, in one
        # slice each, instead of one append (and numpy scalar writes) per pair.
        base = nb_item.n
        new_keys: list[int] = []
        new_values: list[float] = []
        exponent = -self.alpha
        cap = 2 * self.max_neighbours
        gamma = self.gamma
        decay = 1.0
        total = 0.0
        for h, w_h in reversed(history):
            if h != item and w_h > 0.0:
                w = min(weight, w_h) * decay
                nb_h = neighbours[h]
                slot = nb_h.slots.get(item)
                if slot is None:
                    nb_h.append(item, w)
                    if nb_h.n > cap:
                        nb_h.prune(self.max_neighbours)
                else:
                    values = nb_h.values
                    values[slot] = values.item(slot) + w
                slot = item_slots.get(h)
                if slot is None:
                    item_slots[h] = base + len(new_keys)
                    new_keys.append(h)
                    new_values.append(w)
                elif slot >= base:  # new in this call: h repeats in the history
                    new_values[slot - base] += w
                else:
                    item_view[slot] += w
                mass_h = mass[h] + w
                mass[h] = mass_h
                norm[h] = (mass_h + 1.0) ** exponent
                total += w
            decay *= gamma
        if new_keys:
            nb_item.put_range(base, new_keys, new_values)
        mass_item = mass[item] + total
        mass[item] = mass_item
        norm[item] = (mass_item + 1.0) ** exponent
        if nb_item.n > cap:
            nb_item.prune(self.max_neighbours)

    def pairs(
        self, history: Sequence[tuple[int, float]], item: int, weight: float
    ) -> list[tuple[int, float]]:
        """The ``(h, w)`` pair increments :meth:`learn_one` makes for the same arguments
        (each added to both ``C[h, item]`` and ``C[item, h]``), for an outbox."""
        if weight <= 0.0:
            return []
        out = []
        decay = 1.0
        for h, w_h in reversed(history):
            if h != item and w_h > 0.0:
                out.append((h, min(weight, w_h) * decay))
            decay *= self.gamma
        return out

    def assign(
        self,
        item: int,
        ids: list[str],
        weights: list[float],
        mass: float,
        index_of: Callable[[str], int],
        epoch: int = -1,
        head: int | None = None,
        known: Mapping[str, int] | None = None,
    ) -> None:
        """Overwrite ``item``'s neighbours (distinct ``ids``, mapped by ``index_of``) with
        ``weights``, and its co-occurrence mass: a published list replacing the local one.

        A publisher whose list keeps a stable order (new neighbours appended) within
        an ``epoch`` (it changes when the list is pruned; -1: unknown) sends a list
        whose head is the previous one of the same epoch: then only the weights are
        copied and the new tail mapped, so the cost follows what changed. Pairs
        learnt locally since, not yet in the list, keep their local weight.
        ``head``: how many of ``ids`` are the publisher's list (the rest, this
        worker's own pairs it does not hold yet); all by default. ``known``: the
        ids ``index_of`` already maps, looked up in one pass (``index_of`` then
        maps only the others, in order).
        """
        self._ensure(item)
        nb = self.neighbours[item]
        old = nb.published
        m = old[1] if old is not None else 0
        if old is None or epoch < 0 or old[0] != epoch or len(ids) < m:
            nb = Neighbours()
            self.neighbours[item] = nb
            m = 0
        elif m:
            nb.values[:m] = weights[:m]
        slots = nb.slots
        end = len(ids)
        if known is None:
            tail = [index_of(x) for x in ids[m:]]
        else:
            tail_ids = ids[m:]
            found = list(map(known.get, tail_ids))
            if None in found:
                found = [index_of(x) if h is None else h
                         for h, x in zip(found, tail_ids, strict=True)]
            tail = cast("list[int]", found)
        # The new ids' rows: every other neighbour's were made when it was learnt
        # or assigned.
        newest = max(tail) if tail else -1
        if nb.n == m and slots.keys().isdisjoint(tail):
            # Nothing learnt locally among the new ids (always so for a fresh
            # list): they go after the head in one numpy copy each.
            nb.put_range(m, tail, weights[m:])
            slots.update(zip(tail, range(m, end), strict=True))
            tail = []
        if tail:
            # Entry i goes to position i; a pair learnt locally since may sit
            # further on: swapped into place, so the list's head stays ``ids``.
            # On lists of the part from m (numpy scalar reads and writes cost
            # several times more), written back at once.
            keys, values = nb.keys[m : nb.n].tolist(), nb.values[m : nb.n].tolist()
            n = nb.n
            for i, (h, w) in enumerate(zip(tail, weights[m:].tolist()
                                           if isinstance(weights, np.ndarray) else weights[m:],
                                           strict=True), m):
                slot = slots.get(h)
                if slot is None:
                    slot = n
                    slots[h] = n
                    keys.append(h)
                    values.append(w)
                    n += 1
                if slot != i:
                    other = keys[i - m]
                    keys[i - m], keys[slot - m] = h, other
                    values[slot - m] = values[i - m]
                    slots[h], slots[other] = i, slot
                values[i - m] = w
            nb.put_range(m, keys, values)
        if newest >= 0:
            self._ensure(newest)
        nb.published = (epoch, len(ids) if head is None else head)
        self._mass[item] = mass
        self._norm[item] = (mass + 1.0) ** -self.alpha

    def add_pairs(self, item: int, others: Sequence[int], weights: Sequence[float]) -> None:
        """Add ``weights`` to ``item``'s pairs with ``others`` (distinct), in its own list only,
        after :meth:`assign` (which set the mass with them): a replica's own pairs
        that the published list does not hold yet. New pairs go after the list, so
        its head stays the publisher's; past ``2 * max_neighbours`` it is pruned
        as learning prunes it (and the next published list is assigned afresh)."""
        nb = self.neighbours[item]
        slots = nb.slots
        found = [slots.get(h) for h in others]
        new: list[tuple[int, float]] = []
        if None in found:
            new = [(h, w) for h, w, s in zip(others, weights, found, strict=True) if s is None]
            weights = [w for w, s in zip(weights, found, strict=True) if s is not None]
            found = [s for s in found if s is not None]
        if found:  # distinct pairs: one numpy add for those the list holds
            nb.values[np.array(found, dtype=np.intp)] += weights
        if new:  # and one copy for those it does not, in order, after it
            start = nb.n
            hs = [h for h, _ in new]
            nb.put_range(start, hs, [w for _, w in new])
            nb.slots.update(zip(hs, range(start, nb.n), strict=True))
        if others:
            self._ensure(max(others))
        if nb.n > 2 * self.max_neighbours:
            nb.prune(self.max_neighbours)

    def scores(
        self, history: Sequence[tuple[int, float]], n: int, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Scores of items ``0..n-1`` given ``(item, recency weight)`` pairs.

        Written into ``out`` (length ``n``) when given, to spare the caller a copy.
        """
        if self.pmi:
            return self._pmi_scores(history, n, out)
        keys: list[np.ndarray] = []
        vals: list[np.ndarray] = []
        factors: list[float] = []
        lengths: list[int] = []
        if n > self._mass.shape[0]:
            self._ensure(n - 1)
        mass = self._mass
        neighbours = self.neighbours
        known = len(neighbours)
        for h, r in history:
            if h >= known:
                continue
            nb = neighbours[h]
            size = nb.n
            if size == 0 or r <= 0.0:
                continue
            keys.append(nb.keys[:size])
            vals.append(nb.values[:size])
            lengths.append(size)
            factors.append(r / math.sqrt(mass.item(h) + 1.0))  # .item(): a float, not a scalar
        if out is None:
            out = np.empty(n)
        if not keys:
            out.fill(0.0)
        elif len(keys) == 1:
            # One source (the "sequence" signal): its keys are distinct, so a
            # scatter gives what bincount would, without a pass over the catalogue.
            out.fill(0.0)
            idx, v = keys[0], vals[0] * factors[0]
            keep = idx < n
            idx, v = idx[keep], v[keep]
            out[idx] = v * self._norm[idx]
        else:
            # One multiply for all sources (each source's weights times its factor).
            weights = np.concatenate(vals) * np.repeat(np.array(factors), lengths)
            counts = np.bincount(np.concatenate(keys), weights=weights, minlength=n)
            np.multiply(counts[:n], self._norm[:n], out=out)
        return out

    def _pmi_scores(
        self, history: Sequence[tuple[int, float]], n: int, out: np.ndarray | None
    ) -> np.ndarray:
        """``sum_h r_h * max(0, PMI(h, j))``: association beyond chance, popularity removed."""
        if n > self._mass.shape[0]:
            self._ensure(n - 1)
        if out is None:
            out = np.empty(n)
        out.fill(0.0)
        mass = self._mass
        total = float(mass.sum())
        for h, r in history:
            if h >= len(self.neighbours) or r <= 0.0:
                continue
            nb = self.neighbours[h]
            if nb.n == 0:
                continue
            keys = nb.keys[: nb.n]
            keep = keys < n
            keys = keys[keep]
            lift = nb.values[: nb.n][keep] * total / ((mass[h] + 1.0) * (mass[keys] + 1.0))
            out[keys] += r * np.maximum(np.log2(np.maximum(lift, 1e-12)), 0.0)
        return out

    def pmi_of(self, a: int, b: int) -> float | None:
        """PMI in bits of the pair ``(a, b)``: log2 of how many times more often they
        co-occur than if independent (pair weights over item masses); ``None`` if never,
        or while either item's mass is unknown.

        >>> co = ItemCooccurrence()
        >>> for user in range(3):
        ...     co.learn_one([], 0, 1.0); co.learn_one([(0, 1.0)], 1, 1.0)
        ...     co.learn_one([], 2, 1.0); co.learn_one([(2, 1.0)], 3, 1.0)
        >>> round(co.pmi_of(0, 1), 3), co.pmi_of(0, 2)
        (2.0, None)
        """
        if a >= len(self.neighbours):
            return None
        pair = self.neighbours[a].get(b)
        if pair <= 0.0:
            return None
        mass = self._mass
        # A replica can hold a's published list before b's own model (and mass)
        # arrived: no lift to state then.
        ma = float(mass[a]) if a < len(mass) else 0.0
        mb = float(mass[b]) if b < len(mass) else 0.0
        if ma <= 0.0 or mb <= 0.0:
            return None
        return math.log2(pair * float(mass.sum()) / (ma * mb))

    def strongest_sources(
        self, history: Sequence[tuple[int, float]], candidates: Sequence[int]
    ) -> dict[int, int | None]:
        """For each candidate, the history item contributing most to its score (for
        reasons), ``None`` if none does; one pass over the history."""
        best: dict[int, int | None] = dict.fromkeys(candidates)
        best_w = dict.fromkeys(candidates, 0.0)
        for h, r in history:
            if h >= len(self.neighbours):
                continue
            nb = self.neighbours[h]
            root = math.sqrt(self._mass[h] + 1.0)
            for c in candidates:
                slot = nb.slots.get(c)
                if slot is not None:  # absent pairs weigh 0: never the strongest
                    w = float(nb.values[slot]) * r / root
                    if w > best_w[c]:
                        best[c], best_w[c] = h, w
        return best
