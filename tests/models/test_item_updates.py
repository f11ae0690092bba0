"""The sharing interface: routing, the outbox, its encoding, the owner, the replicas."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as kafka_murmur2

from models.engine import EngineConfig, FeedbackEngine
from models.events import Event
from models.item_state import ItemOwner, ItemParams, ItemState
from models.item_updates import (
    Outbox,
    PendingSums,
    attach,
    decode_model,
    decode_updates,
    encode_model,
    encode_updates,
    end_offset,
    murmur2,
    partition_of,
    split_entry,
    with_pending,
)

T0 = 1_700_000_000.0
CONFIG = EngineConfig(seed=1, n_segments=2, segment_warmup=3)


@pytest.mark.parametrize("partitions", [1, 2, 3, 4, 8, 12])
def test_partition_of_is_kafkas_default_partitioner(partitions: int) -> None:
    rng = np.random.default_rng(0)
    keys = ["", "a", "ab", "abc", "abcd", "85123A", "u1", "émile✓"]
    keys += [f"user-{int(i)}" for i in rng.integers(0, 10**9, 300)]
    everyone = list(range(partitions))
    for key in keys:
        raw = key.encode()
        assert murmur2(raw) == kafka_murmur2(raw)
        assert partition_of(key, partitions) == DefaultPartitioner()(raw, everyone, everyone)


def _engine_with_outbox() -> tuple[FeedbackEngine, Outbox]:
    engine = FeedbackEngine(CONFIG)
    outbox = Outbox()
    attach(engine, outbox)
    return engine, outbox


def _feed(engine: FeedbackEngine, outbox: Outbox | None, events: list[Event]) -> None:
    for offset, event in enumerate(events):
        if outbox is not None:
            outbox.at("purchases:0", offset)
        engine.process(event)


EVENTS = [
    Event("purchase", f"e{i}", f"u{i % 3}", f"i{(i * 7) % 5}", T0 + i, quantity=1, price=2.0 + i)
    for i in range(30)
] + [Event("review", "r1", "u1", "i2", T0 + 40, rating=1.0, text="awful, it broke")]


def test_outbox_leaves_learning_unchanged() -> None:
    plain = FeedbackEngine(CONFIG)
    _feed(plain, None, EVENTS)
    shared, outbox = _engine_with_outbox()
    _feed(shared, outbox, EVENTS)
    assert [r.item_id for r in plain.recommend("u0")] == [r.item_id for r in shared.recommend("u0")]
    assert np.array_equal(plain.recommender.taste.item_vec, shared.recommender.taste.item_vec)


def test_encode_decode_round_trip_and_bad_payloads() -> None:
    engine, outbox = _engine_with_outbox()
    _feed(engine, outbox, EVENTS)
    updates = outbox.drain()
    assert outbox.drain() == {}
    kinds = {op[0] for entries in updates.values() for e in entries
             for _, ops in split_entry(e) for op in ops}
    assert kinds == {"c", "p", "s", "b", "b0", "r", "r0", "e", "$"}
    assert decode_updates(encode_updates(updates)) == updates
    with pytest.raises(ValueError):
        decode_updates(b'{"x": [["src"]]}')
    with pytest.raises(ValueError):
        decode_updates(b"[1, 2]")


def test_messages_go_to_the_item_partition() -> None:
    engine, outbox = _engine_with_outbox()
    _feed(engine, outbox, EVENTS)
    for partition, payload in outbox.messages(3).items():
        assert {partition_of(i, 3) for i in decode_updates(payload)} == {partition}


def test_owner_matches_the_single_engine_and_is_idempotent() -> None:
    """One worker through the owner: the published model equals what it learnt locally."""
    engine, outbox = _engine_with_outbox()
    _feed(engine, outbox, EVENTS)
    payload = encode_updates(outbox.drain())
    owner = ItemOwner(ItemParams.of(engine.config))
    applied, skipped = owner.apply(decode_updates(payload))
    assert applied > 0 and skipped == 0
    # the same batch again (a crash before the commit): nothing applied twice
    before = {i: s.to_dict() for i, s in owner.items.items()}
    assert owner.apply(decode_updates(payload)) == (0, applied)
    assert {i: s.to_dict() for i, s in owner.items.items()} == before
    idx = engine.catalogue.index
    pop = engine.recommender.popularity
    n = len(engine.catalogue)
    for item_id, state in owner.items.items():
        i = idx[item_id]
        assert state.count == pytest.approx(pop.all_time(n)[i])
        assert state.mass == pytest.approx(engine.recommender.cooccurrence._mass[i])
        local = engine.recommender.cooccurrence.neighbours[i]
        assert state.neighbours == pytest.approx(
            {engine.catalogue.ids[k]: local.get(int(k)) for k in local.keys[: local.n]}
        )
        assert state.price == pytest.approx(engine.item_price[i])
        if state.taste is not None:  # the first start plus every step: the local vector
            assert state.taste == pytest.approx(engine.recommender.taste.item_vec[i].tolist())
            assert state.taste_bias == pytest.approx(engine.recommender.taste.item_bias[i])
        if state.rating is not None:
            assert state.rating == pytest.approx(engine.ratings.item_vec[i].tolist())
            assert state.rating_bias == pytest.approx(engine.ratings.item_bias[i])
    assert any(s.taste is not None for s in owner.items.values())
    assert any(s.rating is not None for s in owner.items.values())


def test_partial_replay_applies_only_the_new_offsets() -> None:
    s = ItemState()
    p = ItemParams()
    s.apply([["a:0", 1, ["p", 1.0, 0.0]], ["a:0", 2, ["p", 1.0, 0.0]]], p, "x")
    # a re-read from offset 2 (its batch cut differently) plus a new event
    assert s.apply([["a:0", 2, ["p", 1.0, 0.0]], ["a:0", 3, ["p", 1.0, 0.0]]], p, "x") == 1
    assert s.apply([["b:0", 0, ["p", 1.0, 0.0]]], p, "x") == 1  # another source's own mark
    assert s.count == 4.0 and s.applied == {"a:0": 3, "b:0": 0}


def test_state_round_trips_through_its_changelog_record() -> None:
    engine, outbox = _engine_with_outbox()
    _feed(engine, outbox, EVENTS)
    owner = ItemOwner(ItemParams.of(engine.config))
    owner.apply(outbox.drain())
    for state in owner.items.values():
        record = orjson.loads(orjson.dumps(state.to_dict()))
        assert ItemState.from_dict(record) == state


def test_apply_item_models_overwrites_the_replica() -> None:
    """Worker B learns nothing itself and recommends from A's published knowledge."""
    a, outbox = _engine_with_outbox()
    _feed(a, outbox, EVENTS)
    owner = ItemOwner(ItemParams.of(a.config))
    owner.apply(outbox.drain())
    b = FeedbackEngine(CONFIG)
    b.process(Event("purchase", "b0", "v", "i0", T0 + 50, quantity=1, price=1.0))
    assert b.recommend("v") == []  # B alone knows no other item
    models = owner.publish(T0 + 60)
    assert b.apply_item_models(models) == len(models)
    nb = b.recommender.cooccurrence
    for item_id, model in models:
        i = b.catalogue.index[item_id]
        assert nb._mass[i] == model["m"]
        got = nb.neighbours[i]
        assert {b.catalogue.ids[k]: got.get(int(k)) for k in got.keys[: got.n]} == dict(
            zip(model["nb"][0], model["nb"][1], strict=True)
        )
        assert b.recommender.popularity.all_time(len(b.catalogue))[i] == model["n"]
        assert b.recommender.taste.item_vec[i].tolist() == model["q"]
    # B's own purchase of i0 is overwritten by the owner's count, which lacks it
    assert b.item_summary("i0")["popularity_all_time"] == owner.items["i0"].count
    top = b.recommend("v")[0]
    assert top.item_id in owner.items["i0"].neighbours
    assert top.reason.startswith("bought together with i0 (")


