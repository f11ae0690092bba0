"""How long a customer-value refit stalls an asyncio event loop, inline and off the loop.

``python -m tools.clv_refit_stall FILE``: the customer-value model learns every
purchase line of positive quantity in FILE (contract JSONL), then an event loop
runs a heartbeat (``asyncio.sleep(0.001)`` in a loop, the gap between beats
recorded) while the model refits from a cold start, as the first refit after a
restart does: once in the loop itself (what the worker's tick did), once with
:class:`stream.refit.CustomerValueRefit` (the fit in a worker thread). Reported
per mode: the longest heartbeat gap (the loop's worst stall), the 99th
percentile gap and the refit's wall time, the worst over ``--repeats``.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from models.engine import FeedbackEngine
from stream.refit import CustomerValueRefit
from tools.evaluate import read_events

BEAT = 0.001  # heartbeat sleep (s)


async def _measure(refit: Callable[[], Awaitable[Any]]) -> dict[str, float]:
    gaps: list[float] = []
    running = True

    async def heartbeat() -> None:
        last = time.perf_counter()
        while running:
            await asyncio.sleep(BEAT)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    beats = asyncio.create_task(heartbeat())
    await asyncio.sleep(0.05)  # the heartbeat's own pace before the refit
    start = time.perf_counter()
    await refit()
    seconds = time.perf_counter() - start
    await asyncio.sleep(0.05)
    running = False
    await beats
    return {
        "max_stall_ms": 1000 * max(gaps),
        "p99_gap_ms": 1000 * float(np.percentile(gaps, 99)),
        "refit_seconds": seconds,
    }


def measure(engine: FeedbackEngine, now: float, repeats: int = 2) -> dict[str, Any]:
    """Worst heartbeat gaps of a cold refit of ``engine``'s customer value, both ways."""
    out: dict[str, Any] = {"customers": len(engine.customer_value)}
    for mode in ("inline", "thread"):
        runs = []
        for _ in range(repeats):
            cold = copy.deepcopy(engine)  # each run fits from the defaults
            cold.customer_value.refit_min_new = 1  # due whatever the file's size
            scheduler = CustomerValueRefit(cold)

            async def refit(
                e: FeedbackEngine = cold, s: CustomerValueRefit = scheduler, m: str = mode
            ) -> None:
                if m == "inline":
                    e.customer_value.maybe_refit(now)  # what the worker's tick did
                else:
                    await s.run_once(now)

            runs.append(asyncio.run(_measure(refit)))
            scheduler.close()
            assert cold.customer_value.fits == 1, "the refit did not happen"
        out[mode] = {k: max(r[k] for r in runs) for k in runs[0]}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.clv_refit_stall", description=__doc__)
    parser.add_argument("path", type=Path, help="contract JSONL (e.g. from convert cdnow)")
    parser.add_argument("--limit", type=int, default=None, help="read at most N events")
    parser.add_argument("--repeats", type=int, default=2, help="runs per mode (worst reported)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, not {args.repeats}")
    if not args.path.is_file():
        print(f"clv_refit_stall: {args.path}: no such file", file=sys.stderr)
        return 2
    events, rejected = read_events(args.path, args.limit)
    engine = FeedbackEngine()
    cv = engine.customer_value
    for event in events:
        if event.type == "purchase" and event.quantity > 0:
            cv.learn_one(event.user_id, event.timestamp, event.revenue)
    if len(cv) < 2:
        print(f"clv_refit_stall: {args.path}: fewer than two customers with purchases",
              file=sys.stderr)  # fmt: skip
        return 2
    now = max(e.timestamp for e in events)
    result = measure(engine, now, args.repeats)
    print(orjson.dumps({**result, "events": len(events), "rejected_lines": rejected}).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
