"""The simulator's user model: pure parts, no broker."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from tools import simulate

RATINGS = [
    (user, f"m{item}", rating)
    for user, items in {
        "u1": [(1, 5.0), (2, 4.0), (3, 2.0), (4, 5.0)],
        "u2": [(1, 4.0), (2, 5.0), (4, 3.0), (5, 4.0)],
        "u3": [(2, 3.0), (3, 5.0), (5, 5.0), (1, 1.0)],
    }.items()
    for item, rating in items
]


def _rec(rec_id: str, items: list[str]) -> dict[str, object]:
    return {
        "recommendation_id": rec_id,
        "trigger_event_id": "t-o1",
        "user_id": "u1",
        "strategy": "blend",
        "variant": "blend",
        "event_time": "2024-01-01T00:00:00Z",
        "items": [{"item_id": i} for i in items],
    }


def test_click_probability_is_the_frequency_of_react_clicks() -> None:
    population = simulate.Population(RATINGS, min_item_ratings=1, factors=2)
    behaviour = simulate.Behaviour(warmup_cap=1, intent_horizon=30.0)
    items = ["m4", "m5", "m2", "m3"]
    expected = simulate.Simulation(population, behaviour, run_id="t").click_probability("u1", [
        {"item_id": i} for i in items
    ])
    trials, clicks = 4000, 0
    for n in range(trials):
        sim = simulate.Simulation(population, behaviour, run_id="t")  # no memory of clicks
        clicks += any(e["type"] == "click" for e in sim.react(_rec(f"r{n}", items)))
    se = math.sqrt(expected * (1 - expected) / trials)
    assert 0.1 < expected < 0.9
    assert clicks / trials == pytest.approx(expected, abs=4 * se)


def test_click_probability_skips_bought_items_and_discounts_reclicks() -> None:
    population = simulate.Population(RATINGS, min_item_ratings=1, factors=2)
    sim = simulate.Simulation(population, simulate.Behaviour(warmup_cap=1), run_id="t")
    one = [{"item_id": "m4"}]
    fresh = sim.click_probability("u1", one)
    assert fresh == pytest.approx(0.6 * population.preference("u1", "m4"))
    sim.clicked["u1"].add("m4")
    assert sim.click_probability("u1", one) == pytest.approx(0.1 * fresh)
    sim.bought["u1"].add("m4")
    assert sim.click_probability("u1", one) == 0.0


def test_expected_ctr_is_reported_per_variant() -> None:
    population = simulate.Population(RATINGS, min_item_ratings=1, factors=2)
    sim = simulate.Simulation(population, simulate.Behaviour(warmup_cap=1), run_id="t")
    items = ["m4", "m5"]
    before = sim.click_probability("u1", [{"item_id": i} for i in items])  # react may click
    sim.react(_rec("r1", items))
    result = simulate.report(sim, None, bandit=False, seconds=0.0, config={})
    assert result["expected_ctr_by_variant"] == {"blend": round(before, 4)}
    assert result["expected_ctr_best_order_by_variant"]["blend"] >= round(before, 4)


def test_the_best_order_puts_the_most_wanted_first() -> None:
    population = simulate.Population(RATINGS, min_item_ratings=1, factors=2)
    sim = simulate.Simulation(population, simulate.Behaviour(warmup_cap=1), run_id="t")
    liked, lukewarm = {"item_id": "m4"}, {"item_id": "m3"}  # 5 and 2 stars for u1
    best = sim.best_order_click_probability("u1", [lukewarm, liked])
    assert best == pytest.approx(sim.click_probability("u1", [liked, lukewarm]))
    assert best > sim.click_probability("u1", [lukewarm, liked])


def test_a_worker_that_dies_mid_run_is_one_line_and_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse
    import contextlib
    import subprocess
    import sys
    import urllib.error

    from stream.settings import Settings
    from tools import local
    from tools.cli import user_error
    from tools.simulate import cli

    dead = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    (tmp_path / "worker.log").write_text("x INFO started\nx ERROR processor crashed: boom\n")
    stack = local.LocalStack(
        Settings.from_env({}), tmp_path, alive, {8001: alive, 8002: dead}
    )

    @contextlib.contextmanager
    def fake_stack(*args: object, **kwargs: object) -> Iterator[local.LocalStack]:
        yield stack

    async def refused(*args: object) -> None:
        raise urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))

    monkeypatch.setattr(local, "local_stack", fake_stack)
    monkeypatch.setattr(cli, "drive_broker", refused)
    args = argparse.Namespace(state_dir="", json=True, workers=2, rate=1.0, duration=1.0,
                              events=0, drain=0.0)
    try:
        with pytest.raises(local.LocalStackError) as info:
            cli._run_embedded(args, None, {})  # type: ignore[arg-type]
        message, code = user_error(info.value)
        assert code == 1 and message is not None and "\n" not in message
        assert message.startswith("worker 1 (port 8002) exited with code 3")
        # every worker still alive: the error is not ours to explain
        stack.workers.pop(8002)
        with pytest.raises(urllib.error.URLError):
            cli._run_embedded(args, None, {})  # type: ignore[arg-type]
    finally:
        alive.kill()
        alive.wait()
