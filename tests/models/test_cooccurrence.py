"""ItemCooccurrence.learn_one against the plain definition of its pair updates."""

from __future__ import annotations

import random

from models.cooccurrence import ItemCooccurrence, Neighbours


def _reference(
    calls: list[tuple[list[tuple[int, float]], int, float]], gamma: float, alpha: float
) -> tuple[dict[int, dict[int, float]], dict[int, float]]:
    """Pairs and masses by the class docstring, one float addition at a time, in the
    order learn_one makes them (no pruning: the test keeps lists below the cap)."""
    pairs: dict[int, dict[int, float]] = {}
    mass: dict[int, float] = {}
    for history, item, weight in calls:
        total = 0.0
        decay = 1.0
        for h, w_h in reversed(history):
            if h != item and w_h > 0.0:
                w = min(weight, w_h) * decay
                row_h, row_item = pairs.setdefault(h, {}), pairs.setdefault(item, {})
                row_h[item] = row_h.get(item, 0.0) + w
                row_item[h] = row_item.get(h, 0.0) + w
                mass[h] = mass.get(h, 0.0) + w
                total += w
            decay *= gamma
        mass[item] = mass.get(item, 0.0) + total
    return pairs, mass


def test_learn_one_matches_the_plain_pair_updates_bit_for_bit() -> None:
    # Histories with repeated items (the same pair twice in one event) and items
    # whose lists grow past their first capacity while being updated (8 slots):
    # the updates go through memoryviews that must follow each grown array.
    rng = random.Random(3)
    calls = []
    for _ in range(3000):
        history = [(rng.randrange(60), rng.choice([0.3, 1.0, 0.6, 0.0])) for _ in range(20)]
        calls.append((history, rng.randrange(60), rng.choice([0.3, 1.0, 0.9])))
    co = ItemCooccurrence(max_neighbours=1000, gamma=0.9, alpha=0.5)
    for item in range(60):
        co.learn_one([], item, 0.0)  # registered, as the engine registers every item
    for history, item, weight in calls:
        co.learn_one(history, item, weight)
    pairs, mass = _reference(calls, 0.9, 0.5)
    for item in range(60):
        nb = co.neighbours[item]
        got = dict(zip(nb.keys[: nb.n].tolist(), nb.values[: nb.n].tolist(), strict=True))
        assert got == pairs.get(item, {})
        assert nb.slots == {h: i for i, h in enumerate(nb.keys[: nb.n].tolist())}
        assert co._mass[item] == mass.get(item, 0.0)
        assert co._norm[item] == (mass.get(item, 0.0) + 1.0) ** -0.5


def test_neighbours_add_accumulates_each_pair_in_order() -> None:
    nb = Neighbours()
    rng = random.Random(5)
    expected: dict[int, float] = {}
    for _ in range(500):
        item, w = rng.randrange(30), rng.random()
        nb.add(item, w)
        expected[item] = expected.get(item, 0.0) + w
    assert {h: nb.get(h) for h in expected} == expected
    assert nb.n == len(expected)
