"""The item owner's and the replica's bookkeeping (stream/sharing.py), without Faust."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from models.engine import FeedbackEngine
from models.events import Event
from models.item_state import ItemParams
from models.item_updates import decode_model, encode_updates, partition_of
from stream.metrics import Metrics
from stream.settings import Settings
from stream.sharing import Sharing
from tests.stream.loop_turns import loop_turns


def sharing(engine: FeedbackEngine | None = None) -> Sharing:
    engine = engine or FeedbackEngine()
    return Sharing(Settings.from_env({}), engine, Metrics(CollectorRegistry()),
                   ItemParams.of(engine.config), worker_id="http://w1:6066")


def test_updates_are_applied_once_per_source_offset() -> None:
    sh = sharing()
    table: dict = {}
    payload = encode_updates({"x": [["clicks:0", 5, ["p", 1.0, 100.0]]],
                              "y": [["clicks:0", 5, ["p", 0.3, 100.0]]]})
    assert sh.apply_updates(table, payload) == (2, 0)
    assert sh.apply_updates(table, payload) == (0, 2)  # re-sent after a crash
    assert table["x"]["count"] == 1.0 and table["y"]["count"] == 0.3
    assert sh.metrics.item_updates_duplicate._value.get() == 2


def test_owner_publishes_changed_items_of_its_partitions_and_all_on_takeover() -> None:
    sh = sharing()
    table: dict = {}
    p = sh.settings.partitions
    items = [f"i{k}" for k in range(12)]
    sh.apply_updates(table, encode_updates({i: [["c:0", 1, ["p", 1.0, 0.0]]] for i in items}))
    mine = {partition_of(items[0], p)}
    first = dict(sh.due_models(table, mine, now=10.0))
    assert set(first) == {i.encode() for i in items if partition_of(i, p) in mine}
    assert decode_model(first[items[0].encode()])["n"] == 1.0
    assert sh.due_models(table, mine, now=11.0) == []  # nothing changed since
    # A partition taken over: every item of it, changed or not.
    other = partition_of(next(i for i in items if partition_of(i, p) not in mine), p)
    taken = dict(sh.due_models(table, mine | {other}, now=12.0))
    assert set(taken) == {i.encode() for i in items if partition_of(i, p) == other}


def test_replica_applies_item_models_and_follows_segments_unless_owner() -> None:
    engine = FeedbackEngine()
    sh = sharing(engine)
    model = {"t": 99.0, "p": [3.0, 50.0], "n": 3.0}
    s = sh.settings
    records = [SimpleNamespace(topic=s.topic_item_model, key=b"new-item",
                               value=orjson.dumps(model))]
    assert sh.read(records, now=100.0) == 1
    assert "new-item" in engine.catalogue.ids
    assert sh.metrics.item_model_staleness._value.get() == 1.0
    centres = [[float(k)] * len(engine.segmentation.centres[0])
               for k in range(len(engine.segmentation.centres))]
    seg = SimpleNamespace(topic=s.topic_globals, key=b"segments",
                          value=orjson.dumps({"centres": centres, "at": 1.0}))
    sh.owns_segments = True
    sh.read([seg], now=2.0)
    assert not engine.segmentation.follower  # its owner never adopts its own record
    sh.owns_segments = False
    sh.read([seg], now=2.0)
    assert engine.segmentation.follower


def test_blend_average_ignores_workers_gone_quiet() -> None:
    engine = FeedbackEngine()
    sh = sharing(engine)
    engine.hits_seen = 1
    engine.recommender.weights[:] = 0.0
    n = len(engine.recommender.weights)
    sh.blends = {
        "blend:http://w2:6066": {"steps": 1, "weights": [2.0] * n, "at": 1000.0},
        "blend:http://w3:6066": {"steps": 5, "weights": [9.0] * n, "at": 1.0},  # gone
    }
    assert sh.merge_blends(now=1001.0)
    assert engine.recommender.weights.tolist() == [1.0] * n


def test_replica_recommends_a_neighbour_whose_own_model_has_not_come_yet() -> None:
    # Item a's published neighbour list names b before b's own model (its mass)
    # reaches this replica: b joins the catalogue with no mass, and the reason
    # for recommending it ("bought together with a") must not divide by it.
    engine = FeedbackEngine()
    engine.process(Event("purchase", "e1", "u1", "a", 1e9, quantity=1))
    sh = sharing(engine)
    owner = sharing()
    table: dict = {}
    owner.apply_updates(table, encode_updates({"a": [["c:0", 1, ["c", "b", 2.0]]]}))
    models = dict(owner.due_models(table, set(range(owner.settings.partitions)), now=5.0))
    records = [SimpleNamespace(topic=sh.settings.topic_item_model, key=b"a",
                               value=models[b"a"])]
    assert sh.read(records, now=5.0) == 1
    recs = engine.recommend("u1")
    assert [r.item_id for r in recs] == ["b"]
    assert recs[0].reason.startswith("bought together with a"), recs[0].reason


def test_a_restarted_owner_rebuilds_its_items_from_the_table_exactly() -> None:
    """The owner writes neighbour snapshots and changed-only item records; a new
    owner reading the same table (the changelog, latest record per key) has the
    same states, and skips every re-sent entry."""
    sh = sharing()
    table: dict = {}
    written: list[str] = []

    def write(key: str, record: dict, _source: object) -> None:
        written.append(key)
        table[key] = orjson.loads(orjson.dumps(record))

    payloads = [
        # x meets a new item every time, y cycles through 40: both lists outgrow
        # the inline size, and y's changes are a few known neighbours
        encode_updates({"x": [["clicks:0", k, ["c", f"n{k}", 0.5], ["p", 1.0, 100.0 + k]]],
                        "y": [["clicks:0", k, ["c", f"n{(k * 7) % 40}", 0.25]]]})
        for k in range(60)
    ]
    for payload in payloads:
        sh.apply_batch(table, [(payload, None)], write)
    assert any("\x1f" in key for key in written)  # snapshots were written

    restarted = sharing()
    for item in ("x", "y"):
        got, want = restarted.state_of(table, item), sh.states[item]
        assert got == want and list(got.neighbours) == list(want.neighbours)
    for payload in payloads:
        assert restarted.apply_batch(table, [(payload, None)], write) == (0, 2)
    assert restarted.state_of(table, "x").count == 60.0
    # a partition taken over publishes its items, never the snapshot keys
    owned = {partition_of("x", restarted.settings.partitions),
             partition_of("y", restarted.settings.partitions)}
    keys = {k for k, _ in restarted.due_models(table, owned, now=200.0)}
    assert keys == {b"x", b"y"}


def test_an_owner_without_write_keeps_changes_until_the_periods_write() -> None:
    """Deferred writes (the agent with a commit guard): three batches touching x
    are one record of x when the period's write comes, with the watermark of all
    three, and nothing is written before it."""
    sh = sharing()
    table: dict = {}
    written: list[tuple[str, dict]] = []
    for k in range(3):
        sh.apply_batch(table, [(encode_updates({"x": [["c:0", k, ["p", 1.0, 0.0]]],
                                                f"y{k}": [["c:0", k, ["p", 1.0, 0.0]]]}),
                                f"msg{k}")], None)
    assert table == {} and list(sh.dirty) == ["x", "y0", "y1", "y2"]
    assert sh.dirty["x"] == "msg2"  # the source of its last message: its partition
    assert sh.write_changed(lambda k, v, _: written.append((k, v)), limit=2) == 2
    assert sh.write_changed(lambda k, v, _: written.append((k, v))) == 2
    assert [k for k, _ in written] == ["x", "y0", "y1", "y2"] and sh.dirty == {}
    record = dict(written)["x"]
    assert record["count"] == 3.0 and record["applied"] == {"c:0": 2}
    assert sh.metrics.item_state_records_written._value.get() == 4


def test_a_revoked_partitions_unwritten_changes_are_dropped() -> None:
    sh = sharing()
    p = sh.settings.partitions
    items = [f"i{k}" for k in range(12)]
    sh.apply_batch({}, [(encode_updates({i: [["c:0", 1, ["p", 1.0, 0.0]]] for i in items}),
                         None)], None)
    gone = partition_of(items[0], p)
    sh.owed = [SimpleNamespace(partition=q) for q in range(p)]
    sh.forget({gone})
    assert set(sh.dirty) == {i for i in items if partition_of(i, p) != gone}
    assert [m.partition for m in sh.owed] == [q for q in range(p) if q != gone]


def test_a_tick_tests_only_the_items_changed_since_the_last(monkeypatch) -> None:
    """An item that moved less than the publication tolerance is tested again
    only when it changes again (its due-ness cannot change otherwise): a tick's
    work follows what changed, not every item waiting."""
    from models.item_state import ItemState

    sh = sharing()
    table: dict = {}
    p = sh.settings.partitions
    owned = set(range(p))
    items = [f"i{k}" for k in range(20)]
    sh.apply_updates(table, encode_updates({i: [["c:0", 1, ["p", 100.0, 0.0]]] for i in items}))
    assert len(sh.due_models(table, owned, now=1.0)) == 20
    sh.apply_updates(table, encode_updates({i: [["c:0", 2, ["p", 1.0, 0.0]]] for i in items}))
    assert sh.due_models(table, owned, now=2.0) == []  # 1%: below the tolerance
    tested: list[int] = []
    due = ItemState.due

    def counting(self: ItemState, params: ItemParams) -> bool:
        tested.append(1)
        return due(self, params)

    monkeypatch.setattr(ItemState, "due", counting)
    sh.apply_updates(table, encode_updates({"i3": [["c:0", 3, ["p", 10.0, 0.0]]]}))
    assert [k for k, _ in sh.due_models(table, owned, now=3.0)] == [b"i3"]
    assert len(tested) == 1


@dataclass
class FaustEvent:
    """What the owner reads of a Faust event (weakly referable, as Faust's are)."""

    value: bytes
    message: SimpleNamespace


async def test_the_owner_writes_its_items_through_the_producer_not_faust_s_buffer(
    tmp_path: object,
) -> None:
    """The owner's changelog records reach the producer with the bytes and the
    partition Faust would have given them, and none waits in Faust's producer
    buffer: while that buffer holds more than 100 records, Faust stops delivering
    the worker's input records (the latency tail)."""
    import asyncio

    import faust.serializers.codecs as codecs

    from stream.app import build_app
    from stream.topics import ITEM_STATE_TABLE

    settings = Settings.from_env({"FEEDBACK_STATE_DIR": str(tmp_path)})
    fa = build_app(settings, engine=FeedbackEngine(), registry=CollectorRegistry())
    assert fa.sharing is not None
    table: Any = fa.app.tables[ITEM_STATE_TABLE]
    sent: list[tuple[str, bytes, bytes, int]] = []

    async def send(topic: str, key: bytes, value: bytes, partition: int,
                   *_: object) -> asyncio.Future[object]:
        sent.append((topic, key, value, partition))
        done: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        done.set_result(SimpleNamespace(topic=topic, partition=partition, offset=len(sent)))
        return done

    fa.app.producer.send = send  # type: ignore[method-assign,assignment]
    items = [f"i{k}" for k in range(150)]
    events = [
        FaustEvent(
            encode_updates({item: [["clicks:0", 1, ["p", 1.0, 100.0]]]}),
            SimpleNamespace(partition=partition_of(item, settings.partitions),
                            topic=settings.topic_item_updates),
        )
        for item in items
    ]
    assert await fa.sharing.own(table, events) == (150, 0)
    assert fa.app.producer.buffer.size == 0
    assert len(sent) == 150
    # Faust's table codec (JSON keys and values), as its own changelog path writes.
    by_key = {codecs.loads("json", key): (topic, value, partition)
              for topic, key, value, partition in sent}
    topic, value, partition = by_key["i7"]
    assert topic == table.changelog_topic.get_topic_name()
    assert partition == partition_of("i7", settings.partitions)
    assert codecs.loads("json", value) == table["i7"]
    assert table["i7"]["count"] == 1.0


def test_a_takeover_keeps_the_increments_applied_but_not_yet_written() -> None:
    """A new owner applies messages before its first publication tick (catching
    up after a restart or rebalance); the tick publishes every item of the
    partitions it took over, and must not reload them from the table: the
    increments applied since the table's record would be lost, their messages'
    offsets released by the period's write."""
    sh = sharing()
    p = sh.settings.partitions
    table: dict = {}
    sh.apply_updates(table, encode_updates({"x": [["c:0", 1, ["p", 1.0, 0.0]]]}))  # written
    sh.apply_batch(table, [(encode_updates({"x": [["c:0", 2, ["p", 0.3, 0.0]]]}), "m2")], None)
    models = dict(sh.due_models(table, {partition_of("x", p)}, now=5.0))
    assert decode_model(models[b"x"])["n"] == 1.3
    written: list[tuple[str, dict]] = []
    sh.write_changed(lambda k, v, _: written.append((k, v)))
    record = dict(written)["x"]
    assert (record["count"], record["applied"]) == (1.3, {"c:0": 2})


async def test_a_write_in_progress_does_not_release_the_messages_of_a_revoked_partition(
    monkeypatch: Any,
) -> None:
    """A rebalance during the period's write revokes every partition (Kafka's
    eager protocol): the guard forgets the held messages, and the owner, given
    the partition back, reads them again and holds the same offsets. The write
    in progress must not release them: the increments applied again are written
    only by a later period (the recovery may have put older records back under
    the chunks already sent), and a commit before that write would lose them at
    the next stop or rebalance."""
    import stream.sharing as sharing_module
    from stream.commit_guard import CommitGuard

    sh = sharing()
    p = sh.settings.partitions
    items = [f"i{k}" for k in range(40)]
    mine = partition_of(items[0], p)
    ours = [i for i in items if partition_of(i, p) == mine][:3]
    other = next(q for q in range(p) if q != mine)
    guard = CommitGuard(["items"])
    table: dict = {}

    def read(offset: int, partition: int, ids: list[str]) -> SimpleNamespace:
        msg = SimpleNamespace(topic="items", partition=partition, offset=offset)
        payload = encode_updates({i: [["c:0", offset, ["p", 1.0, 0.0]]] for i in ids})
        sh.apply_batch(table, [(payload, SimpleNamespace(message=msg))], None)
        guard.hold([msg])
        sh.owed.append(msg)
        return msg

    theirs = [i for i in items if partition_of(i, p) == other][:1]
    read(0, mine, ours)
    read(0, other, theirs)
    monkeypatch.setattr(sharing_module, "WRITE_CHUNK", 1)
    rebalanced = False

    async def send_through(_: Any, writes: list) -> list:
        nonlocal rebalanced
        if not rebalanced:  # during the first chunk's send
            rebalanced = True
            sh.forget({mine})
            guard.forget([("items", mine)])
            table.clear()  # the recovery put back what the changelog held
            read(0, mine, ours)  # given back: the same message read and held again
        for key, record, _partition in writes:
            table[key] = record
        return []

    monkeypatch.setattr(sharing_module, "send_through", send_through)
    await sh.write_period(table, guard, lambda: False)
    assert guard.committable(("items", mine), None) is None  # held for the next write
    assert guard.committable(("items", other), None) == 1  # not revoked: released
    assert sh.writing is None and [m.partition for m in sh.owed] == [mine]
    await sh.write_period(table, guard, lambda: False)
    assert guard.committable(("items", mine), None) == 1
    assert all(table[i]["count"] == 1.0 for i in ours + theirs)


def test_a_replica_applies_a_large_fetch_in_slices_letting_the_loop_run() -> None:
    """A fetch of thousands of models is applied a slice at a time; the event
    loop (input batches, pulls) gets a turn between two slices, and every model
    is applied in order."""
    import asyncio

    from stream.sharing import READ_SLICE

    engine = FeedbackEngine()
    sh = sharing(engine)
    topic = sh.settings.topic_item_model
    n = 3 * READ_SLICE + 7
    records = [SimpleNamespace(topic=topic, key=f"i{k}".encode(),
                               value=orjson.dumps({"t": 1.0, "p": [float(k), 1.0], "n": 1.0}))
               for k in range(n)]

    async def main() -> tuple[int, list[int]]:
        async with loop_turns(lambda: len(engine.catalogue.ids)) as seen:
            applied = await sh.read_in_slices(records)
        return applied, seen

    applied, seen = asyncio.run(main())
    assert applied == n
    assert engine.catalogue.ids == [f"i{k}" for k in range(n)]
    between = sorted(set(seen) - {0})
    assert between == [READ_SLICE, 2 * READ_SLICE, 3 * READ_SLICE]


def test_a_replica_pauses_between_two_models_once_its_slice_is_up() -> None:
    """Within a slice of READ_SLICE models (each can re-apply hundreds of this
    worker's pending entries while an owner lags: a slice held the loop for 0.1 s
    of CPU and more), the loop gets a turn between two models once the slice's
    time is up; the models are confirmed together first, and the engine ends as
    when the slice is applied at once."""
    import asyncio

    from models.item_updates import Outbox, encode_model

    def replica() -> tuple[Sharing, FeedbackEngine]:
        sh = sliced_sharing()
        sh.engine.outbox = Outbox(sh.settings.partitions)
        return sh, sh.engine

    topic = sliced_sharing().settings.topic_item_model
    records = [SimpleNamespace(topic=topic, key=f"i{k}".encode(), value=encode_model(
        {"t": 1.0, "w": {"c:0": 10 + k}, "p": [float(k), 1.0], "n": 1.0,
         "nb": [[f"i{(k + 1) % 5}"], [0.5], 0], "m": 0.5}))
        for k in range(5)]
    sh, engine = replica()

    async def main() -> tuple[int, list[int]]:
        async with loop_turns(lambda: len(engine.catalogue.ids)) as seen:
            applied = await sh.read_in_slices(records)
        return applied, seen

    applied, seen = asyncio.run(main())
    assert applied == 5
    # A turn after each of the first four models (each adds itself and a neighbour).
    assert sorted(set(seen) - {0}) == [2, 3, 4, 5], seen
    at_once, at_once_engine = replica()
    assert at_once.read(records, 0.0) == 5
    assert engine.catalogue.ids == at_once_engine.catalogue.ids
    co, co_once = engine.recommender.cooccurrence, at_once_engine.recommender.cooccurrence
    for k in range(5):
        assert co.neighbours[k].get(co_once.neighbours[k].keys[0]) == 0.5
    pop, pop_once = engine.recommender.popularity, at_once_engine.recommender.popularity
    assert pop.recent(5).tolist() == pop_once.recent(5).tolist()
    assert pop.all_time(5).tolist() == pop_once.all_time(5).tolist() == [1.0] * 5


def sliced_sharing() -> Sharing:
    """A Sharing whose sliced work pauses after every item (a 1 us budget)."""
    engine = FeedbackEngine()
    return Sharing(Settings.from_env({"FEEDBACK_BATCH_SLICE_SECONDS": "0.000001"}), engine,
                   Metrics(CollectorRegistry()), ItemParams.of(engine.config),
                   worker_id="http://w1:6066")


def owner_events(items: list[str], partitions: int) -> list[SimpleNamespace]:
    """One item-updates event per partition, as the owner's agent takes them."""
    by_partition: dict[int, dict] = {}
    for i in items:
        by_partition.setdefault(partition_of(i, partitions), {})[i] = [["c:0", 1, ["p", 1.0, 0.0]]]
    return [SimpleNamespace(value=encode_updates(u),
                            message=SimpleNamespace(topic="items", partition=q, offset=0))
            for q, u in sorted(by_partition.items())]


async def test_the_owner_applies_a_batch_in_slices_letting_the_loop_run() -> None:
    """The owner's batch (a backlog's held the loop for 0.1-0.4 s) gives the loop
    a turn between items, and applies exactly what the batch applied at once."""
    from stream.commit_guard import CommitGuard

    sh = sliced_sharing()
    p = sh.settings.partitions
    items = [f"i{k}" for k in range(30)]
    events = owner_events(items, p)
    guard = CommitGuard(["items"])
    async with loop_turns(lambda: len(sh.states)) as turns:
        assert await sh.hold_and_apply({}, events, guard) == (30, 0)
    # The other task ran while the items were being applied, not only around it.
    assert len({n for n in turns if 0 < n < len(items)}) >= 10, turns
    at_once = sharing()
    at_once.apply_batch({}, [(e.value, e) for e in events], None)
    assert list(sh.dirty) == list(at_once.dirty)
    assert {i: s.changelog(i) for i, s in sh.states.items()} == {
        i: s.changelog(i) for i, s in at_once.states.items()}
    assert [m.partition for m in sh.owed] == [e.message.partition for e in events]
    assert all(guard.committable(("items", q), None) is None for q in range(p))  # held


async def test_a_partition_revoked_during_a_sliced_apply_is_left_to_its_next_owner() -> None:
    import asyncio

    from stream.commit_guard import CommitGuard

    sh = sliced_sharing()
    p = sh.settings.partitions
    items = [f"i{k}" for k in range(40)]
    events = owner_events(items, p)
    gone = events[-1].message.partition  # applied last: revoked before it starts
    guard = CommitGuard(["items"])

    async def rebalance() -> None:
        while len(sh.states) < 3:
            await asyncio.sleep(0)
        sh.forget({gone})
        guard.forget([("items", gone)])

    revoker = asyncio.create_task(rebalance())
    await sh.hold_and_apply({}, events, guard)
    await revoker
    kept = {i for i in items if partition_of(i, p) != gone}
    assert set(sh.dirty) == set(sh.fresh) == set(sh.states) == kept
    assert gone not in {m.partition for m in sh.owed}


async def test_the_periods_due_models_are_computed_in_slices() -> None:
    import asyncio

    sh = sliced_sharing()
    p = sh.settings.partitions
    items = [f"i{k}" for k in range(30)]
    table: dict = {}
    sh.apply_batch(table, [(e.value, e) for e in owner_events(items, p)], None)
    at_once = sliced_sharing()
    at_once.apply_batch(table, [(e.value, e) for e in owner_events(items, p)], None)
    owned = set(range(p))

    from stream.processor import run_async

    async with loop_turns() as turns:
        models = await run_async(sh.due_models_in_slices(table, owned, now=5.0))
    assert len(turns) >= 10
    assert models == at_once.due_models(table, owned, now=5.0) and len(models) == 30

    # A partition revoked during a pause: its items are not published.
    sh.fresh.update(items)
    sh.shown.clear()
    gone = partition_of(items[-1], p)

    async def rebalance() -> None:
        await asyncio.sleep(0)
        sh.forget({gone})

    revoker = asyncio.create_task(rebalance())
    models = await run_async(sh.due_models_in_slices(table, owned, now=6.0))
    await revoker
    assert {k.decode() for k, _ in models} <= {i for i in items if partition_of(i, p) != gone}
    assert models  # the pause came after some were computed


async def test_the_periods_write_lets_the_loop_run_between_slices(monkeypatch: Any) -> None:
    """The period's changelog records are taken, encoded and sent a few items at
    a time, the event loop's turn between two; all are acknowledged before the
    messages they cover are released."""
    import stream.sharing as sharing_module
    from stream.commit_guard import CommitGuard

    sh = sliced_sharing()
    p = sh.settings.partitions
    items = [f"i{k}" for k in range(60)]
    guard = CommitGuard(["items"])
    await sh.hold_and_apply({}, owner_events(items, p), guard)
    table: dict = {}
    sent: list[int] = []
    acked: list[int] = []

    async def send_through(_: Any, writes: list) -> list:
        for key, record, _partition in writes:
            table[key] = record
        sent.append(len(writes))
        return [len(writes)]

    async def acknowledged(_: Any, futures: list) -> None:
        acked.append(sum(futures))

    monkeypatch.setattr(sharing_module, "send_through", send_through)
    monkeypatch.setattr(sharing_module, "acknowledged", acknowledged)
    async with loop_turns(lambda: len(table)) as turns:
        await sh.write_period(table, guard, lambda: False)
    assert set(table) == set(items) and sh.dirty == {}
    assert max(sent) <= sharing_module.WRITE_SLICE
    assert acked == [sharing_module.WRITE_CHUNK, len(items) - sharing_module.WRITE_CHUNK]
    assert len({n for n in turns if 0 < n < len(items)}) >= 5, turns
    assert all(guard.committable(("items", q), None) == 1 for q in range(p))


def test_a_lagging_owners_models_cost_the_replica_no_replay_of_its_sent_entries(
        monkeypatch: Any) -> None:
    """The worker's replica reads the models of an owner three batches behind:
    it adds this worker's pending sums to each (no sent entry replayed, however
    many the lag leaves), and ends with the item state replaying them gives."""
    import numpy as np

    from models.item_state import ItemState
    from models.item_updates import Outbox, attach, with_pending

    rng = np.random.default_rng(7)
    events = [Event("purchase" if rng.random() < 0.4 else "click", f"e{k}",
                    f"u{rng.integers(10)}", f"i{rng.integers(8)}", 1_700_000_000.0 + k,
                    quantity=1, price=3.0) for k in range(360)]
    states = []
    apply, replayed = ItemState.apply, []

    def counting(state: ItemState, entries: list, *args: Any) -> int:
        replayed.append(len(entries))
        return apply(state, entries, *args)

    for replay in (False, True):
        owner, table = sharing(), {}
        worker = sharing()
        outbox = Outbox(worker.settings.partitions)
        attach(worker.engine, outbox)
        if replay:
            monkeypatch.setattr(Outbox, "with_pending", lambda self, i, m, p: with_pending(
                i, m, self.pending(i), p))
        replayed.clear()
        late: list[dict[int, bytes]] = []
        topic = worker.settings.topic_item_model
        for b in range(0, len(events), 30):
            for k, event in enumerate(events[b : b + 30], start=b):
                outbox.at("clicks:0", k)
                worker.engine.process(event)
            late.append(outbox.messages(worker.settings.partitions))
            if len(late) > 3:
                for payload in late.pop(0).values():
                    owner.apply_updates(table, payload)
            records = [SimpleNamespace(topic=topic, key=k, value=v) for k, v in owner.due_models(
                table, set(range(owner.settings.partitions)), now=float(b))]
            with monkeypatch.context() as m:
                m.setattr(ItemState, "apply", counting)
                worker.read(records, now=float(b))
        assert (sum(replayed) > 100) == replay, sum(replayed)
        monkeypatch.undo()
        rec, cat = worker.engine.recommender, worker.engine.catalogue
        n = len(cat)
        states.append((cat.ids, rec.popularity.all_time(n), rec.popularity.recent(n),
                       rec.cooccurrence._mass[:n].copy(),
                       [{cat.ids[int(h)]: rec.cooccurrence.neighbours[i].get(int(h))
                         for h in rec.cooccurrence.neighbours[i].keys[
                             : rec.cooccurrence.neighbours[i].n]} for i in range(n)]))
    (ids, *got), (ids_replayed, *want) = states
    assert ids == ids_replayed
    for a, b in zip(got[:3], want[:3], strict=True):
        assert a == pytest.approx(b, rel=1e-9)
    assert [d.keys() for d in got[3]] == [d.keys() for d in want[3]]
    for a, b in zip(got[3], want[3], strict=True):
        assert a == pytest.approx(b, rel=1e-9)
