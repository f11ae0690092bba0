"""The consumer's overrides (stream.faust.consumer.ConsumerFixes) put the commit
guard in charge of the input offsets Faust commits: only processed, published
ones; held ones (a debounced recommendation owed) and what follows once they
are released.

The overrides run over Faust's own commit bookkeeping (faust-streaming's
``ack``, ``_new_offset``, ``_should_commit``, ``_filter_tps_with_pending_acks``
and ``_filter_committable_offsets``, unchanged; only the broker round trip is
recorded instead), and over a reduced copy of it that states what the guard
relies on; the whole consumer is exercised by tests/integration.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, TypeVar

import pytest
from faust.transport.consumer import Consumer as FaustConsumer
from faust.types import TP
from intervaltree import IntervalTree

from stream.commit_guard import CommitGuard
from stream.faust.consumer import ConsumerFixes

TOPIC = "in.purchases"
TP0 = TP(TOPIC, 0)


@dataclass(eq=False)
class Message:
    topic: str
    partition: int
    offset: int
    acked: bool = False

    @property
    def tp(self) -> TP:
        return TP(self.topic, self.partition)


class Consumer:
    """Faust's bookkeeping, reduced: acks append to ``_acked``; a commit asks
    ``_new_offset`` for each partition with acks, as Faust's force_commit does."""

    def __init__(self) -> None:
        self._acked: defaultdict[Any, list[int]] = defaultdict(list)
        self._acked_index: defaultdict[Any, set[int]] = defaultdict(set)
        self._unacked_messages: set[Message] = set()
        self._committed_offset: dict[Any, int | None] = {}
        self.commits: list[dict[Any, int]] = []

    def ack(self, message: Message) -> bool:
        message.acked = True
        self._unacked_messages.discard(message)
        tp = TP(message.topic, message.partition)
        self._acked[tp].append(message.offset)
        self._acked_index[tp].add(message.offset)
        return True

    def _new_offset(self, tp: Any) -> int | None:  # Faust's: the first run of acked offsets
        acked = sorted(self._acked[tp])
        if not acked:
            return None
        committed = self._committed_offset.get(tp)
        if committed and acked[0] - committed > 1:
            return None  # a hole at the head: Faust waits for it, for good
        end = acked[0]
        while end + 1 in acked:
            end += 1
        self._acked[tp] = [o for o in acked if o > end]
        return end + 1

    async def _commit_offsets(self, offsets: dict[Any, int]) -> bool:
        self.commits.append(dict(offsets))
        self._committed_offset.update(offsets)
        return True

    def assignment(self) -> set[Any]:
        return {TP0}

    def _filter_tps_with_pending_acks(self, topics: Any = None) -> Any:
        return iter(list(self._acked))  # Faust's: the partitions it saw an ack for

    def commit(self) -> None:
        offsets = {}
        for tp in self._filter_tps_with_pending_acks():
            offset = self._new_offset(tp)
            committed = self._committed_offset.get(tp)
            if offset is not None and (committed is None or offset > committed):
                offsets[tp] = offset
        if offsets:
            asyncio.run(self._commit_offsets(offsets))

    def committed(self) -> int | None:
        return self._committed_offset.get(TP0)


class FaustBookkeeping:
    """faust-streaming's own commit bookkeeping, its methods unchanged, over the
    state they read; commits are recorded instead of sent to the broker."""

    ack = FaustConsumer.ack
    _new_offset = FaustConsumer._new_offset
    _should_commit = FaustConsumer._should_commit
    _filter_tps_with_pending_acks = FaustConsumer._filter_tps_with_pending_acks
    _filter_committable_offsets = FaustConsumer._filter_committable_offsets

    def __init__(self) -> None:
        self._acked: defaultdict[Any, list[int]] = defaultdict(list)
        self._acked_index: defaultdict[Any, set[int]] = defaultdict(set)
        self._gap: defaultdict[Any, IntervalTree] = defaultdict(IntervalTree)
        self._committed_offset: defaultdict[Any, int | None] = defaultdict(lambda: None)
        self._unacked_messages: set[Message] = set()
        self._n_acked = 0
        self._waiting_for_ack = None
        self.app = SimpleNamespace(topics=SimpleNamespace(acks_enabled_for=lambda topic: True))
        self.commits: list[dict[Any, int]] = []

    async def _commit_offsets(self, offsets: dict[Any, int], *args: Any, **kw: Any) -> bool:
        self.commits.append(dict(offsets))
        self._committed_offset.update(offsets)
        return True

    def assignment(self) -> set[Any]:
        return {TP0}

    def commit(self) -> None:  # Faust's _commit_tps, less the attached sends
        offsets = self._filter_committable_offsets(list(self._filter_tps_with_pending_acks()))
        if offsets:
            asyncio.run(self._commit_offsets(offsets))

    def committed(self) -> int | None:
        return self._committed_offset.get(TP0)


