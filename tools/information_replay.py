"""The ``information`` block of ``feedback-stream evaluate``: what each strategy's lists showed.

Every list the attribution replay publishes (:mod:`tools.attribution_replay`)
is counted by :class:`models.information.ExposureTally` against the catalogue's
all-time popularity ranks, recomputed every ``refresh_events`` engine events
(a sort of the catalogue; the ranks move slowly).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from models.engine import FeedbackEngine, Recommendation
from models.information import ExposureTally


class InformationReplay:
    """Pass :meth:`on_list` to :class:`tools.attribution_replay.AttributionReplay`."""

    def __init__(self, refresh_events: int = 500) -> None:
        self.tally = ExposureTally()
        self.refresh_events = refresh_events
        self.ranked_at = -refresh_events
        self.ranks = np.zeros(0, dtype=np.int64)

    def on_list(
        self, strategy: str, items: Sequence[Recommendation], engine: FeedbackEngine
    ) -> None:
        """Count one published list."""
        if engine.events - self.ranked_at >= self.refresh_events:
            counts = engine.recommender.popularity.all_time(len(engine.catalogue))
            self.ranks = np.empty(len(counts), dtype=np.int64)
            self.ranks[np.argsort(-counts, kind="stable")] = np.arange(len(counts))
            self.ranked_at = engine.events
        get = engine.catalogue.get
        idx = [i for i in (get(r.item_id) for r in items) if i is not None]
        self.tally.learn_list(strategy, idx, self.ranks)

    def report(self, engine: FeedbackEngine) -> dict[str, Any]:
        """Per strategy: ``list_entropy`` (bits), ``catalogue_coverage``, ``exposure_gini``, ..."""
        return self.tally.report(len(engine.catalogue))
