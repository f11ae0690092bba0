"""How the simulated users behave: organic browsing and reactions to recommendations.

Pure: no I/O, so the broker driver and the in-process driver run the same code.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tools.simulate.population import Population, seed_int

START_TIME = 1_704_067_200.0  # 2024-01-01T00:00:00Z, the simulated clock's origin


@dataclass
class Behaviour:
    """How the simulated users react; the model is described in :mod:`tools.simulate`."""

    examine: float = 0.85
    click_scale: float = 0.6
    buy_scale: float = 0.5
    reclick_factor: float = 0.1
    id_share: float = 0.9
    step_seconds: float = 10.0
    warmup_fraction: float = 0.5
    warmup_cap: int = 30
    intent_horizon: float = 0.0


@dataclass
class Tally:
    """What the simulator itself saw and did (ground truth), per label."""

    exposures: Counter[str] = field(default_factory=Counter)
    clicked: Counter[str] = field(default_factory=Counter)
    converted: Counter[str] = field(default_factory=Counter)
    #: Sum over exposures of the exact probability of a click under the behaviour
    #: model: the CTR the lists deserve, without the noise of the draws.
    expected_clicks: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    #: The same for each list's items in the order of the hidden preference.
    best_order_clicks: defaultdict[str, float] = field(
        default_factory=lambda: defaultdict(float)
    )


class Simulation:
    """The population's behaviour: organic browsing and reactions to recommendations.

    :meth:`next_organic` and :meth:`react` return contract events (dicts) and
    keep no reference to any transport, so the broker driver and the
    in-process driver run exactly this code.
    """

    def __init__(
        self,
        population: Population,
        behaviour: Behaviour | None = None,
        seed: int = 42,
        run_id: str = "sim",
    ) -> None:
        self.population = population
        self.behaviour = behaviour or Behaviour()
        self.seed = seed
        self.run_id = run_id
        self.rng = random.Random(seed)
        b = self.behaviour
        self.position = {
            u: min(b.warmup_cap, int(len(seq) * b.warmup_fraction))
            for u, seq in population.sequences.items()
        }
        # The warm-up interleaves users at random, each user's past in its own order.
        self.warmup_order = [u for u in population.users for _ in range(self.position[u])]
        self.rng.shuffle(self.warmup_order)
        self._warm_position: Counter[str] = Counter()
        self.warmed = 0
        self.warm_reactions = 0
        self.active = list(population.users)
        self.bought: dict[str, set[str]] = defaultdict(set)
        self.clicked: dict[str, set[str]] = defaultdict(set)
        self.organic = 0
        self.clicks = 0
        self.clicks_with_id = 0
        # Whole-run reactions, warm-up included: what the worker's counters must match
        # whatever the timing of the warm-up/measured boundary.
        self.all_clicks = 0
        self.all_clicks_with_id = 0
        self.all_purchases = 0
        self.purchases = 0
        self.received = 0
        self.by_variant = Tally()
        self.by_strategy = Tally()
        #: (strategy, variant, events produced so far) of every recommendation reacted to.
        self.log: list[tuple[str, str, int]] = []

    @property
    def events(self) -> int:
        """Events produced so far: organic reviews, clicks and purchases."""
        return self.organic + self.clicks + self.purchases

    def clock(self) -> float:
        """The simulated time of the next organic event."""
        return START_TIME + self.organic * self.behaviour.step_seconds

    def next_warmup(self) -> dict[str, Any] | None:
        """The next event of the warm-up (a user's past), ``None`` when it is over."""
        if self.warmed >= len(self.warmup_order):
            return None
        user = self.warmup_order[self.warmed]
        pos = self._warm_position[user]
        self._warm_position[user] += 1
        self.warmed += 1
        idx, rating = self.population.sequences[user][pos]
        return {
            "type": "review",
            "event_id": f"{self.run_id}-w{self.warmed}",
            "user_id": user,
            "item_id": self.population.items[idx],
            "timestamp": _rfc3339(START_TIME + (self.warmed - len(self.warmup_order)) * 1.0),
            "rating": rating,
        }

    def next_organic(self) -> dict[str, Any] | None:
        """One user watches and rates the next movie of their real history."""
        while self.active:
            slot = self.rng.randrange(len(self.active))
            user = self.active[slot]
            seq = self.population.sequences[user]
            pos = self.position[user]
            while pos < len(seq) and self.population.items[seq[pos][0]] in self.bought[user]:
                pos += 1
            if pos >= len(seq):
                self.active[slot] = self.active[-1]
                self.active.pop()
                continue
            self.position[user] = pos + 1
            idx, rating = seq[pos]
            t = self.clock()
            self.organic += 1
            return {
                "type": "review",
                "event_id": f"{self.run_id}-o{self.organic}",
                "user_id": user,
                "item_id": self.population.items[idx],
                "timestamp": _rfc3339(t),
                "rating": rating,
            }
        return None

    def ours(self, rec: dict[str, Any]) -> bool:
        """Whether ``rec`` was triggered by an event of this run."""
        trigger = str(rec.get("trigger_event_id", ""))
        return trigger.startswith(f"{self.run_id}-") and (
            rec.get("user_id") in self.population.user_index
        )

    def measured(self, rec: dict[str, Any]) -> bool:
        """Whether ``rec`` belongs to the measured phase (not triggered by the warm-up)."""
        return not str(rec.get("trigger_event_id", "")).startswith(f"{self.run_id}-w")

    @property
    def produced(self) -> int:
        """Every event sent, warm-up and its reactions included."""
        return self.warmed + self.warm_reactions + self.events

    def react(self, rec: dict[str, Any]) -> list[dict[str, Any]]:
        """The user's reaction to one published recommendation: maybe a click, maybe a buy."""
        if not self.ours(rec):
            return []
        b = self.behaviour
        user = str(rec["user_id"])
        strategy = str(rec.get("strategy", "?"))
        variant = str(rec.get("variant", strategy))
        measured = self.measured(rec)
        if measured:
            self.received += 1
            self.log.append((strategy, variant, self.events))
            self.by_variant.exposures[variant] += 1
            self.by_strategy.exposures[strategy] += 1
            shown = rec.get("items", [])
            expected = self.click_probability(user, shown)
            best = self.best_order_click_probability(user, shown)
            for tally, label in ((self.by_variant, variant), (self.by_strategy, strategy)):
                tally.expected_clicks[label] += expected
                tally.best_order_clicks[label] += best
        rng = random.Random(seed_int(self.seed, rec["recommendation_id"]))
        t0 = _parse_time(str(rec["event_time"]))
        out: list[dict[str, Any]] = []
        examine = 1.0
        for entry in rec.get("items", []):
            item = str(entry["item_id"])
            if rng.random() >= examine:
                break
            examine *= b.examine
            if item in self.bought[user]:
                continue
            q = self.population.preference(user, item, self.position[user], b.intent_horizon)
            p = b.click_scale * q
            if item in self.clicked[user]:
                p *= b.reclick_factor
            if rng.random() >= p:
                continue
            self.clicked[user].add(item)
            self.all_clicks += 1
            if measured:
                self.clicks += 1
                click_id = f"{self.run_id}-c{self.clicks}"
            else:
                self.warm_reactions += 1
                click_id = f"{self.run_id}-wc{self.warm_reactions}"
            t_click = t0 + rng.uniform(10.0, 60.0)
            click: dict[str, Any] = {
                "type": "click",
                "event_id": click_id,
                "user_id": user,
                "item_id": item,
                "timestamp": _rfc3339(t_click),
                "session_id": f"{self.run_id}-s{rec['recommendation_id'][:8]}",
            }
            if rng.random() < b.id_share:
                click["recommendation_id"] = rec["recommendation_id"]
                self.clicks_with_id += measured
                self.all_clicks_with_id += 1
            out.append(click)
            if measured:
                self.by_variant.clicked[variant] += 1
                self.by_strategy.clicked[strategy] += 1
            if rng.random() < b.buy_scale * q:
                self.bought[user].add(item)
                self.all_purchases += 1
                if measured:
                    self.purchases += 1
                    buy_id = f"{self.run_id}-p{self.purchases}"
                else:
                    self.warm_reactions += 1
                    buy_id = f"{self.run_id}-wp{self.warm_reactions}"
                out.append({
                    "type": "purchase",
                    "event_id": buy_id,
                    "user_id": user,
                    "item_id": item,
                    "timestamp": _rfc3339(t_click + rng.uniform(60.0, 600.0)),
                    "quantity": 1,
                    "price": self.population.price(item),
                    "currency": "EUR",
                })
                if measured:
                    self.by_variant.converted[variant] += 1
                    self.by_strategy.converted[strategy] += 1
            break
        return out

    def click_probability(self, user: str, items: Sequence[dict[str, Any]]) -> float:
        """The exact probability that ``user`` clicks something in ``items`` (see :meth:`react`)."""
        return self._cascade(self._click_chances(user, items))

    def best_order_click_probability(self, user: str, items: Sequence[dict[str, Any]]) -> float:
        """:meth:`click_probability` of the same items in the order of the user's hidden
        preference: what the list would earn if the strategy ranked its own picks perfectly."""
        return self._cascade(sorted(self._click_chances(user, items), reverse=True))

    def _click_chances(self, user: str, items: Sequence[dict[str, Any]]) -> list[float]:
        """Each item's click probability once examined (0 for an item the user bought)."""
        b = self.behaviour
        out = []
        for entry in items:
            item = str(entry["item_id"])
            if item in self.bought[user]:
                out.append(0.0)
                continue
            p = b.click_scale * self.population.preference(
                user, item, self.position[user], b.intent_horizon
            )
            out.append(p * b.reclick_factor if item in self.clicked[user] else p)
        return out

    def _cascade(self, chances: Sequence[float]) -> float:
        """P(a click) scanning top-down: rank ``r`` is reached with the product of
        ``examine ** j`` for ``j <= r``, and scanning stops at the first click."""
        reach, examine, none, total = 1.0, 1.0, 1.0, 0.0
        for p in chances:
            reach *= examine
            examine *= self.behaviour.examine
            total += reach * none * p
            none *= 1.0 - p
        return total

    def last_quarter_shares(self) -> tuple[dict[str, float], int, int]:
        """Share of each strategy among the last quarter of recommendations reacted to,
        the number of those recommendations, and the events produced before that quarter."""
        n = len(self.log)
        tail = self.log[n - n // 4:] if n >= 4 else self.log
        counts = Counter(strategy for strategy, _, _ in tail)
        total = sum(counts.values())
        shares = {s: c / total for s, c in counts.items()} if total else {}
        return shares, total, tail[0][2] if tail else 0


def _rfc3339(ts: float) -> str:
    from stream.contract import format_timestamp

    return format_timestamp(ts, timespec="milliseconds")


def _parse_time(text: str) -> float:
    from stream.contract import parse_timestamp

    return float(parse_timestamp(text))
