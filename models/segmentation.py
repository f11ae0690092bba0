"""Online customer segmentation: exact running-mean k-means with hysteresis."""

from __future__ import annotations

import math

import numpy as np

from models.profiles import DAY, SEGMENT_FEATURES


class OnlineSegmentation:
    """Online k-means over users' current feature vectors, standardised online.

    Each segment's centre is the exact mean of its members' *current* vectors:
    when a user's features change, their old vector is taken out of their
    segment's running sum and the new one put in (MacQueen k-means with
    removal), so centres never remember stale states. Features are
    standardised with the mean and standard deviation of all users' current
    vectors, maintained the same way; since both sums are kept in raw units,
    a change of scale never invalidates a centre.

    Stability: a user moves to a closer segment only when it is closer than the
    current one by a factor ``1 - margin`` (hysteresis), so users near a border
    do not flip on every event. :meth:`refresh` re-examines a few users per
    call, round robin, so that users without new events follow the centres.

    The first ``warmup`` users are clustered at once with k-means++ seeding and a
    few Lloyd iterations; before that every segment is ``None``. Memory: one
    vector, one segment and one timestamp per user.

    Parameters
    ----------
    k
        Number of segments.
    margin
        Relative distance gain needed to change segment.
    warmup
        Users seen before the first clustering.
    seed
        Seeds the k-means++ initialisation.

    Examples
    --------
    >>> seg = OnlineSegmentation(k=2, warmup=4, seed=0)
    >>> def vec(a):  # one coordinate per name in SEGMENT_FEATURES
    ...     return np.r_[a, np.zeros(len(SEGMENT_FEATURES) - 1)]
    >>> for i in range(8):
    ...     _ = seg.update(f"u{i}", vec(10.0 * (i % 2)), last_seen=0.0)
    >>> seg.update("u0", vec(0.0), 0.0) != seg.update("u1", vec(10.0), 0.0)
    True
    >>> sorted(seg.sizes().values())
    [4, 4]
    """

    def __init__(self, k: int = 4, margin: float = 0.1, warmup: int = 50, seed: int = 0) -> None:
        self.k = k
        self.margin = margin
        self.warmup = warmup
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        d = len(SEGMENT_FEATURES)
        self.sums = np.zeros((k, d))
        self.counts = np.zeros(k, dtype=np.int64)
        self.last_seen_sums = np.zeros(k)
        self.centres = np.zeros((k, d))
        self.total = np.zeros(d)
        self.total_sq = np.zeros(d)
        self.members: dict[str, tuple[int | None, np.ndarray, float]] = {}
        self.order: list[str] = []
        self.cursor = 0
        self.initialised = False
        self._updates = 0
        self._scale_cache: tuple[np.ndarray, np.ndarray] | None = None

    # -- scaling -------------------------------------------------------------
    def _scale(self) -> tuple[np.ndarray, np.ndarray]:
        # Population statistics move slowly: recomputed every 64 updates, not every event.
        if self._scale_cache is None or self._updates % 64 == 0:
            self._scale_cache = self._compute_scale()
        return self._scale_cache

    def _compute_scale(self) -> tuple[np.ndarray, np.ndarray]:
        n = max(len(self.members), 1)
        mean = self.total / n
        var = np.maximum(self.total_sq / n - mean * mean, 0.0)
        std = np.sqrt(var)
        std[std < 1e-9] = 1.0
        return mean, std

    def scaled(self, vectors: np.ndarray) -> np.ndarray:
        """``vectors`` standardised with the current population statistics."""
        mean, std = self._compute_scale()
        return (vectors - mean) / std

    def _centre(self, j: int) -> np.ndarray:
        if self.counts[j] > 0:
            return self.sums[j] / self.counts[j]
        return self.centres[j]

    # -- membership ------------------------------------------------------------
    def _leave(self, segment: int | None, vector: np.ndarray, last_seen: float) -> None:
        if segment is not None:
            self.centres[segment] = self._centre(segment)
            self.sums[segment] -= vector
            self.counts[segment] -= 1
            self.last_seen_sums[segment] -= last_seen

    def _join(self, segment: int, vector: np.ndarray, last_seen: float) -> None:
        self.sums[segment] += vector
        self.counts[segment] += 1
        self.last_seen_sums[segment] += last_seen

    def _choose(self, current: int | None, vector: np.ndarray) -> int:
        std = self._scale()[1]
        counts = self.counts[:, None]
        centres = np.where(counts > 0, self.sums / np.maximum(counts, 1), self.centres)
        d = (((vector - centres) / std) ** 2).sum(axis=1)
        best = int(d.argmin())
        if current is not None and d[best] >= (1.0 - self.margin) ** 2 * d[current]:
            return current
        return best

    def update(self, user_id: str, vector: np.ndarray, last_seen: float) -> int | None:
        """Put ``user_id``'s new ``vector`` in; returns their (possibly new) segment."""
        self._updates += 1
        old = self.members.get(user_id)
        segment: int | None = None
        if old is None:
            self.order.append(user_id)
        else:
            segment, old_vec, old_seen = old
            self.total -= old_vec
            self.total_sq -= old_vec * old_vec
            self._leave(segment, old_vec, old_seen)
        self.total += vector
        self.total_sq += vector * vector
        if not self.initialised:
            self.members[user_id] = (None, vector, last_seen)
            if len(self.members) >= max(self.warmup, self.k):
                self._initialise()
            return self.members[user_id][0]
        segment = self._choose(segment, vector)
        self._join(segment, vector, last_seen)
        self.members[user_id] = (segment, vector, last_seen)
        return segment

    def _initialise(self) -> None:
        users = list(self.members)
        x = self.scaled(np.stack([self.members[u][1] for u in users]))
        # k-means++ seeding, then Lloyd iterations on the warm-up users.
        centres = [x[int(self._rng.integers(len(x)))]]
        for _ in range(1, self.k):
            d = np.min([((x - c) ** 2).sum(axis=1) for c in centres], axis=0)
            p = d / d.sum() if d.sum() > 0 else None
            centres.append(x[int(self._rng.choice(len(x), p=p))])
        c = np.stack(centres)
        labels = np.zeros(len(x), dtype=np.int64)
        for _ in range(20):
            labels = ((x[:, None, :] - c[None]) ** 2).sum(axis=2).argmin(axis=1)
            for j in range(self.k):
                if (labels == j).any():
                    c[j] = x[labels == j].mean(axis=0)
        mean, std = self._compute_scale()
        self.centres = c * std + mean
        self.initialised = True
        for u, label in zip(users, labels.tolist(), strict=True):
            _, vec, seen = self.members[u]
            self._join(label, vec, seen)
            self.members[u] = (label, vec, seen)

    def refresh(self, n_users: int) -> None:
        """Re-examine ``n_users`` users round robin (hysteresis applies)."""
        if not self.initialised or not self.order:
            return
        for _ in range(min(n_users, len(self.order))):
            self.cursor = (self.cursor + 1) % len(self.order)
            user_id = self.order[self.cursor]
            segment, vec, seen = self.members[user_id]
            self._leave(segment, vec, seen)
            new = self._choose(segment, vec)
            self._join(new, vec, seen)
            self.members[user_id] = (new, vec, seen)

    # -- reading ---------------------------------------------------------------
    def segment_of(self, user_id: str) -> int | None:
        """Current segment of a user, ``None`` if unknown or before warm-up."""
        member = self.members.get(user_id)
        return None if member is None else member[0]

    def sizes(self) -> dict[int, int]:
        """Number of users per non-empty segment."""
        return {j: int(c) for j, c in enumerate(self.counts.tolist()) if c > 0}

    def profiles(self, now: float | None) -> dict[int, dict[str, float]]:
        """Each segment's centre in real units (geometric means for log features)."""
        out: dict[int, dict[str, float]] = {}
        for j in range(self.k):
            n = int(self.counts[j])
            if n == 0:
                continue
            c = dict(zip(SEGMENT_FEATURES, (self.sums[j] / n).tolist(), strict=True))
            last_seen = self.last_seen_sums[j] / n
            out[j] = {
                "users": float(n),
                "recency_days": max(0.0, (now if now is not None else last_seen) - last_seen)
                / DAY,
                "orders": math.expm1(c["log_orders"]),
                "order_value": math.expm1(c["log_order_value"]),
                "clicks": math.expm1(c["log_clicks"]),
                "reviews": math.expm1(c["log_reviews"]),
                "rating_mean": c["rating_mean"],
                "sentiment_mean": c["sentiment_mean"],
                "return_rate": c["return_rate"],
                "days_between_orders": math.expm1(c["log_purchase_gap_days"]),
            }
        return out

    def snapshot(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """``(user ids, standardised vectors, segments)`` of all segmented users."""
        users = [u for u, m in self.members.items() if m[0] is not None]
        if not users:
            return [], np.zeros((0, len(SEGMENT_FEATURES))), np.zeros(0, dtype=np.int64)
        x = self.scaled(np.stack([self.members[u][1] for u in users]))
        labels = np.array([self.members[u][0] for u in users], dtype=np.int64)
        return users, x, labels
