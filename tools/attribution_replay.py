"""What the recommendations published during a replay would have earned.

``feedback-stream evaluate`` replays a file through the engine; this module
adds the feedback loop's report to it: every user is assigned to a variant
(the worker's keyed hash), a recommendation is produced by that variant's
strategy whenever the worker would publish one (after every purchase and
review, after a click at most once per ``min_interval`` of event time; one per
user per instant, as the worker ranks once per user per batch), and the later
clicks and purchases of the file are attributed to it. Choosing, recommending
with fatigue, exposing, attributing and counting are the worker's own feedback
loop (:class:`models.feedback_loop.FeedbackLoop`); only the exposure logs live
in memory here (:class:`models.attribution.Attributor`).

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
from collections.abc import Callable
from typing import Any

from models.attribution import Attributor, Exposure
from models.engine import FeedbackEngine, Recommendation
from models.events import Event
from models.experiments import compare, wilson
from models.feedback_loop import FeedbackLoop, should_recommend

__all__ = ["AttributionReplay"]


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
        # Without a bandit every variant's strategy has its name: the loop's
        # tallies per variant are the report's per strategy.
        self.loop = FeedbackLoop(
            variants=variants, salt=salt, fatigue_impressions=fatigue_impressions,
            fatigue_strategies=fatigue_strategies, top_k=top_k, seed=seed,
        )
        self.attributor = Attributor(window=window)
        self.min_interval = min_interval
        self.recommended_at: dict[str, float] = {}
        # Triggers of the current instant, with the user's previous recommended_at:
        # ranked once the replay's clock moves past that instant.
        self.held: dict[str, tuple[Event, float | None]] = {}
        self.clock = float("-inf")
        self.on_list = on_list  # sees every published list (the information measures)

    def before(self, engine: FeedbackEngine, event: Event) -> None:
        """Publish the lists of the previous instant before ``event`` can react to them."""
        if event.timestamp > self.clock:
            for trigger, previous in self.held.values():
                if not self._recommend(engine, trigger):
                    # Nothing published: the next trigger may try again, as in the worker.
                    self._restore(trigger.user_id, previous)
            self.held.clear()
            self.clock = event.timestamp

    def after(self, engine: FeedbackEngine, event: Event) -> None:
        """Attribute ``event`` (a click or purchase), then maybe schedule a list."""
        if event.type != "review":
            log = self.attributor.find(event.user_id)
            if log is not None:
                # Recorded ids named lists of another run: match by item and window only.
                self.loop.attribute(log, dataclasses.replace(event, recommendation_id=None))
        last = self.recommended_at.get(event.user_id)
        if should_recommend(last, event, self.min_interval):
            earlier = self.held.get(event.user_id)
            self.held[event.user_id] = (event, last if earlier is None else earlier[1])
            self.recommended_at[event.user_id] = event.timestamp

    def _restore(self, user: str, previous: float | None) -> None:
        if previous is None:
            self.recommended_at.pop(user, None)
        else:
            self.recommended_at[user] = previous

    def _recommend(self, engine: FeedbackEngine, trigger: Event) -> bool:
        user = trigger.user_id
        variant, strategy = self.loop.choose(user, None, trigger.event_id)
        items = self.loop.recommend(
            engine, user, strategy, self.attributor.users.get(user),
            key=trigger.event_id,
        )
        if not items:
            return False
        self.loop.expose(
            self.attributor.log(user),
            Exposure(trigger.event_id, tuple(r.item_id for r in items), strategy, variant,
                     trigger.timestamp),
        )
        if self.on_list is not None:
            self.on_list(strategy, items, engine)
        return True

    def report(self) -> dict[str, Any]:
        """Per strategy: exposures, CTR and conversion (95% Wilson), clicks, purchases, revenue.

        With both ``blend`` and ``popularity``, ``blend_vs_popularity`` holds the
        two-proportion z-tests of their CTR and conversion (with the rate ratios).
        """
        tallies = self.loop.tallies
        out: dict[str, Any] = {}
        for strategy, t in sorted(tallies.items()):
            out[strategy] = {
                "exposures": t.exposures,
                "ctr": wilson(min(t.clicked, t.exposures), t.exposures).as_dict(),
                "conversion": wilson(min(t.converted, t.exposures), t.exposures).as_dict(),
                "attributed_clicks": t.clicks,
                "attributed_purchases": t.purchases,
                "revenue": round(t.revenue, 2),
            }
        a, b = tallies.get("blend"), tallies.get("popularity")
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
