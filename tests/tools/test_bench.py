"""The pure parts of the benchmark harness: percentiles, rate windows, ratios, the report.

Nothing here is timed: the harness's figures are checked on made-up samples.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from tools.bench import (
    Window,
    add_ratios,
    bars,
    combined,
    distinct_users,
    encode,
    format_report,
    main,
    per_cpu_second,
    percentile,
    ratio,
    time_at,
    value_at,
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


def test_ratio_guards() -> None:
    assert ratio(5.0, 10.0) == 0.5
    assert ratio(None, 10.0) is None
    assert ratio(5.0, None) is None
    assert ratio(5.0, 0.0) is None
    assert ratio(math.nan, 1.0) is None


def report() -> dict[str, object]:
    return {
        "events": 100_000,
        "partitions": 4,
        "workers": 1,
        "dataset": "demo",
        "raw_aiokafka_events_per_second": 80_000.0,
        "faust_decode_only_events_per_second": 10_000.0,
        "faust_per_event_send_events_per_second": 4_000.0,
        "events_per_second": 12_000.0,
        "recommendations_per_second": 2_000.0,
        "latency_p50_seconds": 0.03,
        "latency_p95_seconds": 0.08,
        "latency_p99_seconds": 0.2,
        "latency_offered_events_per_second": 6_000.0,
        "latency_samples": 900,
        "peak_rss_bytes": 300 * 2**20,
        "memory_users": 100_000,
        "rss_users_bytes": 700 * 2**20,
        "memory_bytes_per_user": 4194.3,
    }


def test_ratios_are_fractions_of_the_raw_loop() -> None:
    r = add_ratios(report())
    assert r["events_vs_raw"] == 0.15
    assert r["recommendations_vs_raw"] == 0.025
    assert r["faust_decode_only_events_vs_raw"] == 0.125
    assert r["faust_per_event_send_events_vs_raw"] == 0.05
    assert r["events_vs_faust_per_event_send"] == 3.0
    assert r["events_vs_faust_decode_only"] == 1.2


def test_ratios_without_a_ceiling_are_none() -> None:
    r = add_ratios({"events_per_second": 10.0})
    assert r["events_vs_raw"] is None
    assert r["events_vs_faust_per_event_send"] is None


def test_bars() -> None:
    r = add_ratios(report())
    assert bars(r) == {
        "events_per_second": True,
        "events_vs_faust_per_event_send": True,
        "latency_p99_seconds": True,
        "pull_latency_p99_seconds": None,  # not measured in this report
    }
    slow = add_ratios({**report(), "events_per_second": 9_000.0, "latency_p99_seconds": 0.3,
                       "pull_latency_p99_seconds": 0.06})  # fmt: skip
    assert bars(slow) == {
        "events_per_second": False,
        "events_vs_faust_per_event_send": False,  # 9,000 / 4,000 = 2.25
        "latency_p99_seconds": False,
        "pull_latency_p99_seconds": False,
    }
    assert bars({**r, "pull_latency_p99_seconds": 0.02})["pull_latency_p99_seconds"] is True
    assert bars({})["latency_p99_seconds"] is None


def test_format_report_shows_rates_and_ratios() -> None:
    text = format_report(add_ratios(report()))
    assert "raw aiokafka loop            80,000/s" in text
    assert "12,000/s  (0.15x raw)" in text
    assert "vs Faust per-event send      3.00x" in text
    assert "p50 30 ms, p95 80 ms, p99 200 ms" in text
    assert "RSS after 100,000 more distinct users 700 MiB" in text
    assert "bars: events_per_second met" in text


def test_format_report_shows_the_memory_bound() -> None:
    r = {**report(), "eviction_users": 100_000, "eviction_span_seconds": 540 * 86_400.0,
         "eviction_retention_seconds": 180 * 86_400.0, "rss_eviction_start_bytes": 700 * 2**20,
         "rss_eviction_end_bytes": 720 * 2**20, "users_evicted": 90_000,
         "users_tracked_after_eviction": 33_000, "eviction_rss_growth_bytes_per_user": 12.0}
    text = format_report(add_ratios(r))
    assert ("memory bound: 100,000 users over 540 days (retention 180 days): "
            "RSS 700 MiB -> 720 MiB, 90,000 users evicted, 33,000 held, "
            "12 bytes per user after the first horizon") in text


def test_distinct_users_pinned_in_time_and_prefixed() -> None:
    events = [
        {"type": "click", "event_id": f"e{i}", "user_id": "u", "item_id": f"i{i}",
         "timestamp": "2011-01-01T00:00:00Z"}
        for i in range(3)
    ]
    a = list(distinct_users(events, 4, seed=3, at=1_300_000_000.0, prefix="x"))
    assert {e["timestamp"] for e in a} == {"2011-03-13T07:06:40Z"}
    assert {e["user_id"] for e in a}.isdisjoint(e["user_id"] for e in distinct_users(events, 4, 3))


def test_format_report_survives_missing_figures() -> None:
    text = format_report(add_ratios({"events": 1000, "workers": 2}))
    assert "n/a" in text and "not measured" in text


def test_distinct_users_one_event_each_and_seeded() -> None:
    events = [
        {"type": "click", "event_id": f"e{i}", "user_id": "u", "item_id": f"i{i}",
         "timestamp": "2011-01-01T00:00:00Z"}
        for i in range(10)
    ]
    a = list(distinct_users(events, 25, seed=3))
    assert len({e["user_id"] for e in a}) == 25
    assert len({e["event_id"] for e in a}) == 25
    assert a == list(distinct_users(events, 25, seed=3))
    assert [e["item_id"] for e in a] != [e["item_id"] for e in distinct_users(events, 25, seed=4)]


def test_encode_routes_by_type_and_keys_by_user() -> None:
    event = {"type": "purchase", "event_id": "e", "user_id": "ann", "item_id": "x"}
    [(topic, key, value)] = encode([event], {"purchase": "p-topic"}.__getitem__)
    assert topic == "p-topic" and key == b"ann" and value.startswith(b"{")


def test_cli_refuses_unknown_references() -> None:
    assert main(["--references", "raw,bogus"]) == 2
    assert main(["--events", "10"]) == 2


def test_per_cpu_second_figures() -> None:
    assert per_cpu_second(900.0, 0.5) == 1800.0
    assert per_cpu_second(900.0, 0.0) is None
    assert per_cpu_second(None, 1.0) is None
    r = add_ratios({
        "raw_aiokafka_events_per_cpu_second": 40_000.0,
        "events_per_cpu_second": 2_000.0,
        "faust_per_event_send_events_per_cpu_second": 4_000.0,
    })
    assert r["events_per_cpu_second_vs_raw"] == 0.05
    assert r["faust_per_event_send_events_per_cpu_second_vs_raw"] == 0.1
    assert r["faust_decode_only_events_per_cpu_second_vs_raw"] is None
    assert "worker 2,000/s  (0.05x raw)" in format_report(r)
