"""Customer portraits per segment and item pages: ``GET /segments`` and ``GET /items/{id}``.

Pure functions of a :class:`models.engine.FeedbackEngine`; JSON-able results.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from models.recommender import top_k

if TYPE_CHECKING:
    from models.engine import FeedbackEngine

__all__ = ["describe_segment", "item_report", "segment_report"]

# (centre key, phrase when high, phrase when low) for the description.
_TRAITS: tuple[tuple[str, str, str], ...] = (
    ("orders", "many orders", "few orders"),
    ("order_value", "large orders", "small orders"),
    ("expected_spend", "high expected spend", "low expected spend"),
    ("days_between_orders", "long gaps between orders", "short gaps between orders"),
    ("clicks", "much browsing", "little browsing"),
    ("reviews", "many reviews", "few reviews"),
    ("return_rate", "many returns", "few returns"),
)


def describe_segment(
    centre: dict[str, float], population: dict[str, float], horizon_days: float
) -> str:
    """One plain-language sentence: how the segment's centre differs from everyone's.

    A trait is named when the centre is at least 1.5x (or at most 2/3 of) the
    population's value, strongest first; ratings and sentiment when they
    differ by 0.5 star / 0.15.

    >>> everyone = {"orders": 4.0, "order_value": 20.0, "expected_spend": 30.0,
    ...             "days_between_orders": 30.0, "clicks": 0.0, "reviews": 0.0,
    ...             "return_rate": 0.02, "rating_mean": 3.0, "sentiment_mean": 0.5}
    >>> centre = dict(everyone, orders=12.0, expected_spend=95.0, days_between_orders=12.0)
    >>> describe_segment(centre, everyone, 90.0)
    'High expected spend (95.00 vs 30.00 overall), many orders (12.0 vs 4.0 overall), \
short gaps between orders (12.0 vs 30.0 overall); expected spend 95.00 each over the next 90 days.'
    """
    traits: list[tuple[float, str]] = []
    for key, high, low in _TRAITS:
        mine, everyone = centre.get(key, 0.0), population.get(key, 0.0)
        if everyone <= 0 or mine <= 0:
            continue
        ratio = mine / everyone
        if ratio >= 1.5 or ratio <= 2 / 3:
            fmt = ".2f" if key in ("expected_spend", "order_value", "return_rate") else ".1f"
            text = f"{high if ratio > 1 else low} ({mine:{fmt}} vs {everyone:{fmt}} overall)"
            traits.append((abs(math.log(ratio)), text))
    for key, what, gap in (("rating_mean", "ratings", 0.5), ("sentiment_mean", "sentiment", 0.15)):
        diff = centre.get(key, 0.0) - population.get(key, 0.0)
        if abs(diff) >= gap:
            traits.append(
                (abs(diff) / gap, f"{'higher' if diff > 0 else 'lower'} {what} "
                                  f"({centre[key]:.2f} vs {population[key]:.2f} overall)")
            )  # fmt: skip
    traits.sort(key=lambda t: -t[0])
    head = ", ".join(text for _, text in traits[:3]) if traits else "close to the average customer"
    head = head[0].upper() + head[1:]
    spend = centre.get("expected_spend", 0.0)
    tail = f"; expected spend {spend:.2f} each over the next {horizon_days:.0f} days"
    return f"{head}{tail if spend else ''}."


def segment_report(engine: FeedbackEngine, top: int = 5) -> list[dict[str, Any]]:
    """Each segment: id, size, centre in the features' own units, top items, description.

    Top items are the segment's most popular items right now (the recommender's
    decayed in-segment popularity).
    """
    profiles = engine.segment_profiles()
    sizes = engine.segment_sizes()
    total = sum(sizes.get(j, 0) for j in profiles)
    if not profiles or total == 0:
        return []
    keys = next(iter(profiles.values())).keys()
    population = {
        k: sum(p[k] * sizes.get(j, 0) for j, p in profiles.items()) / total for k in keys
    }
    n = len(engine.catalogue)
    segment_popularity = engine.recommender.segment_popularity
    out = []
    for j, centre in sorted(profiles.items()):
        items: list[dict[str, Any]] = []
        if j < len(segment_popularity) and n:
            weights = segment_popularity[j].recent(n)
            scores = np.where(weights > 0, weights, -np.inf)
            items = [
                {"item_id": engine.catalogue.ids[i], "popularity": round(float(weights[i]), 4)}
                for i in top_k(scores, top)
            ]
        centre_out = {k: v for k, v in centre.items() if k != "users"}
        out.append({
            "segment": j,
            "size": sizes.get(j, 0),
            "centre": centre_out,
            "top_items": items,
            "description": describe_segment(
                centre_out, population, engine.customer_value.horizon_days
            ),
        })  # fmt: skip
    return out


def item_report(
    engine: FeedbackEngine, item_id: str, together: int = 5, min_pair_weight: float = 2.0
) -> dict[str, Any] | None:
    """Reviews, mean rating, sentiment, popularity and "bought together" of one item.

    Bought-together items are the item's co-occurrence neighbours with a pair
    weight of at least ``min_pair_weight`` (PMI of rarer pairs is noise),
    ranked by PMI; each with its lift (times as often as chance) and weight.
    ``None`` for an unknown item.
    """
    idx = engine.catalogue.get(item_id)
    if idx is None:
        return None
    summary = engine.item_summary(item_id) or {}
    ratings = engine.item_ratings[idx] if idx < len(engine.item_ratings) else np.zeros(2)
    sentiment = engine.item_sentiment.summary(item_id)
    co = engine.recommender.cooccurrence
    pairs: list[dict[str, Any]] = []
    if idx < len(co.neighbours):
        nb = co.neighbours[idx]
        candidates = []
        for key, weight in zip(nb.keys[: nb.n].tolist(), nb.values[: nb.n].tolist(), strict=True):
            if weight >= min_pair_weight:
                pmi = co.pmi_of(idx, key)
                if pmi is not None:
                    candidates.append((pmi, weight, key))
        candidates.sort(key=lambda c: (-c[0], -c[1], c[2]))
        pairs = [
            {"item_id": engine.catalogue.ids[key], "pmi_bits": round(pmi, 3),
             "lift": round(2.0**pmi, 2), "pair_weight": round(weight, 2)}
            for pmi, weight, key in candidates[:together]
        ]  # fmt: skip
    return {
        "item_id": item_id,
        "reviews": sentiment["reviews"] if sentiment else 0,
        "rated_reviews": int(ratings[0]),
        "rating_mean": float(ratings[1] / ratings[0]) if ratings[0] else None,
        "sentiment": sentiment,
        "popularity": {
            "recent": summary.get("popularity_recent"),
            "all_time": summary.get("popularity_all_time"),
        },
        "bought_together": pairs,
    }
