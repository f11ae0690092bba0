"""The feedback loop end to end on the embedded broker.

Simulated MovieLens users react to the recommendations a real worker publishes;
their clicks carry the recommendation ids (some deliberately do not), and the
worker's metrics must credit every click and purchase to the right variant.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import orjson
import pytest

from tests.integration.conftest import consume, wait_for
from tests.shared_data import data_dir
from tools import simulate

pytestmark = pytest.mark.integration

VARIANTS = ("blend", "popularity", "explore")


@pytest.fixture(scope="module")
def population() -> simulate.Population:
    return simulate.Population.from_movielens(data_dir("movielens_latest_small"), max_users=90)


def run_simulation(
    worker, population: simulate.Population, organic: int, seed: int
) -> tuple[simulate.Simulation, simulate.Samples]:
    behaviour = simulate.Behaviour(id_share=0.8, warmup_cap=4)
    sim = simulate.Simulation(population, behaviour, seed=seed, run_id=f"it{seed}")
    url = f"{worker.web_url}/metrics"
    baseline = asyncio.run(
        simulate.drive_broker(
            sim, worker.settings, rate=150.0, duration=0.0, max_events=organic,
            drain_seconds=4.0, progress=False, metrics_url=url,
        )
    )
    assert baseline is not None
    final = simulate.wait_drained(url, sim.produced, timeout=60)
    return sim, simulate.subtract(final, baseline)


def test_clicks_and_purchases_are_attributed_per_variant(worker_factory, population) -> None:
    worker = worker_factory(experiment_variants=",".join(VARIANTS))
    sim, samples = run_simulation(worker, population, organic=700, seed=5)

    assert sim.received > 300 and sim.clicks > 50 and sim.purchases > 5
    assert worker.metric("feedback_events_total", outcome="processed") == sim.produced
    by_variant = simulate.Counts.from_metrics(samples, "variant")
    # Every recommendation published was counted as an exposure of its variant (the
    # topic is the truth: the simulated users stop reading before the last ones
    # arrive on a busy machine, so they saw a subset), and every variant got traffic.
    counted = {
        v: worker.metric("feedback_recommendation_exposures_total", variant=v) for v in VARIANTS
    }
    published = consume(
        worker.settings, worker.settings.topic_recommendations,
        until=lambda r: len(r) >= sum(counted.values()), timeout=60,
    )
    on_topic = Counter(orjson.loads(m.value)["variant"] for m in published)
    assert counted == dict(on_topic)
    # The measured run (warm-up subtracted) saw a subset of them.
    assert set(by_variant.exposures) == set(VARIANTS)
    assert all(n <= counted[v] for v, n in sim.by_variant.exposures.items())
    # Every click was credited: by its id when it carried one, else by item and window.
    # Whole-run counters: the warm-up's reactions may straddle the measured boundary.
    matched = {
        how: worker.metric("feedback_attributed_clicks_total", matched_by=how)
        for how in ("id", "window")
    }
    assert matched["id"] == sim.all_clicks_with_id
    assert matched["id"] + matched["window"] == sim.all_clicks
    assert sim.all_clicks_with_id < sim.all_clicks  # some clicks went without an id
    assert worker.metric("feedback_attribution_unmatched_total", type="click") == 0
    # Clicked recommendations per variant: at least what the users clicked in the
    # measured run, variant by variant (a window match may credit another showing).
    for variant in VARIANTS:
        truth = sim.by_variant.clicked[variant]
        assert truth > 0
        clicked = worker.metric("feedback_recommendations_clicked_total", variant=variant)
        assert truth - max(2, 0.05 * truth) <= clicked <= sim.all_clicks
    # Purchases never carry an id: credited by item and window to the clicked one.
    assert worker.metric("feedback_attributed_purchases_total") == sim.all_purchases
    converted = worker.metric("feedback_recommendations_converted_total")
    truth_converted = sum(sim.by_variant.converted.values())
    assert truth_converted - max(2, 0.05 * truth_converted) <= converted <= sim.all_purchases
    assert sum(by_variant.revenue.values()) > 0
    # Revenue is labelled by the purchases' currency (the simulator pays in EUR).
    revenue = worker.metric("feedback_attributed_revenue_total")
    assert revenue > 0
    assert worker.metric("feedback_attributed_revenue_total", currency="EUR") == revenue


def test_bandit_chooses_strategies_and_learns_from_clicks(worker_factory, population) -> None:
    worker = worker_factory(bandit=True)
    sim, samples = run_simulation(worker, population, organic=400, seed=6)

    chosen = simulate.sum_by(samples, "feedback_bandit_choices_total", "strategy")
    assert sum(chosen.values()) >= sim.received
    assert set(sim.by_strategy.exposures) <= set(VARIANTS)
    assert len(sim.by_strategy.exposures) >= 2  # it explores
    assert set(sim.by_variant.exposures) == {"bandit"}
    clicked = simulate.sum_by(samples, "feedback_recommendations_clicked_total", "strategy")
    assert sum(clicked.values()) > 0
    assert wait_for(lambda: worker.metric("feedback_bandit_posterior_mean_ctr") > 0, 10)
