"""Item-to-item co-occurrence over each user's recent history."""

from __future__ import annotations

from collections.abc import Sequence
from operator import itemgetter

import numpy as np

from models.catalogue import grown


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
    >>> co.learn([], 0, 1.0)
    >>> co.learn([(0, 1.0)], 1, 1.0)   # 0 then 1
    >>> co.learn([], 2, 1.0)
    >>> s = co.scores([(0, 1.0)], 3)
    >>> int(s.argmax()), float(s[2])
    (1, 0.0)
    """

    def __init__(self, max_neighbours: int = 200, gamma: float = 0.9, alpha: float = 0.5) -> None:
        self.max_neighbours = max_neighbours
        self.gamma = gamma
        self.alpha = alpha
        self.neighbours: list[dict[int, float]] = []
        self._mass = np.zeros(16)

    def _ensure(self, item: int) -> None:
        while len(self.neighbours) <= item:
            self.neighbours.append({})
        self._mass = grown(self._mass, item + 1)

    def learn(self, history: Sequence[tuple[int, float]], item: int, weight: float) -> None:
        """Record ``item`` (strength ``weight`` > 0) after ``history`` (most recent last)."""
        self._ensure(item)
        if weight <= 0.0:
            return
        nb_item = self.neighbours[item]
        decay = 1.0
        total = 0.0
        for h, w_h in reversed(history):
            if h != item and w_h > 0.0:
                w = min(weight, w_h) * decay
                nb_h = self.neighbours[h]
                nb_h[item] = nb_h.get(item, 0.0) + w
                nb_item[h] = nb_item.get(h, 0.0) + w
                self._mass[h] += w
                total += w
                if len(nb_h) > 2 * self.max_neighbours:
                    self.neighbours[h] = self._pruned(nb_h)
            decay *= self.gamma
        self._mass[item] += total
        if len(nb_item) > 2 * self.max_neighbours:
            self.neighbours[item] = self._pruned(nb_item)

    def _pruned(self, nb: dict[int, float]) -> dict[int, float]:
        kept = sorted(nb.items(), key=itemgetter(1), reverse=True)[: self.max_neighbours]
        return dict(kept)

    def scores(self, history: Sequence[tuple[int, float]], n: int) -> np.ndarray:
        """Scores of items ``0..n-1`` given ``(item, recency weight)`` pairs."""
        keys: list[np.ndarray] = []
        vals: list[np.ndarray] = []
        self._mass = mass = grown(self._mass, n)
        for h, r in history:
            if h >= len(self.neighbours):
                continue
            nb = self.neighbours[h]
            if not nb or r <= 0.0:
                continue
            k = np.fromiter(nb.keys(), dtype=np.int64, count=len(nb))
            v = np.fromiter(nb.values(), dtype=np.float64, count=len(nb))
            keys.append(k)
            vals.append(v * (r / np.sqrt(mass[h] + 1.0)))
        if not keys:
            return np.zeros(n)
        idx = np.concatenate(keys)
        out = np.bincount(idx, weights=np.concatenate(vals), minlength=n)[:n]
        return out / (mass[:n] + 1.0) ** self.alpha

    def strongest_source(
        self, history: Sequence[tuple[int, float]], candidate: int
    ) -> int | None:
        """The history item contributing most to ``candidate``'s score (for reasons)."""
        best, best_w = None, 0.0
        for h, r in history:
            if h < len(self.neighbours):
                w = self.neighbours[h].get(candidate, 0.0) * r / np.sqrt(self._mass[h] + 1.0)
                if w > best_w:
                    best, best_w = h, w
        return best