@pytest.mark.parametrize("lookup", ["one by one", "known ids in one pass"])
def test_assign_keeps_the_published_head_through_local_pairs(lookup: str) -> None:
    """Incremental assignment: local pairs learnt between two publications, then a
    list whose head is the previous one, give the same weights as a fresh assignment
    (the new ids mapped by ``index_of`` alone, or those the catalogue knows in one
    pass, as a replica does)."""
    from functools import partial

    from models.catalogue import ItemCatalogue
    from models.cooccurrence import ItemCooccurrence

    cat = ItemCatalogue()
    co = ItemCooccurrence()
    if lookup != "one by one":
        co.assign = partial(co.assign, known=cat.index)  # type: ignore[method-assign]
    for i in "xabcde":
        co.learn_one((), cat.add(i), 1.0)
    x = cat.index["x"]
    co.assign(x, ["a", "b"], [1.0, 2.0], 3.0, cat.add, 0)
    co.learn_one([(cat.index["d"], 1.0), (cat.index["c"], 1.0)], x, 1.0)  # local pairs c, d
    co.assign(x, ["a", "b", "c", "e", "d"], [1.5, 2.0, 0.7, 0.4, 0.3], 4.9, cat.add, 0)
    nb = co.neighbours[x]
    assert [cat.ids[k] for k in nb.keys[: nb.n]] == ["a", "b", "c", "e", "d"]
    assert nb.values[: nb.n].tolist() == [1.5, 2.0, 0.7, 0.4, 0.3]
    assert {cat.ids[k]: s for k, s in nb.slots.items()} == {"a": 0, "b": 1, "c": 2, "e": 3, "d": 4}
    co.assign(x, ["a", "b", "c", "e", "d", "f"], [1.5, 2.0, 0.7, 0.4, 0.3, 0.1], 5.0, cat.add, 0)
    assert nb.get(cat.index["f"]) == 0.1 and co.neighbours[x] is nb  # only the tail mapped
    assert len(co.neighbours) == len(cat) and co._mass.shape[0] >= len(cat)  # f's row made
    co.assign(x, ["b", "a"], [1.0, 1.0], 2.0, cat.add, 1)  # pruned (a new epoch): rebuilt
    assert co.neighbours[x].n == 2
    # a long fresh list, then its extension: keys, weights and slots in the list's order
    many = [f"n{k}" for k in range(40)]
    co.assign(x, many, [float(k) for k in range(40)], 9.0, cat.add, 2)
    co.assign(x, [*many, "g"], [*(float(k) for k in range(40)), 0.5], 9.5, cat.add, 2)
    nb = co.neighbours[x]
    assert [cat.ids[k] for k in nb.keys[: nb.n]] == [*many, "g"]
    assert nb.values[: nb.n].tolist() == [*(float(k) for k in range(40)), 0.5]
    slots = {cat.ids[k]: s for k, s in nb.slots.items()}
    assert slots == {i: k for k, i in enumerate([*many, "g"])}


