"""The feedback-loop report of `feedback-stream evaluate`, on small fixed streams."""

from __future__ import annotations

from models.engine import FeedbackEngine
from models.events import Event
from tools.attribution_replay import AttributionReplay


def replay(stream: list[tuple[str, str, str, float]], **kwargs: object) -> AttributionReplay:
    engine, rep = FeedbackEngine(), AttributionReplay(**kwargs)  # type: ignore[arg-type]
    for i, (kind, user, item, t) in enumerate(stream):
        event = Event(kind, f"e{i}", user, item, t, quantity=1, price=2.5)  # type: ignore[arg-type]
        rep.before(engine, event)
        engine.process(event)
        rep.after(engine, event)
    return rep


STREAM = [
    ("purchase", "a", "x", 0.0),  # nothing to offer a yet: a's next trigger may try again
    ("purchase", "b", "y", 10.0),  # b is then offered x (shown at t=10)
    ("click", "a", "y", 100.0),  # a is offered y (shown at t=100)
    ("purchase", "b", "x", 200.0),  # credited to b's list of t=10: converted
    ("click", "a", "y", 300.0),  # credited to a's list of t=100: clicked
    ("purchase", "a", "y", 400.0),  # and converted, preferring the clicked list
]


#: The popularity control with the fatigue rule too (by default it has none).
ROTATING = "blend,explore,popularity"


def test_later_clicks_and_purchases_are_credited_to_the_lists_shown_before_them() -> None:
    report = replay(STREAM, variants="popularity", window=600, fatigue_strategies=ROTATING)
    pop = report.report()["popularity"]
    assert pop["exposures"] == 2
    assert (pop["ctr"]["successes"], pop["conversion"]["successes"]) == (1, 2)
    assert (pop["attributed_clicks"], pop["attributed_purchases"], pop["revenue"]) == (1, 2, 5.0)
    # Ten times slower: outside the window nothing is credited, so the unclicked y is
    # not fatigued and a's second click gets a list again.
    late = replay([(k, u, i, t * 10) for k, u, i, t in STREAM], variants="popularity",
                  window=600, fatigue_strategies=ROTATING).report()["popularity"]
    assert late["exposures"] == 3
    assert late["ctr"]["successes"] == late["conversion"]["successes"] == 0


def test_a_basket_is_one_list_and_never_credited_to_itself() -> None:
    """Lines of one instant are one batch: one ranking, after all of them are learnt."""
    basket = [("purchase", "u", item, 50.0) for item in "pqrs"]
    history = [("purchase", "v", item, 10.0 + i) for i, item in enumerate("pqrst")]
    rep = replay([*history, *basket, ("purchase", "u", "t", 60.0)], variants="popularity")
    pop = rep.report()["popularity"]
    # v's five lists offer nothing new after v bought all; u gets one list, [t], bought next.
    assert pop["exposures"] == 1 and pop["conversion"]["successes"] == 1


def test_variants_are_the_workers_keyed_hash_and_compared() -> None:
    users = [f"user-{i}" for i in range(40)]
    stream = [("purchase", u, f"sku-{(i + j) % 7}", 100.0 * i + j)
              for i, u in enumerate(users) for j in range(3)]
    report = replay(stream, variants="blend,popularity").report()
    assert set(report) == {"blend", "popularity", "blend_vs_popularity"}
    assert report["blend"]["exposures"] + report["popularity"]["exposures"] > 0
    assert "statement" in report["blend_vs_popularity"]["ctr"]
