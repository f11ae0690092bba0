"""``python -m tools.learn_replay``: the per-event learning steps, timed on recorded calls.

The engine runs the first ``--events`` demo events (as the worker's, with
``quality_sample`` 0.1) while every ``ItemCooccurrence.learn_one`` and
``ImplicitFactorization.learn_one`` call is recorded; the calls are then replayed
``--rounds`` times into fresh models, and the tool prints each step's CPU
microseconds per call (the least and the median of the rounds) and a hash of the
state the replay ends in. Run in two checkouts, the times compare the code and
the hashes show whether it learns the same thing, bit for bit::

    python -m tools.learn_replay --events 30000 --rounds 5
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def record(events: int, data_dir: Path) -> dict[str, list[tuple[Any, ...]]]:
    """The learn_one calls of the engine on the first ``events`` demo events."""
    from models.cooccurrence import ItemCooccurrence
    from models.engine import FeedbackEngine
    from models.factorization import ImplicitFactorization
    from stream.contract import event_from_dict
    from tools.bench.workload import load_events

    calls: dict[str, list[tuple[Any, ...]]] = {"co-occurrence": [], "BPR": []}
    co_learn, bpr_learn = ItemCooccurrence.learn_one, ImplicitFactorization.learn_one

    def co(self: ItemCooccurrence, history: Any, item: int, weight: float) -> None:
        calls["co-occurrence"].append((tuple(history), item, weight))
        co_learn(self, history, item, weight)

    def bpr(
        self: ImplicitFactorization, user: str, item: int, weight: float, n_items: int
    ) -> None:
        calls["BPR"].append((user, item, weight, n_items))
        bpr_learn(self, user, item, weight, n_items)

    engine = FeedbackEngine()
    engine.quality_sample = 0.1
    ItemCooccurrence.learn_one = co  # type: ignore[method-assign]
    ImplicitFactorization.learn_one = bpr  # type: ignore[method-assign]
    try:
        for e in load_events("demo", data_dir, events):
            engine.process(event_from_dict(e))
    finally:
        ItemCooccurrence.learn_one = co_learn  # type: ignore[method-assign]
        ImplicitFactorization.learn_one = bpr_learn  # type: ignore[method-assign]
    return calls


def replay_cooccurrence(calls: Sequence[tuple[Any, ...]]) -> tuple[float, str]:
    """CPU seconds of the calls into a fresh model, and a hash of its pairs and masses."""
    from models.cooccurrence import ItemCooccurrence

    co = ItemCooccurrence(200, 0.9, 0.5)
    learn = co.learn_one
    start = time.process_time()
    for history, item, weight in calls:
        learn(history, item, weight)
    seconds = time.process_time() - start
    h = hashlib.sha256(co._mass.tobytes() + co._norm.tobytes())
    for nb in co.neighbours:
        h.update(nb.keys[: nb.n].tobytes() + nb.values[: nb.n].tobytes())
    return seconds, h.hexdigest()[:16]


def replay_bpr(calls: Sequence[tuple[Any, ...]]) -> tuple[float, str]:
    """CPU seconds of the calls into a fresh model, and a hash of its vectors."""
    from models.factorization import ImplicitFactorization

    bpr = ImplicitFactorization(16, 0.05, 0.01, 2, True, seed=42)
    learn = bpr.learn_one
    start = time.process_time()
    for user, item, weight, n_items in calls:
        learn(user, item, weight, n_items)
    seconds = time.process_time() - start
    h = hashlib.sha256(bpr.item_vec.tobytes() + bpr.item_bias.tobytes())
    for block in bpr.user_vec.blocks:
        h.update(block.tobytes())
    return seconds, h.hexdigest()[:16]


REPLAYS: dict[str, Callable[[Sequence[tuple[Any, ...]]], tuple[float, str]]] = {
    "co-occurrence": replay_cooccurrence,
    "BPR": replay_bpr,
}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=30_000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    args = p.parse_args(argv)
    if args.events < 1 or args.rounds < 1:
        print("learn_replay: --events and --rounds must be at least 1", file=sys.stderr)
        return 2
    calls = record(args.events, args.data_dir)
    for name, replay in REPLAYS.items():
        times, states = [], set()
        for _ in range(args.rounds):
            seconds, state = replay(calls[name])
            times.append(seconds)
            states.add(state)
        n = max(len(calls[name]), 1)
        times.sort()
        print(
            f"{name} learn_one: {len(calls[name]):,} calls, "
            f"{1e6 * times[0] / n:.1f} us per call (least), "
            f"{1e6 * times[len(times) // 2] / n:.1f} (median), state {', '.join(sorted(states))}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