def test_a_local_pair_the_published_list_lacks_keeps_its_weight_after_it() -> None:
    """A pair learnt locally that the next published list (same epoch) does not
    hold is moved behind the list with its own weight, not the one it swapped with."""
    from models.catalogue import ItemCatalogue
    from models.cooccurrence import ItemCooccurrence

    cat = ItemCatalogue()
    co = ItemCooccurrence()
    for i in "xabcd":
        co.learn_one((), cat.add(i), 1.0)
    x = cat.index["x"]
    co.assign(x, ["a", "b"], [1.0, 2.0], 3.0, cat.add, 0, known=cat.index)
    co.learn_one([(cat.index["d"], 1.0), (cat.index["c"], 0.5)], x, 1.0)  # c 0.5, d 0.9
    co.assign(x, ["a", "b", "d"], [1.0, 2.0, 1.5], 5.0, cat.add, 0, known=cat.index)
    nb = co.neighbours[x]
    assert [cat.ids[k] for k in nb.keys[: nb.n]] == ["a", "b", "d", "c"]
    assert nb.values[: nb.n].tolist() == [1.0, 2.0, 1.5, 0.5]
    assert {cat.ids[k]: s for k, s in nb.slots.items()} == {"a": 0, "b": 1, "d": 2, "c": 3}


def test_an_item_is_published_again_once_it_moved_enough() -> None:
    owner = ItemOwner(ItemParams(publish_tolerance=0.05))
    owner.apply({"x": [["a:0", o, ["p", 1.0, float(o)]] for o in range(40)]})
    assert [i for i, _ in owner.publish(100.0)] == ["x"]  # new: at once
    owner.apply({"x": [["a:0", 40, ["p", 1.0, 40.0]]]})  # 40 -> 41: 2.5%
    assert owner.publish(101.0) == [] and owner.changed == {"x"}
    owner.apply({"x": [["a:0", o, ["p", 1.0, float(o)]] for o in (41, 42)]})  # 43: 7.5%
    assert [m["n"] for _, m in owner.publish(102.0)] == [43.0]
    assert owner.changed == set()


def test_replica_explains_a_pair_whose_neighbour_has_no_mass_yet() -> None:
    """A replica holds x's published list before y's own model (and mass) came:
    the lift is unknown, not a division by zero (it crashed the worker's reasons)."""
    b = FeedbackEngine(CONFIG)
    b.apply_item_models([("x", {"t": 1.0, "nb": [["y"], [2.0], 0], "m": 2.0})])
    co, cat = b.recommender.cooccurrence, b.catalogue
    assert co.pmi_of(cat.index["x"], cat.index["y"]) is None
    b.apply_item_models([("y", {"t": 2.0, "nb": [["x"], [2.0], 0], "m": 2.0})])
    assert co.pmi_of(cat.index["x"], cat.index["y"]) is not None


def _item_side(engine: FeedbackEngine) -> dict[str, dict[str, object]]:
    """Every item's local item-side state, by item id, comparable across engines."""
    rec, cat = engine.recommender, engine.catalogue
    n = len(cat)
    pop = rec.popularity.all_time(n)
    out: dict[str, dict[str, object]] = {}
    for item_id in cat.ids:
        i = cat.index[item_id]
        co = rec.cooccurrence.neighbours[i] if i < len(rec.cooccurrence.neighbours) else None
        out[item_id] = {
            "count": pop[i],
            "mass": rec.cooccurrence._mass[i],
            "neighbours": {} if co is None else {
                cat.ids[k]: co.get(int(k)) for k in co.keys[: co.n]},
            "taste": [*rec.taste.item_vec[i].tolist(), rec.taste.item_bias[i]],
            "rating": [*engine.ratings.item_vec[i].tolist(), engine.ratings.item_bias[i]],
            "price": engine.item_price[i] if i < len(engine.item_price) else 0.0,
            "sentiment": engine.item_sentiment.state.get(item_id),
        }
    return out


