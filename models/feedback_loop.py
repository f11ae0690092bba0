"""The feedback loop: choose a strategy, recommend, expose, attribute, count.

One user's round goes:

1. :meth:`FeedbackLoop.choose` picks the variant and strategy: the bandit's
   arm for the user's segment when a bandit runs, else the experiment's
   variant of the user (keyed hash), whose strategy has the same name;
2. :meth:`FeedbackLoop.recommend` asks that strategy for a top-k list, leaving
   out what the user is fatigued of (:meth:`UserExposures.fatigued`);
3. :meth:`FeedbackLoop.expose` records the list in the user's exposure log and
   counts it;
4. :meth:`FeedbackLoop.attribute` credits a later click or purchase to one of
   the user's exposures, counts it, and rewards the bandit's arm.

The worker (``stream/processor.py``) and the offline replay
(``tools/attribution_replay.py``) both run this loop; they differ only in where
the exposure logs live (the user's stored profile, or an in-memory
:class:`~models.attribution.Attributor`) and in what they publish.
:func:`should_recommend` says when a round starts.

Examples
--------
>>> from models.engine import FeedbackEngine
>>> from models.events import Event
>>> engine = FeedbackEngine()
>>> for i, (user, item) in enumerate([("a", "x"), ("b", "x"), ("b", "y")]):
...     _ = engine.process(Event("purchase", f"e{i}", user, item, 100.0 + i, quantity=1))
>>> loop = FeedbackLoop(variants="popularity")
>>> log = UserExposures(window=600)
>>> variant, strategy = loop.choose("a", segment=None, key="e3")
>>> items = loop.recommend(engine, "a", strategy, log, key="e3")
>>> [r.item_id for r in items]
['y']
>>> loop.expose(log, Exposure("r1", ("y",), strategy, variant, 110.0))
>>> hit = loop.attribute(log, Event("click", "c1", "a", "y", 120.0))
>>> hit.matched_by, loop.tallies["popularity"].as_tuple()
('window', (1, 1, 0, 1, 0, 0.0))
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

from models.attribution import Attribution, Exposure, UserExposures
from models.bandit import SegmentedThompson
from models.engine import FeedbackEngine, Recommendation
from models.events import Event
from models.experiments import Experiment, parse_strategies, parse_variants
from models.strategies import STRATEGIES, Strategies

__all__ = ["FeedbackLoop", "Tally", "should_recommend"]

#: The variant name of every recommendation the bandit chose the strategy of.
BANDIT = "bandit"


def should_recommend(last: float | None, event: Event, min_interval: float) -> bool:
    """Recommend after a purchase or a review (the user's taste just changed),
    and after a click only when the last recommendation (``last``, event time,
    ``None`` for never) is ``min_interval`` seconds old or more: a browsing
    session should not flood the output.

    >>> click = Event("click", "c", "u", "i", 100.0)
    >>> should_recommend(None, click, 60.0), should_recommend(50.0, click, 60.0)
    (True, False)
    """
    if event.type != "click":
        return True
    return last is None or event.timestamp - last >= min_interval


@dataclass(slots=True)
class Tally:
    """What one variant's recommendations earned.

    ``clicked`` and ``converted`` count exposures (each at most once), the
    numerators of click-through and conversion rates over ``exposures``;
    ``clicks``, ``purchases`` and ``revenue`` count every attributed event.
    """

    exposures: int = 0
    clicked: int = 0
    converted: int = 0
    clicks: int = 0
    purchases: int = 0
    revenue: float = 0.0

    def as_tuple(self) -> tuple[int, int, int, int, int, float]:
        return (
            self.exposures, self.clicked, self.converted, self.clicks, self.purchases,
            self.revenue,
        )


class FeedbackLoop:
    """Who sees which strategy, what it shows them, and what it earned.

    Parameters
    ----------
    variants
        The experiment's variants and weights (``parse_variants`` syntax).
    salt
        Salt of the experiment's keyed hash of user ids.
    fatigue_impressions
        Items shown this many times without a click are left out (0: never).
    fatigue_strategies
        The strategies that leave fatigued items out (``parse_strategies`` syntax).
    top_k
        Length of a recommendation.
    seed
        Seed of the strategies' sampling (and of a new bandit).
    bandit
        A bandit to choose the strategy per segment instead of the experiment,
        or ``None``. The loop rewards it for first clicks of its exposures.
    popular_ranking
        A published popularity list for the popularity control and unknown
        users (:class:`~models.strategies.Strategies`); ``None``: exact counts.

    Attributes
    ----------
    tallies
        :class:`Tally` per variant (for the bandit's recommendations, ``"bandit"``).
    """

    def __init__(
        self,
        variants: str = "blend,popularity,explore",
        salt: str = "feedback-experiment",
        fatigue_impressions: int = 3,
        fatigue_strategies: str = "blend,explore",
        top_k: int = 10,
        seed: int = 42,
        bandit: SegmentedThompson | None = None,
        popular_ranking: Callable[[], Sequence[str]] | None = None,
    ) -> None:
        self.variants = variants
        self.salt = salt
        self.fatigue_impressions = fatigue_impressions
        self.fatigue_strategies = fatigue_strategies
        self.top_k = top_k
        self.seed = seed
        self.bandit = bandit
        self.experiment = Experiment(parse_variants(variants), salt)
        self.strategies = Strategies(
            seed=seed, fatigue_strategies=parse_strategies(fatigue_strategies),
            popular_ranking=popular_ranking,
        )
        self.tallies: dict[str, Tally] = {}

    @staticmethod
    def new_bandit(seed: int) -> SegmentedThompson:
        """A bandit over every strategy, from the prior."""
        return SegmentedThompson(STRATEGIES, seed=seed)

    def tally(self, variant: str) -> Tally:
        found = self.tallies.get(variant)
        if found is None:
            found = self.tallies[variant] = Tally()
        return found

    def choose(self, user_id: str, segment: Hashable | None, key: str) -> tuple[str, str]:
        """``(variant, strategy)`` of the user's next recommendation; ``key`` (the
        trigger's event id) makes the bandit's draw repeatable."""
        if self.bandit is not None:
            return BANDIT, self.bandit.choose(segment, key=key)
        variant = self.experiment.variant_of(user_id)
        return variant, variant

    def recommend(
        self, engine: FeedbackEngine, user_id: str, strategy: str, log: UserExposures | None,
        key: str, k: int | None = None, session_id: str | None = None,
        item_id: str | None = None,
    ) -> list[Recommendation]:
        """``strategy``'s top-k for the user, less what ``log`` says they are fatigued of.

        ``k`` overrides ``top_k``; ``session_id`` and ``item_id`` are a pull
        request's session and item being viewed (see ``FeedbackEngine.recommend``).
        """
        avoid = log.fatigued(self.fatigue_impressions) if log is not None else set()
        return self.strategies.recommend(
            strategy, engine, user_id, self.top_k if k is None else k, key=key,
            avoid=avoid, session_id=session_id, item_id=item_id,
        )

    def expose(self, log: UserExposures, exposure: Exposure) -> None:
        """Remember a published recommendation and count it."""
        log.expose(exposure)
        self.tally(exposure.variant).exposures += 1
        if self.bandit is not None and exposure.variant == BANDIT:
            self.bandit.expose(exposure.segment, exposure.strategy)

    def attribute(self, log: UserExposures, event: Event) -> Attribution | None:
        """Credit a click or purchase to one of ``log``'s exposures and count it."""
        hit = log.attribute(event)
        if hit is None:
            return None
        exp = hit.exposure
        tally = self.tally(exp.variant)
        if hit.kind == "click":
            tally.clicks += 1
            if hit.first:
                tally.clicked += 1
                if self.bandit is not None and exp.variant == BANDIT:
                    self.bandit.reward(exp.segment, exp.strategy)
        else:
            tally.purchases += 1
            tally.revenue += hit.revenue
            if hit.first:
                tally.converted += 1
        return hit
