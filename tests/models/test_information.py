"""Information measures and the behaviour-shift detector, on real replays with injected shifts."""

from __future__ import annotations

import dataclasses
import itertools
import pickle
import random
from collections.abc import Callable, Iterator
from itertools import islice

import numpy as np
import orjson
import pytest

from models.engine import EngineConfig, FeedbackEngine
from models.events import Event
from models.information import BehaviourShift, ExposureTally, gini, js_divergence
from models.profiles import DAY
from stream.contract import decode_event
from tools.datasets import cdnow_purchases, online_retail_purchases

# Stated detection bound: the shift fills the current window (4 blocks of 500 events).
DETECTION_EVENTS = 2_000


def _events(rows: Iterator[dict[str, object]], n: int) -> list[Event]:
    return [decode_event(orjson.dumps(row)) for row in islice(rows, n)]


@pytest.fixture(scope="module")
def retail() -> list[Event]:
    return _events(online_retail_purchases(), 120_000)


@pytest.fixture(scope="module")
def cdnow() -> list[Event]:
    return _events(cdnow_purchases(), 69_659)


def first_alarm(events: list[Event], start: int, change: Callable[[Event], Event]) -> list[int]:
    """Positions of the detector's alarms when ``change`` rewrites every event from ``start``."""
    detector = BehaviourShift()
    fired = []
    for n, event in enumerate(events):
        if detector.learn_one(change(event) if n >= start else event):
            fired.append(n)
    return fired


def test_item_shift_in_online_retail_fires_within_the_window(retail: list[Event]) -> None:
    """From event 80,000 a fifth of the lines go to 5 items picked from the catalogue (a bot)."""
    rng = random.Random(1)
    start = 80_000
    tail = rng.sample(sorted({e.item_id for e in retail[:start]}), 5)

    def bot(event: Event) -> Event:
        return dataclasses.replace(event, item_id=rng.choice(tail)) if rng.random() < 0.2 else event

    fired = first_alarm(retail, start, bot)
    assert fired, "the shift was not detected"
    assert start <= fired[0] < start + DETECTION_EVENTS
    assert first_alarm(retail, len(retail), bot) == []  # the same replay unshifted: quiet


def test_return_surge_in_cdnow_fires_within_the_window(cdnow: list[Event]) -> None:
    """From event 45,000 a quarter of CDNOW's purchase lines come back as returns."""
    rng = random.Random(2)
    start = 45_000

    def returns(event: Event) -> Event:
        if rng.random() < 0.25:
            return dataclasses.replace(event, quantity=-event.quantity)
        return event

    fired = first_alarm(cdnow, start, returns)
    assert fired and start <= fired[0] < start + DETECTION_EVENTS
    assert first_alarm(cdnow, len(cdnow), returns) == []


def test_engine_raises_behaviour_shift_with_a_cooldown(retail: list[Event]) -> None:
    """The engine's alert, with blocks of 100 events so that a short replay suffices."""
    engine = FeedbackEngine(EngineConfig(shift_block=100))
    rng = random.Random(3)
    start = 8_000
    tail = rng.sample(sorted({e.item_id for e in retail[:start]}), 3)
    fired = []
    for n, event in enumerate(retail[:14_000]):
        if n >= start and rng.random() < 0.3:
            event = dataclasses.replace(event, item_id=rng.choice(tail))
        fired += [(n, a) for a in engine.process(event).alerts if a.kind == "behaviour_shift"]
    assert fired, "the shift was not detected"
    n, alert = fired[0]
    assert start <= n < start + 400  # the current window: 4 blocks of 100
    assert alert.subject == "stream" and alert.value > alert.threshold
    assert "items" in alert.message
    times = [a.timestamp for _, a in fired]
    assert all(later - earlier >= DAY for earlier, later in itertools.pairwise(times))


def test_exposure_tally_measures_concentration() -> None:
    tally = ExposureTally()
    ranks = np.arange(1000)
    rng = np.random.default_rng(0)
    for _ in range(200):
        tally.learn_list("popularity", list(range(10)), ranks)
        tally.learn_list("blend", rng.choice(1000, 10, replace=False).tolist(), ranks)
    report = pickle.loads(pickle.dumps(tally)).report(n_items=1000)  # the engine pickles it
    assert report["list_entropy"]["popularity"] == 0.0
    assert report["list_entropy"]["blend"] > 2.5  # near log2(10) = 3.32
    assert report["catalogue_coverage"]["popularity"] == 0.01
    assert report["catalogue_coverage"]["blend"] > 0.8
    assert report["exposure_gini"]["popularity"] > 0.98 > 0.6 > report["exposure_gini"]["blend"]


def test_divergence_and_gini_bounds() -> None:
    assert js_divergence([1, 2, 3], [1, 2, 3]) == 0.0
    assert 0.0 < js_divergence([5, 1], [1, 5]) < 1.0
    assert gini([0, 0, 5]) == pytest.approx(2 / 3)


def test_list_entropy_counts_each_item_in_its_popularity_stratum() -> None:
    tally = ExposureTally(strata=4)
    ranks = np.array([3, 0, 7, 1, 6, 2, 5, 4])  # item i's popularity rank; stratum rank*4//8
    # strata 1, 0, 3 and 3 (item 9 is newer than the ranks: the tail)
    tally.learn_list("blend", [0, 1, 4, 9], ranks)
    assert tally.entropy_sum["blend"] == 1.5
    tally.learn_list("blend", [], ranks)
    assert tally.entropy_sum["blend"] == 1.5 and tally.lists["blend"] == 2
