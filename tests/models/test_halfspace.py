"""Half-space trees as arrays: River's trees and scores, per event and per batch."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from river import anomaly

from models.halfspace import HalfSpaceForest

TREES, HEIGHT, WINDOW, SEED = 10, 6, 250, 7


def stream(n: int, seed: int = 0) -> np.ndarray:
    """Clustered events in [0, 1] with an outlier now and then."""
    rng = np.random.default_rng(seed)
    x = np.clip(rng.normal(0.45, 0.12, (n, 5)), 0.0, 1.0)
    x[::97, 2] = 0.999
    x[::131, [0, 4]] = 0.01
    return x


def river_scores(x: np.ndarray, **params: int) -> tuple[anomaly.HalfSpaceTrees, list[float]]:
    """River's public calls: score each event, then learn it."""
    river = anomaly.HalfSpaceTrees(**params)
    scores = []
    for row in x.tolist():
        d = dict(enumerate(row))
        scores.append(float(river.score_one(d)))
        river.learn_one(d)
    return river, scores


def heap_nodes(river_tree: object) -> dict[int, object]:
    """River's nodes by heap index (children of ``i`` at ``2i+1``, ``2i+2``)."""
    out, stack = {}, [(river_tree, 0)]
    while stack:
        node, i = stack.pop()
        out[i] = node
        if hasattr(node, "feature"):
            stack += [(node.children[0], 2 * i + 1), (node.children[1], 2 * i + 2)]
    return out


def test_trees_are_rivers_trees() -> None:
    forest = HalfSpaceForest(5, TREES, HEIGHT, WINDOW, seed=SEED)
    river = anomaly.HalfSpaceTrees(n_trees=TREES, height=HEIGHT, window_size=WINDOW, seed=SEED)
    river.learn_one(dict(enumerate([0.5] * 5)))  # River draws its trees on the first event
    for t, tree in enumerate(river.trees):
        nodes = heap_nodes(tree)
        assert len(nodes) == forest.n_nodes
        for i in range(2**HEIGHT - 1):
            assert (forest.feature[t, i], forest.threshold[t, i]) == (
                nodes[i].feature,
                nodes[i].threshold,
            )


def test_scores_and_masses_equal_rivers_one_event_at_a_time() -> None:
    x = stream(3000)
    params = dict(n_trees=TREES, height=HEIGHT, window_size=WINDOW, seed=SEED)
    river, expected = river_scores(x, **params)
    forest = HalfSpaceForest(5, TREES, HEIGHT, WINDOW, seed=SEED)
    got = [forest.score_learn_one(row) for row in x.tolist()]
    assert got == expected  # to the last bit
    assert max(expected) > 0.5 and expected[WINDOW:].count(0.0) == 0  # scores that matter
    for t, tree in enumerate(river.trees):
        nodes = heap_nodes(tree)
        assert [nodes[i].r_mass for i in range(forest.n_nodes)] == forest.r_mass[t].tolist()
        assert [nodes[i].l_mass for i in range(forest.n_nodes)] == forest.l_mass[t].tolist()
    assert forest.counter == river.counter


@pytest.mark.parametrize("batch", [1, 37, 250, 600, 3000])
def test_a_batch_scores_as_one_event_at_a_time(batch: int) -> None:
    # Batches that end inside a window, on its edge and across several windows.
    x = stream(3000, seed=1)
    one = HalfSpaceForest(5, TREES, HEIGHT, WINDOW, seed=SEED)
    expected = [one.score_learn_one(row) for row in x.tolist()]
    many = HalfSpaceForest(5, TREES, HEIGHT, WINDOW, seed=SEED)
    got = np.concatenate([many.score_learn_many(x[i : i + batch]) for i in range(0, 3000, batch)])
    assert got.tolist() == expected
    assert np.array_equal(many.r_mass, one.r_mass) and many.leaf_counts == one.leaf_counts


def test_score_one_and_learn_one_apart_equal_river() -> None:
    x = stream(800, seed=2)
    _, expected = river_scores(x, n_trees=3, height=4, window_size=50, seed=3)
    forest = HalfSpaceForest(5, 3, 4, 50, seed=3)
    got = []
    for row in x.tolist():
        got.append(forest.score_one(row))
        forest.learn_one(row)
    assert got == expected


def test_pickled_forest_goes_on_as_the_original() -> None:
    x = stream(1000, seed=3)
    forest = HalfSpaceForest(5, TREES, HEIGHT, WINDOW, seed=SEED)
    forest.score_learn_many(x[:610])
    copy = pickle.loads(pickle.dumps(forest))
    assert not any(k.startswith("_") for k in forest.__getstate__())
    assert copy.score_learn_many(x[610:]).tolist() == forest.score_learn_many(x[610:]).tolist()


def test_batch_of_the_wrong_shape_is_refused() -> None:
    forest = HalfSpaceForest(5, 2, 3, 10, seed=0)
    with pytest.raises(ValueError, match=r"expected shape \(n, 5\)"):
        forest.score_learn_many(np.zeros((4, 3)))