def _assert_same(got: dict[str, dict[str, object]], want: dict[str, dict[str, object]]) -> None:
    assert got.keys() == want.keys()
    for item_id, parts in want.items():
        for part, value in parts.items():
            assert got[item_id][part] == pytest.approx(value), (item_id, part)


def test_a_lagging_owners_model_does_not_take_back_the_replicas_own_learning() -> None:
    """The owner has applied only the first of this worker's batches when it
    publishes: the replica keeps its own later increments (sent but not yet
    applied, and learnt but not yet sent) on top of the published model, and
    once the owner has them all, applying its model counts none of them twice."""
    engine, outbox = _engine_with_outbox()
    owner = ItemOwner(ItemParams.of(engine.config))
    _feed(engine, outbox, EVENTS[:12])
    first = outbox.drain()
    for offset, event in enumerate(EVENTS[12:25], start=12):
        outbox.at("purchases:0", offset)
        engine.process(event)
    second = outbox.drain()  # sent; the owner lags behind it
    for offset, event in enumerate(EVENTS[25:], start=25):
        outbox.at("purchases:0", offset)
        engine.process(event)  # learnt, not yet drained
    local = _item_side(engine)

    owner.apply(decode_updates(encode_updates(first)))
    stale = owner.publish(T0 + 100)
    assert {m["w"]["purchases:0"] for _, m in stale} <= set(range(12))
    engine.apply_item_models(orjson.loads(orjson.dumps(stale)))
    _assert_same(_item_side(engine), local)

    owner.apply(decode_updates(encode_updates(second)))
    owner.apply(decode_updates(encode_updates(outbox.drain())))
    for state in owner.items.values():
        state.shown = None  # publish every item
    owner._fresh.update(owner.items)
    engine.apply_item_models(orjson.loads(orjson.dumps(owner.publish(T0 + 200))))
    _assert_same(_item_side(engine), local)
    assert outbox.unconfirmed == {}  # every entry is in a published model now


def test_a_partitions_models_confirm_every_entry_sent_to_it_up_to_their_watermark() -> None:
    """An owner applies its partition's messages in order: a model of y holding
    source offset 7 shows x's entries up to 7 applied, though x's model has not
    come (an item below the publication tolerance may not be published for long)."""
    x_y = {"x": [["a:0", 5, ["p", 1.0, 0.0]], ["a:0", 9, ["p", 1.0, 0.0]]],
           "y": [["a:0", 7, ["p", 1.0, 0.0]]]}
    alone, shared = Outbox(), Outbox(partitions=1)
    for outbox in (alone, shared):
        outbox.items = {k: [list(e) for e in v] for k, v in x_y.items()}
        outbox.drain()
        outbox.confirm([("y", {"t": 0.0, "w": {"a:0": 7}})])
    assert shared.unconfirmed == {"x": [["a:0", 9, ["p", 1.0, 0.0]]]}
    assert alone.unconfirmed == {"x": x_y["x"]}  # no partitions: its own model only


def test_own_pairs_after_the_published_head_leave_the_next_list_keyed_right() -> None:
    """A list assigned with this worker's pending pair ``c`` after the publisher's
    head ``a, b``; the publisher's next list (same epoch) puts another worker's
    ``d`` before ``c``: each weight lands on its own neighbour."""
    from models.catalogue import ItemCatalogue
    from models.cooccurrence import ItemCooccurrence

    cat = ItemCatalogue()
    co = ItemCooccurrence()
    x = cat.add("x")
    co.assign(x, ["a", "b", "c"], [1.0, 2.0, 0.5], 3.5, cat.add, 0, head=2)
    co.assign(x, ["a", "b", "d", "c"], [1.0, 2.0, 0.7, 0.5], 4.2, cat.add, 0)
    nb = co.neighbours[x]
    assert {cat.ids[k]: nb.get(int(k)) for k in nb.keys[: nb.n]} == {
        "a": 1.0, "b": 2.0, "d": 0.7, "c": 0.5}
@pytest.mark.parametrize("payload", [
    b'{"x": 5}',  # entries not a list
    b'{"x": [["src", 1.5, ["p", 1.0, 0.0]]]}',  # offset not an integer
    b'{"x": [[1, 2, ["p", 1.0, 0.0]]]}',  # source not a string
    b'{"x": [["src", 2]]}',  # no op
    b'{"x": ["src"]}',  # entry not a list
])
def test_decode_rejects_malformed_entries(payload: bytes) -> None:
    with pytest.raises(ValueError, match="item updates"):
        decode_updates(payload)