@pytest.fixture(params=[FaustBookkeeping, Consumer], ids=["faust", "reduced"])
def bookkeeping(request: pytest.FixtureRequest) -> type[Any]:
    return request.param  # type: ignore[no-any-return]


F = TypeVar("F")


def guarded(fake: type[F], guard: CommitGuard) -> F:
    """An instance of ``fake`` under the overrides, consulting ``guard``."""
    cls = type(f"Guarded{fake.__name__}", (ConsumerFixes, fake), {"commit_guard": guard})
    return cls()  # type: ignore[no-any-return]


def batch(first: int, last: int) -> list[Message]:
    return [Message(TOPIC, 0, o) for o in range(first, last + 1)]


def test_a_held_offset_and_what_follows_wait_for_its_release(bookkeeping: type[Any]) -> None:
    guard = CommitGuard([TOPIC])
    consumer = guarded(bookkeeping, guard)
    first = batch(0, 9)
    consumer._unacked_messages |= set(first)
    guard.hold([first[4]])  # offset 4's recommendation is owed
    guard.done(first)
    for m in first:  # take_events acks the batch when the next one is requested
        consumer.ack(m)
    # The held message no longer holds up a rebalance or shutdown (wait_empty),
    # and is not counted as an unprocessed one.
    assert consumer._unacked_messages == set() and guard.refused == 0
    consumer.commit()
    assert consumer.committed() == 4
    second = batch(10, 14)
    guard.done(second)
    for m in second:
        consumer.ack(m)
    consumer.commit()
    assert consumer.committed() == 4  # still owed
    guard.release([first[4]])  # published
    third = batch(15, 15)
    guard.done(third)
    consumer.ack(third[0])
    consumer.commit()
    # Faust alone would wait for ever (its acks start past the committed offset).
    assert consumer.committed() == 16


def test_a_release_before_fausts_ack_lets_the_ack_through(bookkeeping: type[Any]) -> None:
    guard = CommitGuard([TOPIC])
    consumer = guarded(bookkeeping, guard)
    msgs = batch(0, 2)
    guard.hold([msgs[1]])
    guard.done(msgs)
    guard.release([msgs[1]])  # published between batches, before the ack
    assert all(consumer.ack(m) for m in msgs)
    consumer.commit()
    assert consumer.committed() == 3 and guard.refused == 0


def test_a_held_first_offset_of_a_fresh_partition_is_not_stepped_over(
    bookkeeping: type[Any],
) -> None:
    # No committed offset known: the run starts at the first offset processed,
    # held ones included.
    guard = CommitGuard([TOPIC])
    consumer = guarded(bookkeeping, guard)
    msgs = batch(0, 3)
    guard.hold([msgs[0]])
    guard.done(msgs)
    for m in msgs:
        consumer.ack(m)
    consumer.commit()
    assert consumer.committed() is None
    guard.release([msgs[0]])
    later = batch(4, 4)
    guard.done(later)
    consumer.ack(later[0])
    consumer.commit()
    assert consumer.committed() == 5


def test_forgotten_held_offsets_are_read_again_not_committed(bookkeeping: type[Any]) -> None:
    guard = CommitGuard([TOPIC])
    consumer = guarded(bookkeeping, guard)
    msgs = batch(0, 3)
    guard.hold([msgs[2]])
    guard.done(msgs)
    for m in msgs:
        consumer.ack(m)
    guard.forget([(TOPIC, 0)])  # revoked: the owed recommendation was dropped
    guard.release([msgs[2]])  # a late release of a dropped one changes nothing
    consumer.commit()
    assert consumer.committed() == 2
    # The next read of offset 2 (after the seek) is processed normally.
    again = batch(2, 3)
    guard.done(again)
    for m in again:
        consumer.ack(m)
    consumer.commit()
    assert consumer.committed() == 4


def test_other_topics_keep_fausts_own_accounting(bookkeeping: type[Any]) -> None:
    guard = CommitGuard([TOPIC])
    consumer = guarded(bookkeeping, guard)
    changelog = Message("app-profiles-changelog", 0, 0)
    assert consumer.ack(changelog) is True
    consumer.commit()
    assert consumer._committed_offset[TP("app-profiles-changelog", 0)] == 1


