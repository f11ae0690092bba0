"""The bench report: ratios to the raw loop, the bars and the text, on a made-up run.

Nothing here is timed.
"""

from __future__ import annotations

from tools.bench.report import add_ratios, bars, format_report
from tools.bench.stats import per_cpu_second


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
        "latency_p99_seconds": 0.14,
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
    assert "p50 30 ms, p95 80 ms, p99 140 ms" in text
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


def test_format_report_splits_the_latency_by_the_checkpoints() -> None:
    r = {**report(), "latency_checkpoints": 1, "latency_samples_during_checkpoints": 420,
         "latency_p99_during_checkpoints_seconds": 0.31,
         "latency_p99_outside_checkpoints_seconds": 0.12}
    text = format_report(add_ratios(r))
    assert ("model checkpoints during it: 1; p99 of the 420 recommendations in flight "
            "meanwhile 310 ms, of the others 120 ms") in text
    none = format_report(add_ratios({**report(), "latency_checkpoints": 0,
                                     "latency_p99_outside_checkpoints_seconds": 0.12}))
    assert "model checkpoints during it: 0, of the others 120 ms" in none


def test_format_report_survives_missing_figures() -> None:
    text = format_report(add_ratios({"events": 1000, "workers": 2}))
    assert "n/a" in text and "not measured" in text


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


def test_report_sets_each_worker_beside_the_single_worker_of_the_same_run() -> None:
    from tools.bench.report import format_report

    text = format_report({
        "events": 100, "workers": 2, "single_worker_events_per_cpu_second": 4000.0,
        "per_worker": [{"events_per_second": 900.0, "events_per_cpu_second": 4100.0,
                        "recommendations_per_second": 50.0}],
    })
    assert "one worker alone (same run)  4,000 events per CPU-second" in text
    assert "4,100 events per CPU-second (1.02x one worker alone)" in text
