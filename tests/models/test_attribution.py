"""Attribution of clicks and purchases to recommendations, and its memory bounds."""

from __future__ import annotations

import orjson
import pytest

from models.attribution import Attributor, Exposure, UserExposures
from models.events import Event

T = 1_700_000_000.0


def exposure(rec_id: str, items: tuple[str, ...], t: float, strategy: str = "blend") -> Exposure:
    return Exposure(rec_id, items, strategy, strategy, t, segment=1)


def click(item: str, t: float, rec_id: str | None = None, eid: str = "c") -> Event:
    return Event("click", eid, "u", item, t, recommendation_id=rec_id)


def buy(item: str, t: float, quantity: int = 1, price: float = 4.0) -> Event:
    return Event("purchase", "p", "u", item, t, quantity=quantity, price=price)


def test_id_match_wins_over_a_more_recent_exposure_of_the_same_item() -> None:
    log = UserExposures(window=600)
    log.expose(exposure("r1", ("a", "b"), T, "popularity"))
    log.expose(exposure("r2", ("b", "c"), T + 10, "blend"))
    hit = log.attribute(click("b", T + 20, rec_id="r1"))
    assert hit is not None
    assert (hit.exposure.recommendation_id, hit.matched_by, hit.rank) == ("r1", "id", 2)
    assert hit.exposure.strategy == "popularity"
    # Without an id the most recent exposure containing the item gets the credit.
    hit = log.attribute(click("b", T + 30))
    assert hit is not None and hit.exposure.recommendation_id == "r2"
    assert hit.matched_by == "window"


def test_unknown_id_is_never_guessed() -> None:
    log = UserExposures()
    log.expose(exposure("r1", ("a",), T))
    assert log.attribute(click("a", T + 1, rec_id="forged")) is None
    assert not log.exposures[0].clicked


def test_window_bounds_item_matches_in_event_time() -> None:
    log = UserExposures(window=600)
    log.expose(exposure("r1", ("a",), T))
    assert log.attribute(click("a", T - 5)) is None  # before it was shown
    assert log.attribute(click("a", T + 601)) is None  # too late
    assert log.attribute(click("z", T + 10)) is None  # not recommended
    hit = log.attribute(click("a", T + 600))
    assert hit is not None and hit.matched_by == "window"


def test_first_click_and_first_conversion_count_once() -> None:
    log = UserExposures(window=3600)
    log.expose(exposure("r1", ("a", "b"), T))
    first = log.attribute(click("a", T + 5, "r1"))
    again = log.attribute(click("b", T + 6, "r1"))
    assert first is not None and first.first
    assert again is not None and not again.first
    bought = log.attribute(buy("a", T + 100, quantity=3, price=2.5))
    assert bought is not None and bought.first and bought.revenue == 7.5
    more = log.attribute(buy("b", T + 120))
    assert more is not None and not more.first and more.revenue == 4.0


def test_purchase_prefers_the_exposure_it_was_clicked_from() -> None:
    log = UserExposures(window=3600)
    log.expose(exposure("r1", ("a",), T, "explore"))
    log.expose(exposure("r2", ("a",), T + 50, "blend"))
    assert log.attribute(click("a", T + 60, "r1")) is not None
    hit = log.attribute(buy("a", T + 200))
    assert hit is not None and hit.exposure.recommendation_id == "r1"


def test_reviews_and_returns_are_not_attributed() -> None:
    log = UserExposures()
    log.expose(exposure("r1", ("a",), T))
    assert log.attribute(Event("review", "r", "u", "a", T + 1, rating=5.0)) is None
    assert log.attribute(buy("a", T + 2, quantity=-1)) is None
    assert not log.exposures[0].converted


def test_memory_is_bounded_by_count_and_retention() -> None:
    log = UserExposures(window=60, max_exposures=5, retention=1000)
    for i in range(50):
        log.expose(exposure(f"r{i}", ("a",), T + i))
    assert [e.recommendation_id for e in log.exposures] == [f"r{i}" for i in range(45, 50)]
    log.expose(exposure("late", ("b",), T + 5000))
    assert [e.recommendation_id for e in log.exposures] == ["late"]
    # An old id is forgotten even though it was once shown.
    assert log.attribute(click("a", T + 5001, "r49")) is None


def test_state_round_trips_through_json() -> None:
    log = UserExposures(window=600)
    log.expose(exposure("r1", ("a", "b"), T))
    log.attribute(click("b", T + 1, "r1"))
    blob = orjson.dumps(log.to_json())
    again = UserExposures.from_json(orjson.loads(blob), window=600)
    assert again.to_json() == log.to_json()
    assert again.exposures[0].clicked and again.exposures[0].clicked_items == ["b"]
    hit = again.attribute(buy("b", T + 30))
    assert hit is not None and hit.first
    assert UserExposures.from_json(None).exposures == type(log.exposures)()


def test_fatigued_items() -> None:
    log = UserExposures()
    for i in range(3):
        log.expose(exposure(f"r{i}", ("a", "b") if i < 2 else ("a",), T + i))
    log.attribute(click("b", T + 5, "r0"))
    assert log.fatigued(3) == {"a", "b"}  # a: shown 3 times; b: clicked
    assert log.fatigued(4) == {"b"}


def test_attributor_bounds_users() -> None:
    att = Attributor(window=100, max_users=3)
    for u in ("u1", "u2", "u3"):
        att.expose(u, exposure(f"r-{u}", ("a",), T))
    # Touching u1 makes u2 the least recently active.
    assert att.attribute(Event("click", "c1", "u1", "a", T + 1)) is not None
    att.expose("u4", exposure("r-u4", ("a",), T))
    assert set(att.users) == {"u1", "u3", "u4"}
    assert att.attribute(Event("click", "c2", "u2", "a", T + 2)) is None


def test_invalid_configuration() -> None:
    with pytest.raises(ValueError):
        UserExposures(window=0)
    with pytest.raises(ValueError):
        UserExposures(max_exposures=0)


def test_exposures_in_the_earlier_dict_form_still_load() -> None:
    # Profiles written before the positional form, as an older changelog holds them.
    old = [{"id": "r1", "items": ["a", "b"], "s": "blend", "v": "blend", "t": 5.0,
            "seg": 2, "c": True, "p": False, "ci": ["a"]},
           {"id": "r2", "items": ["c"], "s": "popularity", "v": "popularity", "t": 6.0}]
    log = UserExposures.from_json(old)
    assert log.to_json() == [
        ["r1", ["a", "b"], "blend", "blend", 5.0, 2, True, False, ["a"]],
        ["r2", ["c"], "popularity", "popularity", 6.0, None, False, False, []],
    ]
    assert UserExposures.from_json(log.to_json()).to_json() == log.to_json()
