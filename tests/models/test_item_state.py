"""The item state's changelog form: exact rebuilds, nothing lost or applied twice."""

from __future__ import annotations

import copy
import random

import orjson
import pytest

from models.item_state import (
    INLINE_NEIGHBOURS,
    ItemParams,
    ItemState,
    is_snapshot_key,
    snapshot_key,
)

PARAMS = ItemParams(max_neighbours=60)  # pruned past 120 neighbours


def batches(n: int, seed: int = 3) -> list[list[list]]:
    """``n`` batches of entries for one item from two sources: neighbour weights
    drawn from a skewed catalogue (some hot, many rare: the list grows, is
    pruned, and a few neighbours change per batch), popularity and factor steps."""
    rng = random.Random(seed)
    offsets = {"clicks:0": 0, "purchases:1": 0}
    out = []
    for _ in range(n):
        batch = []
        for _ in range(rng.randint(1, 4)):
            src = rng.choice(list(offsets))
            offsets[src] += rng.randint(1, 3)
            hot = rng.random() < 0.8
            ops: list = [["c", f"n{rng.randrange(20) if hot else rng.randrange(2000)}",
                          rng.random()] for _ in range(rng.randint(1, 6))]
            ops.append(["p", 1.0, 1000.0 + offsets[src]])
            if rng.random() < 0.3:
                ops.append(["b", [0.01] * PARAMS.n_factors, 0.001])
            batch.append([src, offsets[src], *ops])
        out.append(batch)
    return out


def wire(record: dict) -> dict:
    """A record as the changelog carries it (serialised when written)."""
    return orjson.loads(orjson.dumps(record))


def rebuilt(table: dict, item: str = "x") -> ItemState:
    """What a restarted owner reads back from the changelog's latest records."""
    return ItemState.from_changelog(table[item], table.get, item)


def same(a: ItemState, b: ItemState) -> bool:
    """Equal statistics and the same neighbour order (replicas rely on it)."""
    return a == b and list(a.neighbours.items()) == list(b.neighbours.items())


def test_table_rebuilds_to_the_live_state_after_every_batch() -> None:
    live = ItemState()
    table: dict = {}
    snapshots = epochs = 0
    for batch in batches(400):
        assert live.apply(batch, PARAMS, "x") == len(batch)
        for key, record in live.changelog("x"):
            snapshots += is_snapshot_key(key)
            table[key] = wire(record)  # compaction: the latest record of each key
        epochs = live.epoch
        assert same(rebuilt(table), live)
    # the test went through inline lists, snapshots, changed-only records and prunes
    assert snapshots >= 3 and epochs >= 2
    assert len(live.neighbours) > INLINE_NEIGHBOURS


def test_item_record_carries_only_the_neighbours_changed_since_the_snapshot() -> None:
    live = ItemState()
    sizes = []
    for batch in batches(400):
        live.apply(batch, PARAMS, "x")
        records = dict(live.changelog("x"))
        if len(records) == 1 and records["x"].get("gen") is not None:
            changed = records["x"]["nb"]
            assert len(changed) <= 0.25 * len(live.neighbours) + 1
            sizes.append(len(orjson.dumps(records)) / len(orjson.dumps(live.to_dict())))
    assert sizes and sum(sizes) / len(sizes) < 0.6


def test_crash_between_snapshot_and_record_keeps_the_previous_state() -> None:
    """The snapshot written, the item's record lost: the table still rebuilds to the
    previous batch's state, and the re-read batch applies on it exactly once."""
    live = ItemState()
    table: dict = {}
    crashed = 0
    for batch in batches(400):
        before = copy.deepcopy(live)
        live.apply(batch, PARAMS, "x")
        records = live.changelog("x")
        if len(records) == 2 and crashed < 3 and before.generation is not None:
            crashed += 1
            table[records[0][0]] = wire(records[0][1])  # only the snapshot was durable
            restarted = rebuilt(table)
            assert same(restarted, before)
            assert restarted.apply(batch, PARAMS, "x") == len(batch)  # re-read: applied
            assert restarted.apply(batch, PARAMS, "x") == 0  # re-sent again: skipped
            assert same(restarted, live)
            for key, record in restarted.changelog("x"):
                table[key] = wire(record)
            live = rebuilt(table)
            continue
        for key, record in records:
            table[key] = wire(record)
    assert crashed == 3


def test_resent_batches_are_skipped_and_counted_once() -> None:
    live = ItemState()
    table: dict = {}
    total = 0.0
    for batch in batches(200):
        total += sum(op[1] for e in batch for op in e[2:] if op[0] == "p")
        live.apply(batch, PARAMS, "x")
        for key, record in live.changelog("x"):
            table[key] = wire(record)
        restarted = rebuilt(table)
        assert restarted.apply(batch, PARAMS, "x") == 0
    assert rebuilt(table).count == pytest.approx(total)


def test_missing_snapshot_is_an_error_not_a_silent_loss() -> None:
    live = ItemState()
    table: dict = {}
    for batch in batches(50):
        live.apply(batch, PARAMS, "x")
        table.update((k, wire(r)) for k, r in live.changelog("x"))
    gen = table["x"].get("gen")
    assert gen is not None
    del table[snapshot_key("x", gen)]
    with pytest.raises(ValueError, match="snapshot"):
        ItemState.from_changelog(table["x"], table.get, "x")


def test_short_lists_stay_inline_in_the_item_record() -> None:
    s = ItemState()
    s.apply([["c:0", 1, ["c", "y", 1.0], ["p", 1.0, 0.0]]], PARAMS, "x")
    [(key, record)] = s.changelog("x")
    assert key == "x" and "gen" not in record and record["nb"] == {"y": 1.0}
    assert ItemState.from_changelog(record, {}.get, "x") == s


def test_apply_sums_every_pair_and_the_mass_once() -> None:
    """Co-occurrence pairs (applied inline) add up per neighbour and into the mass,
    across entries and calls, with re-sent entries skipped."""
    params = ItemParams(max_neighbours=10_000)  # never pruned here
    state = ItemState()
    expected: dict[str, float] = {}
    mass = 0.0
    for batch in batches(200):
        for entry in batch:
            for op in entry[2:]:
                if op[0] == "c":
                    expected[op[1]] = expected.get(op[1], 0.0) + op[2]
                    mass += op[2]
        state.apply(batch, params, "x")
        assert state.apply(batch, params, "x") == 0  # re-sent: nothing twice
    assert state.neighbours == pytest.approx(expected, rel=1e-12)
    assert state.mass == pytest.approx(mass, rel=1e-12)
    assert state.touched.keys() == expected.keys() == state.pending


def test_pruning_inside_a_call_keeps_the_bookkeeping_on_the_kept_neighbours() -> None:
    """A prune in the middle of an entry list: later pairs land in the pruned
    list, and the changed-neighbour sets only name neighbours still kept."""
    params = ItemParams(max_neighbours=5)
    state = ItemState()
    entries = [["c:0", k, ["c", f"n{k}", 1.0 + k]] for k in range(40)]
    assert state.apply(entries, params, "x") == 40
    assert state.epoch >= 2
    assert len(state.neighbours) <= 2 * params.max_neighbours
    # added after the last prune: kept, and marked changed for the next record
    assert "n39" in state.neighbours and "n39" in state.touched and "n39" in state.pending
    assert state.mass == pytest.approx(sum(1.0 + k for k in range(40)))
    assert set(state.touched) <= state.neighbours.keys()
    assert state.pending <= state.neighbours.keys()
