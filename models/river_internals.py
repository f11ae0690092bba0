"""The one module that reads or writes River's private attributes (river==0.26.1, pinned).

Each function says which River behaviour it works around. Re-check them all when River
is upgraded: ``tests/models/test_alerts.py`` and ``tests/models/test_sentiment.py`` pin
them against River's public calls.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from river import anomaly

from models.halfspace import HalfSpaceForest


def set_weight(classifier: Any, feature: str, value: float) -> None:
    """Start ``classifier`` (a River linear model) with ``value`` as ``feature``'s weight.

    River's linear models take no initial weights (``initializer`` draws every weight
    alike), so a prior on one feature (the lexicon score) is written into ``_weights``.
    """
    classifier._weights[feature] = value


def forest_from_river(trees: anomaly.HalfSpaceTrees) -> HalfSpaceForest | None:
    """River's ``HalfSpaceTrees`` (trees, masses, window position) as a :class:`HalfSpaceForest`.

    Reads River's tree nodes and window state (``_first_window``, ``counter``) so that
    a checkpoint pickled with River's detector goes on with the same trees and
    masses. ``None`` if River has not built its trees yet (it does on the first
    event). The features must be ``0 .. n - 1``, as ``BehaviourAnomaly`` names them.
    """
    if not trees.trees:
        return None
    n_features = len(trees.limits)
    if sorted(trees.limits) != list(range(n_features)):
        raise ValueError(f"features must be 0 .. n - 1, got {sorted(trees.limits)}")
    height = trees.height
    n_trees = len(trees.trees)
    n_internal, n_leaves = 2**height - 1, 2**height
    feature = np.zeros((n_trees, n_internal), dtype=np.intp)
    threshold = np.zeros((n_trees, n_internal))
    r_mass = np.zeros((n_trees, 2 * n_leaves - 1), dtype=np.int64)
    leaf_counts = [[0] * n_leaves for _ in range(n_trees)]
    for t, root in enumerate(trees.trees):
        stack = [(root, 0)]  # River's node, its heap index
        while stack:
            node, i = stack.pop()
            r_mass[t, i] = node.r_mass
            if i >= n_internal:
                leaf_counts[t][i - n_internal] = node.l_mass
                continue
            feature[t, i] = node.feature
            threshold[t, i] = node.threshold
            left, right = node.children
            stack += [(left, 2 * i + 1), (right, 2 * i + 2)]
    forest = HalfSpaceForest.__new__(HalfSpaceForest)
    forest.__setstate__(
        {
            "n_features": n_features,
            "n_trees": n_trees,
            "height": height,
            "window_size": trees.window_size,
            "seed": trees.seed,
            "n_nodes": 2 * n_leaves - 1,
            "n_leaves": n_leaves,
            "feature": feature,
            "threshold": threshold,
            "r_mass": r_mass,
            "leaf_counts": leaf_counts,
            "counter": trees.counter,
            "first_window": trees._first_window,
        }
    )
    return forest


def score_then_learn(
    trees: anomaly.HalfSpaceTrees, x: dict[int, float], score: bool
) -> float | None:
    """``trees.score_one(x)`` (if ``score``) then ``trees.learn_one(x)``, in one walk per tree.

    River's ``HalfSpaceTrees`` walks every tree twice per event (score, then learn) and
    has no combined call; this reads its window state (``_first_window``,
    ``_tree_nodes``, ``_max_score``) to do both in one walk.

    With every feature present both of River's walks follow the same
    root-to-leaf path (the split tests read only ``x``), so one walk adds up
    the score from the reference masses (``r_mass``, which learning does not
    touch) and counts ``x`` in the latest masses (``l_mass``): the same figures
    at half the cost. Pinned against River's own calls in the unit tests.

    The detector runs on :class:`~models.halfspace.HalfSpaceForest` now; this stays
    as the River baseline that ``tools/anomaly_probe`` times it against.
    """
    if not trees.trees or len(x) != len(trees.limits):
        # First call (River builds the trees) or a different feature set: River's own path.
        value = float(trees.score_one(x)) if score else None
        trees.learn_one(x)
        return value
    height = trees.height
    size_limit = 0.1 * trees.window_size
    scoring = score and not trees._first_window
    total = 0.0
    for root in trees.trees:
        node = root
        depth_pow = 1
        tree_score = 0.0
        walking = scoring
        for _ in range(height):
            if walking:
                r = node.r_mass
                tree_score += r * depth_pow
                if r < size_limit:
                    walking = False  # River's score stops here; learning goes on down
                else:
                    depth_pow <<= 1
            node.l_mass += 1
            c = node.children
            node = c[0] if x[node.feature] < node.threshold else c[1]
        if walking:
            tree_score += node.r_mass * depth_pow
        node.l_mass += 1
        total += tree_score
    trees.counter += 1
    if trees.counter == trees.window_size:  # River's window pivot
        for nodes in trees._tree_nodes:
            for node in nodes:
                node.r_mass = node.l_mass
                node.l_mass = 0
        trees._first_window = False
        trees.counter = 0
    if not score:
        return None
    if not scoring:
        return 0.0  # River scores 0 during its first window
    return float(1 - total / trees._max_score)