def test_a_partition_whose_only_records_were_held_commits_on_release(
    bookkeeping: type[Any],
) -> None:
    # A quiet partition: its one record is the trigger of an owed recommendation,
    # so Faust's ack of it is refused and Faust never sees the partition acked.
    guard = CommitGuard([TOPIC])
    consumer = guarded(bookkeeping, guard)
    (only,) = batch(0, 0)
    guard.hold([only])
    guard.done([only])
    consumer.ack(only)
    consumer.commit()
    assert consumer.committed() is None
    guard.release([only])  # published between batches; no later record comes
    consumer.commit()
    assert consumer.committed() == 1


class FakeMessage:
    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self.topic, self.partition, self.offset = topic, partition, offset
        self.acked = False


class FakeConsumer:
    """The members of Faust's Consumer that the guard touches."""

    def __init__(self) -> None:
        self.committable: list[tuple[str, int, int]] = []
        self._unacked_messages: set[FakeMessage] = set()
        self._committed_offset: dict[TP, int] = {}
        self.commits: list[dict[TP, int]] = []

    async def _commit_offsets(self, offsets: dict[TP, int]) -> bool:
        self.commits.append(dict(offsets))
        self._committed_offset.update(offsets)
        return True

    def ack(self, message: FakeMessage) -> bool:
        message.acked = True
        self._unacked_messages.discard(message)
        self.committable.append((message.topic, message.partition, message.offset))
        return True


def test_commit_guard_commits_only_processed_input_offsets() -> None:
    guard = CommitGuard(["in.clicks"])
    consumer = guarded(FakeConsumer, guard)
    processed, skipped, changelog = (
        FakeMessage("in.clicks", 0, 7), FakeMessage("in.clicks", 0, 8),
        FakeMessage("app-profiles-changelog", 0, 3),
    )
    consumer._unacked_messages |= {processed, skipped}
    guard.done([processed])
    # Faust acks all three: after processing, as "skipped" after flow control
    # stopped, and a changelog record (not ours to judge).
    assert consumer.ack(processed) is True
    assert consumer.ack(skipped) is False
    assert consumer.ack(changelog) is True
    assert consumer.committable == [("in.clicks", 0, 7), ("app-profiles-changelog", 0, 3)]
    # The refused one no longer holds up a rebalance or shutdown (wait_empty)...
    assert consumer._unacked_messages == set() and skipped.acked
    assert guard.refused == 1
    # ...and a later delivery of the same offset, once processed, commits.
    again = FakeMessage("in.clicks", 0, 8)
    guard.done([again])
    assert consumer.ack(again) is True
    assert consumer.committable[-1] == ("in.clicks", 0, 8)


def test_commit_guard_off_leaves_faust_alone() -> None:
    consumer = guarded(FakeConsumer, CommitGuard(["in.clicks"], enabled=False))
    unprocessed = FakeMessage("in.clicks", 0, 8)
    # Faust's own answers: the ack counts, the commit goes as Faust asked.
    assert consumer.ack(unprocessed) is True
    assert consumer.committable == [("in.clicks", 0, 8)]
    tp = TP("in.clicks", 0)
    assert asyncio.run(consumer._commit_offsets({tp: 10})) is True
    assert consumer.commits == [{tp: 10}]


def test_commit_guard_never_commits_past_an_unprocessed_offset() -> None:
    """Whatever Faust's own gap accounting concluded (it can step over a hole),
    the committed offset stops at the first offset the agent did not process."""
    guard = CommitGuard(["in.clicks"])
    consumer = guarded(FakeConsumer, guard)
    tp, other = TP("in.clicks", 0), TP("app-profiles-changelog", 0)
    guard.done([FakeMessage("in.clicks", 0, o) for o in (0, 1, 2, 3, 4, 6, 7, 8, 9)])
    assert asyncio.run(consumer._commit_offsets({tp: 10, other: 50})) is True
    assert consumer.commits[-1] == {tp: 5, other: 50}  # offset 5 was never processed
    # Held there until offset 5 is processed (read again after a seek)...
    assert asyncio.run(consumer._commit_offsets({tp: 12})) is False
    guard.done([FakeMessage("in.clicks", 0, 5), FakeMessage("in.clicks", 0, 10)])
    asyncio.run(consumer._commit_offsets({tp: 11}))
    assert consumer.commits[-1] == {tp: 11}


# -- Records processed out of order --------------------------------------------

CLICKS5 = TP("in.clicks", 5)


@dataclass(eq=False)
class Record:  # what aiokafka's getmany returns
    offset: int


