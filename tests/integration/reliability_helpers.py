"""Shared pieces of the reliability tests: a deterministic event stream, a paced
background producer, and an independent reader of the profile changelog.

The accounting never trusts the worker under test: the final per-user state is
read straight from the compacted changelog topic (the last record of each key),
and every user gets fewer events than the de-duplication window, so a profile's
``recent_event_ids`` lists every event ever learned for that user.
"""

from __future__ import annotations

import asyncio
import random
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from models.engine import EngineConfig
from stream.kafka import client_kwargs, producer
from stream.settings import Settings
from stream.topics import ITEM_STATE_TABLE, PROFILES_TABLE, changelog_topic

START = datetime(2024, 5, 1, tzinfo=UTC).timestamp()


def make_events(
    n_users: int, per_user: int, seed: int = 7, n_items: int = 300, returns: bool = True
) -> list[dict]:
    """``n_users * per_user`` valid events, interleaved across users in time order.

    Clicks, purchases (some returns, unless ``returns`` is off) and reviews on a
    small catalogue, so the models learn real co-occurrences and publish
    recommendations.
    """
    rng = random.Random(seed)
    events: list[dict] = []
    order = [u for _ in range(per_user) for u in range(n_users)]
    for i, u in enumerate(order):
        kind = rng.choices(("click", "purchase", "review"), (6, 3, 1))[0]
        e: dict[str, Any] = {
            "type": kind,
            "event_id": f"ev-{seed}-{i}",
            "user_id": f"user-{u:04d}",
            "item_id": f"sku-{int(rng.paretovariate(1.2)) % n_items:03d}",
            "timestamp": datetime.fromtimestamp(START + i * 7, UTC).isoformat(),
        }
        if kind == "click":
            e["session_id"] = f"s-{u}-{i // (n_users * 5)}"
        elif kind == "purchase":
            e["quantity"] = rng.choice((1, 1, 2, 3, -1) if returns else (1, 1, 2, 3, 1))
            e["price"] = round(rng.uniform(0.5, 80.0), 2)
            e["currency"] = "GBP"
        else:
            e["rating"] = rng.randint(1, 5)
            e["text"] = rng.choice(("Great fit", "Too small", "Lovely colour", "Poor quality"))
        events.append(e)
    return events


def records_for(settings: Settings, events: Iterable[dict]) -> list[tuple[str, bytes, bytes]]:
    return [(settings.topic_of(e["type"]), e["user_id"].encode(), orjson.dumps(e)) for e in events]


@dataclass
class PacedProducer:
    """Sends records from a background thread at about ``rate`` records/s.

    Every send is acknowledged (acks=all) before ``join`` returns, so "sent"
    means "in the broker's log".
    """

    settings: Settings
    records: Sequence[tuple[str, bytes | None, bytes]]
    rate: float
    chunk: int = 250
    sent: int = 0
    error: BaseException | None = None
    _thread: threading.Thread = field(init=False)

    def start(self) -> PacedProducer:
        self._thread = threading.Thread(target=self._run, name="paced-producer", daemon=True)
        self._thread.start()
        return self

    def join(self, timeout: float = 300.0) -> int:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("producer still running")
        if self.error is not None:
            raise self.error
        return self.sent

    def _run(self) -> None:
        try:
            asyncio.run(self._send())
        except BaseException as exc:  # surfaced by join()
            self.error = exc

    async def _send(self) -> None:
        prod = producer(self.settings, linger_ms=5)
        await prod.start()
        try:
            t0 = time.monotonic()
            for start in range(0, len(self.records), self.chunk):
                futures = [
                    await prod.send(topic, value, key=key)
                    for topic, key, value in self.records[start : start + self.chunk]
                ]
                await asyncio.gather(*futures)
                self.sent += len(futures)
                ahead = self.sent / self.rate - (time.monotonic() - t0)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        finally:
            await prod.stop()


