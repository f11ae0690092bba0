"""Session context: what a visitor is doing right now, and what tends to come next.

Most clicks of a shop happen in short browsing sessions, and the best predictor
of the next click is the session itself: about a quarter of next clicks go back
to the item just viewed, a third to some item of the session, and the rest
follow the session's items along paths other visitors took. This module keeps,
online and in bounded memory:

* each user's **current session** (its ``session_id``, else a gap of
  ``gap_s`` seconds or more starts a new one), its recent items in order;
* **sequential rules**: when item ``j`` is clicked ``g`` steps after item ``i``
  in a session (``g <= rule_window``), the rule ``i -> j`` gains ``1 / g``;
* a **session store** for the session-kNN signal (V-SKNN): the distinct items of
  the last ``max_sessions`` sessions, and for each item its ``sample`` most
  recent sessions.

:meth:`SessionRecommender.signals` scores the catalogue for a session with four
rows, each scaled to [0, 1]: the item being viewed, the session's earlier items
(more recent ones more: repeat-aware), the rules from the session's last
``rules_history`` items (recent ones weigh more) and V-SKNN's neighbour vote.
Their weighted sum ranks the next click; :meth:`SessionRecommender.explain`
names the signal behind each item.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from models.cooccurrence import Neighbours

#: The session signals, one row each in :class:`SessionSignals`.
SESSION_FEATURES: tuple[str, ...] = ("current", "repeat", "rules", "neighbours")


@dataclass(slots=True)
class Session:
    """One user's current session: its key, last event time and recent items."""

    key: str | None  # the events' session_id, None when sessions are cut by the gap
    number: int  # the session's entry in the store
    last: float
    items: list[int] = field(default_factory=list)
    browsing: bool = True  # the user's latest event is a click of this session


@dataclass(frozen=True, slots=True)
class SessionSignals:
    """The session rows over items ``0..n-1`` and the context that produced them."""

    matrix: np.ndarray  # (len(SESSION_FEATURES), n), each row in [0, 1]
    context: list[int]  # the session's items, oldest first (the viewed item last)
    rule_sources: list[tuple[int, float]]  # (context item, factor of its rules' weights)


