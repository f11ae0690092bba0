"""``python -m tools.sharing_profile``: the item-sharing path's cost per event, offline.

No broker and no Faust, so the figures do not move with the machine's load as
much as a bench does: ``--events`` events of a shared-dataset replay (the
bench's inputs, :mod:`tools.bench.workload`) go through one
:class:`~models.engine.FeedbackEngine` with an :class:`~models.item_updates.Outbox`,
in batches of ``--batch`` events, each tagged with its input partition and
offset as the worker tags them. After each batch, the stages the worker and the
item owner run, each timed in CPU time:

``learn``      ``engine.process`` of the batch's events (recording into the outbox);
``encode``     ``outbox.messages(P)``: drained, split by partition, JSON-encoded;
``apply``      the owner: ``decode_updates`` and ``ItemState.apply`` of each item;
``changelog``  the owner: ``ItemState.changelog`` of each changed item, JSON-encoded;
``publish``    every ``--publish-every`` batches: ``due`` and ``published`` of the
               changed items, encoded (``encode_model``);
``replica``    those models decoded and applied to a second engine
               (``apply_item_models``).

The heap's survivors are frozen as in the worker (:data:`FREEZE_EVERY`), so a
stage is not charged for a full collection of the whole replay's heap.

It prints microseconds per event for each stage, the entries and bytes per
event, and with ``--cprofile N`` the top N functions of the sharing stages
(everything but ``learn``) by internal time. With ``--read-slices`` the replica
applies the models as the worker's does (:data:`stream.sharing.READ_SLICE` at a
time, confirmed together, then one by one) and the CPU milliseconds of each
slice and of each model (p50, p99, max) are printed too: how long the replica
held the event loop at once, and how long it does with a pause between two models.

``--save FILE`` writes what the run learnt: digests of every item-update
payload, changelog record and item-model record (the owner's outputs, which a
change to the sharing path must leave byte for byte) and each replica's
item-side state (neighbour weights, masses, popularity, factors, sentiment,
prices, per item id); ``--against FILE`` compares the run with such a file
(saved by another checkout on the same arguments) and prints the largest
relative difference of the replicas' numbers, which may move by float rounding
only, and whether the owner's outputs are the same (``owner_same`` 1).

``--workers W`` runs W engines instead, as a deployment of W workers does: each
has an outbox and is its own replica (so ``replica`` includes adding the
worker's own unconfirmed increments over the models it reads, and it is the sum over
the W replicas: every worker reads every model), input partition ``p`` goes to
worker ``p % W``, and the owner applies each batch's item updates ``--lag``
batches late, as a live owner lags the workers that feed it.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import hashlib
import io
import math
import pstats
import sys
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from stream.sharing import READ_SLICE

STAGES = ("learn", "encode", "apply", "changelog", "publish", "replica")

#: Batches between two ``gc.freeze()`` (and one after loading the inputs): the
#: worker freezes the heap's survivors every tick (:class:`stream.app.Collector`,
#: 5 s, about 4,000 events), so its collections walk only the young objects; a
#: full collection of the whole replay's heap here would land in whichever
#: stage allocates then.
FREEZE_EVERY = 20


def run(args: argparse.Namespace) -> dict[str, Any]:
    from models.engine import FeedbackEngine
    from models.item_state import ItemParams, ItemState
    from models.item_updates import (
        Outbox,
        attach,
        decode_model,
        decode_updates,
        encode_model,
        partition_of,
    )
    from stream.contract import event_from_dict
    from tools.bench.workload import load_events

    raw = load_events(args.dataset, args.data_dir, args.events)
    events = [event_from_dict(e) for e in raw]
    workers = args.workers or 1
    if args.workers:  # each worker's engine is its own replica
        engines = [FeedbackEngine() for _ in range(workers)]
        outboxes = [Outbox(args.partitions) for _ in range(workers)]
        replicas = engines
    else:
        engines, outboxes, replicas = [FeedbackEngine()], [Outbox()], [FeedbackEngine()]
    for engine, outbox in zip(engines, outboxes, strict=True):
        attach(engine, outbox)
    late: deque[tuple[int, list[bytes]]] = deque()  # (batch due, item-update payloads)
    params = ItemParams.of(engine.config)
    states: dict[str, ItemState] = {}
    changed: set[str] = set()
    offsets = [0] * args.partitions
    spent = dict.fromkeys(STAGES, 0.0)
    counts = {"entries": 0, "update_bytes": 0, "changelog_records": 0, "changelog_bytes": 0,
              "models": 0, "model_bytes": 0}
    digests = {k: hashlib.sha256() for k in ("updates", "changelog", "models")}
    profiler = cProfile.Profile() if args.cprofile else None
    clock = time.process_time

    def shared(stage: str, fn: Any, *a: Any) -> Any:
        start = clock()
        if profiler is not None:
            profiler.enable()
        out = fn(*a)
        if profiler is not None:
            profiler.disable()
        spent[stage] += clock() - start
        return out

    def learn(batch: Sequence[Any]) -> None:
        for event in batch:
            p = partition_of(event.user_id, args.partitions)
            outboxes[p % workers].at(f"events:{p}", offsets[p])
            offsets[p] += 1
            engines[p % workers].process(event)

    def encode() -> list[bytes]:
        return [m for o in outboxes for m in o.messages(args.partitions).values()]

    def apply(payloads: list[bytes]) -> set[str]:
        dirty = set()
        for payload in payloads:
            for item_id, entries in decode_updates(payload).items():
                state = states.get(item_id)
                if state is None:
                    state = states[item_id] = ItemState()
                counts["entries"] += len(entries)
                if state.apply(entries, params, item_id):
                    dirty.add(item_id)
        return dirty

    written: list[tuple[str, bytes]] = []

    def changelog(dirty: set[str]) -> None:
        for item_id in sorted(dirty):
            for key, record in states[item_id].changelog(item_id):
                data = orjson.dumps(record)
                counts["changelog_records"] += 1
                counts["changelog_bytes"] += len(key) + len(data)
                if args.save or args.against:
                    written.append((key, data))
        changed.update(dirty)

    def publish(now: float) -> list[tuple[str, bytes]]:
        due = sorted(i for i in changed if states[i].due(params))
        changed.difference_update(due)
        return [(i, encode_model(states[i].published(now, params))) for i in due]

    chunk_ms: list[float] = []
    model_ms: list[float] = []

    def apply_models(records: list[tuple[str, bytes]]) -> None:
        for replica in replicas:  # each worker decodes the records it reads
            models = [(i, decode_model(v)) for i, v in records]
            if not args.read_slices:
                replica.apply_item_models(models)
                continue
            # As the worker's replica: READ_SLICE models confirmed together, then
            # applied one by one (the worker may pause between two).
            for k in range(0, len(models), READ_SLICE):
                start = last = clock()
                steps = replica.apply_item_models_in_steps(models[k : k + READ_SLICE])
                while True:
                    try:
                        next(steps)
                    except StopIteration:
                        break
                    finally:
                        now = clock()
                        model_ms.append(1e3 * (now - last))
                        last = now
                chunk_ms.append(1e3 * (clock() - start))

    gc.collect()
    gc.freeze()
    for n, i in enumerate(range(0, len(events), args.batch), start=1):
        if n % FREEZE_EVERY == 0:
            gc.freeze()
        batch = events[i : i + args.batch]
        start = clock()
        learn(batch)
        spent["learn"] += clock() - start
        payloads = shared("encode", encode)
        counts["update_bytes"] += sum(len(p) for p in payloads)
        for payload in payloads:
            digests["updates"].update(payload)
        last = i + args.batch >= len(events)
        late.append((n + args.lag, payloads))
        while late and (late[0][0] <= n or last):
            dirty = shared("apply", apply, late.popleft()[1])
            shared("changelog", changelog, dirty)
            for key, data in written:
                digests["changelog"].update(key.encode() + b"\0" + data)
            written.clear()
        if n % args.publish_every == 0 or last:
            records = shared("publish", publish, batch[-1].timestamp)
            counts["models"] += len(records)
            counts["model_bytes"] += sum(len(v) for _, v in records)
            for i, v in records:
                digests["models"].update(i.encode() + b"\0" + v)
            shared("replica", apply_models, records)
    gc.unfreeze()
    n_events = len(events)
    result: dict[str, Any] = {f"{s}_us_per_event": 1e6 * spent[s] / n_events for s in STAGES}
    result["sharing_us_per_event"] = sum(result[f"{s}_us_per_event"] for s in STAGES[1:])
    result.update({f"{k}_per_event": v / n_events for k, v in counts.items()})
    for name, ms in (("chunk", chunk_ms), ("model", model_ms)):
        if ms:
            ordered = sorted(ms)
            for q in (50, 99):
                result[f"replica_{name}_ms_p{q}"] = ordered[min(len(ordered) - 1,
                                                                len(ordered) * q // 100)]
            result[f"replica_{name}_ms_max"] = ordered[-1]
    if args.save or args.against:
        learnt = {"owner": {k: d.hexdigest() for k, d in digests.items()},
                  "replicas": [replica_state(r) for r in replicas]}
        if args.save:
            args.save.write_bytes(orjson.dumps(learnt, option=orjson.OPT_SERIALIZE_NUMPY))
        if args.against:
            result.update(compare(orjson.loads(args.against.read_bytes()), learnt))
    if profiler is not None:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(args.cprofile)
        result["cprofile"] = out.getvalue()
    return result


def replica_state(engine: Any) -> dict[str, Any]:
    """A replica's item-side state, per item id (JSON-able): what the published
    models and the worker's own pending increments made of it."""
    rec = engine.recommender
    ids = engine.catalogue.ids
    n = len(ids)
    co = rec.cooccurrence
    pop_recent, pop_all = rec.popularity.recent(n), rec.popularity.all_time(n)
    segments = [p.recent(n) for p in rec.segment_popularity]
    taste, ratings = rec.taste, engine.ratings
    price = np.zeros(n)
    price_n = np.zeros(n)
    m = min(n, engine.item_price.shape[0])
    price[:m], price_n[:m] = engine.item_price[:m], engine.item_price_n[:m]
    items: dict[str, Any] = {}
    for idx, item_id in enumerate(ids):
        nb = co.neighbours[idx] if idx < len(co.neighbours) else None
        pairs = {} if nb is None else {
            ids[k]: w for k, w in zip(nb.keys[: nb.n].tolist(), nb.values[: nb.n].tolist(),
                                      strict=True)}
        items[item_id] = {
            "nb": pairs,
            "m": float(co._mass[idx]) if idx < co._mass.shape[0] else 0.0,
            "p": [float(pop_recent[idx]), float(pop_all[idx])],
            "s": [float(s[idx]) for s in segments],
            "q": ([*taste.item_vec[idx].tolist(), float(taste.item_bias[idx])]
                  if idx < taste._n_items else None),
            "r": ([*ratings.item_vec[idx].tolist(), float(ratings.item_bias[idx]),
                   float(ratings.item_count[idx])] if idx < ratings._n_items else None),
            "e": engine.item_sentiment.state.get(item_id),
            "$": [float(price[idx]), float(price_n[idx])],
        }
    return {"ids": list(ids), "items": items}


