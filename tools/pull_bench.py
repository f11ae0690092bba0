"""Round-trip latency of ``GET /recommendations/{user_id}`` while the worker takes load.

The bench runs :func:`measure_pulls` beside its fixed-load latency phase: a
client asks for the recommendations of users of the replay (with the item of
one of their events as the item being viewed, so the session path is timed
too) at ``rate`` requests per second, each request on its own schedule
(an open loop: a slow answer does not delay the next request), and times each
answer from send to body read.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote


async def measure_pulls(
    base_url: str,
    targets: Sequence[tuple[str, str]],
    rate: float,
    seconds: float,
    k: int = 10,
    timeout: float = 5.0,
) -> dict[str, Any]:
    """Pull ``rate`` times a second for ``seconds``, cycling through ``(user, item)``
    ``targets``; latencies of the 200 answers and the count of the others."""
    import aiohttp

    latencies: list[float] = []
    failures = 0
    if not targets or rate <= 0 or seconds <= 0:
        return {"latencies": latencies, "failures": failures}

    async def one(session: aiohttp.ClientSession, user: str, item: str) -> None:
        nonlocal failures
        url = f"{base_url}/recommendations/{quote(user, safe='')}?k={k}&item={quote(item)}"
        started = time.perf_counter()
        try:
            async with session.get(url) as resp:
                await resp.read()
                if resp.status == 200:
                    latencies.append(time.perf_counter() - started)
                else:
                    failures += 1
        except (TimeoutError, aiohttp.ClientError):
            failures += 1

    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(timeout=client_timeout) as session:
        tasks = []
        n = int(rate * seconds)
        start = time.perf_counter()
        for i in range(n):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            user, item = targets[i % len(targets)]
            tasks.append(asyncio.create_task(one(session, user, item)))
        await asyncio.gather(*tasks)
    return {"latencies": latencies, "failures": failures}


def pull_targets(events: Sequence[dict[str, Any]], limit: int = 2000) -> list[tuple[str, str]]:
    """``(user, item)`` pairs of the replay's clicks and purchases, one per user."""
    seen: dict[str, str] = {}
    for e in events:
        if e.get("type") != "review" and e["user_id"] not in seen:
            seen[e["user_id"]] = e["item_id"]
            if len(seen) >= limit:
                break
    return list(seen.items())
