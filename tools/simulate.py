"""``feedback-stream simulate``: a simulated user population that closes the loop.

The users are the 610 MovieLens users (``../shared/data/movielens_latest_small``)
and their hidden preferences are learnt from their real ratings:

* an item the user really rated has preference ``0.05 + 0.9 * ((rating - 1) / 4) ** 2``
  (5 stars: 0.95, 4 stars: 0.56, 3 stars: 0.28);
* any other item gets ``0.25 * p ** 8``, where ``p`` is the item's percentile
  for that user under a rank-32 SVD of the user x item "rated" matrix (the
  user's top unrated items by taste about 0.2, a median item about 0.001);
* *intent* (``--intent-horizon H``, default 30): a rated movie ``d`` positions
  ahead of where the user now is in their real history has its preference
  scaled by ``0.3 + 0.7 * exp(-d / H)``: what they really watched next is what
  they want now, the same target as the prequential next-item hit rate of
  ``feedback-stream evaluate``. ``--intent-horizon 0`` turns it off (then any
  movie of their whole future is as wanted as the next one).

Users arrive with a past: a *warm-up* first replays, for every user, the first
half of their real history (at most ``--warmup-cap`` movies each) as reviews,
interleaved at random; the users already react to the recommendations published
meanwhile (so the service, and its bandit, have real feedback from the start),
but nothing of that phase is measured: the worker's counters are read once the
warm-up and its reactions are processed, and subtracted at the end. Without it
every user would start with an empty past, so that every blockbuster is still in
everybody's future, an artefact that flatters the popularity ranking.

Then they *browse on their own*: at each step one active user (uniformly at random)
watches and rates the next movie of their real, time-ordered MovieLens
history (a ``review`` with the real rating), skipping movies they already
bought through a recommendation. They *react to the recommendations* the service
publishes on the recommendations topic: scanning the list top-down, each item
is examined with probability ``examine ** rank`` (rank from 0) once the items
above it were (so the fourth is reached 38% of the times, the tenth almost never), clicked with
probability ``click_scale * preference`` (a tenth of that for an item they
clicked before; never one they bought), scanning stops at the first click, and
the click carries the ``recommendation_id`` (except for ``1 - id_share`` of
them, which the service must attribute by item and time window); a clicked item
is then bought with probability ``buy_scale * preference`` (one unit at a fixed
per-movie price; purchases never carry the id). Event times come from a
simulated clock: organic event ``j`` is at ``start + j * step`` seconds, a click
10 to 60 s after the recommendation's event time, a purchase 1 to 10 minutes
after the click. Every decision is drawn from generators seeded by ``--seed``
(a reaction by the seed and the recommendation id), so a run is reproducible up
to the order in which the broker interleaves messages.

By default it starts the embedded broker and one worker (as ``tools/demo.py``
does) configured with the experiment's variants (and ``FEEDBACK_BANDIT=1`` with
``--bandit``), runs for ``--duration`` seconds or ``--events`` organic events,
waits for the worker to drain, reads the worker's attribution metrics and prints
per-variant CTR and conversion with 95% Wilson intervals, the blend/popularity
CTR ratio with its interval and a z-test, and, with ``--bandit``, the share of
recommendations that went to the best strategy over the last quarter of the run.
With ``--bootstrap-servers`` it uses a running broker and worker instead
(``--metrics-url`` to read the worker's metrics; without it the figures are the
simulator's own counts of what it clicked).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import sys
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from hashlib import blake2b
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from models.experiments import Rate, compare, rate_ratio, wilson
from stream.settings import Settings

START_TIME = 1_704_067_200.0  # 2024-01-01T00:00:00Z, the simulated clock's origin
DEFAULT_VARIANTS = "blend,popularity,explore"


# ---------------------------------------------------------------------------
# The population: who the users are and what they really like


def _seed_int(*parts: object) -> int:
    text = ":".join(map(str, parts)).encode()
    return int.from_bytes(blake2b(text, digest_size=8).digest(), "big")


class Population:
    """MovieLens users, their real rating histories and hidden preferences.

    Parameters
    ----------
    ratings
        ``(user_id, item_id, rating)`` in time order (contract ids).
    min_item_ratings
        Items rated by fewer users are left out (a smaller, denser catalogue).
    factors
        Rank of the SVD behind the preferences of unrated items.
    """

    def __init__(
        self,
        ratings: Sequence[tuple[str, str, float]],
        min_item_ratings: int = 5,
        factors: int = 32,
    ) -> None:
        counts = Counter(item for _, item, _ in ratings)
        self.items = sorted(i for i, c in counts.items() if c >= min_item_ratings)
        self.item_index = {item: i for i, item in enumerate(self.items)}
        sequences: dict[str, list[tuple[int, float]]] = defaultdict(list)
        for user, item, rating in ratings:
            idx = self.item_index.get(item)
            if idx is not None:
                sequences[user].append((idx, rating))
        self.users = sorted(u for u, seq in sequences.items() if seq)
        self.user_index = {u: i for i, u in enumerate(self.users)}
        self.sequences = {u: sequences[u] for u in self.users}
        self.rated: list[dict[int, float]] = [dict(self.sequences[u]) for u in self.users]
        # Position of each rated item in the user's real, time-ordered history.
        self.order: list[dict[int, int]] = [
            {i: pos for pos, (i, _) in enumerate(self.sequences[u])} for u in self.users
        ]
        # Hidden taste for unrated items: percentile under a low-rank SVD.
        matrix = np.zeros((len(self.users), len(self.items)), dtype=np.float32)
        for u, rated in enumerate(self.rated):
            matrix[u, list(rated)] = 1.0
        k = max(1, min(factors, min(matrix.shape) - 1))
        left, sing, right = np.linalg.svd(matrix, full_matrices=False)
        scores = (left[:, :k] * sing[:k]) @ right[:k]
        ranks = scores.argsort(axis=1).argsort(axis=1).astype(np.float32)
        self.percentile = ranks / max(1, len(self.items) - 1)

    @classmethod
    def from_movielens(
        cls, data_dir: Path | None = None, max_users: int | None = None, **kwargs: Any
    ) -> Population:
        """Read the MovieLens ratings with :func:`tools.datasets.movielens_reviews`."""
        from tools import datasets

        rows = [
            (e["user_id"], e["item_id"], float(e["rating"]))
            for e in datasets.movielens_reviews(data_dir)
        ]
        if max_users is not None:
            keep = set(sorted({u for u, _, _ in rows}, key=lambda u: int(u[4:]))[:max_users])
            rows = [r for r in rows if r[0] in keep]
        return cls(rows, **kwargs)

    def preference(
        self, user: str, item: str, position: int | None = None, horizon: float = 0.0
    ) -> float:
        """The hidden probability scale, in [0, 1], that ``user`` likes ``item``.

        With ``horizon > 0`` and the user's current ``position`` in their
        history, a rated item's liking is scaled by the user's *intent*:
        ``0.3 + 0.7 * exp(-d / horizon)`` for an item ``d`` positions ahead (what
        they really watched next is what they want now; ``d < 0``, already
        watched, counts as far ahead).
        """
        u = self.user_index[user]
        i = self.item_index.get(item)
        if i is None:
            return 0.0
        rating = self.rated[u].get(i)
        if rating is not None:
            liking = 0.05 + 0.9 * ((rating - 1.0) / 4.0) ** 2
            if horizon > 0 and position is not None:
                d = self.order[u][i] - position
                intent = 0.3 + 0.7 * math.exp(-d / horizon) if d >= 0 else 0.3
                return liking * intent
            return liking
        return 0.25 * float(self.percentile[u, i]) ** 8

    def price(self, item: str) -> float:
        """A fixed price per movie, 2.99 to 14.99."""
        return round(2.99 + (_seed_int("price", item) % 13), 2)


# ---------------------------------------------------------------------------
# Behaviour: pure, no I/O


@dataclass
class Behaviour:
    """How the simulated users react; see the module docstring."""

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
        rng = random.Random(_seed_int(self.seed, rec["recommendation_id"]))
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


# ---------------------------------------------------------------------------
# Reading the worker's attribution metrics


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_metrics(text: str) -> Samples:
    """Prometheus text -> ``{(sample name, sorted labels): value}``."""
    from prometheus_client.parser import text_string_to_metric_families

    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return out


def fetch_metrics(url: str) -> Samples:
    """GET ``url`` (a worker's /metrics) and parse it."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        return parse_metrics(resp.read().decode())


def sum_by(samples: Samples, name: str, label: str) -> dict[str, float]:
    """Sum of ``name``'s samples grouped by the value of ``label``."""
    out: dict[str, float] = defaultdict(float)
    for (sample, labels), value in samples.items():
        if sample == name:
            out[dict(labels).get(label, "")] += value
    return dict(out)


@dataclass
class Counts:
    """Exposures, clicked and converted recommendations and revenue, per label value."""

    exposures: dict[str, int]
    clicked: dict[str, int]
    converted: dict[str, int]
    revenue: dict[str, float]
    clicks: dict[str, int]

    @classmethod
    def from_metrics(cls, samples: Samples, label: str) -> Counts:
        """The worker's attribution counters grouped by ``label`` (variant or strategy)."""

        def ints(name: str) -> dict[str, int]:
            return {k: round(v) for k, v in sum_by(samples, name, label).items()}

        return cls(
            ints("feedback_recommendation_exposures_total"),
            ints("feedback_recommendations_clicked_total"),
            ints("feedback_recommendations_converted_total"),
            sum_by(samples, "feedback_attributed_revenue_total", label),
            ints("feedback_attributed_clicks_total"),
        )

    @classmethod
    def from_tally(cls, tally: Tally) -> Counts:
        """The simulator's own counts (ground truth of what it did)."""
        return cls(
            dict(tally.exposures), dict(tally.clicked), dict(tally.converted), {},
            dict(tally.clicked),
        )

    def rates(self) -> tuple[dict[str, Rate], dict[str, Rate]]:
        """CTR and conversion rate per label value, with Wilson intervals."""
        ctr, conv = {}, {}
        for key, n in sorted(self.exposures.items()):
            ctr[key] = wilson(min(self.clicked.get(key, 0), n), n)
            conv[key] = wilson(min(self.converted.get(key, 0), n), n)
        return ctr, conv


# ---------------------------------------------------------------------------
# Drivers


async def drive_broker(
    sim: Simulation,
    settings: Settings,
    rate: float,
    duration: float,
    max_events: int,
    drain_seconds: float = 10.0,
    progress: bool = True,
    metrics_url: str | None = None,
) -> Samples | None:
    """Warm up, then produce organic events at ``rate``, react to every
    recommendation, and drain. Returns the worker's metrics at the end of the
    warm-up (``None`` without ``metrics_url``)."""
    from aiokafka import AIOKafkaConsumer

    from stream.kafka import client_kwargs, create_topics, producer

    await create_topics(settings)
    prod = producer(settings, linger_ms=5)
    consumer = AIOKafkaConsumer(
        settings.topic_recommendations, **client_kwargs(settings),
        auto_offset_reset="earliest", enable_auto_commit=False, group_id=None,
    )
    await prod.start()
    await consumer.start()
    loop = asyncio.get_running_loop()
    stop_organic = asyncio.Event()
    last_rec = [loop.time()]

    async def send(event: dict[str, Any]) -> None:
        await prod.send(
            settings.topic_of(event["type"]),
            orjson.dumps(event),
            key=str(event["user_id"]).encode(),
        )

    async def organic() -> None:
        begin = loop.time()
        last_report = begin
        while not stop_organic.is_set():
            if max_events and sim.organic >= max_events:
                break
            if duration and loop.time() - begin >= duration:
                break
            event = sim.next_organic()
            if event is None:
                break
            await send(event)
            ahead = sim.organic / rate - (loop.time() - begin)
            if ahead > 0:
                await asyncio.sleep(ahead)
            if progress and loop.time() - last_report >= 5.0:
                last_report = loop.time()
                print(
                    f"[{loop.time() - begin:5.0f} s] organic {sim.organic:,} | recommendations "
                    f"{sim.received:,} | clicks {sim.clicks:,} | purchases {sim.purchases:,}",
                    file=sys.stderr, flush=True,
                )
        stop_organic.set()

    async def reactions() -> None:
        while True:
            if stop_organic.is_set() and loop.time() - last_rec[0] > drain_seconds:
                return
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for record in records:
                    last_rec[0] = loop.time()
                    try:
                        rec = orjson.loads(record.value)
                    except orjson.JSONDecodeError:
                        continue
                    for event in sim.react(rec):
                        await send(event)

    async def warmup() -> Samples | None:
        pending = []
        while (event := sim.next_warmup()) is not None:
            pending.append(await prod.send(
                settings.topic_of(event["type"]), orjson.dumps(event),
                key=str(event["user_id"]).encode(),
            ))
            if len(pending) >= 1000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        if progress:
            print(f"warm-up: {sim.warmed:,} past reviews sent", file=sys.stderr, flush=True)
        if metrics_url is None:
            await asyncio.sleep(drain_seconds)
            return None
        await loop.run_in_executor(None, _wait_drained, metrics_url, sim.warmed, 600.0)
        # Then the users' reactions to the warm-up's recommendations, until quiet.
        while True:
            while loop.time() - last_rec[0] < 3.0:
                await asyncio.sleep(0.5)
            await prod.flush()
            target = sim.produced
            samples = await loop.run_in_executor(
                None, _wait_drained, metrics_url, target, 600.0
            )
            if loop.time() - last_rec[0] >= 3.0 and sim.produced == target:
                return samples

    try:
        reacting = asyncio.create_task(reactions())
        baseline = await warmup()
        await organic()
        await reacting
        await prod.flush()
    finally:
        await consumer.stop()
        await prod.stop()
    return baseline


def drive_in_process(
    sim: Simulation, settings: Settings, max_events: int, latency_events: int = 50
) -> tuple[Samples, Samples]:
    """The same loop without a broker: events go straight to a :class:`Processor`.

    A recommendation's reaction is delivered ``latency_events`` organic events
    later, as the broker's round trip would. For tuning; the bars are measured
    through the broker.
    """
    from prometheus_client import CollectorRegistry, generate_latest

    from models.engine import FeedbackEngine
    from stream.metrics import Metrics
    from stream.processor import DictStore, InputMessage, Processor

    registry = CollectorRegistry()
    proc = Processor(settings, FeedbackEngine(), DictStore(), Metrics(registry))
    pending: list[tuple[int, dict[str, Any]]] = []
    offset = 0

    def handle(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        nonlocal offset
        msgs = []
        for e in events:
            offset += 1
            msgs.append(InputMessage(
                settings.topic_of(e["type"]), 0, offset, str(e["user_id"]).encode(), orjson.dumps(e)
            ))
        return [
            orjson.loads(o.value) for o in proc.handle(msgs)
            if o.topic == settings.topic_recommendations
        ]

    while (warm := sim.next_warmup()) is not None:
        recs = handle([warm])
        while recs:
            recs = [r for rec in recs for r in handle(sim.react(rec))]
    baseline = parse_metrics(generate_latest(registry).decode())
    while sim.organic < max_events:
        event = sim.next_organic()
        if event is None:
            break
        for rec in handle([event]):
            pending.append((sim.organic + latency_events, rec))
        due = [rec for at, rec in pending if at <= sim.organic]
        pending = [(at, rec) for at, rec in pending if at > sim.organic]
        for rec in due:
            for rec2 in handle(sim.react(rec)):
                pending.append((sim.organic + latency_events, rec2))
    while pending:
        due = [rec for _, rec in pending]
        pending = []
        for rec in due:
            pending.extend((0, r) for r in handle(sim.react(rec)))
    return baseline, parse_metrics(generate_latest(registry).decode())


def subtract(final: Samples, baseline: Samples | None) -> Samples:
    """Counter samples of the measured phase: ``final - baseline``."""
    if baseline is None:
        return final
    return {key: value - baseline.get(key, 0.0) for key, value in final.items()}


# ---------------------------------------------------------------------------
# The report


def report(
    sim: Simulation,
    samples: Samples | None,
    bandit: bool,
    seconds: float,
    config: dict[str, Any],
) -> dict[str, Any]:
    """The JSON summary: per-variant rates with intervals, the comparison, the bandit share."""
    source = "worker_metrics" if samples is not None else "simulator"
    by_variant = (
        Counts.from_metrics(samples, "variant") if samples is not None
        else Counts.from_tally(sim.by_variant)
    )
    by_strategy = (
        Counts.from_metrics(samples, "strategy") if samples is not None
        else Counts.from_tally(sim.by_strategy)
    )
    # Under the bandit every user is in variant "bandit": the variants compared
    # are then the strategies it chooses among.
    primary = by_strategy if bandit else by_variant
    ctr, conv = primary.rates()
    out: dict[str, Any] = {
        "events": sim.events,
        "warmup_events": sim.warmed,
        "warmup_reactions": sim.warm_reactions,
        "organic_events": sim.organic,
        "clicks": sim.clicks,
        "clicks_with_recommendation_id": sim.clicks_with_id,
        "purchases": sim.purchases,
        "recommendations_received": sim.received,
        "source": source,
        "ctr_by_variant": {k: r.as_dict() for k, r in ctr.items()},
        "conversion_by_variant": {k: r.as_dict() for k, r in conv.items()},
        "revenue_by_variant": {k: round(v, 2) for k, v in sorted(primary.revenue.items())},
    }
    if samples is not None:
        out["worker"] = {
            "events_processed": round(sum(
                v for (n, labels), v in samples.items()
                if n == "feedback_events_total" and ("outcome", "processed") in labels
            )),
            "clicks_attributed": sum_by(samples, "feedback_attributed_clicks_total", "matched_by"),
            "unmatched": sum_by(samples, "feedback_attribution_unmatched_total", "reason"),
        }
    truth = sim.by_strategy if bandit else sim.by_variant
    truth_ctr, _ = Counts.from_tally(truth).rates()
    out["ctr_by_variant_simulator"] = {k: r.as_dict() for k, r in truth_ctr.items()}
    shown = {k: n for k, n in sorted(truth.exposures.items()) if n}
    out["expected_ctr_by_variant"] = {
        k: round(truth.expected_clicks[k] / n, 4) for k, n in shown.items()
    }
    out["expected_ctr_best_order_by_variant"] = {
        k: round(truth.best_order_clicks[k] / n, 4) for k, n in shown.items()
    }
    if "blend" in ctr and "popularity" in ctr:
        a, b = ctr["blend"], ctr["popularity"]
        ratio, lo, hi = rate_ratio(a.successes, a.trials, b.successes, b.trials)
        test = compare("blend", a.successes, a.trials, "popularity", b.successes, b.trials,
                       what="CTR")
        out["ctr_ratio_blend_vs_popularity"] = {
            "value": _num(ratio), "lower": _num(lo), "upper": _num(hi),
        }
        out["blend_vs_popularity"] = {
            "z": _num(test.z), "p_value": _num(test.p_value), "significant": test.significant,
            "statement": test.statement,
        }
    if bandit:
        best = max(ctr, key=lambda k: ctr[k].value) if ctr else None
        shares, n_tail, events_before = sim.last_quarter_shares()
        out["best_variant"] = best
        out["best_variant_share"] = round(shares.get(best, 0.0), 4) if best else None
        out["last_quarter"] = {
            "recommendations": n_tail,
            "after_events": events_before,
            "shares": {k: round(v, 4) for k, v in sorted(shares.items())},
        }
        quarters = []
        n = len(sim.log)
        for q in range(4):
            part = Counter(strategy for strategy, _, _ in sim.log[q * n // 4:(q + 1) * n // 4])
            total = sum(part.values()) or 1
            quarters.append({k: round(v / total, 4) for k, v in sorted(part.items())})
        out["shares_by_quarter"] = quarters
    out["seconds"] = round(seconds, 1)
    out["config"] = config
    return out


def _num(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 4)


def _print_table(result: dict[str, Any]) -> None:
    print(
        f"events {result['events']:,} (organic {result['organic_events']:,}, clicks "
        f"{result['clicks']:,}, purchases {result['purchases']:,}); recommendations "
        f"{result['recommendations_received']:,}; figures from {result['source']}"
    )
    print(f"{'variant':<12}{'exposures':>10}  {'CTR [95% CI]':<26}{'conversion [95% CI]':<26}")
    for key, c in result["ctr_by_variant"].items():
        v = result["conversion_by_variant"][key]
        print(
            f"{key:<12}{c['count']:>10,}  "
            f"{c['value']:.4f} [{c['lower']:.4f}, {c['upper']:.4f}]    "
            f"{v['value']:.4f} [{v['lower']:.4f}, {v['upper']:.4f}]"
        )
    if "blend_vs_popularity" in result:
        print(result["blend_vs_popularity"]["statement"])
    if "best_variant" in result:
        q = result["last_quarter"]
        print(
            f"bandit: best strategy {result['best_variant']} got "
            f"{result['best_variant_share']:.1%} of the last {q['recommendations']:,} "
            f"recommendations (after {q['after_events']:,} events)"
        )


# ---------------------------------------------------------------------------
# CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="feedback-stream simulate",
        description="Simulated MovieLens users react to the service's recommendations "
        "through the broker; prints per-variant CTR and conversion with 95 percent intervals.",
    )
    p.add_argument("--duration", type=float, default=120.0,
                   help="seconds of organic traffic (default 120; 0 = until --events)")
    p.add_argument("--events", type=int, default=0,
                   help="stop after this many organic events (default: no limit)")
    p.add_argument("--rate", type=float, default=150.0, help="organic events per second")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--bandit", action="store_true",
                   help="start the worker with FEEDBACK_BANDIT=1 and report best_variant_share")
    p.add_argument("--variants", default=DEFAULT_VARIANTS,
                   help=f"FEEDBACK_EXPERIMENT_VARIANTS of the started worker "
                        f"(default {DEFAULT_VARIANTS})")
    p.add_argument("--fatigue", type=int, default=3,
                   help="FEEDBACK_FATIGUE_IMPRESSIONS of the started worker (default 3; 0: off)")
    p.add_argument("--fatigue-strategies", default=Settings.fatigue_strategies,
                   help="FEEDBACK_FATIGUE_STRATEGIES of the started worker (default "
                        f"{Settings.fatigue_strategies}: not the popularity control)")
    p.add_argument("--users", type=int, help="simulate only the first N MovieLens users")
    p.add_argument("--id-share", type=float, default=0.9,
                   help="share of clicks that carry their recommendation_id (default 0.9)")
    p.add_argument("--warmup-cap", type=int, default=30,
                   help="past reviews replayed per user before measuring (default 30; 0: none)")
    p.add_argument("--intent-horizon", type=float, default=30.0,
                   help="scale a rated movie's appeal by how soon the user really watched it "
                        "(exp(-positions ahead / horizon)); default 30, 0 = off")
    p.add_argument("--data-dir", type=Path, help="datasets folder (default ../shared/data)")
    p.add_argument("--bootstrap-servers",
                   help="use this broker and its running worker instead of starting both")
    p.add_argument("--metrics-url", help="the running worker's /metrics (with --bootstrap-servers)")
    p.add_argument("--in-process", action="store_true",
                   help="no broker: feed a Processor directly (fast, for tuning)")
    p.add_argument("--drain", type=float, default=8.0,
                   help="after the organic traffic, wait until no recommendation came for "
                        "this many seconds (default 8)")
    p.add_argument("--state-dir", default="", help="worker state and logs (default: a temp dir)")
    p.add_argument("--run-id", help="prefix of the event ids (default: from seed and time)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def _wait_drained(url: str, produced: int, timeout: float = 300.0) -> Samples:
    """Metrics once the worker has processed at least ``produced`` events (bounded wait)."""
    deadline = time.monotonic() + timeout
    samples = fetch_metrics(url)
    while time.monotonic() < deadline:
        done = sum(v for (n, _), v in samples.items() if n == "feedback_events_total")
        if done >= produced:
            break
        time.sleep(0.5)
        samples = fetch_metrics(url)
    return samples


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulation; ``0`` on success."""
    args = build_parser().parse_args(argv)
    if not args.duration and not args.events:
        print("simulate: give --duration or --events", file=sys.stderr)
        return 2
    started = time.monotonic()
    run_id = args.run_id or f"s{args.seed}-{int(time.time()) % 1_000_000}"
    population = Population.from_movielens(args.data_dir, max_users=args.users)
    behaviour = Behaviour(
        id_share=args.id_share, warmup_cap=args.warmup_cap, intent_horizon=args.intent_horizon
    )
    sim = Simulation(population, behaviour, args.seed, run_id)
    config = {
        "seed": args.seed, "rate": args.rate, "duration": args.duration,
        "events_limit": args.events, "bandit": args.bandit, "variants": args.variants,
        "users": len(population.users), "items": len(population.items),
        "id_share": args.id_share, "run_id": run_id, "warmup_cap": args.warmup_cap,
        "intent_horizon": args.intent_horizon, "fatigue_impressions": args.fatigue,
        "fatigue_strategies": args.fatigue_strategies,
    }
    env_overrides = {
        "FEEDBACK_EXPERIMENT_VARIANTS": args.variants,
        "FEEDBACK_BANDIT": "1" if args.bandit else "0",
        "FEEDBACK_BANDIT_SEED": str(args.seed),
        "FEEDBACK_FATIGUE_IMPRESSIONS": str(args.fatigue),
        "FEEDBACK_FATIGUE_STRATEGIES": args.fatigue_strategies,
    }
    samples: Samples | None
    if args.in_process:
        settings = Settings.from_env(
            {**os.environ, **env_overrides}, bootstrap_servers="127.0.0.1:1"
        )
        limit = args.events or int(args.duration * args.rate)
        warm, final = drive_in_process(sim, settings, limit)
        samples = subtract(final, warm)
        config["mode"] = "in-process"
    elif args.bootstrap_servers:
        settings = Settings.from_env(bootstrap_servers=args.bootstrap_servers)
        baseline = asyncio.run(drive_broker(
            sim, settings, args.rate, args.duration, args.events, args.drain, not args.json,
            args.metrics_url,
        ))
        samples = (
            subtract(_wait_drained(args.metrics_url, 0), baseline) if args.metrics_url else None
        )
        config["mode"] = "external broker"
    else:
        samples = _run_embedded(args, sim, env_overrides)
        config["mode"] = "embedded broker"
    result = report(sim, samples, args.bandit, time.monotonic() - started, config)
    if args.json:
        print(orjson.dumps(result).decode(), flush=True)
    else:
        _print_table(result)
    return 0


def _run_embedded(
    args: argparse.Namespace, sim: Simulation, env_overrides: dict[str, str]
) -> Samples:
    """Start the embedded broker and one worker, simulate through them, read the metrics."""
    from tools.local import local_stack

    with local_stack(
        args.state_dir, env_overrides, prefix="feedback-simulate-", quiet=args.json
    ) as stack:
        url = stack.metrics_url
        baseline = asyncio.run(drive_broker(
            sim, stack.settings, args.rate, args.duration, args.events, args.drain,
            not args.json, url,
        ))
        return subtract(_wait_drained(url, sim.produced), baseline)


if __name__ == "__main__":
    sys.exit(main())
