"""Dense integer indices for item ids, shared by every per-item numpy array."""

from __future__ import annotations

import numpy as np


class ItemCatalogue:
    """Append-only mapping between item ids and dense indices ``0..n-1``.

    Every per-item model stores its state in numpy arrays indexed by these
    integers, so top-k scoring is one vectorised pass over the catalogue.

    Examples
    --------
    >>> cat = ItemCatalogue()
    >>> cat.add("85123A"), cat.add("71053"), cat.add("85123A")
    (0, 1, 0)
    >>> len(cat), cat.ids[1], cat.get("nope") is None
    (2, '71053', True)
    """

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.index: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, item_id: str) -> int:
        """Index of ``item_id``, registering it if it is new."""
        idx = self.index.get(item_id)
        if idx is None:
            idx = len(self.ids)
            self.index[item_id] = idx
            self.ids.append(item_id)
        return idx

    def get(self, item_id: str) -> int | None:
        """Index of a known item, else ``None``."""
        return self.index.get(item_id)


def grown(array: np.ndarray, size: int) -> np.ndarray:
    """``array`` with at least ``size`` rows, zero-filled, capacity doubled.

    Doubling keeps the amortised cost of adding an item O(1).

    >>> a = grown(np.ones(2), 3)
    >>> a.shape, a[:3].tolist()
    ((16,), [1.0, 1.0, 0.0])
    """
    if size <= array.shape[0]:
        return array
    capacity = max(size, 2 * array.shape[0], 16)
    out = np.zeros((capacity, *array.shape[1:]), dtype=array.dtype)
    out[: array.shape[0]] = array
    return out