class SessionRecommender:
    """Sessions, sequential rules and session-kNN, learnt one event at a time.

    Parameters
    ----------
    gap_s
        Seconds of inactivity that end a session of events without ``session_id``.
    max_items
        Items of the current session remembered per user.
    rule_window
        Steps back a click still forms a rule with (weight ``1 / steps``).
    max_rules
        Rules kept per item (its heaviest; cut back when twice as many).
    rules_history, rules_decay
        The rules of the session's last ``rules_history`` items are summed, the
        ``d``-th last weighted ``rules_decay ** d``.
    repeat_decay
        The session item ``d`` steps back scores ``repeat_decay ** d`` as a repeat.
    sample, neighbours, knn_history
        V-SKNN: the most recent ``sample`` sessions of each of the session's
        last ``knn_history`` items are candidates; the ``neighbours`` most
        similar vote for their items.
    max_sessions
        Past sessions kept in the store (oldest dropped first).

    Examples
    --------
    >>> s = SessionRecommender()
    >>> for user, items in [("a", [0, 1, 2]), ("b", [0, 1, 2]), ("c", [0])]:
    ...     for t, item in enumerate(items):
    ...         s.learn_one(user, item, float(t), None)
    >>> signals = s.signals(s.context("c", 3.0), 3, own=s.current["c"].number)
    >>> signals.matrix.round(2).tolist()
    [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.5], [1.0, 1.0, 1.0]]
    >>> s.rule_source(signals, 1)
    0
    """

    def __init__(
        self,
        gap_s: float = 1800.0,
        max_items: int = 50,
        rule_window: int = 10,
        max_rules: int = 200,
        rules_history: int = 3,
        rules_decay: float = 0.5,
        repeat_decay: float = 0.5,
        sample: int = 500,
        neighbours: int = 100,
        knn_history: int = 10,
        max_sessions: int = 50_000,
    ) -> None:
        self.gap_s = gap_s
        self.max_items = max_items
        self.rule_window = rule_window
        self.max_rules = max_rules
        self.rules_history = rules_history
        self.rules_decay = rules_decay
        self.repeat_decay = repeat_decay
        self.sample = sample
        self.neighbours = neighbours
        self.knn_history = knn_history
        self.max_sessions = max_sessions
        self.current: dict[str, Session] = {}
        self.rules: list[Neighbours] = []
        self.store: dict[int, list[int]] = {}  # session number -> its distinct items
        # item -> numbers of its recent sessions, oldest first: a list cut back to
        # ``sample`` when twice as long (a deque's 64-slot block costs 600 bytes
        # even for one item seen once)
        self.item_sessions: dict[int, list[int]] = {}
        self.sessions_started = 0
        # The store's sessions as arrays, made when a session first votes (V-SKNN
        # reads about a hundred per ranking) and dropped when it changes or leaves
        # the store: at most one per stored session. Not checkpointed.
        self._store_arrays: dict[int, np.ndarray] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_store_arrays", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._store_arrays = {}

    # -- learning ----------------------------------------------------------------
    def _session(self, user: str, t: float, key: str | None) -> Session:
        s = self.current.get(user)
        if s is not None and (s.key != key if key is not None else t - s.last >= self.gap_s):
            s = None  # another session_id, or the gap passed: a new session
        if s is None:
            s = Session(key, self.sessions_started, t)
            self.sessions_started += 1
            self.current[user] = s
            self.store[s.number] = []
            if len(self.store) > self.max_sessions:  # dicts keep insertion order
                oldest = next(iter(self.store))
                del self.store[oldest]
                self._store_arrays.pop(oldest, None)
        return s

    def learn_one(
        self, user: str, item: int, t: float, session_id: str | None, browsing: bool = True
    ) -> None:
        """Learn that ``user`` viewed (``browsing``) or bought ``item`` at ``t``."""
        s = self._session(user, t, session_id)
        s.last = max(s.last, t)
        s.browsing = browsing
        rules = self.rules
        while len(rules) <= item:
            rules.append(Neighbours())
        items = s.items
        n = len(items)
        cap = 2 * self.max_rules
        for pos in range(max(0, n - self.rule_window), n):
            earlier = items[pos]
            if earlier != item:
                nb = rules[earlier]
                nb.add(item, 1.0 / (n - pos))
                if nb.n > cap:
                    nb.prune(self.max_rules)
        items.append(item)
        if n + 1 > self.max_items:
            del items[0]
        stored = self.store.get(s.number)
        if stored is not None and len(stored) < self.max_items and item not in stored:
            stored.append(item)
            self._store_arrays.pop(s.number, None)
            recent = self.item_sessions.get(item)
            if recent is None:
                self.item_sessions[item] = [s.number]
            else:
                recent.append(s.number)
                if len(recent) > 2 * self.sample:
                    del recent[: -self.sample]

    def pause(self, user: str) -> None:
        """The user did something else than browsing (a review, a return): not browsing now."""
        s = self.current.get(user)
        if s is not None:
            s.browsing = False

    def forget(self, user: str) -> None:
        """Drop ``user``'s current session (what it taught the rules and store stays)."""
        self.current.pop(user, None)

    def erase(self, user: str) -> int:
        """Drop ``user``'s current session and its items in the neighbour store; 1 if any.

        Past sessions are not linked to a user once they end, so they stay, like
        the rules: aggregates with no id (docs/privacy.md).

        >>> s = SessionRecommender()
        >>> s.learn_one("a", 3, 0.0, None)
        >>> s.erase("a"), s.store, s.item_sessions, s.erase("a")
        (1, {}, {3: []}, 0)
        """
        session = self.current.pop(user, None)
        if session is None:
            return 0
        self._store_arrays.pop(session.number, None)
        if self.store.pop(session.number, None) is not None:
            for item in set(session.items):
                recent = self.item_sessions.get(item)
                if recent is not None and session.number in recent:
                    recent.remove(session.number)
        return 1

    # -- scoring -----------------------------------------------------------------
    def context(
        self,
        user: str,
        now: float | None,
        session_id: str | None = None,
        item: int | None = None,
    ) -> list[int]:
        """The items of ``user``'s live session, oldest first, plus ``item`` if being viewed.

        With ``session_id``, the session is live if it has that id. Without,
        it is live while the user is browsing (their latest event is one of
        its clicks: after a purchase or a review their taste, not the page they
        were on, leads) and, for sessions cut by the gap, its last event is
        less than ``gap_s`` before ``now``. Empty when nothing is known.
        """
        s = self.current.get(user)
        items: list[int] = []
        if s is not None:
            if session_id is not None:
                live = s.key == session_id
            else:
                fresh = s.key is not None or now is None or now - s.last < self.gap_s
                live = s.browsing and fresh
            if live:
                items = list(s.items)
        if item is not None and (not items or items[-1] != item):
            items.append(item)
        return items

    def signals(self, context: list[int], n: int, own: int | None = None) -> SessionSignals:
        """The session rows of items ``0..n-1`` for ``context`` (``own``: its store entry)."""
        m = np.zeros((len(SESSION_FEATURES), n))
        sources: list[tuple[int, float]] = []
        if not context:
            return SessionSignals(m, context, sources)
        last = context[-1]
        if last < n:
            m[0, last] = 1.0
        # Repeats: each earlier item at its most recent position.
        w = 1.0
        for item in reversed(context[:-1]):
            w *= self.repeat_decay
            if item < n and item != last and m[1, item] == 0.0:
                m[1, item] = w
        top = float(m[1].max())
        if top > 0:
            m[1] /= top
        # Sequential rules from the last few items, each source's rules scaled to max 1.
        rules = self.rules
        w = 1.0
        seen_sources: set[int] = set()
        for item in reversed(context[-self.rules_history :]):
            if item < len(rules) and item not in seen_sources and rules[item].n:
                seen_sources.add(item)
                nb = rules[item]
                keys, values = nb.keys[: nb.n], nb.values[: nb.n]
                keep = keys < n
                factor = w / float(values.max())
                # One item's rules name distinct items: a fancy add, not np.add.at.
                m[2, keys[keep]] += values[keep] * factor
                sources.append((item, factor))
            w *= self.rules_decay
        top = float(m[2].max())
        if top > 0:
            m[2] /= top
        # V-SKNN: similarity = the recency-weighted session items a past session shares.
        recent = context[-self.knn_history :]
        weights: dict[int, float] = {}
        for pos, item in enumerate(recent):
            weights[item] = (pos + 1) / len(recent)  # linear decay, the viewed item 1
        lists: list[list[int]] = []
        shares: list[float] = []
        sample = self.sample
        for item, wi in weights.items():
            sessions = self.item_sessions.get(item)
            if sessions:
                lists.append(sessions[-sample:] if len(sessions) > sample else sessions)
                shares.append(wi)
        if lists:
            # One pass in numpy: each candidate session's similarity, then the nearest.
            sizes = [len(x) for x in lists]
            numbers = np.fromiter(itertools.chain.from_iterable(lists), np.int64, sum(sizes))
            unique, similarity = _summed_by_key(numbers, np.repeat(shares, sizes))
            if own is not None:
                similarity[unique == own] = 0.0
            k = min(self.neighbours, unique.shape[0])
            nearest = np.argpartition(-similarity, k - 1)[:k]
            # Each voter's items as one array (cached, see __init__), and one concatenation.
            cache = self._store_arrays
            chosen = unique[nearest].tolist()
            near = similarity[nearest].tolist()
            got: list[np.ndarray | None] = list(map(cache.get, chosen))
            store = self.store
            for pos, arr in enumerate(got):
                if arr is None:
                    items = store.get(chosen[pos])
                    if items:
                        got[pos] = cache[chosen[pos]] = np.array(items, dtype=np.int64)
            vote = [a is not None and sim > 0.0 for a, sim in zip(got, near, strict=True)]
            voters = cast("list[np.ndarray]", list(itertools.compress(got, vote)))
            if voters:
                sims = list(itertools.compress(near, vote))
                keys_arr = np.concatenate(voters)
                votes = np.repeat(sims, np.fromiter(map(len, voters), np.int64, len(voters)))
                # Summed in the same order as np.add.at would, at a fraction of its cost.
                m[3] = np.bincount(keys_arr, weights=votes, minlength=n)[:n]
                top = float(m[3].max())
                if top > 0:
                    m[3] /= top
        return SessionSignals(m, context, sources)

    def rule_source(self, signals: SessionSignals, item: int) -> int | None:
        """The context item whose rule adds most to ``item`` (for its reason)."""
        best, best_w = None, 0.0
        for source, factor in signals.rule_sources:
            w = self.rules[source].get(item) * factor
            if w > best_w:
                best, best_w = source, w
        return best


