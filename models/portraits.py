"""Customer portraits: a segment's centre described in plain language.

``GET /segments`` (stream/published.py) describes the DP centres with it.
"""

from __future__ import annotations

import math

__all__ = ["describe_segment"]

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
