"""What the item and segment endpoints answer: DP releases only (docs/privacy.md).

``GET /items/{id}``, ``GET /items/{id}/similar`` and ``GET /segments`` read
nothing but a :class:`~stream.dp.DPPublisher`'s releases, so each answer is
post-processing of an ε-DP (or, for the pairs of items used together,
(ε, δ)-DP) release, cached for the release's interval: asking again costs no
budget and returns the same figures. Faust-free.
"""

from __future__ import annotations

import math
from typing import Any

from models.portraits import describe_segment
from stream.dp import DPPublisher

__all__ = ["SIMILAR_REASON", "item_page", "segments_page", "similar_items"]

#: The reason of every item of a ``similar`` answer (``{item}``: the item asked about).
SIMILAR_REASON = "viewed or bought together with {item}"

# Centre fields in the units of GET /segments: (name, release feature, from log1p).
_CENTRE: tuple[tuple[str, str, bool], ...] = (
    ("recency_days", "recency_days", False),
    ("orders", "log_orders", True),
    ("order_value", "log_order_value", True),
    ("clicks", "log_clicks", True),
    ("reviews", "log_reviews", True),
    ("rating_mean", "rating_mean", False),
    ("sentiment_mean", "sentiment_mean", False),
    ("return_rate", "return_rate", False),
    ("days_between_orders", "log_purchase_gap_days", True),
    ("expected_spend", "log_expected_spend", True),
)


def similar_items(publisher: DPPublisher, item_id: str, k: int) -> dict[str, Any]:
    """``GET /items/{id}/similar``: the items most customers used one after the
    other with ``item_id`` (noisy customer counts as scores), from the
    neighbour release. Any id answers; an item without a pair above the
    release's threshold (or unknown) has no similar items.
    """
    reason = SIMILAR_REASON.format(item=item_id)
    return {
        "item_id": item_id,
        "items": [
            {"rank": n + 1, "item_id": other, "score": float(count), "reason": reason}
            for n, (other, count) in enumerate(publisher.neighbours(item_id, k))
        ],
    }


def item_page(publisher: DPPublisher, item_id: str, together: int = 5) -> dict[str, Any]:
    """``GET /items/{id}``: noisy distinct buyers, reviewers and viewers (the item
    release) and the items bought together with it (the neighbour release).

    Any id answers like a known one: an answer never tells whether anyone used
    the item. Rating and sentiment are not published: the engine keeps them as
    running sums without a per-user record, so one user's share cannot be
    bounded.
    """
    summary = publisher.item_summary(item_id)
    return {
        "item_id": item_id,
        "buyers": summary["buyers"],
        "reviewers": summary["reviewers"],
        "viewers": summary["viewers"],
        "bought_together": [
            {"item_id": other, "customers": count}
            for other, count in publisher.neighbours(item_id, together)
        ],
    }


def segments_page(publisher: DPPublisher, horizon_days: float) -> list[dict[str, Any]]:
    """``GET /segments``: every segment's noisy size, its centre from the noisy
    feature sums (in each feature's own units: counts and amounts from their
    log1p means, as the segmentation's own centres), its most popular items
    (report-noisy-max among its members) and a description of the centre
    against the size-weighted mean of all centres.
    """
    release = publisher.segments()
    top = publisher.segment_items()
    centres = {
        j: {
            name: math.expm1(c[feature]) if log else c[feature]
            for name, feature, log in _CENTRE
            if feature in c
        }
        for j, c in release.centres.items()
    }
    total = sum(release.sizes.values())
    population = {
        name: sum(centres[j][name] * release.sizes[j] for j in centres) / total
        for name in next(iter(centres.values()), {})
    } if total else {}  # fmt: skip
    return [
        {
            "segment": j,
            "size": release.sizes[j],
            "centre": centre,
            "top_items": [
                {"item_id": item, "rank": n + 1} for n, item in enumerate(top.get(j, []))
            ],
            "description": describe_segment(centre, population or centre, horizon_days),
        }
        for j, centre in sorted(centres.items())
    ]