def _summed_by_key(keys: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(distinct keys ascending, the sum of each one's weights)``, each sum taken
    in the order of ``keys`` (what ``np.unique`` and ``np.bincount`` give).

    Keys within a narrow range (session numbers of recent sessions) are counted
    over that range, which costs less than ``np.unique``'s sort; the sums are
    the same, bit for bit.

    >>> _summed_by_key(np.array([7, 3, 7]), np.array([0.5, 1.0, 0.25]))
    (array([3, 7]), array([1.  , 0.75]))
    """
    low = int(keys.min())
    span = int(keys.max()) - low + 1
    if span <= 8 * keys.shape[0] + 256:
        shifted = keys - low
        present = np.flatnonzero(np.bincount(shifted, minlength=span))
        return present + low, np.bincount(shifted, weights=weights, minlength=span)[present]
    unique, where = np.unique(keys, return_inverse=True)
    return unique, np.bincount(where, weights=weights)


def with_session(
    blend: np.ndarray, signals: SessionSignals, weights: np.ndarray, blend_weight: float
) -> tuple[np.ndarray, np.ndarray]:
    """Session-aware scores: the session rows' weighted sum plus the blend scaled to [0, 1].

    Returns ``(scores, unit)``, ``unit`` the blend's weighted share of each
    score (see :func:`strongest`). Items the blend excluded (``-inf``) stay excluded.

    >>> sig = SessionSignals(np.array([[0, 1.0], [0, 0], [1.0, 0], [0, 0]]), [1], [])
    >>> w = np.array([4, .5, 1, 1])
    >>> scores, unit = with_session(np.array([2.0, 1.0]), sig, w, 0.2)
    >>> scores.round(2).tolist(), strongest(sig, w, unit, [0, 1])
    ([1.2, 4.0], [2, 0])
    """
    # The excluded items are few (the user's purchases, the fatigued): indexed
    # once, where boolean masks over the catalogue would copy it three times.
    excluded = np.flatnonzero(~np.isfinite(blend))
    if excluded.size:
        unit = blend.copy()
        unit[excluded] = -np.inf
        high = float(unit.max())
        unit[excluded] = np.inf
        low = float(unit.min())
    else:
        unit = np.empty_like(blend)
        low, high = float(blend.min()), float(blend.max())
    if high > low:
        np.subtract(blend, low, out=unit)
        unit /= high - low
        unit[excluded] = 0.0
    else:
        unit.fill(0.0)
    unit *= blend_weight
    scores = weights @ signals.matrix  # one BLAS pass
    scores += unit
    scores[excluded] = -np.inf
    return scores, unit


def strongest(
    signals: SessionSignals, weights: np.ndarray, unit: np.ndarray, items: Sequence[int]
) -> list[int]:
    """For each of ``items``, the index in :data:`SESSION_FEATURES` of the largest
    contribution to its score, ``len(SESSION_FEATURES)`` when the blend's (``unit``)
    is larger; ties go to the first. One gather of the items' columns."""
    if not items:
        return []
    contributions = np.empty((len(SESSION_FEATURES) + 1, len(items)))
    np.multiply(weights[:, None], signals.matrix[:, items], out=contributions[:-1])
    contributions[-1] = unit[items]
    return [int(j) for j in contributions.argmax(axis=0)]


#: Why a session signal recommends an item; ``{item}`` is the rule's source.
SESSION_REASONS = {
    "current": "the item you are viewing",
    "repeat": "viewed earlier in this session",
    "rules": "often viewed next after {item}",
    "neighbours": "viewed in sessions like yours",
}
