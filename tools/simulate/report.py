"""The report: per-variant rates with intervals, the comparison, the bandit's share."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from models.experiments import compare, rate_ratio
from tools.simulate.behaviour import Simulation
from tools.simulate.metrics import Counts, Samples, sum_by


def report(
    sim: Simulation,
    samples: Samples | None,
    bandit: bool,
    seconds: float,
    config: dict[str, Any],
) -> dict[str, Any]:
    """The JSON summary: per-variant rates with intervals, the comparison, the bandit share."""
    source = "worker_metrics" if samples is not None else "simulator"
    by_variant = (
        Counts.from_metrics(samples, "variant") if samples is not None
        else Counts.from_tally(sim.by_variant)
    )
    by_strategy = (
        Counts.from_metrics(samples, "strategy") if samples is not None
        else Counts.from_tally(sim.by_strategy)
    )
    # Under the bandit every user is in variant "bandit": the variants compared
    # are then the strategies it chooses among.
    primary = by_strategy if bandit else by_variant
    ctr, conv = primary.rates()
    out: dict[str, Any] = {
        "events": sim.events,
        "warmup_events": sim.warmed,
        "warmup_reactions": sim.warm_reactions,
        "organic_events": sim.organic,
        "clicks": sim.clicks,
        "clicks_with_recommendation_id": sim.clicks_with_id,
        "purchases": sim.purchases,
        "recommendations_received": sim.received,
        "source": source,
        "ctr_by_variant": {k: r.as_dict() for k, r in ctr.items()},
        "conversion_by_variant": {k: r.as_dict() for k, r in conv.items()},
        "revenue_by_variant": {k: round(v, 2) for k, v in sorted(primary.revenue.items())},
    }
    if samples is not None:
        out["worker"] = {
            "events_processed": round(sum(
                v for (n, labels), v in samples.items()
                if n == "feedback_events_total" and ("outcome", "processed") in labels
            )),
            "clicks_attributed": sum_by(samples, "feedback_attributed_clicks_total", "matched_by"),
            "unmatched": sum_by(samples, "feedback_attribution_unmatched_total", "reason"),
        }
    truth = sim.by_strategy if bandit else sim.by_variant
    truth_ctr, _ = Counts.from_tally(truth).rates()
    out["ctr_by_variant_simulator"] = {k: r.as_dict() for k, r in truth_ctr.items()}
    shown = {k: n for k, n in sorted(truth.exposures.items()) if n}
    out["expected_ctr_by_variant"] = {
        k: round(truth.expected_clicks[k] / n, 4) for k, n in shown.items()
    }
    out["expected_ctr_best_order_by_variant"] = {
        k: round(truth.best_order_clicks[k] / n, 4) for k, n in shown.items()
    }
    if "blend" in ctr and "popularity" in ctr:
        a, b = ctr["blend"], ctr["popularity"]
        ratio, lo, hi = rate_ratio(a.successes, a.trials, b.successes, b.trials)
        test = compare("blend", a.successes, a.trials, "popularity", b.successes, b.trials,
                       what="CTR")
        out["ctr_ratio_blend_vs_popularity"] = {
            "value": _num(ratio), "lower": _num(lo), "upper": _num(hi),
        }
        out["blend_vs_popularity"] = {
            "z": _num(test.z), "p_value": _num(test.p_value), "significant": test.significant,
            "statement": test.statement,
        }
    if bandit:
        best = max(ctr, key=lambda k: ctr[k].value) if ctr else None
        shares, n_tail, events_before = sim.last_quarter_shares()
        out["best_variant"] = best
        out["best_variant_share"] = round(shares.get(best, 0.0), 4) if best else None
        out["last_quarter"] = {
            "recommendations": n_tail,
            "after_events": events_before,
            "shares": {k: round(v, 4) for k, v in sorted(shares.items())},
        }
        quarters = []
        n = len(sim.log)
        for q in range(4):
            part = Counter(strategy for strategy, _, _ in sim.log[q * n // 4:(q + 1) * n // 4])
            total = sum(part.values()) or 1
            quarters.append({k: round(v / total, 4) for k, v in sorted(part.items())})
        out["shares_by_quarter"] = quarters
    out["seconds"] = round(seconds, 1)
    out["config"] = config
    return out


def _num(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 4)


def print_table(result: dict[str, Any]) -> None:
    print(
        f"events {result['events']:,} (organic {result['organic_events']:,}, clicks "
        f"{result['clicks']:,}, purchases {result['purchases']:,}); recommendations "
        f"{result['recommendations_received']:,}; figures from {result['source']}"
    )
    print(f"{'variant':<12}{'exposures':>10}  {'CTR [95% CI]':<26}{'conversion [95% CI]':<26}")
    for key, c in result["ctr_by_variant"].items():
        v = result["conversion_by_variant"][key]
        print(
            f"{key:<12}{c['count']:>10,}  "
            f"{c['value']:.4f} [{c['lower']:.4f}, {c['upper']:.4f}]    "
            f"{v['value']:.4f} [{v['lower']:.4f}, {v['upper']:.4f}]"
        )
    if "blend_vs_popularity" in result:
        print(result["blend_vs_popularity"]["statement"])
    if "best_variant" in result:
        q = result["last_quarter"]
        print(
            f"bandit: best strategy {result['best_variant']} got "
            f"{result['best_variant_share']:.1%} of the last {q['recommendations']:,} "
            f"recommendations (after {q['after_events']:,} events)"
        )