class Fetching(Consumer):
    """The reduced bookkeeping with Faust's fetch side: ``_getmany`` returns the
    queued fetches, seeks are recorded and set the read offset (as Faust's
    ``seek_wait``)."""

    def __init__(self) -> None:
        super().__init__()
        self._committed_offset[CLICKS5] = 634
        self._read_offset: dict[Any, int | None] = {}
        self.fetches: list[dict[Any, list[Record]]] = []
        self.seeks: list[dict[Any, int]] = []
        self.assigned = {CLICKS5}
        self._thread = SimpleNamespace(seek_wait=self._seek_wait)
        # No stream behind any partition: one group, polled as Faust polls.
        self.app = SimpleNamespace(in_recovery=False, topics=SimpleNamespace(_tp_index={}))

    async def _seek_wait(self, partitions: dict[Any, int]) -> None:
        self.seeks.append(dict(partitions))
        self._read_offset.update(partitions)

    async def _getmany(self, active: Any, timeout: float) -> dict[Any, list[Record]]:
        return self.fetches.pop(0) if self.fetches else {}

    def assignment(self) -> set[Any]:
        return self.assigned


def events(first: int, last: int) -> list[SimpleNamespace]:
    return [SimpleNamespace(message=Message(CLICKS5.topic, 5, o)) for o in range(first, last + 1)]


def fetch(consumer: Any, records: dict[Any, list[Record]] | None = None) -> None:
    consumer.fetches.append(records or {})
    asyncio.run(consumer._getmany({CLICKS5}, 1.0))


def test_events_past_a_lost_record_wait_for_it_and_the_item_owner_counts_every_click() -> None:
    # Traced in the three-worker restart test: committed at 634, Faust delivered
    # 634, lost 635 around the rebalance's seek (its ack refused, so the commit
    # stopped there) and delivered 636 on. Processed as delivered, 636-965
    # reached the owner of sku-001 before 635 (read again after the next
    # rebalance), whose click it skipped as applied: 0.3 short.
    from prometheus_client import CollectorRegistry

    from models.engine import FeedbackEngine
    from models.item_state import ItemParams
    from models.item_updates import encode_updates
    from stream.metrics import Metrics
    from stream.settings import Settings
    from stream.sharing import Sharing

    engine = FeedbackEngine()
    owner = Sharing(Settings.from_env({}), engine, Metrics(CollectorRegistry()),
                    ItemParams.of(engine.config), worker_id="w")
    table: dict[str, Any] = {}
    guard = CommitGuard([CLICKS5.topic])
    consumer = guarded(Fetching, guard)

    def agent(batch: list[SimpleNamespace]) -> None:
        """The process agent: in order, one click on sku-001 per event, then acked."""
        kept = consumer.in_order(batch)
        for e in kept:
            payload = encode_updates(
                {"sku-001": [[f"{CLICKS5.topic}:5", e.message.offset, ["p", 0.3, 0.0]]]})
            owner.apply_updates(table, payload)
        guard.done([e.message for e in kept])
        for e in batch:
            consumer.ack(e.message)

    agent(events(634, 634))
    lost = Message(CLICKS5.topic, 5, 635)
    consumer.ack(lost)  # Faust acked it without the agent
    agent(events(636, 700))
    fetch(consumer)
    assert consumer.seeks == [{CLICKS5: 635}]
    agent(events(701, 725))  # still queued from before the seek: no second one
    fetch(consumer, {CLICKS5: [Record(635), Record(636)]})
    assert consumer.seeks == [{CLICKS5: 635}]
    agent(events(635, 725))  # read again from the hole
    assert table["sku-001"]["count"] == pytest.approx(0.3 * (725 - 634 + 1))
    assert guard.cap(CLICKS5, 726, 634) == 726


def test_a_rewound_fetch_that_starts_past_the_hole_means_no_record_there() -> None:
    guard = CommitGuard([CLICKS5.topic])
    consumer = guarded(Fetching, guard)
    assert consumer.in_order(events(637, 637)) == []
    fetch(consumer, {CLICKS5: [Record(636), Record(637)]})  # 634 and 635: no records
    assert [e.message.offset for e in consumer.in_order(events(636, 637))] == [636, 637]


def test_a_partition_revoked_before_its_rewind_is_not_sought() -> None:
    guard = CommitGuard([CLICKS5.topic])
    consumer = guarded(Fetching, guard)
    assert consumer.in_order(events(640, 640)) == []
    consumer.assigned = set()
    fetch(consumer)
    assert consumer.seeks == []


def test_in_order_is_a_no_op_without_the_guard() -> None:
    consumer = guarded(Fetching, CommitGuard([CLICKS5.topic], enabled=False))
    batch = events(640, 641)
    assert consumer.in_order(batch) == batch
    fetch(consumer)
    assert consumer.seeks == []