def test_an_items_events_of_one_source_travel_as_one_run() -> None:
    engine, outbox = _engine_with_outbox()
    _feed(engine, outbox, EVENTS)
    updates = outbox.drain()
    # one source: one entry per item, holding each of its events' offsets in order
    assert all(len(entries) == 1 for entries in updates.values())
    offsets = [o for o, _ in split_entry(updates["i2"][0])]
    assert len(offsets) > 1 and offsets == sorted(set(offsets))
    # split back into one entry per event: the owner learns the same from both
    split = {
        item: [["purchases:0", o, *ops] for o, ops in split_entry(entries[0])]
        for item, entries in updates.items()
    }
    params = ItemParams.of(engine.config)
    runs, singles = ItemOwner(params), ItemOwner(params)
    runs.apply(updates)
    singles.apply(split)
    assert {i: s.to_dict() for i, s in runs.items.items()} == {
        i: s.to_dict() for i, s in singles.items.items()}


def test_a_run_replayed_past_the_watermark_applies_only_its_new_events() -> None:
    s, p = ItemState(), ItemParams()
    assert s.apply([["a:0", 1, "p", 1.0, 0.0, 2, "p", 1.0, 0.0, "c", "y", 0.5]], p) == 1
    # re-read from offset 2 with one more event: only offset 3's ops are new
    run = ["a:0", 2, "p", 1.0, 0.0, "c", "y", 0.5, 3, "p", 1.0, 0.0, "c", "y", 2.0]
    assert s.apply([run], p) == 1
    assert s.count == 3.0 and s.neighbours == {"y": 2.5} and s.applied == {"a:0": 3}
    assert s.apply([run], p) == 0 and s.count == 3.0


def test_an_unknown_inline_op_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown op 'q'"):
        ItemState().apply([["a:0", 1, "p", 1.0, 0.0, "q", 1.0]], ItemParams())


def test_a_run_partly_held_by_a_model_stays_unconfirmed_until_its_last_event() -> None:
    # A run's first offset is below the model's watermark, its last above it: the
    # event at offset 6 is not in the model yet, so the run must be kept.
    outbox = Outbox()
    run = ["a:0", 4, "p", 1.0, 0.0, 6, "p", 1.0, 0.0]
    outbox.items = {"x": [list(run)]}
    outbox.drain()
    outbox.confirm([("x", {"t": 1.0, "w": {"a:0": 5}})])
    assert outbox.unconfirmed == {"x": [run]}
    outbox.confirm([("x", {"t": 1.0, "w": {"a:0": 6}})])
    assert outbox.unconfirmed == {} and outbox.ends == {}


def test_confirming_keeps_each_entrys_end_with_it() -> None:
    """Entries of two sources drained in two batches, confirmed one source at a
    time: what is kept is exactly what a model has not shown yet, and each kept
    entry's end stays beside it for the next confirmation."""
    outbox = Outbox(partitions=1)
    outbox.items = {"x": [["a:0", 1, "p", 1.0, 0.0, 3, "c", "y", 0.5],
                          ["b:0", 2, "p", 1.0, 0.0]]}
    outbox.drain()
    outbox.items = {"x": [["a:0", 5, "p", 1.0, 0.0], ["b:0", 4, "c", "z", 1, 8, "p", 1.0, 0.0]]}
    outbox.drain()
    assert outbox.ends == {"x": [3, 2, 5, 8]}
    outbox.confirm([("x", {"t": 1.0, "w": {"a:0": 3}})])
    assert outbox.unconfirmed["x"] == [["b:0", 2, "p", 1.0, 0.0], ["a:0", 5, "p", 1.0, 0.0],
                                       ["b:0", 4, "c", "z", 1, 8, "p", 1.0, 0.0]]
    assert outbox.ends == {"x": [2, 5, 8]}
    outbox.confirm([("x", {"t": 1.0, "w": {"a:0": 3, "b:0": 7}})])
    assert outbox.unconfirmed["x"] == [["a:0", 5, "p", 1.0, 0.0],
                                       ["b:0", 4, "c", "z", 1, 8, "p", 1.0, 0.0]]
    assert outbox.ends == {"x": [5, 8]}
    outbox.confirm([("x", {"t": 1.0, "w": {"a:0": 5, "b:0": 8}})])
    assert outbox.unconfirmed == {} and outbox.ends == {}


