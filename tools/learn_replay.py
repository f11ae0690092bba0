"""``python -m tools.learn_replay``: the per-event learning steps, timed on recorded calls.

The engine runs the first ``--events`` demo events (as the worker's, with
``quality_sample`` 0.1) while every ``ItemCooccurrence.learn_one`` and
``ImplicitFactorization.learn_one`` call is recorded; the calls are then replayed
``--rounds`` times into fresh models, and the tool prints each step's CPU
microseconds per call (the least and the median of the rounds) and a hash of the
state the replay ends in. ``--against DIR`` replays the same calls through the
models of another checkout too, alternating with this one's round by round (so
a machine's changing load falls on both alike); equal hashes show that both
learn the same thing, bit for bit::

    python -m tools.learn_replay --events 30000 --rounds 5 --against ../main
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
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


def replay_cooccurrence(
    calls: Sequence[tuple[Any, ...]], module: ModuleType | None = None
) -> tuple[float, str]:
    """CPU seconds of the calls into a fresh model (of ``module``, by default this
    checkout's ``models.cooccurrence``), and a hash of its pairs and masses."""
    import models.cooccurrence

    co = (module or models.cooccurrence).ItemCooccurrence(200, 0.9, 0.5)
    learn = co.learn_one
    start = time.process_time()
    for history, item, weight in calls:
        learn(history, item, weight)
    seconds = time.process_time() - start
    h = hashlib.sha256(co._mass.tobytes() + co._norm.tobytes())
    for nb in co.neighbours:
        h.update(nb.keys[: nb.n].tobytes() + nb.values[: nb.n].tobytes())
    return seconds, h.hexdigest()[:16]


def replay_bpr(
    calls: Sequence[tuple[Any, ...]], module: ModuleType | None = None
) -> tuple[float, str]:
    """CPU seconds of the calls into a fresh model (of ``module``, by default this
    checkout's ``models.factorization``), and a hash of its vectors."""
    import models.factorization

    bpr = (module or models.factorization).ImplicitFactorization(16, 0.05, 0.01, 2, True, seed=42)
    learn = bpr.learn_one
    start = time.process_time()
    for user, item, weight, n_items in calls:
        learn(user, item, weight, n_items)
    seconds = time.process_time() - start
    h = hashlib.sha256(bpr.item_vec.tobytes() + bpr.item_bias.tobytes())
    for block in bpr.user_vec.blocks:
        h.update(block.tobytes())
    return seconds, h.hexdigest()[:16]


Replay = Callable[[Sequence[tuple[Any, ...]], ModuleType | None], tuple[float, str]]
#: Each step: its replay and the module of another checkout that holds its model.
REPLAYS: dict[str, tuple[Replay, str]] = {
    "co-occurrence": (replay_cooccurrence, "cooccurrence"),
    "BPR": (replay_bpr, "factorization"),
}


def load_model(checkout: Path, name: str) -> ModuleType:
    """``models/<name>.py`` of another checkout, as a module of its own."""
    path = checkout / "models" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"against_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def summary(label: str, times: list[float], calls: int, states: set[str]) -> str:
    times = sorted(times)
    n = max(calls, 1)
    return (
        f"{label}: {1e6 * times[0] / n:.1f} us per call (least), "
        f"{1e6 * times[len(times) // 2] / n:.1f} (median), state {', '.join(sorted(states))}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=30_000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    p.add_argument("--against", type=Path, metavar="DIR", help="another checkout to compare")
    args = p.parse_args(argv)
    if args.events < 1 or args.rounds < 1:
        print("learn_replay: --events and --rounds must be at least 1", file=sys.stderr)
        return 2
    if args.against is not None and not (args.against / "models").is_dir():
        print(f"learn_replay: no models/ in {args.against}", file=sys.stderr)
        return 2
    calls = record(args.events, args.data_dir)
    for name, (replay, module_name) in REPLAYS.items():
        other = load_model(args.against, module_name) if args.against is not None else None
        times: list[float] = []
        other_times: list[float] = []
        states: set[str] = set()
        other_states: set[str] = set()
        for _ in range(args.rounds):
            if other is not None:
                seconds, state = replay(calls[name], other)
                other_times.append(seconds)
                other_states.add(state)
            seconds, state = replay(calls[name], None)
            times.append(seconds)
            states.add(state)
        print(f"{name} learn_one, {len(calls[name]):,} calls")
        if other is not None:
            print("  " + summary(str(args.against), other_times, len(calls[name]), other_states))
        print("  " + summary("this checkout", times, len(calls[name]), states))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
