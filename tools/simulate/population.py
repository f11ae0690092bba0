"""The population: the MovieLens users, their real histories and hidden preferences."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from hashlib import blake2b
from pathlib import Path
from typing import Any

import numpy as np


def seed_int(*parts: object) -> int:
    """A stable 64-bit seed from ``parts``: unlike hash(), the same in every process."""
    text = ":".join(map(str, parts)).encode()
    return int.from_bytes(blake2b(text, digest_size=8).digest(), "big")


class Population:
    """MovieLens users, their real rating histories and hidden preferences.

    Parameters
    ----------
    ratings
        ``(user_id, item_id, rating)`` in time order (contract ids).
    min_item_ratings
        Items rated by fewer users are left out (a smaller, denser catalogue).
    factors
        Rank of the SVD behind the preferences of unrated items.
    """

    def __init__(
        self,
        ratings: Sequence[tuple[str, str, float]],
        min_item_ratings: int = 5,
        factors: int = 32,
    ) -> None:
        counts = Counter(item for _, item, _ in ratings)
        self.items = sorted(i for i, c in counts.items() if c >= min_item_ratings)
        self.item_index = {item: i for i, item in enumerate(self.items)}
        sequences: dict[str, list[tuple[int, float]]] = defaultdict(list)
        for user, item, rating in ratings:
            idx = self.item_index.get(item)
            if idx is not None:
                sequences[user].append((idx, rating))
        self.users = sorted(u for u, seq in sequences.items() if seq)
        self.user_index = {u: i for i, u in enumerate(self.users)}
        self.sequences = {u: sequences[u] for u in self.users}
        self.rated: list[dict[int, float]] = [dict(self.sequences[u]) for u in self.users]
        # Position of each rated item in the user's real, time-ordered history.
        self.order: list[dict[int, int]] = [
            {i: pos for pos, (i, _) in enumerate(self.sequences[u])} for u in self.users
        ]
        # Hidden taste for unrated items: percentile under a low-rank SVD.
        matrix = np.zeros((len(self.users), len(self.items)), dtype=np.float32)
        for u, rated in enumerate(self.rated):
            matrix[u, list(rated)] = 1.0
        k = max(1, min(factors, min(matrix.shape) - 1))
        left, sing, right = np.linalg.svd(matrix, full_matrices=False)
        scores = (left[:, :k] * sing[:k]) @ right[:k]
        ranks = scores.argsort(axis=1).argsort(axis=1).astype(np.float32)
        self.percentile = ranks / max(1, len(self.items) - 1)

    @classmethod
    def from_movielens(
        cls, data_dir: Path | None = None, max_users: int | None = None, **kwargs: Any
    ) -> Population:
        """Read the MovieLens ratings with :func:`tools.datasets.movielens_reviews`."""
        from tools import datasets

        rows = [
            (e["user_id"], e["item_id"], float(e["rating"]))
            for e in datasets.movielens_reviews(data_dir)
        ]
        if max_users is not None:
            keep = set(sorted({u for u, _, _ in rows}, key=lambda u: int(u[4:]))[:max_users])
            rows = [r for r in rows if r[0] in keep]
        return cls(rows, **kwargs)

    def preference(
        self, user: str, item: str, position: int | None = None, horizon: float = 0.0
    ) -> float:
        """The hidden probability scale, in [0, 1], that ``user`` likes ``item``.

        With ``horizon > 0`` and the user's current ``position`` in their
        history, a rated item's liking is scaled by the user's *intent*:
        ``0.3 + 0.7 * exp(-d / horizon)`` for an item ``d`` positions ahead (what
        they really watched next is what they want now; ``d < 0``, already
        watched, counts as far ahead).
        """
        u = self.user_index[user]
        i = self.item_index.get(item)
        if i is None:
            return 0.0
        rating = self.rated[u].get(i)
        if rating is not None:
            liking = 0.05 + 0.9 * ((rating - 1.0) / 4.0) ** 2
            if horizon > 0 and position is not None:
                d = self.order[u][i] - position
                intent = 0.3 + 0.7 * math.exp(-d / horizon) if d >= 0 else 0.3
                return liking * intent
            return liking
        return 0.25 * float(self.percentile[u, i]) ** 8

    def price(self, item: str) -> float:
        """A fixed price per movie, 2.99 to 14.99."""
        return round(2.99 + (seed_int("price", item) % 13), 2)
