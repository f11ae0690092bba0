"""The one module that reads or writes River's private attributes (river==0.26.1, pinned).

Each function says which River behaviour it works around. Re-check them all when River
is upgraded: ``tests/models/test_alerts.py`` and ``tests/models/test_sentiment.py`` pin
them against River's public calls.
"""

from __future__ import annotations

from typing import Any

from river import anomaly


def set_weight(classifier: Any, feature: str, value: float) -> None:
    """Start ``classifier`` (a River linear model) with ``value`` as ``feature``'s weight.

    River's linear models take no initial weights (``initializer`` draws every weight
    alike), so a prior on one feature (the lexicon score) is written into ``_weights``.
    """
    classifier._weights[feature] = value


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