def test_confirming_does_not_take_entries_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    """Confirming compares each entry's end offset, kept since it was drained;
    splitting each run into its events there cost a replica more than the
    models it applies (tools.sharing_profile --workers 3 --lag 5)."""
    import models.item_updates as item_updates

    outbox = Outbox(partitions=2)
    outbox.items = {f"i{k}": [["a:0", k, "p", 1.0, 0.0, k + 1, "c", "y", 0.5]]
                    for k in range(0, 40, 2)}
    outbox.drain()

    def refuse(entry: list) -> None:
        raise AssertionError("an entry split to be confirmed")

    monkeypatch.setattr(item_updates, "split_entry", refuse)
    outbox.confirm([("i10", {"t": 1.0, "w": {"a:0": 21}})])
    p = partition_of("i10", 2)
    assert sorted(outbox.unconfirmed, key=lambda i: int(i[1:])) == [
        f"i{k}" for k in range(0, 40, 2) if partition_of(f"i{k}", 2) != p or k + 1 > 21]


@pytest.mark.parametrize("entry", [
    ["a:0", 4],
    ["a:0", 4, "c", "y", 0.5, "p", 1, 9, 6, ["c", "z", 1.0]],
    ["a:0", 4, "b", [0.1, 0.2], 0.0, 7, "$", 3, 9, "s", 2, 1.0, 5.0],
])
def test_an_entrys_end_is_its_last_events_offset(entry: list) -> None:
    assert end_offset(entry) == ([o for o, _ in split_entry(entry)] or [entry[1]])[-1]