# -- Every stream's records reach it while another stream has a backlog -------

INPUT, UPDATES = "in.clicks", "app.item-updates"


class FetchBuffer:
    """aiokafka's fetch buffer as its ``fetched_records`` drains it: the partitions
    in the order their fetches completed, up to ``max_records`` in all."""

    def __init__(self, records: dict[TP, list[int]], max_records: int) -> None:
        self.records = records
        self.max_records = max_records
        self.polls: list[tuple[frozenset[TP], float]] = []

    async def _getmany(self, partitions: set[TP] | None, timeout: float) -> dict[TP, list[int]]:
        self.polls.append((frozenset(partitions or ()), timeout))
        left, out = self.max_records, {}
        for tp, offsets in self.records.items():
            if (partitions and tp not in partitions) or not offsets:
                continue
            out[tp], self.records[tp] = offsets[:left], offsets[left:]
            left -= len(out[tp])
            if not left:
                break
        return out


@dataclass(eq=False)
class Queue:
    maxsize: int
    size: int = 0

    def qsize(self) -> int:
        return self.size

    @property
    def pressure_high_size(self) -> int:  # mode's FlowControlQueue: maxsize / 1.25
        return int(self.maxsize / 1.25)


@dataclass(eq=False)
class Channel:
    queue: Queue


def polling(records: dict[TP, list[int]], queues: dict[str, Queue], limit: int = 200) -> Any:
    """A consumer over :class:`FetchBuffer`, each topic feeding one stream queue."""
    channels = {topic: Channel(q) for topic, q in queues.items()}
    index = {tp: {channels[tp.topic]} for tp in records}
    cls = type("Polling", (ConsumerFixes, FetchBuffer), {"poll_records": limit})
    consumer = cls(records, limit)
    consumer.app = SimpleNamespace(in_recovery=False, topics=SimpleNamespace(_tp_index=index))
    return consumer


def backlog() -> dict[TP, list[int]]:
    # The inputs' buffered fetches completed first, each a thousand records.
    records = {TP(INPUT, p): list(range(1000)) for p in range(4)}
    records[TP(UPDATES, 0)] = [0, 1, 2]
    return records


def test_a_poll_reaches_the_item_updates_behind_an_input_backlog() -> None:
    consumer = polling(backlog(), {INPUT: Queue(4096), UPDATES: Queue(4096)})
    got = asyncio.run(consumer._getmany(set(consumer.records), 1.0))
    # Up to a poll's records for each stream; the inputs in aiokafka's order.
    assert got[TP(UPDATES, 0)] == [0, 1, 2]
    assert got[TP(INPUT, 0)] == list(range(200)) and len(got) == 2
    # Neither group waited on the other.
    assert [timeout for _, timeout in consumer.polls] == [0, 0]


def test_a_stream_without_room_for_a_poll_keeps_its_records_in_the_fetch_buffer() -> None:
    # Faust's back-pressure engages at 3,276 events: the poll stays below it.
    queues = {INPUT: Queue(4096, size=3276 - 199), UPDATES: Queue(4096)}
    consumer = polling(backlog(), queues)
    active = set(consumer.records)
    got = asyncio.run(consumer._getmany(active, 1.0))
    assert got == {TP(UPDATES, 0): [0, 1, 2]}
    assert consumer.polls[0][0] == {TP(UPDATES, 0)}
    # The next look is soon; Faust's own set of active partitions is untouched.
    assert consumer.polls[0][1] <= 0.05 and active == set(consumer.records)
    # With every stream full, nothing is polled (an empty set would be "all"
    # to aiokafka), and the poll waits a moment rather than spin.
    consumer.polls.clear()
    queues[UPDATES].size = 4096
    assert asyncio.run(consumer._getmany(active, 1.0)) == {}
    assert consumer.polls == []
    queues[UPDATES].size = 0
    # Once the agent has taken events, the inputs come from where they stopped.
    queues[INPUT].size = 3276 - 200
    got = asyncio.run(consumer._getmany(active, 1.0))
    assert got == {TP(INPUT, 0): list(range(200))}


def test_in_recovery_or_without_a_poll_bound_every_partition_is_polled() -> None:
    queues = {INPUT: Queue(4096, size=4096), UPDATES: Queue(4096)}
    consumer = polling(backlog(), queues)
    consumer.app.in_recovery = True
    assert TP(INPUT, 0) in asyncio.run(consumer._getmany(set(consumer.records), 1.0))
    consumer = polling(backlog(), queues, limit=200)
    type(consumer).poll_records = None
    assert TP(INPUT, 0) in asyncio.run(consumer._getmany(set(consumer.records), 1.0))
