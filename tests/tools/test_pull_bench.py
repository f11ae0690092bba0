"""The pull-latency client of the bench, against a small local HTTP server."""

from __future__ import annotations

import asyncio
import socket

from aiohttp import web

from tools.pull_bench import measure_pulls, pull_targets


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_measure_pulls_times_the_answers_and_counts_the_failures() -> None:
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(f"{request.match_info['user']}:{request.query['item']}:{request.query['k']}")
        await asyncio.sleep(0.01)
        status = 400 if request.match_info["user"] == "bad" else 200
        return web.json_response({}, status=status)

    async def run() -> dict:
        app = web.Application()
        app.router.add_get("/recommendations/{user}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            return await measure_pulls(
                f"http://127.0.0.1:{port}", [("u 1", "i/1"), ("bad", "x")], rate=40, seconds=0.5,
                k=3,
            )
        finally:
            await runner.cleanup()

    result = asyncio.run(run())
    assert len(seen) == 20 and seen[0] == "u 1:i/1:3"  # quoted in the URL, read back whole
    assert len(result["latencies"]) == 10 and result["failures"] == 10
    assert all(0.01 <= x < 1.0 for x in result["latencies"])


def test_pull_targets_take_one_browsing_event_per_user() -> None:
    events = [
        {"type": "review", "user_id": "a", "item_id": "r"},
        {"type": "click", "user_id": "a", "item_id": "x"},
        {"type": "purchase", "user_id": "b", "item_id": "y"},
        {"type": "click", "user_id": "a", "item_id": "z"},
    ]
    assert pull_targets(events) == [("a", "x"), ("b", "y")]
    assert pull_targets(events, limit=1) == [("a", "x")]
