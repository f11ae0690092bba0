"""The recommendation strategies an experiment or the bandit chooses among.

* ``blend``: the engine's blended recommender, :meth:`FeedbackEngine.recommend`.
* ``popularity``: plain all-time popularity (net interaction weight, the same
  counts the engine's popularity component learns), excluding what the user
  bought or reviewed: the baseline every personalised model must beat.
* ``explore``: the blend with exploration. The top ``pool * k`` blended items
  are re-ranked by sampling without replacement (Plackett-Luce, with the
  Gumbel-top-k trick) with weights ``rank ** (-1 / temperature)``: the blend's
  order on average, but items ranked beyond ``k`` regularly reach the list, so
  the feedback loop also learns about them. The emitted score is the sampled
  key (so the list stays sorted by score); an item from beyond the blend's
  top ``k`` says so in its reason.

Every strategy takes an ``avoid`` set: the items the user was already shown
too often without a click, or clicked and did not buy (see
:meth:`models.attribution.UserExposures.fatigued`); they are excluded before the
top ``k`` is taken, so that a list does not keep spending its best slots on what
the user has passed over. Only the strategies in ``fatigue_strategies`` take
it (the worker's ``FEEDBACK_FATIGUE_STRATEGIES``: by default not the popularity
control, which stays the plain best-seller list); the others ignore it.

Every strategy is a deterministic function of the engine state, ``avoid`` and a
``key`` (the triggering event id): re-processing the same event after a crash
produces the same list.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from hashlib import blake2b

import numpy as np

from models.engine import FeedbackEngine, Recommendation
from models.experiments import KNOWN_STRATEGIES

__all__ = ["STRATEGIES", "Strategies"]

#: Names of the strategies, in a fixed order (the bandit's arms).
STRATEGIES: tuple[str, ...] = KNOWN_STRATEGIES


class Strategies:
    """Produce top-k lists with any of :data:`STRATEGIES` from one engine.

    Parameters
    ----------
    explore_pool
        ``explore`` samples from the blend's top ``explore_pool * k`` items.
    explore_temperature
        Higher explores more: weight of blend rank ``r`` is ``r ** (-1 / temperature)``.
    seed
        Combined with each call's ``key`` to seed that call's sampling.
    fatigue_strategies
        The strategies that leave out the ``avoid`` items (default: all).
    popular_ranking
        A published popularity list (best first), read at each call: the
        ``popularity`` control follows it instead of the engine's exact counts
        (:meth:`FeedbackEngine.popular`), and so does every strategy for a user
        the engine does not know outside a session, whose list would otherwise be the
        blend's popularity ranking. ``None``: exact counts (offline evaluation).

    Examples
    --------
    >>> from models.events import Event
    >>> engine = FeedbackEngine()
    >>> t = 1_700_000_000.0
    >>> buys = [("a", "x"), ("b", "x"), ("c", "x"), ("a", "y"), ("b", "z"), ("d", "w")]
    >>> for i, (user, item) in enumerate(buys):
    ...     _ = engine.process(Event("purchase", f"e{i}", user, item, t + i, quantity=1))
    >>> s = Strategies(seed=1)
    >>> [r.item_id for r in s.recommend("popularity", engine, "c", k=2)]
    ['y', 'z']
    >>> [r.reason for r in s.recommend("popularity", engine, "d", k=1)]
    ['popular with everyone']
    >>> s.recommend("explore", engine, "c", k=3, key="e9") == s.recommend(
    ...     "explore", engine, "c", k=3, key="e9")
    True
    """

    def __init__(
        self,
        explore_pool: int = 3,
        explore_temperature: float = 1.0,
        seed: int = 0,
        fatigue_strategies: Collection[str] = STRATEGIES,
        popular_ranking: Callable[[], Sequence[str]] | None = None,
    ) -> None:
        if explore_pool < 1 or explore_temperature <= 0:
            raise ValueError("explore_pool must be >= 1 and explore_temperature > 0")
        self.explore_pool = explore_pool
        self.explore_temperature = explore_temperature
        self.seed = seed
        self.fatigue_strategies = frozenset(fatigue_strategies)
        self.popular_ranking = popular_ranking

    def recommend(
        self,
        strategy: str,
        engine: FeedbackEngine,
        user_id: str,
        k: int = 10,
        key: str = "",
        avoid: Collection[str] = (),
        session_id: str | None = None,
        item_id: str | None = None,
    ) -> list[Recommendation]:
        """Top-``k`` for ``user_id`` by ``strategy``; ``key`` seeds ``explore``.

        ``session_id`` and ``item_id`` (a request's session and the item being
        viewed) reach the engine's session context; the popularity control ignores them.
        """
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r} (known: {', '.join(STRATEGIES)})")
        if strategy not in self.fatigue_strategies:
            avoid = ()
        ranking = self.popular_ranking
        cold = user_id not in engine.profiles and session_id is None and item_id is None
        if ranking is not None and (strategy == "popularity" or cold):
            return engine.popular(user_id, k, avoid=avoid, ranking=ranking())
        if strategy == "blend":
            return engine.recommend(
                user_id, k, avoid=avoid, session_id=session_id, item_id=item_id
            )
        if strategy == "popularity":
            return engine.popular(user_id, k, avoid=avoid)
        if strategy == "explore":
            return self.explore(engine, user_id, k, key, avoid, session_id, item_id)
        raise ValueError(f"unknown strategy {strategy!r} (known: {', '.join(STRATEGIES)})")

    def explore(
        self,
        engine: FeedbackEngine,
        user_id: str,
        k: int,
        key: str = "",
        avoid: Collection[str] = (),
        session_id: str | None = None,
        item_id: str | None = None,
    ) -> list[Recommendation]:
        """The blend's top ``explore_pool * k``, re-ranked by a Plackett-Luce draw."""
        pool = engine.recommend(
            user_id, k * self.explore_pool, avoid=avoid, session_id=session_id, item_id=item_id
        )
        if not pool:
            return []
        digest = blake2b(f"{self.seed}:{key}".encode(), digest_size=8).digest()
        rng = np.random.default_rng(int.from_bytes(digest, "big"))
        ranks = np.arange(1, len(pool) + 1, dtype=float)
        keys = -np.log(ranks) / self.explore_temperature + rng.gumbel(size=len(pool))
        chosen = np.argsort(-keys, kind="stable")[:k]
        out = []
        for i in chosen:
            rec = pool[int(i)]
            reason = rec.reason if i < k else f"something new: {rec.reason}"
            out.append(Recommendation(rec.item_id, round(float(keys[i]), 6), reason))
        return out


def exploration_share(explore_pool: int, temperature: float, k: int = 10) -> float:
    """Expected share of the first draw coming from beyond the blend's top ``k``.

    A quick way to read ``temperature``: at 1.0 with a pool of 3k, about a
    quarter of first picks come from ranks k+1..3k.

    >>> round(exploration_share(3, 1.0), 2)
    0.27
    """
    w = [r ** (-1.0 / temperature) for r in range(1, explore_pool * k + 1)]
    return math.fsum(w[k:]) / math.fsum(w)
