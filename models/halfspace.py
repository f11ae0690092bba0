"""Half-space trees as numpy arrays: River's ``HalfSpaceTrees``, scored per event or per batch.

The forest is River's algorithm (Tan, Ting and Liu 2011, as written in
``river.anomaly.HalfSpaceTrees``, river 0.26) with the trees stored as arrays in
heap order (node ``i`` has children ``2i+1`` and ``2i+2``, leaves at depth
``height``): per tree and internal node the split feature and split value, per
tree and node the reference mass ``r_mass`` (the previous window's counts, which
scoring reads) and the latest mass ``l_mass`` (the current window's counts,
which learning writes). Every ``window_size`` learnt events the latest masses
become the reference ones.

Two facts make it cheap. Every event passes through exactly one leaf per tree,
so the latest mass of a node is the sum of its leaves' counts: learning counts
leaves only (one increment per tree) and the inner nodes' masses are summed at
the window swap. And a tree's score depends only on the leaf an event reaches
and on the reference masses, which are fixed for a whole window: the score of
every leaf is computed once per window, and scoring an event is finding its
leaves (all split tests at once, then one small matrix product that picks the
leaf whose path agrees with every test) and adding up their scores.

Scoring reads only the reference masses and learning writes only the latest
ones, so within one window the order of score and learn does not matter to any
score: a batch of events that does not cross a window boundary is scored at
once and learnt with one ``np.bincount``, with the same scores as scoring then
learning each event in turn. :meth:`HalfSpaceForest.score_learn_many` cuts a
batch at the window boundaries to keep that exact.

The trees are drawn exactly as River draws them (the same ``random.Random(seed)``
calls in the same order), so with the same seed the scores equal River's: the
masses are integers and each score is an integer sum divided once, so they are
equal to the last bit, not only close. Every feature must be present in every
event (River's route for a missing feature is not reproduced).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["HalfSpaceForest"]

# River's padding of each split point away from its cell's edges.
PADDING = 0.15


class HalfSpaceForest:
    """Half-space trees over features in [0, 1], with River's scores.

    Parameters
    ----------
    n_features
        Features per event (each in [0, 1]).
    n_trees, height, window_size, seed
        As River's ``HalfSpaceTrees``: ``height`` splits from root to leaf,
        masses swapped every ``window_size`` learnt events.

    Examples
    --------
    >>> forest = HalfSpaceForest(n_features=2, n_trees=5, height=4, window_size=20, seed=1)
    >>> rng = np.random.default_rng(0)
    >>> for _ in range(40):
    ...     _ = forest.score_learn_one(rng.uniform(0.4, 0.6, 2).tolist())
    >>> usual = forest.score_learn_one([0.5, 0.5])
    >>> odd = forest.score_learn_one([0.02, 0.97])
    >>> odd > usual
    True
    >>> scores = forest.score_learn_many(rng.uniform(0.4, 0.6, (30, 2)))  # 30 at once
    >>> scores.shape
    (30,)
    """

    def __init__(
        self,
        n_features: int,
        n_trees: int = 10,
        height: int = 8,
        window_size: int = 250,
        seed: int | None = None,
    ) -> None:
        if n_features < 1 or n_trees < 1 or height < 1 or window_size < 1:
            raise ValueError("n_features, n_trees, height and window_size must be >= 1")
        self.n_features = n_features
        self.n_trees = n_trees
        self.height = height
        self.window_size = window_size
        self.seed = seed
        n_internal = 2**height - 1
        self.n_nodes = 2 ** (height + 1) - 1
        self.feature = np.zeros((n_trees, n_internal), dtype=np.intp)
        self.threshold = np.zeros((n_trees, n_internal))
        rng = random.Random(seed)
        for t in range(n_trees):
            self._grow(t, 0, height, [(0.0, 1.0)] * n_features, rng)
        self.n_leaves = 2**height
        self.r_mass = np.zeros((n_trees, self.n_nodes), dtype=np.int64)
        # The current window's count per tree and leaf (``l_mass`` sums them up the
        # tree). Python lists: the per-event walk increments them one at a time.
        self.leaf_counts = [[0] * self.n_leaves for _ in range(n_trees)]
        self.counter = 0  # events learnt in the current window
        self.first_window = True  # no reference masses yet: scores are 0
        self._derive()

    def _grow(
        self, tree: int, node: int, height: int, limits: list[tuple[float, float]], rng: Any
    ) -> None:
        # River's make_padded_tree: the same rng calls in the same (depth-first) order.
        if height == 0:
            return
        on = rng.choices(population=list(range(len(limits))), weights=[b - a for a, b in limits])[0]
        a, b = limits[on]
        at = rng.uniform(a + PADDING * (b - a), b - PADDING * (b - a))
        self.feature[tree, node] = on
        self.threshold[tree, node] = at
        limits[on] = (a, at)
        self._grow(tree, 2 * node + 1, height - 1, limits, rng)
        limits[on] = (at, b)
        self._grow(tree, 2 * node + 2, height - 1, limits, rng)
        limits[on] = (a, b)

    def _derive(self) -> None:
        """Arrays computed from the trees and the reference masses (not pickled)."""
        h, n_internal = self.height, 2**self.height - 1
        self._flat_feature = self.feature.ravel()
        self._flat_threshold = self.threshold.ravel()
        # Each leaf's root-to-leaf path: node indices, depth 0 first.
        paths = np.empty((self.n_leaves, h + 1), dtype=np.intp)
        paths[:, h] = n_internal + np.arange(self.n_leaves)
        for d in range(h - 1, -1, -1):
            paths[:, d] = (paths[:, d + 1] - 1) // 2
        self._leaf_paths = paths
        self._internal_offset = np.arange(self.n_trees, dtype=np.intp) * n_internal
        self._leaf_offset = np.arange(self.n_trees, dtype=np.intp) * self.n_leaves
        self._max_score = self.n_trees * self.window_size * (2 ** (h + 1) - 1)
        self._new_reference()

    def _new_reference(self) -> None:
        """Leaf scores for the reference masses, as an array (batches) and per tree (walks)."""
        self._leaf_score = self._leaf_scores()
        self._walk = list(
            zip(
                self.feature.tolist(),
                self.threshold.tolist(),
                self._leaf_score.reshape(self.n_trees, -1).tolist(),
                self.leaf_counts,
                strict=True,
            )
        )

    def _leaf_scores(self) -> np.ndarray:
        """Each leaf's tree score under the reference masses (an integer per tree and leaf)."""
        # River's walk adds r_mass * 2**depth down the path and stops after the
        # first node whose r_mass is below the size limit (0.1 of the window).
        r = self.r_mass[:, self._leaf_paths]  # (trees, leaves, depth)
        small = r < 0.1 * self.window_size
        walked = np.ones(r.shape, dtype=bool)
        walked[..., 1:] = ~np.logical_or.accumulate(small[..., :-1], axis=-1)
        depth_pow = 2 ** np.arange(self.height + 1, dtype=np.int64)
        return (np.where(walked, r, 0) @ depth_pow).ravel()

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._derive()

    @property
    def l_mass(self) -> np.ndarray:
        """The current window's mass of every node, ``(n_trees, n_nodes)`` (River's ``l_mass``)."""
        return self._node_masses(np.array(self.leaf_counts, dtype=np.int64))

    def _node_masses(self, leaf_mass: np.ndarray) -> np.ndarray:
        masses = np.zeros((self.n_trees, self.n_nodes), dtype=np.int64)
        first = 2**self.height - 1
        masses[:, first:] = leaf_mass
        for d in range(self.height - 1, -1, -1):
            nodes = np.arange(2**d - 1, 2 ** (d + 1) - 1)
            masses[:, nodes] = masses[:, 2 * nodes + 1] + masses[:, 2 * nodes + 2]
        return masses

    def leaves(self, x: np.ndarray) -> np.ndarray:
        """Flat leaf indices (tree-major) reached by each event of ``x`` (``(n, n_features)``).

        The result is ``(n, n_trees)``, leaf ``j`` of tree ``t`` as ``t * 2**height + j``.
        """
        # As River: left when the value is below the split (so NaN goes right).
        left = x[:, self._flat_feature] < self._flat_threshold  # every split test at once
        rows = np.arange(x.shape[0])[:, None]
        node = np.zeros((x.shape[0], self.n_trees), dtype=np.intp)
        for _ in range(self.height):
            node = 2 * node + 2 - left[rows, self._internal_offset + node]
        return node - (2**self.height - 1) + self._leaf_offset

    def _learn_leaves(self, leaves: np.ndarray) -> None:
        counts = np.bincount(leaves.ravel(), minlength=self.n_trees * self.n_leaves)
        for row, add in zip(
            self.leaf_counts, counts.reshape(self.n_trees, -1).tolist(), strict=True
        ):
            row[:] = [a + b for a, b in zip(row, add, strict=True)]
        self._counted(leaves.shape[0])

    def _counted(self, n: int) -> None:
        self.counter += n
        if self.counter == self.window_size:  # the window swap
            self.r_mass = self._node_masses(np.array(self.leaf_counts, dtype=np.int64))
            for row in self.leaf_counts:
                row[:] = [0] * self.n_leaves
            self.first_window = False
            self.counter = 0
            self._new_reference()

    def score_learn_one(self, x: Sequence[float], score: bool = True) -> float | None:
        """Score ``x`` (if ``score``; 0 in the first window) then learn it, in one walk.

        ``x`` holds the ``n_features`` values, a list being the fastest: one event
        walks ten trees of a few levels, too little work for numpy's per-call cost.
        """
        height = self.height
        first_leaf = 2**height - 1
        total = 0
        for feature, threshold, leaf_score, counts in self._walk:
            i = 0
            for _ in range(height):
                # As River: left when the value is below the split (so NaN goes right).
                i = 2 * i + (1 if x[feature[i]] < threshold[i] else 2)
            i -= first_leaf
            total += leaf_score[i]
            counts[i] += 1
        value = None
        if score:
            value = 0.0 if self.first_window else 1.0 - total / self._max_score
        self._counted(1)
        return value

    def score_one(self, x: Sequence[float]) -> float:
        """Anomaly score of one event in [0, 1] (higher is more unusual); 0 in the first window."""
        if self.first_window:
            return 0.0
        return float(self._scores(self.leaves(np.asarray(x, dtype=float).reshape(1, -1)))[0])

    def learn_one(self, x: Sequence[float]) -> None:
        """Count one event in the current window's masses."""
        self.score_learn_one(x, score=False)

    def _scores(self, leaves: np.ndarray) -> np.ndarray:
        return 1.0 - self._leaf_score[leaves].sum(axis=-1) / self._max_score

    def score_learn_many(self, x: np.ndarray) -> np.ndarray:
        """Scores of ``x`` (``(n_events, n_features)``), each before it is learnt.

        The same scores as ``score_learn_one`` on each row in turn: the batch is cut
        at the window boundaries, and within a window scores read only the
        reference masses, which learning does not touch.
        """
        x = np.asarray(x, dtype=float)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected shape (n, {self.n_features}), got {x.shape}")
        out = np.empty(x.shape[0])
        start = 0
        while start < x.shape[0]:
            stop = min(x.shape[0], start + self.window_size - self.counter)
            leaves = self.leaves(x[start:stop])
            out[start:stop] = 0.0 if self.first_window else self._scores(leaves)
            self._learn_leaves(leaves)
            start = stop
        return out