@dataclass
class Accounting:
    """What the final profiles say about the events sent."""

    sent: int
    learned: int  # distinct expected event ids present in the profiles
    lost: int  # expected ids in no profile
    learned_twice: int  # profile counts above the distinct ids learned (double learning)
    foreign: int  # ids in profiles that were never sent
    users: int
    lost_ids: list[str] = field(default_factory=list)

    def line(self, label: str) -> str:
        return (
            f"[{label}] sent={self.sent} learned={self.learned} lost={self.lost} "
            f"learned_twice={self.learned_twice} foreign={self.foreign} users={self.users}"
            + (f" lost_ids={self.lost_ids[:20]}" if self.lost_ids else "")
        )


def read_profiles(
    settings: Settings,
    until: Callable[[dict[str, dict]], bool],
    timeout: float = 90.0,
    table: str = PROFILES_TABLE,
) -> dict[str, dict]:
    """The last record of every key in ``table``'s changelog (the profiles by
    default), read until ``until`` or timeout."""

    async def read() -> dict[str, dict]:
        topic = changelog_topic(settings, table)
        consumer = AIOKafkaConsumer(
            **client_kwargs(settings), enable_auto_commit=False, group_id=None,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        profiles: dict[str, dict] = {}
        try:
            consumer.assign([TopicPartition(topic, p) for p in range(settings.partitions)])
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while loop.time() < deadline:
                batch = await consumer.getmany(timeout_ms=500, max_records=5000)
                for msgs in batch.values():
                    for m in msgs:
                        if m.value is not None:
                            profiles[table_key(m.key)] = orjson.loads(m.value)
                if not batch and until(profiles):
                    break
        finally:
            await consumer.stop()
        return profiles

    return asyncio.run(read())


def plant_last_batch(settings: Settings, n: int, prefix: str = "planted-") -> dict[str, dict]:
    """End every changelog partition with one record batch of several new profiles.

    Tansu answers ``ListOffsets(latest)`` with the base offset of the last batch
    + 1, so a changelog that ends with a multi-record batch is exactly the case
    where Faust's own recovery stops short (``stream/recovery.py``, guard 1).
    Each planted user gets a copy of a real profile from the changelog; returns
    them by user id.
    """

    async def plant() -> dict[str, dict]:
        topic = changelog_topic(settings)
        consumer = AIOKafkaConsumer(
            **client_kwargs(settings), enable_auto_commit=False, group_id=None,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            consumer.assign([TopicPartition(topic, p) for p in range(settings.partitions)])
            sample = None
            while sample is None:
                batch = await consumer.getmany(timeout_ms=1000, max_records=1)
                sample = next((m for ms in batch.values() for m in ms if m.value), None)
        finally:
            await consumer.stop()
        json_keys = sample.key.startswith(b'"')
        # One burst per partition, sent together: each partition's burst is one batch.
        users: dict[int, list[str]] = {p: [] for p in range(settings.partitions)}
        i = 0
        while min(len(u) for u in users.values()) < n:
            user = f"{prefix}{i:04d}"
            users[murmur2_partition(user.encode(), settings.partitions)].append(user)
            i += 1
        prod = AIOKafkaProducer(**client_kwargs(settings), linger_ms=500)
        await prod.start()
        try:
            futures = []
            for p, names in users.items():
                for user in names[:n]:
                    key = orjson.dumps(user) if json_keys else user.encode()
                    futures.append(await prod.send(topic, sample.value, key=key, partition=p))
            await asyncio.gather(*futures)
        finally:
            await prod.stop()
        profile = orjson.loads(sample.value)
        return {user: profile for names in users.values() for user in names[:n]}

    return asyncio.run(plant())


def murmur2_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (and so Faust's table) gives ``key``."""
    from aiokafka.partitioner import murmur2

    return (murmur2(key) & 0x7FFFFFFF) % partitions


def table_key(raw: bytes) -> str:
    # Faust writes table keys to the changelog as JSON strings.
    return str(orjson.loads(raw)) if raw.startswith(b'"') else raw.decode()


def account(events: list[dict], profiles: dict[str, dict]) -> Accounting:
    expected: dict[str, set[str]] = {}
    for e in events:
        expected.setdefault(e["user_id"], set()).add(e["event_id"])
    learned = lost = twice = foreign = 0
    lost_ids: list[str] = []
    for user, ids in expected.items():
        p = profiles.get(user)
        got = set(p["recent_event_ids"]) if p else set()
        learned += len(ids & got)
        lost += len(ids - got)
        lost_ids.extend(sorted(ids - got))
        foreign += len(got - ids)
        if p:
            twice += sum(p["events"].values()) - len(got)
    return Accounting(len(events), learned, lost, twice, foreign, len(expected), lost_ids)


def strength(e: dict, config: EngineConfig | None = None) -> float:
    """The popularity weight the engine learns from event ``e`` (its
    ``_strengths`` rule for the event types :func:`make_events` makes)."""
    c = config or EngineConfig()
    if e["type"] == "click":
        return c.click_weight
    if e["type"] == "purchase":
        return c.purchase_weight if e["quantity"] > 0 else -c.purchase_weight
    return c.review_weight * (0.5 + (e["rating"] - 1.0) / 4.0)


@dataclass
class ItemAccounting:
    """What the item owners' table says about the events sent: per item, the
    all-time popularity must be the sum of its events' strengths exactly (none
    lost, none applied twice)."""

    items: int
    expected_total: float
    owned_total: float
    short: dict[str, float]  # item -> expected - owned, where they differ

    def line(self, label: str) -> str:
        return (f"[{label}] items={self.items} popularity expected={self.expected_total:.1f} "
                f"owned={self.owned_total:.1f} items_differing={len(self.short)}"
                + (f" {dict(list(self.short.items())[:10])}" if self.short else ""))


def expected_popularity(events: Iterable[dict]) -> dict[str, float]:
    expected: dict[str, float] = {}
    for e in events:
        expected[e["item_id"]] = expected.get(e["item_id"], 0.0) + strength(e)
    return expected


def read_item_states(settings: Settings, events: list[dict], timeout: float = 90.0
                     ) -> dict[str, dict]:
    """The owners' item_state records, read until they hold every event's strength."""
    expected = expected_popularity(events)

    def done(states: dict[str, dict]) -> bool:
        return all(abs(states.get(i, {}).get("count", 0.0) - w) < 1e-6 * max(1.0, w)
                   for i, w in expected.items())

    return read_profiles(settings, done, timeout, table=ITEM_STATE_TABLE)


def account_items(events: list[dict], states: dict[str, dict]) -> ItemAccounting:
    expected = expected_popularity(events)
    short = {}
    for item, w in expected.items():
        got = states.get(item, {}).get("count", 0.0)
        if abs(got - w) > 1e-6 * max(1.0, w):
            short[item] = round(w - got, 6)
    return ItemAccounting(len(expected), sum(expected.values()),
                          sum(s.get("count", 0.0) for s in states.values()), short)


def assert_nothing_lost(settings: Settings, events: list[dict], acc: Accounting,
                        label: str) -> None:
    """The user side: every event learnt once; where the lost ones sit, if any."""
    if acc.lost_ids:
        print(f"[{label}] lost events at {locate(settings, acc.lost_ids[:50])}")
        for line in explain_lost(settings, acc.lost_ids[:10], events):
            print(f"[{label}] {line}")
    assert (acc.lost, acc.learned_twice, acc.foreign) == (0, 0, 0), acc.line(label)


def assert_items_exact(settings: Settings, events: list[dict], workers: Iterable[Any],
                       label: str, timeout: float, note: str = "") -> dict[str, dict]:
    """The item side: every item's popularity in the owners' table is exactly the
    sum of its events' strengths; prints the duplicates ``workers`` skipped and
    returns the item states."""
    states = read_item_states(settings, events, timeout=timeout)
    items = account_items(events, states)
    duplicates = sum(w.metric("feedback_item_update_entries_duplicate_total") for w in workers)
    print(f"{items.line(label)}{note} duplicates_skipped={duplicates:.0f}")
    assert items.short == {}, items.line(label)
    return states


def locate(settings: Settings, event_ids: Iterable[str], timeout: float = 20.0) -> list[str]:
    """Where the given events sit in the input topics: ``topic[partition]@offset``."""
    wanted = set(event_ids)

    async def read() -> list[str]:
        consumer = AIOKafkaConsumer(
            **client_kwargs(settings), enable_auto_commit=False, group_id=None,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        found: list[str] = []
        try:
            consumer.assign([
                TopicPartition(t, p) for t in settings.input_topics
                for p in range(settings.partitions)
            ])
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while loop.time() < deadline and len(found) < len(wanted):
                batch = await consumer.getmany(timeout_ms=500, max_records=5000)
                if not batch:
                    break
                for msgs in batch.values():
                    for m in msgs:
                        if orjson.loads(m.value)["event_id"] in wanted:
                            found.append(f"{m.topic}[{m.partition}]@{m.offset}")
        finally:
            await consumer.stop()
        return sorted(found)

    return asyncio.run(read())


def complete(events: list[dict]) -> Callable[[dict[str, dict]], bool]:
    """``until`` for :func:`read_profiles`: every expected event is in a profile."""
    total = len(events)

    def done(profiles: dict[str, dict]) -> bool:
        return sum(len(p["recent_event_ids"]) for p in profiles.values()) >= total

    return done


def port_free(port: int) -> bool:
    """No listener on ``port`` (one in TIME_WAIT does not count, as for the worker)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def owned_partitions(worker: Any) -> set[tuple[str, str]]:
    """Input partitions the worker reports a high-water mark for (its assignment)."""
    _, body = worker.get("/metrics")
    owned = set()
    for line in body.decode().splitlines():
        if line.startswith("feedback_input_highwater_offset{"):
            labels = dict(
                kv.split("=", 1) for kv in line[line.index("{") + 1 : line.index("}")].split(",")
            )
            owned.add((labels["topic"].strip('"'), labels["partition"].strip('"')))
    return owned


def wait_metric(worker: Any, name: str, at_least: float, timeout: float, **labels: str) -> float:
    """Poll a worker's metric until it reaches ``at_least``; returns the last value."""
    deadline = time.monotonic() + timeout
    value = 0.0
    while time.monotonic() < deadline:
        try:
            value = worker.metric(name, **labels)
        except OSError:
            value = 0.0
        if value >= at_least:
            return value
        if worker.process.poll() is not None:
            raise RuntimeError(f"worker exited; log:\n{worker.excerpt()}")
        time.sleep(0.1)
    return value


def explain_lost(
    settings: Settings, lost_ids: Sequence[str], events: list[dict], timeout: float = 20.0
) -> list[str]:
    """For each lost event, its user's changelog history around it.

    Tells the two kinds of loss apart: an event that no profile write ever
    contained (never learned: its input offset was committed over), and one
    that a profile write contained and a later write of the same user dropped
    (learned, then overwritten from a stale state).
    """
    user_of = {e["event_id"]: e["user_id"] for e in events}
    users = {user_of[i] for i in lost_ids if i in user_of}

    async def read() -> dict[str, list[tuple[int, int, dict]]]:
        topic = changelog_topic(settings)
        consumer = AIOKafkaConsumer(
            **client_kwargs(settings), enable_auto_commit=False, group_id=None,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        history: dict[str, list[tuple[int, int, dict]]] = {u: [] for u in users}
        try:
            consumer.assign([TopicPartition(topic, p) for p in range(settings.partitions)])
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while loop.time() < deadline:
                batch = await consumer.getmany(timeout_ms=1000, max_records=5000)
                if not batch:
                    break
                for msgs in batch.values():
                    for m in msgs:
                        key = table_key(m.key)
                        if key in history and m.value is not None:
                            history[key].append((m.partition, m.offset, orjson.loads(m.value)))
        finally:
            await consumer.stop()
        return history

    history = asyncio.run(read())
    lines = []
    for event_id in lost_ids:
        user = user_of.get(event_id)
        records = history.get(user, []) if user else []
        first_with = next((i for i, (_, _, p) in enumerate(records)
                           if event_id in p["recent_event_ids"]), None)
        steps = [f"@{p}:{o} n={len(v['recent_event_ids'])}"
                 + ("+" if event_id in v["recent_event_ids"] else "") for p, o, v in records]
        kind = ("never in any profile write" if first_with is None
                else f"learned in changelog record {first_with}, dropped later")
        lines.append(f"{event_id} ({user}): {kind}; writes: {' '.join(steps)}")
    return lines