def test_a_watermarks_advance_looks_only_at_the_entries_it_confirms(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A lagging owner leaves thousands of items unconfirmed, and a replica reads
    models in slices of 50: comparing every unconfirmed item on every read cost
    half of a pair worker's replica. An advance of a source's watermark looks
    only at the items whose entries it confirms (the front of that source's
    queue), and what stays unconfirmed is what it was."""
    outbox = Outbox(partitions=1)
    outbox.items = {f"i{k}": [["a:0", k, "p", 1.0, 0.0]] for k in range(1000)}
    outbox.items["x"] = [["b:0", 3, "p", 1.0, 0.0]]
    outbox.drain()
    seen: list[str] = []
    keep = Outbox._keep

    def counting(self: Outbox, item_id: str, *args: object) -> None:
        seen.append(item_id)
        keep(self, item_id, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(Outbox, "_keep", counting)
    outbox.confirm([("i5", {"t": 1.0, "w": {"a:0": 9}})])
    assert sorted(seen) == sorted(f"i{k}" for k in range(10))
    assert set(outbox.unconfirmed) == {f"i{k}" for k in range(10, 1000)} | {"x"}
    seen.clear()
    outbox.confirm([("i7", {"t": 1.0, "w": {"a:0": 9}})])  # no advance: nothing to look at
    assert seen == []
    outbox.confirm([("x", {"t": 1.0, "w": {"b:0": 3}})])
    assert seen == ["x"] and "x" not in outbox.unconfirmed


def test_an_event_records_its_items_pairs_then_its_own_ops_in_order() -> None:
    """The exact entries one purchase records: on its item, each pair with the
    user's history (most recent first), then popularity, segment and price; on
    each neighbour, the pair back."""
    engine = FeedbackEngine(EngineConfig(seed=1))
    outbox = Outbox()
    attach(engine, outbox)
    for i, item in enumerate(["a", "b"]):
        outbox.at("purchases:0", i)
        engine.process(Event("purchase", f"e{i}", "u", item, T0 + i, quantity=1, price=2.0))
    outbox.drain()
    profile = engine.profiles["u"]
    profile.segment = 1
    outbox.at("purchases:0", 7)
    engine.process(Event("purchase", "e2", "u", "c", T0 + 2, quantity=1, price=4.0))
    updates = outbox.drain()
    w = engine.config.purchase_weight
    gamma = engine.recommender.cooccurrence.gamma
    # (the factor steps' ops follow, "b0"/"b" on the item and its sampled negatives)
    assert [len(updates[i]) for i in "abc"] == [1, 1, 1]
    assert updates["c"][0][:17] == ["purchases:0", 7, "c", "b", w, "c", "a", w * gamma,
                                    "p", w, T0 + 2, "s", 1, w, T0 + 2, "$", 4.0]
    assert updates["c"][0][17] == "b0"
    assert updates["b"][0][:5] == ["purchases:0", 7, "c", "c", w]
    assert updates["a"][0][:5] == ["purchases:0", 7, "c", "c", w * gamma]


# -- the replica's pending sums ------------------------------------------------------
def _stream(n: int, seed: int, returns: bool) -> list[tuple[str, Event]]:
    """``n`` events of two input partitions, clicks, purchases (some returned),
    reviews; times mostly rising, some late."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        user, item = f"u{rng.integers(12)}", f"i{rng.integers(9)}"
        t = T0 + k - (30.0 if rng.random() < 0.1 else 0.0)
        kind = rng.random()
        if kind < 0.5:
            event = Event("click", f"e{k}", user, item, t)
        elif kind < 0.8:
            quantity = -1 if returns and rng.random() < 0.1 else 1
            event = Event("purchase", f"e{k}", user, item, t, quantity=quantity,
                          price=float(rng.integers(1, 20)))
        else:
            event = Event("review", f"e{k}", user, item, t, rating=float(rng.integers(1, 6)),
                          text="fine" if rng.random() < 0.5 else "broken, awful")
        out.append((f"a:{partition_of(user, 2)}", event))
    return out


def _same_model(got: dict, want: dict, params: ItemParams) -> None:
    """Two models with pending entries on top, as the replica takes them: every
    part equal up to rounding, a decayed value compared as of the later time."""
    import math

    assert got.keys() == want.keys()
    for key, value in want.items():
        if key in ("w", "t", "nb"):
            assert got[key] == value, key
        elif key in ("p", "s"):
            half = params.trending_half_life if key == "p" else params.segment_half_life
            pairs = {"": (got[key], value)} if key == "p" else {
                s: (got[key][s], value[s]) for s in value}
            assert (key == "p" or got[key].keys() == value.keys())
            for a, b in pairs.values():
                at = max(a[1], b[1])
                decay = [math.exp(-math.log(2) / half * (at - x[1])) for x in (a, b)]
                assert a[0] * decay[0] == pytest.approx(b[0] * decay[1], rel=1e-9), key
        else:
            assert np.asarray(got[key], dtype=float) == pytest.approx(
                np.asarray(value, dtype=float), rel=1e-9), key


@pytest.mark.parametrize("returns", [False, True])
def test_pending_sums_over_a_model_match_replaying_the_pending_entries(returns: bool) -> None:
    """A worker whose owner lags two batches behind, models read between and
    within batches (entries sent and unconfirmed, and learnt not yet drained):
    each model with this worker's pending sums on top is the model with its
    pending entries replayed, part by part, up to rounding, the pairs too; the
    sums are what most models take (the replay only where they do not fit)."""
    engine = FeedbackEngine(CONFIG)
    outbox = Outbox(partitions=2)
    attach(engine, outbox)
    params = ItemParams.of(engine.config)
    wide = replace(params, max_neighbours=1 << 40)
    owner = ItemOwner(params)
    late: list[dict[int, bytes]] = []
    offsets = {"a:0": 0, "a:1": 0}
    events = _stream(900, seed=3, returns=returns)
    summed = replayed = 0
    for b in range(0, len(events), 30):
        for n, (src, event) in enumerate(events[b : b + 30]):
            outbox.at(src, offsets[src])
            offsets[src] += 1
            engine.process(event)
            if n != 15:
                continue
            # Mid-batch: the owner's models of two batches ago.
            models = [(i, decode_model(encode_model(m))) for i, m in owner.publish(T0 + b)]
            outbox.confirm(models)
            for item_id, model in models:
                want, want_pairs = with_pending(item_id, model, outbox.pending(item_id), wide)
                got, got_pairs = outbox.with_pending(item_id, model, wide)
                _same_model(dict(got), dict(want), params)
                assert got_pairs.keys() == want_pairs.keys()
                for other, w in want_pairs.items():
                    assert got_pairs[other] == pytest.approx(w, rel=1e-9)
                held = outbox.sums.get(item_id)
                if held is not None and outbox.unconfirmed.get(item_id):
                    if held.fits(model):
                        summed += 1
                    else:
                        replayed += 1
            engine.apply_item_models(models)
        late.append(outbox.messages(2))
        if len(late) > 2:
            for payload in late.pop(0).values():
                owner.apply(decode_updates(payload))
    assert summed > 100
    assert (replayed > 0) == returns  # a returned purchase's negative weight: replayed


def test_a_model_takes_the_sent_entries_sums_without_replaying_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With the owner a batch behind, every model of the next batches would
    replay all the entries this worker sent since: it adds their sums instead,
    and the state is the one the replay gives."""
    events = _stream(400, seed=5, returns=False)
    engines = []
    apply, replayed = ItemState.apply, []

    def counting(state: ItemState, entries: list, *args: object) -> int:
        replayed.append(len(entries))
        return apply(state, entries, *args)  # type: ignore[arg-type]

    for replay in (False, True):
        engine = FeedbackEngine(CONFIG)
        outbox = Outbox(partitions=2)
        attach(engine, outbox)
        owner = ItemOwner(ItemParams.of(engine.config))
        offsets = {"a:0": 0, "a:1": 0}
        late: list[dict[int, bytes]] = []
        replayed.clear()
        if replay:  # the reference: every pending entry replayed over each model
            monkeypatch.setattr(Outbox, "with_pending", lambda self, i, m, p: with_pending(
                i, m, self.pending(i), p))
        for b in range(0, len(events), 40):
            for src, event in events[b : b + 40]:
                outbox.at(src, offsets[src])
                offsets[src] += 1
                engine.process(event)
            late.append(outbox.messages(2))
            if len(late) > 3:
                for payload in late.pop(0).values():
                    owner.apply(decode_updates(payload))
            models = owner.publish(T0 + b)
            with monkeypatch.context() as m:
                m.setattr(ItemState, "apply", counting)
                engine.apply_item_models(orjson.loads(orjson.dumps(models)))
        assert (sum(replayed) > 200) == replay
        engines.append(engine)
        monkeypatch.undo()
    _assert_same(_item_side(engines[0]), _item_side(engines[1]))


def test_pending_sums_are_replayed_where_a_models_watermark_cuts_into_them() -> None:
    """A model holding part of a sent run (an owner that applied the run's first
    events from an earlier send): the sums do not fit, the run is replayed above
    the watermark; a model below the run takes the sums."""
    outbox = Outbox(partitions=1)
    outbox.items = {"x": [["a:0", 3, "p", 1.0, T0, "c", "y", 0.5, 4, "p", 2.0, T0 + 1,
                           "c", "y", 0.25, "c", "z", 1.0]]}
    outbox.drain()
    model = {"t": 1.0, "w": {"a:0": 3}, "p": [1.0, T0], "n": 1.0, "nb": [["y"], [0.5], 0],
             "m": 0.5}
    params = ItemParams()
    got, pairs = outbox.with_pending("x", model, params)
    assert not outbox.sums["x"].fits(model)
    assert got["n"] == 3.0 and got["m"] == 1.75 and pairs == {"y": 0.25, "z": 1.0}
    below = {**model, "w": {"a:0": 2}}
    got, pairs = outbox.with_pending("x", below, params)
    assert outbox.sums["x"].fits(below)
    assert got["n"] == 4.0 and got["m"] == 2.25 and pairs == {"y": 0.75, "z": 1.0}


def test_confirmed_entries_leave_the_sums_as_if_never_added() -> None:
    """Entries confirmed go out of the sums: a pair no pending entry holds any
    more is gone (not left at a rounding residue), and what is left is the sums
    of the entries left."""
    outbox = Outbox(partitions=1)
    outbox.items = {"x": [["a:0", 1, "c", "y", 0.1, "p", 1.0, T0, "b", [0.1, 0.2], 0.3],
                          ["b:0", 1, "c", "z", 0.7, "$", 4.0, "e", 0.9, T0]]}
    outbox.drain()
    outbox.with_pending("x", {"t": 1.0}, ItemParams())  # the sums start
    outbox.items = {"x": [["a:0", 2, "c", "y", 0.2, "c", "w", 0.3, "p", 1.0, T0 + 5,
                           "b", [1.0, 1.0], 0.5]]}
    outbox.drain()
    outbox.confirm([("q", {"t": 1.0, "w": {"a:0": 1, "b:0": 1}})])
    held = outbox.sums["x"]
    fresh = PendingSums.of(outbox.unconfirmed["x"], outbox.ends["x"], outbox.rates)
    assert held.pairs == pytest.approx(fresh.pairs) and held.pairs.keys() == {"y", "w"}
    assert held.uses == fresh.uses and held.mass == pytest.approx(0.5)
    assert held.dq.tolist() == pytest.approx([1.0, 1.0]) and held.qn == 1
    assert held.recent == pytest.approx(fresh.recent)
    assert (held.price, held.price_n, held.reviews) == (0.0, 0, [])
    assert (held.first, held.last) == ({"a:0": 2}, {"a:0": 2})
    outbox.confirm([("q", {"t": 1.0, "w": {"a:0": 2}})])
    assert "x" not in outbox.sums and "x" not in outbox.unconfirmed


def test_sums_left_after_a_confirmation_know_each_sources_first_and_last_offsets() -> None:
    """A few of many entries confirmed: the sums left start each source at its
    first entry left and end it where it ended, as summing the entries left
    gives, and a model above that first offset takes them."""
    outbox = Outbox(partitions=1)
    outbox.items = {"x": [["a:0", 1, "c", "y", 0.5], ["b:0", 4, "c", "y", 0.5]]}
    outbox.drain()
    outbox.with_pending("x", {"t": 1.0}, ItemParams())  # the sums start
    for k in range(2, 6):
        outbox.items = {"x": [["a:0", k, "c", "z", 1.0], ["b:0", k + 3, "c", "y", 0.5]]}
        outbox.drain()
    outbox.confirm([("q", {"t": 1.0, "w": {"a:0": 2}})])
    held = outbox.sums["x"]
    left = PendingSums.of(outbox.unconfirmed["x"], outbox.ends["x"], outbox.rates)
    assert (held.first, held.last) == (left.first, left.last) == (
        {"b:0": 4, "a:0": 3}, {"a:0": 5, "b:0": 8})
    assert held.pairs == pytest.approx(left.pairs) and held.uses == left.uses
    assert held.fits({"t": 1.0, "w": {"a:0": 2, "b:0": 3}})
    assert not held.fits({"t": 1.0, "w": {"a:0": 3}})
