"""Information measures: entropy and inequality of what is shown, divergence of behaviour.

* :func:`entropy_bits`, :func:`gini`, :func:`js_divergence`, :func:`pmi`: the
  measures themselves.
* :class:`ExposureTally`: per strategy, what its published lists showed: the
  mean entropy of each list over popularity strata of the catalogue
  (``list_entropy``), the share of the catalogue ever shown
  (``catalogue_coverage``), the Gini coefficient of exposures over the catalogue
  (``exposure_gini``) and the entropy of all exposures (``exposure_entropy``).
* :class:`BehaviourShift`: Jensen-Shannon divergence between the latest window
  of events and the window before it, over three distributions (event types,
  items hashed into buckets, and event categories), against a threshold
  learnt from the stream's own past divergences.

The event contract has no item category, so :func:`event_category` derives a
coarse one from what an event carries: click; purchase by unit-price band
(powers of 2); return; review by stars (or "text only").
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.spatial.distance import jensenshannon

from models.events import EVENT_TYPES, Event

__all__ = [
    "BehaviourShift",
    "ExposureTally",
    "ListInformation",
    "entropy_bits",
    "event_category",
    "gini",
    "js_divergence",
    "pmi",
]


def entropy_bits(counts: Any) -> float:
    """Shannon entropy in bits of a distribution given by (unnormalised) counts.

    >>> entropy_bits([1, 1, 1, 1]), entropy_bits([5, 0, 0])
    (2.0, 0.0)
    """
    # Plain numpy: scipy.stats.entropy's argument handling costs ~40 us a call, and
    # the worker computes this for every published list.
    c = np.asarray(counts, dtype=float)
    total = float(c.sum())
    if total <= 0:
        return 0.0
    p = c[c > 0] / total
    return float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0: no -0.0 for one stratum


def gini(values: Any) -> float:
    """Gini coefficient of non-negative values (0: equal; towards 1: all on one).

    >>> gini([1, 1, 1, 1]), round(gini([0, 0, 0, 10]), 3)
    (0.0, 0.75)
    """
    v = np.sort(np.asarray(values, dtype=float))
    n, total = len(v), v.sum()
    if n == 0 or total <= 0:
        return 0.0
    ranks = np.arange(1, n + 1)
    return float((2.0 * (ranks * v).sum() / (n * total)) - (n + 1.0) / n)


def js_divergence(p: Any, q: Any) -> float:
    """Jensen-Shannon divergence in bits (0 .. 1) of two count vectors.

    >>> js_divergence([10, 0], [0, 10]), js_divergence([3, 1], [6, 2])
    (1.0, 0.0)
    """
    p, q = np.asarray(p, dtype=float), np.asarray(q, dtype=float)
    if p.sum() <= 0 or q.sum() <= 0:
        return 0.0
    return float(jensenshannon(p, q, base=2) ** 2)


def pmi(pair: float, count_a: float, count_b: float, total: float) -> float:
    """Pointwise mutual information in bits: log2(P(a, b) / (P(a) P(b))), the log of the lift.

    >>> round(pmi(10, 20, 20, 400), 3)  # together 10x as often as chance
    3.322
    """
    if pair <= 0 or count_a <= 0 or count_b <= 0 or total <= 0:
        return -math.inf
    return math.log2(pair * total / (count_a * count_b))


def event_category(event: Event) -> str:
    """A coarse category of an event from its own fields (the contract has no item category).

    >>> event_category(Event("purchase", "e", "u", "i", 0.0, quantity=1, price=5.0))
    'purchase:price<8'
    >>> event_category(Event("review", "e", "u", "i", 0.0, rating=4.0))
    'review:4'
    """
    if event.type == "purchase":
        if event.quantity < 0:
            return "return"
        band = 2 ** max(0, math.ceil(math.log2(event.price))) if event.price > 1 else 1
        return f"purchase:price<{band}" if event.price > 1 else "purchase:price<=1"
    if event.type == "review":
        return f"review:{event.rating:.0f}" if event.rating is not None else "review:text"
    return "click"


class ExposureTally:
    """What each strategy's published lists showed.

    Each list is scored on the catalogue as it stood when it was published:
    items are put into ``strata`` equal-size popularity strata (stratum 0 holds
    the most popular tenth of the items with any interaction, by the
    popularity ranks given to :meth:`learn_list`), and the list's entropy is
    the Shannon entropy of its items over those strata: 0 for a best-seller
    list, ``log2(strata)`` for a list spread evenly from head to tail.

    >>> tally = ExposureTally()
    >>> ranks = np.arange(100)  # item i is the i-th most popular
    >>> tally.learn_list("popularity", [0, 1, 2, 3], ranks)
    >>> tally.learn_list("blend", [0, 30, 60, 90], ranks)
    >>> report = tally.report(n_items=100)
    >>> report["list_entropy"]["popularity"], report["list_entropy"]["blend"]
    (0.0, 2.0)
    >>> report["catalogue_coverage"]["blend"]
    0.04
    """

    def __init__(self, strata: int = 10) -> None:
        self.strata = strata
        # plain dicts: the engine holds one and pickles (no lambdas)
        self.exposures: dict[str, dict[int, int]] = {}
        self.entropy_sum: dict[str, float] = {}
        self.lists: dict[str, int] = {}

    def learn_list(self, strategy: str, items: Sequence[int], ranks: np.ndarray) -> None:
        """Count one published list (catalogue indices) given the items' popularity ranks."""
        shown = self.exposures.setdefault(strategy, {})
        for i in items:
            shown[i] = shown.get(i, 0) + 1
        n = max(len(ranks), 1)
        strata = [
            min(int(ranks[i]) * self.strata // n, self.strata - 1) if i < len(ranks)
            else self.strata - 1  # an item newer than the ranks: the tail
            for i in items
        ]  # fmt: skip
        entropy_here = entropy_bits(np.bincount(strata, minlength=self.strata))
        self.entropy_sum[strategy] = self.entropy_sum.get(strategy, 0.0) + entropy_here
        self.lists[strategy] = self.lists.get(strategy, 0) + 1

    def report(self, n_items: int) -> dict[str, dict[str, float]]:
        """``list_entropy``, ``catalogue_coverage``, ``exposure_gini``, ``exposure_entropy``."""
        out: dict[str, dict[str, float]] = {
            "lists": {}, "list_entropy": {}, "catalogue_coverage": {},
            "exposure_gini": {}, "exposure_entropy": {},
        }  # fmt: skip
        for strategy in sorted(self.lists):
            shown = self.exposures[strategy]
            counts = np.zeros(max(n_items, len(shown), 1))
            counts[: len(shown)] = 0.0
            for i, c in shown.items():
                if i < len(counts):
                    counts[i] = c
            out["lists"][strategy] = self.lists[strategy]
            out["list_entropy"][strategy] = self.entropy_sum[strategy] / self.lists[strategy]
            out["catalogue_coverage"][strategy] = len(shown) / max(n_items, 1)
            out["exposure_gini"][strategy] = gini(counts)
            out["exposure_entropy"][strategy] = entropy_bits(counts)
        return out


class ListInformation:
    """An :class:`ExposureTally` fed with published lists as they go out.

    :meth:`on_list` takes the recommendations and the engine that made them:
    item ids are mapped to catalogue indices and the catalogue's all-time
    popularity ranks are recomputed every ``refresh_events`` engine events (a
    sort of the catalogue; ranks move slowly). The worker and the evaluation
    replay each keep one.
    """

    def __init__(self, refresh_events: int = 500) -> None:
        self.tally = ExposureTally()
        self.refresh_events = refresh_events
        self.ranked_at = -refresh_events
        self.ranks = np.zeros(0, dtype=np.int64)

    def on_list(self, strategy: str, items: Sequence[Any], engine: Any) -> None:
        """Count one published list of ``Recommendation`` (anything with ``item_id``)."""
        if engine.events - self.ranked_at >= self.refresh_events:
            counts = engine.recommender.popularity.all_time(len(engine.catalogue))
            self.ranks = np.empty(len(counts), dtype=np.int64)
            self.ranks[np.argsort(-counts, kind="stable")] = np.arange(len(counts))
            self.ranked_at = engine.events
        get = engine.catalogue.get
        idx = [i for i in (get(r.item_id) for r in items) if i is not None]
        self.tally.learn_list(strategy, idx, self.ranks)

    def report(self, n_items: int) -> dict[str, dict[str, float]]:
        """Per strategy: ``list_entropy`` (bits), ``catalogue_coverage``, ``exposure_gini``, ..."""
        return self.tally.report(n_items)


def _bucket(item_id: str, buckets: int) -> int:
    return zlib.crc32(item_id.encode()) % buckets


class BehaviourShift:
    """Jensen-Shannon divergence of the latest events from the ones before them.

    Events are counted in blocks of ``block`` events. Every block, the last
    ``current_blocks`` blocks (the current window) are compared with the
    ``reference_blocks`` blocks before them (the reference window) on three
    distributions: event types, items hashed into ``buckets`` buckets, and
    :func:`event_category`. Each distribution's divergence is compared with its
    own history: the median and the median absolute deviation of its last
    ``history`` divergences (the sampling noise and the data's usual churn of
    items; robust, so the few comparisons a shift spends entering the window
    do not raise its own bar, while a lasting new regime becomes the norm
    after about ``history / 2`` blocks), and the shift statistic is the
    largest excess in robust deviations. :meth:`learn_one`
    returns a shift when that exceeds ``z`` and the divergence itself exceeds
    ``min_divergence`` bits, after ``warmup_checks`` comparisons. A shift
    persists while the reference window still holds the old behaviour, so the
    caller's cooldown decides how often it is repeated.

    >>> import random
    >>> rng = random.Random(0)
    >>> detector = BehaviourShift(block=200)
    >>> def event(n, item):
    ...     return Event("click", f"e{n}", "u", item, float(n))
    >>> fired = [n for n in range(20_000) if detector.learn_one(
    ...     event(n, f"i{rng.randrange(50 if n < 15_000 else 5)}"))]
    >>> 15_000 <= fired[0] < 15_000 + 4 * 200
    True
    """

    DISTRIBUTIONS = ("event_types", "items", "categories")

    def __init__(
        self,
        block: int = 500,
        current_blocks: int = 4,
        reference_blocks: int = 8,
        buckets: int = 64,
        z: float = 6.0,
        min_divergence: float = 0.02,
        warmup_checks: int = 20,
        history: int = 50,
    ) -> None:
        self.block = block
        self.current_blocks = current_blocks
        self.reference_blocks = reference_blocks
        self.buckets = buckets
        self.z = z
        self.min_divergence = min_divergence
        self.warmup_checks = warmup_checks
        self.categories: dict[str, int] = {}
        self.max_categories = 64
        width = len(EVENT_TYPES) + buckets + self.max_categories
        keep = current_blocks + reference_blocks
        self.blocks = np.zeros((keep, width))  # ring of per-block counts
        self.filled = 0
        self.position = 0  # block being filled
        self.in_block = 0
        self.checks = 0
        self.history = np.zeros((history, 3))  # the last divergences, a ring
        self.last: dict[str, float] = dict.fromkeys(self.DISTRIBUTIONS, 0.0)
        self.last_score = 0.0

    def _slices(self) -> list[slice]:
        t = len(EVENT_TYPES)
        return [slice(0, t), slice(t, t + self.buckets), slice(t + self.buckets, None)]

    def _category(self, event: Event) -> int:
        name = event_category(event)
        idx = self.categories.get(name)
        if idx is None:
            idx = min(len(self.categories), self.max_categories - 1)  # overflow shares the last
            if len(self.categories) < self.max_categories:
                self.categories[name] = idx
        return idx

    def learn_one(self, event: Event) -> dict[str, float] | None:
        """Count ``event``; at the end of a block compare the windows.

        Returns the per-distribution divergences (bits) and ``score`` when a
        shift is detected, else ``None``.
        """
        row = self.blocks[self.position]
        t = len(EVENT_TYPES)
        row[EVENT_TYPES.index(event.type)] += 1
        row[t + _bucket(event.item_id, self.buckets)] += 1
        row[t + self.buckets + self._category(event)] += 1
        self.in_block += 1
        if self.in_block < self.block:
            return None
        self.in_block = 0
        self.filled = min(self.filled + 1, len(self.blocks))
        self.position = (self.position + 1) % len(self.blocks)
        shift = None
        if self.filled == len(self.blocks):
            shift = self._check()
        self.blocks[self.position] = 0.0
        return shift

    def _check(self) -> dict[str, float] | None:
        # Oldest block first: the block about to be overwritten is at self.position.
        order = (self.position + np.arange(len(self.blocks))) % len(self.blocks)
        reference = self.blocks[order[: self.reference_blocks]].sum(axis=0)
        current = self.blocks[order[self.reference_blocks :]].sum(axis=0)
        d = np.array([js_divergence(current[s], reference[s]) for s in self._slices()])
        self.last = dict(zip(self.DISTRIBUTIONS, d.tolist(), strict=True))
        fired = False
        if self.checks >= self.warmup_checks:
            past = self.history[: min(self.checks, len(self.history))]
            median = np.median(past, axis=0)
            spread = 1.4826 * np.median(np.abs(past - median), axis=0) + 0.1 * median + 1e-3
            excess = (d - median) / spread
            self.last_score = float(excess.max())
            fired = (
                self.last_score > self.z and float(d[int(excess.argmax())]) > self.min_divergence
            )
        self.history[self.checks % len(self.history)] = d
        self.checks += 1
        if not fired:
            return None
        return {**self.last, "score": self.last_score}