def _differences(a: Any, b: Any, where: str, out: dict[str, float]) -> None:
    """The largest relative difference of the numbers of ``a`` and ``b`` (the same
    shape) into ``out["max"]``; a difference of shape or of keys (or of their
    order): ``out["shape"]``."""
    if isinstance(a, dict) and isinstance(b, dict):
        if list(a) != list(b):  # in order: a neighbour list's order is its slots
            out["shape"] += 1
            out.setdefault(f"keys differ at {where}", 1.0)
        for k in a.keys() & b.keys():
            _differences(a[k], b[k], where, out)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out["shape"] += 1
            return
        for x, y in zip(a, b, strict=True):
            _differences(x, y, where, out)
    elif isinstance(a, int | float) and isinstance(b, int | float):
        scale = max(abs(a), abs(b))
        if scale and not (math.isnan(a) and math.isnan(b)):
            out["max"] = max(out["max"], abs(a - b) / scale)
    elif a != b:
        out["shape"] += 1


def compare(saved: dict[str, Any], now: dict[str, Any]) -> dict[str, float]:
    """``--against``: the owner's outputs the same, and the replicas' largest
    relative difference and differences of shape (items, neighbours, keys)."""
    out = {"max": 0.0, "shape": 0.0}
    if len(saved["replicas"]) != len(now["replicas"]):
        out["shape"] += 1
    for r, (a, b) in enumerate(zip(saved["replicas"], now["replicas"], strict=False)):
        if a["ids"] != b["ids"]:
            out["shape"] += 1  # the catalogue's order: its indices key every array
        _differences(a["items"], b["items"], f"replica {r}", out)
    return {"owner_same": float(saved["owner"] == now["owner"]),
            "replica_max_rel_diff": out["max"], "replica_shape_diffs": out["shape"]}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--batch", type=int, default=200, help="events per worker batch")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--publish-every", type=int, default=5, metavar="BATCHES")
    p.add_argument("--workers", type=int, default=0,
                   help="W engines, each its own replica (default: one engine, a plain replica)")
    p.add_argument("--lag", type=int, default=0, metavar="BATCHES",
                   help="batches the owner applies item updates late")
    p.add_argument("--dataset", default="demo", help="shared dataset replayed (default demo)")
    p.add_argument("--data-dir", type=Path, help="datasets folder (default ../shared/data)")
    p.add_argument("--cprofile", type=int, default=0, metavar="N", help="print the top N")
    p.add_argument("--read-slices", action="store_true",
                   help="apply the models as the worker's replica does (stream.sharing."
                   "READ_SLICE at a time, one by one) and print the CPU milliseconds of "
                   "each slice and of each model (the first with the slice's confirmation)")
    p.add_argument("--save", type=Path, metavar="FILE",
                   help="write the owner's output digests and the replicas' state")
    p.add_argument("--against", type=Path, metavar="FILE",
                   help="compare with a --save of another checkout (same arguments)")
    args = p.parse_args(argv)
    for name in ("events", "batch", "partitions", "publish_every"):
        if getattr(args, name) < 1:
            print(f"sharing_profile: --{name.replace('_', '-')} must be >= 1", file=sys.stderr)
            return 2
    for name in ("workers", "lag"):
        if getattr(args, name) < 0:
            print(f"sharing_profile: --{name} must be >= 0", file=sys.stderr)
            return 2
    try:
        result = run(args)
    except FileNotFoundError as exc:
        print(f"sharing_profile: {exc}", file=sys.stderr)
        return 2
    profile = result.pop("cprofile", None)
    for key, value in result.items():
        print(f"{key:32s} {value:12.2f}" if key != "replica_max_rel_diff"
              else f"{key:32s} {value:12.3g}")
    if profile:
        print(profile)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
