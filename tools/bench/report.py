"""The bench report: ratios to the raw loop, the bars, and the text form."""

from __future__ import annotations

import math
from typing import Any

from tools.bench.stats import ratio, rounded

# Rates reported as a fraction of the raw aiokafka loop.
RATIO_KEYS = (
    "events_per_second",
    "recommendations_per_second",
    "faust_decode_only_events_per_second",
    "faust_per_event_send_events_per_second",
)


def add_ratios(report: dict[str, Any]) -> dict[str, Any]:
    """Every rate as a fraction of the raw loop, and the worker against the Faust agents."""
    raw = report.get("raw_aiokafka_events_per_second")
    out = dict(report)
    for key in RATIO_KEYS:
        out[f"{key.removesuffix('_per_second')}_vs_raw"] = rounded(ratio(report.get(key), raw))
    events = report.get("events_per_second")
    out["events_vs_faust_per_event_send"] = rounded(
        ratio(events, report.get("faust_per_event_send_events_per_second"))
    )
    out["events_vs_faust_decode_only"] = rounded(
        ratio(events, report.get("faust_decode_only_events_per_second"))
    )
    # The same per CPU-second: what each loop costs, whatever else the machine runs.
    raw_cpu = report.get("raw_aiokafka_events_per_cpu_second")
    for key in ("events", "faust_decode_only_events", "faust_per_event_send_events"):
        out[f"{key}_per_cpu_second_vs_raw"] = rounded(
            ratio(report.get(f"{key}_per_cpu_second"), raw_cpu)
        )
    return out



BARS = {
    "events_per_second": (">=", 10_000.0),
    "events_vs_faust_per_event_send": (">=", 2.5),
    "latency_p99_seconds": ("<=", 0.15),
    "pull_latency_p99_seconds": ("<=", 0.05),
}


def bars(report: dict[str, Any]) -> dict[str, bool | None]:
    """Which of the :data:`BARS` (throughput, overhead, latency) the report meets.

    ``None``: not measured.
    """
    met: dict[str, bool | None] = {}
    for key, (op, limit) in BARS.items():
        value = report.get(key)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            met[key] = None
        else:
            met[key] = value >= limit if op == ">=" else value <= limit
    return met


def fmt_rate(x: float | None) -> str:
    return "n/a" if x is None else f"{x:,.0f}/s"


def _fmt_ratio(x: float | None) -> str:
    return "" if x is None else f"  ({x:.2f}x raw)"


def _fmt_bytes(x: float | None) -> str:
    return "n/a" if x is None else f"{x / 2**20:,.0f} MiB"


