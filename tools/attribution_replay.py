"""What the recommendations published during a replay would have earned.

``feedback-stream evaluate`` replays a file through the engine; this module
adds the feedback loop's report to it: every user is assigned to a variant
(the worker's keyed hash), a recommendation is produced by that variant's
strategy whenever the worker would publish one (after every purchase and
review, after a click at most once per ``min_interval`` of event time; one per
user per instant, as the worker ranks once per user per batch), and the later
clicks and purchases of the file are attributed to it exactly as the worker
attributes them (:class:`models.attribution.UserExposures`).

Offline, nobody saw these lists: the events of a file did not react to them.
So credit goes by item and window only (an id in a recorded click belonged to
another run's list and is ignored here), and the rates say how often the
strategy put in front of the user what they were about to click or buy within
``window`` seconds. That is a replay measure of the strategies, comparable
between them in the same run, not a live click-through rate: the simulation
(``feedback-stream simulate``) and the worker's metrics measure that.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from models.attribution import Attributor, Exposure
from models.engine import FeedbackEngine, Recommendation
from models.events import Event
from models.experiments import Experiment, compare, parse_strategies, parse_variants, wilson
from models.strategies import Strategies
from stream.processor import should_recommend

__all__ = ["AttributionReplay"]


@dataclasses.dataclass(slots=True)
class _Tally:
    exposures: int = 0
    clicked: int = 0
    converted: int = 0
    clicks: int = 0
    purchases: int = 0
    revenue: float = 0.0


class AttributionReplay:
    """Exposures and attributions of a replay, per strategy.

    Call :meth:`before` with each event before the engine learns it and
    :meth:`after` once it has; :meth:`report` gives the figures.

    """

    def __init__(
        self,
        variants: str = "blend,popularity,explore",
        salt: str = "feedback-experiment",
        window: float = 1800.0,
        min_interval: float = 60.0,
        fatigue_impressions: int = 3,
        fatigue_strategies: str = "blend,explore",
        top_k: int = 10,
        seed: int = 42,
        on_list: Callable[[str, list[Recommendation], FeedbackEngine], None] | None = None,
    ) -> None:
        self.experiment = Experiment(parse_variants(variants), salt)
        self.strategies = Strategies(
            seed=seed, fatigue_strategies=parse_strategies(fatigue_strategies)
        )
        self.attributor = Attributor(window=window)
        self.min_interval = min_interval
        self.fatigue_impressions = fatigue_impressions
        self.top_k = top_k
        self.tallies: dict[str, _Tally] = defaultdict(_Tally)
        self.recommended_at: dict[str, float] = {}
        # Triggers of the current instant, with the user's previous recommended_at:
        # ranked once the replay's clock moves past that instant.
        self.pending: dict[str, tuple[Event, float | None]] = {}
        self.clock = float("-inf")
        self.on_list = on_list  # sees every published list (the information measures)

    def before(self, engine: FeedbackEngine, event: Event) -> None:
        """Publish the lists of the previous instant before ``event`` can react to them."""
        if event.timestamp > self.clock:
            for trigger, previous in self.pending.values():
                if not self._recommend(engine, trigger):
                    # Nothing published: the next trigger may try again, as in the worker.
                    self._restore(trigger.user_id, previous)
            self.pending.clear()
            self.clock = event.timestamp

    def after(self, engine: FeedbackEngine, event: Event) -> None:
        """Attribute ``event`` (a click or purchase), then maybe schedule a list."""
        if event.type != "review":
            # Recorded ids named lists of another run: match by item and window only.
            hit = self.attributor.attribute(dataclasses.replace(event, recommendation_id=None))
            if hit is not None:
                tally = self.tallies[hit.exposure.strategy]
                if hit.kind == "click":
                    tally.clicks += 1
                    tally.clicked += hit.first
                else:
                    tally.purchases += 1
                    tally.converted += hit.first
                    tally.revenue += hit.revenue
        last = self.recommended_at.get(event.user_id)
        if should_recommend({"recommended_at": last}, event, self.min_interval):
            earlier = self.pending.get(event.user_id)
            self.pending[event.user_id] = (event, last if earlier is None else earlier[1])
            self.recommended_at[event.user_id] = event.timestamp

    def _restore(self, user: str, previous: float | None) -> None:
        if previous is None:
            self.recommended_at.pop(user, None)
        else:
            self.recommended_at[user] = previous

    def _recommend(self, engine: FeedbackEngine, trigger: Event) -> bool:
        user = trigger.user_id
        strategy = self.experiment.variant_of(user)
        log = self.attributor.users.get(user)
        avoid = log.fatigued(self.fatigue_impressions) if log is not None else set()
        items = self.strategies.recommend(
            strategy, engine, user, self.top_k, now=trigger.timestamp,
            key=trigger.event_id, avoid=avoid,
        )
        if not items:
            return False
        self.attributor.expose(
            user,
            Exposure(trigger.event_id, tuple(r.item_id for r in items), strategy, strategy,
                     trigger.timestamp),
        )
        self.tallies[strategy].exposures += 1
        if self.on_list is not None:
            self.on_list(strategy, items, engine)
        return True

    def report(self) -> dict[str, Any]:
        """Per strategy: exposures, CTR and conversion (95% Wilson), clicks, purchases, revenue.

        With both ``blend`` and ``popularity``, ``blend_vs_popularity`` holds the
        two-proportion z-tests of their CTR and conversion (with the rate ratios).
        """
        out: dict[str, Any] = {}
        for strategy, t in sorted(self.tallies.items()):
            out[strategy] = {
                "exposures": t.exposures,
                "ctr": wilson(min(t.clicked, t.exposures), t.exposures).as_dict(),
                "conversion": wilson(min(t.converted, t.exposures), t.exposures).as_dict(),
                "attributed_clicks": t.clicks,
                "attributed_purchases": t.purchases,
                "revenue": round(t.revenue, 2),
            }
        a, b = self.tallies.get("blend"), self.tallies.get("popularity")
        if a is not None and b is not None:
            out["blend_vs_popularity"] = {
                "ctr": compare("blend", min(a.clicked, a.exposures), a.exposures, "popularity",
                               min(b.clicked, b.exposures), b.exposures, what="CTR").as_dict(),
                "conversion": compare(
                    "blend", min(a.converted, a.exposures), a.exposures, "popularity",
                    min(b.converted, b.exposures), b.exposures, what="conversion",
                ).as_dict(),
            }
        return out
