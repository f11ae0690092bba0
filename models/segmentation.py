"""Online customer segmentation: running-mean k-means with hysteresis and re-fits."""

from __future__ import annotations

import math

import numpy as np

from models.catalogue import grown
from models.profiles import DAY, SEGMENT_FEATURES


def nearest_centre(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """The index of each row's nearest centre (squared Euclidean).

    |x - c|^2 = |x|^2 - 2 x.c + |c|^2, and |x|^2 is the same for every centre,
    so one matrix product finds the nearest: several times cheaper than the
    (n, k, d) difference array.

    >>> nearest_centre(np.array([[0.0], [4.0]]), np.array([[1.0], [5.0]])).tolist()
    [0, 1]
    """
    return np.asarray(((centres * centres).sum(axis=1) - 2.0 * (x @ centres.T)).argmin(axis=1))


def kmeans_fit(
    x: np.ndarray, k: int, rng: np.random.Generator, restarts: int = 3, iters: int = 30
) -> tuple[np.ndarray, float]:
    """k-means++ seeding and Lloyd iterations; ``(centres, inertia)`` of the best restart.

    >>> x = np.array([[0.0], [0.1], [5.0], [5.1]])
    >>> centres, inertia = kmeans_fit(x, 2, np.random.default_rng(0))
    >>> sorted(np.round(centres[:, 0], 2).tolist()), round(inertia, 3)
    ([0.05, 5.05], 0.01)
    """
    best_c, best_inertia = x[:k].copy(), math.inf
    for _ in range(restarts):
        centres = [x[int(rng.integers(len(x)))]]
        for _ in range(1, k):
            d = np.min([((x - c) ** 2).sum(axis=1) for c in centres], axis=0)
            total = float(d.sum())
            pick = int(rng.choice(len(x), p=d / total)) if total > 0 else int(rng.integers(len(x)))
            centres.append(x[pick])
        c = np.stack(centres).astype(float)
        labels = np.full(len(x), -1)
        for _ in range(iters):
            new = nearest_centre(x, c)
            if np.array_equal(new, labels):
                break
            labels = new
            members = labels == np.arange(k)[:, None]  # (k, n) one-hot
            counts = members.sum(axis=1)
            sums = members.astype(float) @ x  # every centre's sum in one product
            filled = counts > 0
            c[filled] = sums[filled] / counts[filled, None]
        inertia = float(((x - c[labels]) ** 2).sum())
        if inertia < best_inertia:
            best_c, best_inertia = c, inertia
    return best_c, best_inertia


class OnlineSegmentation:
    """Online k-means over users' current feature vectors, standardised online.

    Each segment's centre is the exact mean of its members' *current* vectors:
    when a user's features change, their old vector leaves their segment's
    running sum and the new one enters (MacQueen k-means with removal), so
    centres never remember stale states. Features are standardised with the
    mean and standard deviation of all users' current vectors, maintained the
    same way; sums are kept in raw units, so a change of scale never
    invalidates a centre.

    Stability: a user moves to a closer segment only when it is closer than
    the current one by a factor ``1 - margin`` (hysteresis), so users near a
    border do not flip on every event.

    Periodic work (:meth:`refresh`, called from the engine's ``tick``) is
    vectorised and bounded: it re-examines the next ``n_users`` users round
    robin, and every ``refit_every`` updates fits k-means++ on a random sample
    of at most ``refit_sample`` users. Online k-means can settle in a poor
    local optimum (centres placed while every user had one event); when the
    fresh fit beats the current centres on that sample by ``refit_gain``, its
    centres are adopted (matched to the old ids so segments keep their
    meaning) and every user is reassigned in one vectorised pass.

    The first ``warmup`` users are clustered at once; before that every
    segment is ``None``. Memory: one vector, one segment and one timestamp per
    user, in contiguous arrays.

    Parameters
    ----------
    k
        Number of segments.
    margin
        Relative distance gain needed to change segment.
    warmup
        Users seen before the first clustering.
    refit_every
        User updates between two re-fit attempts.
    refit_sample
        Users sampled for a re-fit.
    refit_gain
        Relative inertia improvement a re-fit must bring to be adopted.
    seed
        Seeds the k-means++ seeding and the samples.

    Examples
    --------
    >>> seg = OnlineSegmentation(k=2, warmup=4, seed=0)
    >>> def vec(a):  # one coordinate per name in SEGMENT_FEATURES
    ...     return np.r_[a, np.zeros(len(SEGMENT_FEATURES) - 1)]
    >>> for i in range(8):
    ...     _ = seg.learn_one(f"u{i}", vec(10.0 * (i % 2)), last_seen=0.0)
    >>> seg.learn_one("u0", vec(0.0), 0.0) != seg.learn_one("u1", vec(10.0), 0.0)
    True
    >>> sorted(seg.sizes().values())
    [4, 4]
    """

    def __init__(
        self,
        k: int = 4,
        margin: float = 0.05,
        warmup: int = 50,
        refit_every: int = 2000,
        refit_sample: int = 4096,
        refit_gain: float = 0.03,
        seed: int = 0,
    ) -> None:
        self.k = k
        self.margin = margin
        self.warmup = warmup
        self.refit_every = refit_every
        self.refit_sample = refit_sample
        self.refit_gain = refit_gain
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        d = len(SEGMENT_FEATURES)
        self.sums = np.zeros((k, d))
        self.counts = np.zeros(k, dtype=np.int64)
        self.last_seen_sums = np.zeros(k)
        self.centres = np.zeros((k, d))  # raw units: members' mean, or last mean if empty
        self.total = np.zeros(d)
        self.total_sq = np.zeros(d)
        self.index: dict[str, int] = {}
        self.users: list[str] = []  # row -> user id (rows move when a user is removed)
        self.vectors = np.zeros((16, d))
        self.labels = np.full(16, -1, dtype=np.int64)
        self.last_seen = np.zeros(16)
        self.cursor = 0
        self.initialised = False
        self.updates = 0
        self.last_refit = 0
        self._scale_cache: tuple[np.ndarray, np.ndarray] | None = None
        # A follower takes its centres from another worker's segmentation (adopt)
        # and never moves or re-fits them: segment ids then mean the same everywhere.
        self.follower = False

    @property
    def n_users(self) -> int:
        """Users ever seen."""
        return len(self.index)

    # -- scaling -------------------------------------------------------------
    def _scale(self) -> tuple[np.ndarray, np.ndarray]:
        # Population statistics move slowly: recomputed every 64 updates, not every event.
        if self._scale_cache is None or self.updates % 64 == 0:
            self._scale_cache = self._compute_scale()
        return self._scale_cache

    def _compute_scale(self) -> tuple[np.ndarray, np.ndarray]:
        n = max(self.n_users, 1)
        mean = self.total / n
        std = np.sqrt(np.maximum(self.total_sq / n - mean * mean, 0.0))
        std[std < 1e-9] = 1.0
        return mean, std

    def scaled(self, vectors: np.ndarray) -> np.ndarray:
        """``vectors`` standardised with the current population statistics."""
        mean, std = self._compute_scale()
        return (vectors - mean) / std

    def _raw_centres(self) -> np.ndarray:
        return self.centres

    def _sync(self, j: int) -> None:
        """Refresh centre ``j`` after a membership change (an emptied one stays put)."""
        n = self.counts[j]
        if n > 0 and not self.follower:
            self.centres[j] = self.sums[j] / n

    def _sync_all(self) -> None:
        if self.follower:
            return
        counts = self.counts[:, None]
        self.centres = np.where(counts > 0, self.sums / np.maximum(counts, 1), self.centres)

    # -- membership ------------------------------------------------------------
    def _distances(self, vectors: np.ndarray) -> np.ndarray:
        std = self._scale()[1]
        diff = (vectors[:, None, :] - self._raw_centres()[None]) / std
        return (diff * diff).sum(axis=2)

    def learn_one(self, user_id: str, vector: np.ndarray, last_seen: float) -> int | None:
        """Put ``user_id``'s new ``vector`` in; returns their (possibly new) segment."""
        self.updates += 1
        row = self.index.get(user_id)
        if row is None:
            row = len(self.index)
            self.index[user_id] = row
            self.users.append(user_id)
            if row >= self.labels.shape[0]:
                self.vectors = grown(self.vectors, row + 1)
                self.last_seen = grown(self.last_seen, row + 1)
                labels = np.full(self.vectors.shape[0], -1, dtype=np.int64)
                labels[: self.labels.shape[0]] = self.labels
                self.labels = labels
        else:
            self._withdraw(row)
        self.vectors[row] = vector
        self.last_seen[row] = last_seen
        self.total += vector
        self.total_sq += vector * vector
        if not self.initialised:
            if self.n_users >= max(self.warmup, self.k):
                self._refit(force=True)
            label = int(self.labels[row])
            return None if label < 0 else label
        current = int(self.labels[row])
        diff = (vector - self.centres) / self._scale()[1]  # one user: no (1, k, d) array
        d = (diff * diff).sum(axis=1).tolist()
        best = d.index(min(d))
        if current >= 0 and d[best] >= (1.0 - self.margin) ** 2 * d[current]:
            best = current
        self.labels[row] = best
        self.sums[best] += vector
        self.counts[best] += 1
        self.last_seen_sums[best] += last_seen
        self._sync(best)
        return best

    def _withdraw(self, row: int) -> None:
        """Take row's vector out of the population statistics and its segment's sums."""
        old = self.vectors[row]
        self.total -= old
        self.total_sq -= old * old
        segment = int(self.labels[row])
        if segment >= 0:
            self.sums[segment] -= old
            self.counts[segment] -= 1
            self.last_seen_sums[segment] -= self.last_seen[row]
            self._sync(segment)

    def remove(self, user_id: str) -> bool:
        """Forget ``user_id`` (an evicted user); False if unknown.

        Their vector leaves the population statistics and their segment's sums,
        and the last row moves into theirs, so the arrays stay dense and the
        cost is O(1) whatever the number of users.
        """
        row = self.index.pop(user_id, None)
        if row is None:
            return False
        self._withdraw(row)
        last = len(self.index)  # the row that moves into the freed one
        if row != last:
            moved = self.users[last]
            self.vectors[row] = self.vectors[last]
            self.labels[row] = self.labels[last]
            self.last_seen[row] = self.last_seen[last]
            self.users[row] = moved
            self.index[moved] = row
        self.users.pop()
        self.vectors[last] = 0.0
        self.labels[last] = -1
        self.last_seen[last] = 0.0
        return True

    def _recount(self) -> None:
        n = self.n_users
        labels = self.labels[:n]
        for j in range(self.k):
            members = labels == j
            self.sums[j] = self.vectors[:n][members].sum(axis=0)
            self.counts[j] = int(members.sum())
            self.last_seen_sums[j] = float(self.last_seen[:n][members].sum())
        self._sync_all()

    def _refit(self, force: bool = False) -> bool:
        """Fit k-means on a sample; adopt it (reassigning everyone) if clearly better."""
        self.last_refit = self.updates
        n = self.n_users
        pick = (
            self._rng.choice(n, size=self.refit_sample, replace=False)
            if n > self.refit_sample
            else np.arange(n)
        )
        mean, std = self._compute_scale()
        x = (self.vectors[pick] - mean) / std
        fitted, inertia = kmeans_fit(x, self.k, self._rng)
        if not force:
            current = (self._raw_centres() - mean) / std
            current_inertia = float(
                ((x[:, None, :] - current[None]) ** 2).sum(axis=2).min(axis=1).sum()
            )
            if inertia > (1.0 - self.refit_gain) * current_inertia:
                return False
            # Keep segment ids meaningful: greedily pair each new centre with the nearest old one.
            cost = ((fitted[:, None, :] - current[None]) ** 2).sum(axis=2)
            order = np.zeros(self.k, dtype=np.int64)
            free_old, free_new = set(range(self.k)), set(range(self.k))
            for flat in np.argsort(cost, axis=None).tolist():
                i, j = divmod(flat, self.k)
                if i in free_new and j in free_old:
                    order[j] = i
                    free_new.discard(i)
                    free_old.discard(j)
            fitted = fitted[order]
        self.centres = fitted * std + mean
        self.sums[:] = 0.0
        self.counts[:] = 0
        self._scale_cache = (mean, std)
        x_all = (self.vectors[:n] - mean) / std
        self.labels[:n] = ((x_all[:, None, :] - fitted[None]) ** 2).sum(axis=2).argmin(axis=1)
        self._recount()
        self.initialised = True
        return True

    def refresh(self, n_users: int) -> None:
        """Periodic work: a re-fit attempt when due, then ``n_users`` re-examined."""
        if not self.initialised:
            return
        if (
            not self.follower
            and self.updates - self.last_refit >= self.refit_every
            and self._refit()
        ):
            return
        n = self.n_users
        if n == 0:
            return
        rows = (self.cursor + np.arange(min(n_users, n))) % n
        self.cursor = int((self.cursor + len(rows)) % n)
        x = self.vectors[rows]
        current = self.labels[rows]
        d = self._distances(x)
        best = d.argmin(axis=1)
        here = d[np.arange(len(rows)), current]
        move = d[np.arange(len(rows)), best] < (1.0 - self.margin) ** 2 * here
        if not move.any():
            return
        rows, best, current, x = rows[move], best[move], current[move], x[move]
        seen = self.last_seen[rows]
        np.subtract.at(self.sums, current, x)
        np.add.at(self.sums, best, x)
        np.subtract.at(self.counts, current, 1)
        np.add.at(self.counts, best, 1)
        np.subtract.at(self.last_seen_sums, current, seen)
        np.add.at(self.last_seen_sums, best, seen)
        self.labels[rows] = best
        self._sync_all()

    # -- one segmentation for many workers ------------------------------------------
    def centres_state(self) -> list[list[float]] | None:
        """The centres (raw units) for followers to adopt; ``None`` before warm-up."""
        return self.centres.tolist() if self.initialised else None

    def adopt(self, centres: list[list[float]]) -> None:
        """Follow centres published by the segmentation's owner (see :attr:`follower`).

        Users move to their nearest adopted centre as their events arrive and as
        :meth:`refresh` re-examines them round robin; nothing is re-fitted here.
        The first adoption relabels every user at once.
        """
        first = not self.follower
        self.follower = True
        self.centres = np.array(centres, dtype=float)
        if first or not self.initialised:
            self.initialised = True
            n = self.n_users
            if n:
                self.labels[:n] = self._distances(self.vectors[:n]).argmin(axis=1)
                self._recount()

    # -- reading ---------------------------------------------------------------
    def segment_of(self, user_id: str) -> int | None:
        """Current segment of a user, ``None`` if unknown or before warm-up."""
        row = self.index.get(user_id)
        if row is None or self.labels[row] < 0:
            return None
        return int(self.labels[row])

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
            last_seen = float(self.last_seen_sums[j] / n)
            reference = now if now is not None else last_seen
            out[j] = {
                "users": float(n),
                "recency_days": max(0.0, reference - last_seen) / DAY,
                "orders": math.expm1(c["log_orders"]),
                "order_value": math.expm1(c["log_order_value"]),
                "clicks": math.expm1(c["log_clicks"]),
                "reviews": math.expm1(c["log_reviews"]),
                "rating_mean": c["rating_mean"],
                "sentiment_mean": c["sentiment_mean"],
                "return_rate": c["return_rate"],
                "days_between_orders": math.expm1(c["log_purchase_gap_days"]),
                "expected_spend": math.expm1(c["log_expected_spend"]),
            }
        return out

    def snapshot(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """``(user ids, standardised vectors, segments)`` of all segmented users."""
        n = self.n_users
        users = self.users[:n]
        keep = self.labels[:n] >= 0
        x = self.scaled(self.vectors[:n][keep])
        return [u for u, k in zip(users, keep.tolist(), strict=True) if k], x, self.labels[:n][keep]
