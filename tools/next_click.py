"""Next-click evaluation (the session-rec protocol) for ``feedback-stream evaluate``.

After each click, every ranker makes a list of 20 items; when the same
session's next click comes, the list is scored: a hit if the clicked item is
in it, and ``1 / rank`` for the mean reciprocal rank (0 if absent). A list made
after a session's last click is never scored. Lists are made right after the
engine learnt the click, and scored before anyone learns the next one, so
nothing ranks with knowledge of the click it is scored on.

A session is the click's ``session_id``; a click without one continues its
user's previous session unless it comes :data:`SESSION_GAP_S` or more after
it. With ``warmup_until``, every event is learnt but only lists made at or
after that time are scored (train on the earlier part, validate on the later).

The baselines, computed on the same clicks in the same run, are deliberately
simple, dict-based and independent of :mod:`models`:

* ``popularity``: all-time click counts;
* ``cooccurrence``: the items that shared a session with the last click most
  often (each click pairs with every distinct earlier item of its session);
* ``sequential_rules``: each earlier item of a session points to the later
  ones, weighted by ``1 / gap`` (gap in clicks); the list is the current item
  first, then the items it points to most.

Lists shorter than 20 are filled with the most popular items, in every
baseline the same way.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import IO, Any

import numpy as np
import orjson

from models.events import Event

K = 20
SESSION_GAP_S = 30 * 60.0
BASELINES = ("popularity", "cooccurrence", "sequential_rules")

#: A ranker: given the click just learnt, the items to recommend, best first.
Ranker = Callable[[Event], list[str]]


class _Popularity:
    """All-time click counts and their current top ``K`` (refreshed lazily)."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.ids: list[str] = []
        self.counts = np.zeros(1024)
        self._top: list[str] | None = None

    def learn(self, item: str) -> None:
        i = self.index.get(item)
        if i is None:
            i = self.index[item] = len(self.ids)
            self.ids.append(item)
            if i >= self.counts.shape[0]:
                self.counts = np.concatenate([self.counts, np.zeros(self.counts.shape[0])])
        self.counts[i] += 1
        self._top = None

    def top(self) -> list[str]:
        if self._top is None:
            c = self.counts[: len(self.ids)]
            k = min(K, c.shape[0])
            part = np.argpartition(-c, k - 1)[:k] if k < c.shape[0] else np.arange(c.shape[0])
            order = part[np.lexsort((part, -c[part]))]  # ties: first seen first
            self._top = [self.ids[i] for i in order]
        return self._top

    def fill(self, items: list[str]) -> list[str]:
        """``items`` cut to ``K``, completed with the most popular items not in it."""
        out = items[:K]
        if len(out) < K:
            taken = set(out)
            out.extend(i for i in self.top() if i not in taken)
        return out[:K]


def _best(weights: dict[str, float], skip: str, n: int) -> list[str]:
    ranked = sorted(weights.items(), key=lambda kv: -kv[1])
    return [item for item, _ in ranked[: n + 1] if item != skip][:n]


class Baselines:
    """Popularity, last-click co-occurrence and sequential rules, learnt online."""

    def __init__(self) -> None:
        self.popularity = _Popularity()
        self.pairs: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.rules: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))

    def learn(self, item: str, session: list[str]) -> None:
        """Learn the click on ``item`` after the earlier clicks ``session`` (oldest first)."""
        self.popularity.learn(item)
        for earlier in set(session):
            if earlier != item:
                self.pairs[earlier][item] += 1.0
                self.pairs[item][earlier] += 1.0
        n = len(session)
        for pos, earlier in enumerate(session):
            if earlier != item:
                self.rules[earlier][item] += 1.0 / (n - pos)

    def lists(self, item: str) -> dict[str, list[str]]:
        """Each baseline's list after a click on ``item``."""
        fill = self.popularity.fill
        return {
            "popularity": fill([]),
            "cooccurrence": fill(_best(self.pairs.get(item, {}), item, K)),
            "sequential_rules": fill([item, *_best(self.rules.get(item, {}), item, K - 1)]),
        }


class NextClick:
    """Scores rankers' lists on each session's next click; see the module docstring.

    Call :meth:`before` with every event before anyone learns it, and
    :meth:`after` once the engine has learnt it.
    """

    def __init__(
        self,
        engine_ranker: Ranker,
        warmup_until: float | None = None,
        predictions: IO[bytes] | None = None,
        session_gap_s: float = SESSION_GAP_S,
    ) -> None:
        self.engine_ranker = engine_ranker
        self.warmup_until = warmup_until
        self.predictions = predictions
        self.session_gap_s = session_gap_s
        self.baselines = Baselines()
        self.sessions: dict[str, list[str]] = {}  # session key -> its clicks so far
        self.user_session: dict[str, tuple[str, float]] = {}  # user -> (key, last click time)
        self.pending: dict[str, tuple[Event, dict[str, list[str]]]] = {}
        self.hits: dict[str, list[float]] = {name: [] for name in ("engine", *BASELINES)}
        self.ranks: dict[str, list[float]] = {name: [] for name in ("engine", *BASELINES)}
        self._key: str | None = None

    def _session_key(self, event: Event) -> str:
        if event.session_id is not None:
            return f"s:{event.session_id}"
        previous = self.user_session.get(event.user_id)
        if previous is not None and event.timestamp - previous[1] < self.session_gap_s:
            return previous[0]
        return f"u:{event.user_id}:{event.event_id}"

    def before(self, event: Event) -> None:
        """Score the session's pending lists on this click; learn it in the baselines."""
        self._key = None
        if event.type != "click":
            return
        key = self._key = self._session_key(event)
        self.user_session[event.user_id] = (key, event.timestamp)
        pending = self.pending.pop(key, None)
        if pending is not None:
            made_after, lists = pending
            for name, items in lists.items():
                rank = items.index(event.item_id) + 1 if event.item_id in items else 0
                self.hits[name].append(1.0 if rank else 0.0)
                self.ranks[name].append(1.0 / rank if rank else 0.0)
            if self.predictions is not None:
                self.predictions.write(
                    orjson.dumps(
                        {
                            "event_id": made_after.event_id,
                            "user_id": made_after.user_id,
                            "session_id": made_after.session_id,
                            "items": lists["engine"],
                        },
                        option=orjson.OPT_APPEND_NEWLINE,
                    )
                )
        session = self.sessions.setdefault(key, [])
        self.baselines.learn(event.item_id, session)
        session.append(event.item_id)

    def after(self, event: Event) -> None:
        """Make every ranker's list after the click just learnt (when it will be scored)."""
        key = self._key
        if key is None:
            return
        if self.warmup_until is not None and event.timestamp < self.warmup_until:
            return  # learnt, never scored: no list needed
        lists = self.baselines.lists(event.item_id)
        lists["engine"] = self.engine_ranker(event)[:K]
        self.pending[key] = (event, lists)

    def report(self) -> dict[str, Any]:
        """``next_click_hr_at_20`` / ``_mrr_at_20`` of the engine and of each baseline."""
        n = len(self.hits["engine"])
        out: dict[str, Any] = {"next_click_predictions": n}
        for name in ("engine", *BASELINES):
            suffix = "" if name == "engine" else f"_{name}"
            out[f"next_click_hr_at_20{suffix}"] = float(np.mean(self.hits[name])) if n else None
            out[f"next_click_mrr_at_20{suffix}"] = float(np.mean(self.ranks[name])) if n else None
        return out
