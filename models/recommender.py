"""The blended recommender: co-occurrence, factorisations and popularity, learnt to rank."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from models.catalogue import ItemCatalogue
from models.cooccurrence import ItemCooccurrence
from models.factorization import ImplicitFactorization
from models.popularity import DecayedPopularity
from models.profiles import UserProfile

#: The blend's features, one row of the feature matrix each.
FEATURES: tuple[str, ...] = (
    "cooccurrence",
    "sequence",
    "taste",
    "trending",
    "bestseller",
    "segment",
)
#: Starting blend weights: co-occurrence and popularity first, the factorisations
#: earn their weight as they learn.
PRIOR_WEIGHTS: tuple[float, ...] = (2.0, 0.5, 0.2, 1.0, 1.0, 0.5)


def _unit_log(values: np.ndarray) -> np.ndarray:
    """``log1p(v) / log1p(max v)``: popularity-like counts mapped into [0, 1]."""
    top = float(values.max()) if values.size else 0.0
    if top <= 0.0:
        return np.zeros_like(values)
    return np.log1p(np.maximum(values, 0.0)) / math.log1p(top)


def _unit_max(values: np.ndarray, out: np.ndarray) -> bool:
    """``values / max(values)`` into ``out``; False (nothing written) if the max is <= 0."""
    top = float(values.max()) if values.size else 0.0
    if top <= 0.0:
        return False
    np.multiply(values, 1.0 / top, out=out)
    return True


def _unit_z(values: np.ndarray, out: np.ndarray) -> bool:
    """Z-scores clipped to +-3 and divided by 3 into ``out`` (in [-1, 1]); False if constant."""
    if not values.size:
        return False
    mean = float(values.sum()) / values.size
    std = math.sqrt(max(float(values @ values) / values.size - mean * mean, 0.0))
    if std <= 1e-12:
        return False
    np.subtract(values, mean, out=out)
    out *= 1.0 / (3.0 * std)
    np.clip(out, -1.0, 1.0, out=out)  # one pass; np.minimum + np.maximum cost 3x more
    return True


def exclude_seen(scores: np.ndarray, profile: UserProfile, all_seen: bool = False) -> None:
    """Set the scores of the user's items to ``-inf``: every item interacted with
    (``all_seen``, the evaluation's definition) or only those bought or reviewed."""
    if not profile.seen:
        return
    if all_seen:
        seen = np.fromiter(profile.seen.keys(), dtype=np.int64, count=len(profile.seen))
    else:
        seen = np.array([i for i, kind in profile.seen.items() if kind != "click"], dtype=np.int64)
    scores[seen[seen < scores.shape[0]]] = -np.inf


def top_k(scores: np.ndarray, k: int) -> list[int]:
    """Indices of the ``k`` best finite ``scores``, best first, ties by index.

    >>> top_k(np.array([1.0, 3.0, -np.inf, 3.0, 2.0]), 3)
    [1, 3, 4]
    """
    k = min(k, int(np.count_nonzero(np.isfinite(scores))))
    if k <= 0:
        return []
    n = scores.shape[0]
    part = np.argpartition(-scores, k - 1)[:k] if k < n else np.arange(n)
    return [int(i) for i in part[np.lexsort((part, -scores[part]))]]


@dataclass(frozen=True, slots=True)
class Scored:
    """Scores of the whole catalogue for one user, with the feature matrix behind them.

    ``matrix`` has one row per name in :data:`FEATURES`; a signal that is zero
    for every item (no history, unknown user, ...) has ``present`` False and its
    row is not read. The matrix is a buffer reused by the next
    :meth:`BlendedRecommender.score` call: use a ``Scored`` before scoring again.
    """

    scores: np.ndarray  # (n_items,), -inf for excluded items
    matrix: np.ndarray  # (len(FEATURES), n_items)
    present: np.ndarray  # (len(FEATURES),) bool

    def column(self, item: int) -> np.ndarray:
        """The feature vector of one item (zeros for absent signals)."""
        return np.where(self.present, self.matrix[:, item], 0.0)


class BlendedRecommender:
    """Linear blend of six per-item signals whose weights are learnt to rank.

    Signals, each scaled to a comparable range over the catalogue:
    item-to-item co-occurrence with the user's recent history, co-occurrence
    with their last interaction alone ("sequence": what tends to come next),
    BPR matrix
    factorisation of implicit feedback ("taste": clicks, purchases, returns,
    ratings and review sentiment all feed it, signed and scaled by strength),
    time-decayed popularity ("trending"), all-time popularity ("bestseller") and
    decayed popularity within the user's segment. The blend weights are the
    parameters of a conditional-logit choice model (the user picks the next
    item with probability ``softmax(w . f)`` over the items they have not
    seen), fitted online by maximum likelihood: every positive event is one
    exact gradient step (see :meth:`learn_blend`), regularised towards the
    prior weights. The blend therefore leans on whatever signal works on the
    data it sees: co-occurrence on session-like data, popularity on cold
    users, factorisation as it matures.

    Scoring is vectorised: one numpy pass over the catalogue per call; the
    popularity rows are cached for ``cache_events`` learning steps.

    Parameters
    ----------
    history_size
        Recent interactions of a user used for co-occurrence.
    history_decay
        Weight ratio between consecutive history positions (recent counts more).
    max_neighbours, pair_decay, mass_alpha
        See :class:`models.cooccurrence.ItemCooccurrence`.
    trending_half_life, segment_half_life
        Half-lives (seconds) of global and per-segment popularity.
    n_segments
        Number of segments (one popularity vector each).
    n_factors, bpr_lr, bpr_l2, bpr_negatives, bpr_popular_negatives
        See :class:`models.factorization.ImplicitFactorization`.
    blend_lr, blend_l2
        Step size and pull towards the prior of the blend weights.
    cache_events
        Learning steps between refreshes of the cached popularity rows.
    seed
        Seeds the factorisations and the negative sampling.
    """

    def __init__(
        self,
        history_size: int = 20,
        history_decay: float = 0.9,
        max_neighbours: int = 200,
        pair_decay: float = 0.9,
        mass_alpha: float = 0.5,
        cooccurrence_pmi: bool = False,
        trending_half_life: float = 86_400.0,
        segment_half_life: float = 7 * 86_400.0,
        n_segments: int = 4,
        n_factors: int = 16,
        bpr_lr: float = 0.05,
        bpr_l2: float = 0.01,
        bpr_negatives: int = 2,
        bpr_popular_negatives: bool = True,
        blend_lr: float = 0.05,
        blend_l2: float = 0.01,
        cache_events: int = 50,
        seed: int = 0,
    ) -> None:
        self.history_size = history_size
        self.history_decay = history_decay
        self.max_neighbours = max_neighbours
        self.pair_decay = pair_decay
        self.mass_alpha = mass_alpha
        self.trending_half_life = trending_half_life
        self.segment_half_life = segment_half_life
        self.n_segments = n_segments
        self.n_factors = n_factors
        self.bpr_lr = bpr_lr
        self.bpr_l2 = bpr_l2
        self.bpr_negatives = bpr_negatives
        self.bpr_popular_negatives = bpr_popular_negatives
        self.blend_lr = blend_lr
        self.blend_l2 = blend_l2
        self.cache_events = cache_events
        self.seed = seed
        self.cooccurrence = ItemCooccurrence(
            max_neighbours, pair_decay, mass_alpha, pmi=cooccurrence_pmi
        )
        self.taste = ImplicitFactorization(
            n_factors, bpr_lr, bpr_l2, bpr_negatives, bpr_popular_negatives, seed=seed
        )
        self.popularity = DecayedPopularity(trending_half_life)
        self.segment_popularity = [DecayedPopularity(segment_half_life) for _ in range(n_segments)]
        self.prior = np.array(PRIOR_WEIGHTS)
        self.weights = self.prior.copy()
        self._cache: tuple[np.ndarray, np.ndarray] | None = None
        self._matrix = np.zeros((len(FEATURES), 16))
        self._matrix_rows: np.ndarray | None = None  # the trending row copied into it
        self._segment_cache: dict[int, np.ndarray] = {}
        self._since_cache = 0
        self._softmax: np.ndarray | None = None  # scratch of learn_blend

    # -- scoring ---------------------------------------------------------------
    def recency_weighted(self, profile: UserProfile) -> list[tuple[int, float]]:
        """The user's history as ``(item, weight)``, most recent weighted most."""
        out = []
        w = 1.0
        for item, strength in reversed(profile.history):
            out.append((item, strength * w))
            w *= self.history_decay
        return out

    def _popularity_rows(self, n: int, segment: int | None) -> tuple[np.ndarray, ...]:
        """Trending, best-seller and segment rows, cached for ``cache_events`` steps."""
        cache = self._cache
        if cache is None or cache[0].shape[0] != n or self._since_cache >= self.cache_events:
            cache = (_unit_log(self.popularity.recent(n)), _unit_log(self.popularity.all_time(n)))
            self._cache = cache
            self._segment_cache = {}
            self._since_cache = 0
        if segment is None or segment >= self.n_segments:
            return cache
        row = self._segment_cache.get(segment)
        if row is None:
            row = _unit_log(self.segment_popularity[segment].recent(n))
            self._segment_cache[segment] = row
        return (*cache, row)

    def features(self, profile: UserProfile, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``(matrix, present)``: the feature rows of items ``0..n-1`` for ``profile``.

        Rows are written into a buffer reused across calls (no allocation per
        event); popularity rows come from the cache.
        """
        if self._matrix.shape[1] < n:
            self._matrix = np.zeros((len(FEATURES), max(n, 2 * self._matrix.shape[1])))
            self._matrix_rows = None
        m = self._matrix[:, :n]
        present = np.zeros(len(FEATURES), dtype=bool)
        user = profile.user_id
        history = self.recency_weighted(profile)
        # Each signal is computed straight into its row, then scaled in place.
        if history:
            present[0] = _unit_max(self.cooccurrence.scores(history, n, out=m[0]), m[0])
            present[1] = _unit_max(self.cooccurrence.scores(history[:1], n, out=m[1]), m[1])
        if user in self.taste.user_vec:
            present[2] = _unit_z(self.taste.scores(user, n, out=m[2]), m[2])
        popular = self._popularity_rows(n, profile.segment)
        if self._matrix_rows is not popular[0]:  # global rows change only with the cache
            m[3] = popular[0]
            m[4] = popular[1]
            self._matrix_rows = popular[0]
        present[3] = present[4] = True
        if len(popular) > 2:
            m[5] = popular[2]
            present[5] = True
        return m, present

    def score(self, profile: UserProfile, n: int, exclude_all_seen: bool = True) -> Scored:
        """Blend scores of the catalogue, with the user's seen items set to ``-inf``.

        ``exclude_all_seen`` excludes every item the user interacted with (the
        evaluation's definition); otherwise only items bought or reviewed.
        """
        matrix, present = self.features(profile, n)
        scores = np.where(present, self.weights, 0.0) @ matrix  # one BLAS pass
        exclude_seen(scores, profile, exclude_all_seen)
        return Scored(scores, matrix, present)

    @staticmethod
    def rank_of(scored: Scored, item: int) -> int | None:
        """Zero-based rank of ``item`` (ties broken by index), ``None`` if excluded."""
        s = scored.scores
        target = s[item]
        if not np.isfinite(target):
            return None
        ahead = int(np.count_nonzero(s > target)) + int(np.count_nonzero(s[:item] == target))
        return ahead

    def top(self, scored: Scored, k: int) -> list[int]:
        """Indices of the ``k`` best-scored finite items, best first."""
        return top_k(scored.scores, k)

    def reason(
        self, scored: Scored, item: int, profile: UserProfile, catalogue: ItemCatalogue
    ) -> str:
        """Short human-readable reason: the signal contributing most to ``item``."""
        return self.reasons(scored, [item], profile, catalogue)[0]

    def reasons(
        self,
        scored: Scored,
        items: Sequence[int],
        profile: UserProfile,
        catalogue: ItemCatalogue,
    ) -> list[str]:
        """:meth:`reason` of each of ``items``: one gather of their feature columns, one
        pass over the user's history for those explained by co-occurrence."""
        if not items:
            return []
        columns = np.where(scored.present[:, None], scored.matrix[:, items], 0.0)
        best = [FEATURES[int(j)] for j in (self.weights[:, None] * columns).argmax(axis=0)]
        together = [i for i, b in zip(items, best, strict=True) if b == "cooccurrence"]
        sources = (
            self.cooccurrence.strongest_sources(self.recency_weighted(profile), together)
            if together
            else {}
        )
        last = profile.history[-1][0] if profile.history else None
        out = []
        for item, signal in zip(items, best, strict=True):
            source = sources.get(item)
            if signal == "sequence" and last is not None:
                out.append(f"often chosen right after {catalogue.ids[last]}")
            elif signal == "cooccurrence" and source is not None:
                verb = profile.seen.get(source, "purchase")
                text = {
                    "purchase": "bought together with",
                    "review": "liked by people who liked",
                    "click": "viewed together with",
                }[verb]
                lift = self.cooccurrence.pmi_of(source, item)
                strength = f" ({2.0 ** lift:.1f}x chance)" if lift is not None else ""
                out.append(f"{text} {catalogue.ids[source]}{strength}")
            else:
                out.append(
                    {
                        "cooccurrence": "related to your recent activity",
                        "sequence": "related to your recent activity",
                        "taste": "matches your taste",
                        "trending": "popular right now",
                        "bestseller": "a best seller",
                        "segment": f"popular in your segment ({profile.segment})",
                    }[signal]
                )
        return out

    # -- learning --------------------------------------------------------------
    def learn_blend(self, scored: Scored, item: int) -> None:
        """One maximum-likelihood step of the blend as a choice model over the catalogue.

        The blend is read as a conditional logit: the user picks item ``j`` with
        probability ``softmax(w . f_j)`` over every item they have not seen. The
        gradient of the log-likelihood of the observed ``item`` is
        ``f_item - E_p[f]``, computed exactly (one pass over the catalogue per
        feature), then a step regularised towards the prior weights.
        """
        s = scored.scores
        if s.shape[0] < 2 or not np.isfinite(s[item]):
            return
        p = self._softmax_buffer(s.shape[0])
        np.subtract(s, s.max(), out=p)
        np.exp(p, out=p)  # excluded items (-inf) get probability 0
        p /= p.sum()
        expected = np.where(scored.present, scored.matrix @ p, 0.0)  # E_p[f], one BLAS pass
        grad = scored.column(item) - expected
        self.weights += self.blend_lr * (grad - self.blend_l2 * (self.weights - self.prior))

    def _softmax_buffer(self, n: int) -> np.ndarray:
        """A reused scratch vector of length ``n`` (no allocation per positive event)."""
        buffer = self._softmax
        if buffer is None or buffer.shape[0] < n:
            buffer = np.empty(max(n, 2 * (0 if buffer is None else buffer.shape[0])))
            self._softmax = buffer
        return buffer[:n]

    def learn_one(
        self,
        profile: UserProfile,
        item: int,
        strength: float,
        preference: float,
        t: float,
        n_items: int,
    ) -> None:
        """Learn one interaction of ``profile`` with ``item``.

        ``strength`` (> 0 for a consumption, <= 0 for a return) feeds
        co-occurrence and popularity; ``preference`` in [-1, 1] (sign and size
        of the liking) feeds the BPR factorisation. The item is then appended
        to the user's bounded history.
        """
        self._since_cache += 1
        if strength > 0:
            self.cooccurrence.learn_one(profile.history, item, strength)
        else:
            self.cooccurrence.learn_one((), item, 0.0)  # register the item only
        self.popularity.learn_one(item, strength, t)
        seg = profile.segment
        if seg is not None and seg < self.n_segments:
            self.segment_popularity[seg].learn_one(item, strength, t)
        if preference != 0.0:
            self.taste.learn_one(profile.user_id, item, preference, n_items)
        if strength > 0:
            profile.history.append((item, strength))
