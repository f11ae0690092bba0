"""Rates and percentiles from sampled counters, checked on made-up samples.

Nothing here is timed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from tools.bench.stats import (
    Window,
    checkpoint_span,
    combined,
    completed,
    percentile,
    ratio,
    split_by_spans,
    time_at,
    unchanged_for,
    value_at,
    whole_window,
    window,
)


@pytest.mark.parametrize("q", [0, 1, 25, 50, 90, 95, 99, 100])
def test_percentile_matches_numpy_linear(q: float) -> None:
    values = [0.5, 0.01, 0.2, 0.07, 0.3, 0.3, 0.11, 0.9, 0.04]
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_edges() -> None:
    assert math.isnan(percentile([], 50))
    assert percentile([3.0], 99) == 3.0
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_time_at_interpolates_between_samples() -> None:
    samples = [(0.0, 0.0), (1.0, 100.0), (2.0, 300.0)]
    assert time_at(samples, 50) == pytest.approx(0.5)
    assert time_at(samples, 200) == pytest.approx(1.5)
    assert time_at(samples, 300) == 2.0
    assert time_at(samples, 301) is None
    # A counter already past the target at its first sample: that sample's time.
    assert time_at([(5.0, 10.0)], 1) == 5.0


def test_value_at_interpolates_and_clamps() -> None:
    samples = [(1.0, 10.0), (3.0, 30.0)]
    assert value_at(samples, 2.0) == pytest.approx(20.0)
    assert value_at(samples, 0.0) == 10.0
    assert value_at(samples, 9.0) == 30.0
    assert value_at([], 1.0) == 0.0


def test_window_excludes_start_up_and_tail() -> None:
    # Idle for 10 s (start-up), then 1,000 events/s, then a slow tail.
    samples = [(0.0, 0.0), (10.0, 0.0)]
    samples += [(10.0 + i, 1000.0 * i) for i in range(1, 10)]
    samples += [(30.0, 10_000.0)]
    w = window(samples, 10_000)
    assert w is not None
    assert w.start == pytest.approx(11.0) and w.end == pytest.approx(19.0)
    assert w.rate(samples) == pytest.approx(1000.0)


def test_window_is_none_when_the_run_did_not_finish() -> None:
    assert window([(0.0, 0.0), (1.0, 500.0)], 1000) is None
    assert math.isnan(Window(2.0, 2.0).rate([(0.0, 0.0)]))


def test_combined_adds_workers_round_by_round() -> None:
    a = [(0.0, 1.0), (1.0, 5.0)]
    b = [(0.1, 2.0), (1.1, 7.0)]
    assert combined([a, b]) == [(0.1, 3.0), (1.1, 12.0)]


def test_a_lagging_item_owner_holds_the_whole_events_back() -> None:
    # The inputs are read in 10 s; their 4,000 item-update entries (4 per
    # event) are applied at 200/s, from the 10th second on.
    events = [(float(t), min(1000.0, 100.0 * t)) for t in range(0, 31)]
    done = [(float(t), min(4000.0, 200.0 * max(0, t - 10))) for t in range(0, 31)]
    whole = completed(events, done, 4000.0, 1000)
    assert whole[5] == (5.0, 0.0) and whole[-1] == (30.0, 1000.0)
    # From 10 % read (1 s) to 90 % done (28 s): 800 events in 27 s, not the
    # inputs' 100/s nor the owner's 50/s once it runs alone.
    w = whole_window(events, whole, 1000)
    assert w is not None and (w.start, w.end) == (pytest.approx(1.0), pytest.approx(28.0))
    assert window(events, 1000).rate(events) == pytest.approx(100.0)  # type: ignore[union-attr]
    assert window(whole, 1000).rate(whole) == pytest.approx(50.0)  # type: ignore[union-attr]


def test_without_item_sharing_whole_events_are_the_inputs() -> None:
    events = [(0.0, 0.0), (1.0, 10.0)]
    assert completed(events, [(0.0, 0.0), (1.0, 0.0)], 0.0, 10) == events


def test_ratio_guards() -> None:
    assert ratio(5.0, 10.0) == 0.5
    assert ratio(None, 10.0) is None
    assert ratio(5.0, None) is None
    assert ratio(5.0, 0.0) is None
    assert ratio(math.nan, 1.0) is None


def test_a_checkpoint_span_from_the_worker_s_gauges() -> None:
    start = "feedback_model_checkpoint_last_start_timestamp_seconds"
    end = "feedback_model_checkpoint_last_end_timestamp_seconds"
    assert checkpoint_span({}, 5.0) is None
    assert checkpoint_span({start: 0.0, end: 0.0}, 5.0) is None
    assert checkpoint_span({start: 100.0, end: 103.5}, 200.0) == (100.0, 103.5)
    # In progress: the previous one ended before this one began.
    assert checkpoint_span({start: 100.0, end: 70.0}, 104.0) == (100.0, 104.0)
    assert checkpoint_span({start: 100.0, end: 70.0}, 90.0) == (100.0, 100.0)


def test_latencies_are_split_by_whether_a_span_overlaps_their_flight() -> None:
    timed = [
        (9.0, 0.5),  # answered before the span
        (9.8, 0.3),  # in flight when it began
        (10.5, 0.1),  # sent during it
        (12.0, 0.2),  # sent as it ended
        (12.1, 0.1),  # after
    ]
    inside, outside = split_by_spans(timed, [(10.0, 12.0)])
    assert inside == [0.3, 0.1, 0.2] and outside == [0.5, 0.1]
    assert split_by_spans(timed, []) == ([], [0.5, 0.3, 0.1, 0.2, 0.1])
    assert split_by_spans(timed, [(0.0, 1.0), (12.15, 13.0)]) == ([0.2, 0.1], [0.5, 0.3, 0.1])


def test_how_long_a_counter_has_kept_its_value() -> None:
    assert unchanged_for([]) == 0.0
    assert unchanged_for([(1.0, 5.0)]) == 0.0
    assert unchanged_for([(0.0, 1.0), (0.2, 3.0), (0.4, 3.0), (2.4, 3.0)]) == pytest.approx(2.2)
    # Moving at the last sample: not quiet at all.
    assert unchanged_for([(0.0, 1.0), (1.0, 1.0), (1.2, 2.0)]) == 0.0