def format_report(report: dict[str, Any]) -> str:
    """The human-readable report: rates with their ratio to the raw loop."""
    r = report
    lines = [
        f"feedback-stream bench: {r.get('events') or 0:,} events, "
        f"{r.get('partitions')} partitions, {r.get('workers')} worker(s), "
        f"dataset {r.get('dataset')}",
        "ceilings (same events, same run)",
        f"  raw aiokafka loop            {fmt_rate(r.get('raw_aiokafka_events_per_second'))}",
        f"  Faust agent, decode only     "
        f"{fmt_rate(r.get('faust_decode_only_events_per_second'))}"
        f"{_fmt_ratio(r.get('faust_decode_only_events_vs_raw'))}",
        f"  Faust agent, per-event send  "
        f"{fmt_rate(r.get('faust_per_event_send_events_per_second'))}"
        f"{_fmt_ratio(r.get('faust_per_event_send_events_vs_raw'))}",
        "worker, all models on",
        f"  events processed whole       {fmt_rate(r.get('events_per_second'))}"
        f"{_fmt_ratio(r.get('events_vs_raw'))}",
        f"  input events read            {fmt_rate(r.get('input_events_per_second'))}"
        + (f" (item owners {r['item_owner_catch_up_seconds']:,.1f} s behind at the end)"
           if r.get("item_owner_catch_up_seconds") is not None else ""),
        f"  recommendations              {fmt_rate(r.get('recommendations_per_second'))}"
        f"{_fmt_ratio(r.get('recommendations_vs_raw'))}",
    ]
    vs_send = r.get("events_vs_faust_per_event_send")
    if vs_send is not None:
        lines.append(f"  vs Faust per-event send      {vs_send:.2f}x")
    single = r.get("single_worker_events_per_cpu_second")
    if single is not None:
        lines.append(f"  one worker alone (same run)  {single:,.0f} events per CPU-second")
    for i, w in enumerate(r.get("per_worker") or []):
        per_cpu = w.get("events_per_cpu_second")
        lines.append(
            f"  worker {i}: {fmt_rate(w.get('events_per_second'))} in, "
            + (f"{per_cpu:,.0f} events per CPU-second" if per_cpu is not None else "")
            + (f" ({per_cpu / single:.2f}x one worker alone)" if per_cpu and single else "")
            + f", {fmt_rate(w.get('recommendations_per_second'))} recommendations, "
            f"peak RSS {_fmt_bytes(w.get('peak_rss_bytes'))}"
        )
    if r.get("raw_aiokafka_events_per_cpu_second") or r.get("events_per_cpu_second"):
        lines.append(
            "per CPU-second (what each loop costs, whatever else the machine runs): "
            f"raw {fmt_rate(r.get('raw_aiokafka_events_per_cpu_second'))}, "
            f"Faust decode-only {fmt_rate(r.get('faust_decode_only_events_per_cpu_second'))}, "
            "Faust per-event send "
            f"{fmt_rate(r.get('faust_per_event_send_events_per_cpu_second'))}, "
            f"worker {fmt_rate(r.get('events_per_cpu_second'))}"
            + _fmt_ratio(r.get("events_per_cpu_second_vs_raw"))
        )
    lat = [r.get(f"latency_p{p}_seconds") for p in (50, 95, 99)]
    if all(isinstance(x, float | int) and not math.isnan(x) for x in lat):
        lines.append(
            f"latency at {fmt_rate(r.get('latency_offered_events_per_second'))} offered "
            f"({r.get('latency_samples', 0):,} recommendations): "
            + ", ".join(
                f"p{p} {float(x or 0) * 1000:.0f} ms"
                for p, x in zip((50, 95, 99), lat, strict=True)
            )
            + (f"; worker CPU {r['latency_worker_cpu_ms_per_event']:.2f} ms per event"
               if r.get("latency_worker_cpu_ms_per_event") is not None else "")
        )
    if r.get("latency_checkpoints") is not None:
        lines.append(
            f"  model checkpoints during it: {r['latency_checkpoints']}"
            + (f"; p99 of the {r['latency_samples_during_checkpoints']:,} recommendations "
               f"in flight meanwhile "
               f"{float(r['latency_p99_during_checkpoints_seconds']) * 1000:.0f} ms"
               if r.get("latency_p99_during_checkpoints_seconds") is not None else "")
            + (f", of the others "
               f"{float(r['latency_p99_outside_checkpoints_seconds']) * 1000:.0f} ms"
               if r.get("latency_p99_outside_checkpoints_seconds") is not None else "")
        )
    if r.get("pull_samples"):
        lines.append(
            f"pull API at {r['pull_requests_per_second']:g} requests/s during that load "
            f"({r['pull_samples']:,} answers, {r.get('pull_failures', 0)} failed): "
            f"p50 {float(r['pull_latency_p50_seconds']) * 1000:.0f} ms, "
            f"p99 {float(r['pull_latency_p99_seconds']) * 1000:.0f} ms"
        )
    if r.get("checkpoint_mean_seconds"):
        lines.append(
            f"model checkpoints: {r.get('checkpoints')}, "
            f"{r['checkpoint_mean_seconds'] * 1000:.0f} ms each on average (in a forked "
            "child: the loop waits for the fork only)"
        )
    lines.append(f"peak RSS {_fmt_bytes(r.get('peak_rss_bytes'))}")
    users = r.get("memory_users")
    if users:
        per_user = r.get("memory_bytes_per_user")
        lines.append(
            f"RSS after {users:,} more distinct users {_fmt_bytes(r.get('rss_users_bytes'))}"
            + (f" (~{per_user:,.0f} bytes per user)" if per_user else "")
        )
    bound = r.get("eviction_users")
    if bound:
        growth = r.get("eviction_rss_growth_bytes_per_user")
        lines.append(
            f"memory bound: {bound:,} users over {r.get('eviction_span_seconds', 0) / 86_400:,.0f}"
            f" days (retention {r.get('eviction_retention_seconds', 0) / 86_400:,.0f} days): "
            f"RSS {_fmt_bytes(r.get('rss_eviction_start_bytes'))} -> "
            f"{_fmt_bytes(r.get('rss_eviction_end_bytes'))}, "
            f"{r.get('users_evicted', 0):,} users evicted, "
            f"{r.get('users_tracked_after_eviction', 0):,} held"
            + (f", {growth:,.0f} bytes per user after the first horizon" if growth is not None
               else "")
        )
    met = bars(r)
    lines.append(
        "bars: "
        + ", ".join(
            f"{k} {'met' if v else 'NOT met' if v is not None else 'not measured'}"
            for k, v in met.items()
        )
    )
    return "\n".join(lines)

