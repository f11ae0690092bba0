import asyncio
import logging
import re
import threading
import time
import traceback
from typing import Any

import pytest

from stream.stall import LoopWatch


class Samples:
    def __init__(self) -> None:
        self.values: list[float] = []

    def observe(self, value: float) -> None:
        self.values.append(value)


def block_the_loop(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_lag_is_how_late_the_heartbeat_woke(caplog: pytest.LogCaptureFixture) -> None:
    lag = Samples()
    watch = LoopWatch(lag, stall_log_seconds=0.1, beat=0.01)

    async def main() -> None:
        task = asyncio.create_task(watch.run())
        await asyncio.sleep(0.05)
        block_the_loop(0.4)
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with caplog.at_level(logging.WARNING, logger="stream.stall"):
        asyncio.run(main())
    assert max(lag.values) >= 0.35
    assert sorted(lag.values)[len(lag.values) // 2] < 0.1
    # Once per stall. A loaded machine can stall the loop elsewhere too (a real
    # stall, logged as such): the one made here is logged exactly once.
    stalls = [r.getMessage() for r in caplog.records]
    assert sum("block_the_loop" in m for m in stalls) == 1, stalls
    # Its whole length is logged when the loop gets its turn back.
    over = [stall_over(r.getMessage()) for r in caplog.records
            if "stall over" in r.getMessage()]
    assert any(0.35 <= wall < 1.0 for wall, _ in over), over


def stall_over(message: str) -> tuple[float, float]:
    m = re.search(r"no turn for ([\d.]+) s, ([\d.]+) s of CPU", message)
    assert m is not None, message
    return float(m[1]), float(m[2])


def burn_cpu(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_a_stall_s_cpu_time_tells_work_from_waiting(caplog: pytest.LogCaptureFixture) -> None:
    # Work holding the loop uses the loop thread's CPU for the whole stall; a
    # loop thread that waits (here it sleeps; on a busy machine, it is not
    # scheduled) uses none, however long the stall.
    watch = LoopWatch(Samples(), stall_log_seconds=0.1, beat=0.01)

    async def main() -> None:
        task = asyncio.create_task(watch.run())
        await asyncio.sleep(0.05)
        burn_cpu(0.3)
        await asyncio.sleep(0.05)
        time.sleep(0.3)
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with caplog.at_level(logging.WARNING, logger="stream.stall"):
        asyncio.run(main())
    over = [stall_over(r.getMessage()) for r in caplog.records
            if "stall over" in r.getMessage()]
    assert any(wall >= 0.28 and cpu >= 0.28 for wall, cpu in over), over
    assert any(wall >= 0.25 and cpu < 0.1 for wall, cpu in over), over


def test_no_stack_while_the_loop_turns() -> None:
    watch = LoopWatch(Samples(), stall_log_seconds=0.1, beat=0.01)

    async def main() -> list[str | None]:
        task = asyncio.create_task(watch.run())
        seen = []
        for _ in range(20):
            await asyncio.sleep(0.01)
            seen.append(watch.stalled_stack())
        task.cancel()
        return seen

    assert asyncio.run(main()) == [None] * 20


def test_a_heartbeat_between_check_and_report_does_not_make_a_second_stall(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    # The loop (here: this thread, asleep) is stalled. On the watcher's second
    # look the heartbeat wakes while the stack is being read: the stall it read
    # is the one already logged, and the fresh heartbeat ends it.
    watch = LoopWatch(Samples(), stall_log_seconds=0.02, beat=0.01)
    watch._loop_thread = threading.get_ident()
    watch.last = time.monotonic() - 1.0
    looks = []
    real_format_stack = traceback.format_stack

    def format_stack(frame: Any) -> list[str]:
        looks.append(frame)
        if len(looks) == 2:
            watch.last = time.monotonic() + 60  # and keeps beating
        return real_format_stack(frame)

    monkeypatch.setattr("stream.stall.traceback.format_stack", format_stack)
    watcher = threading.Thread(target=watch._watch)
    with caplog.at_level(logging.WARNING, logger="stream.stall"):
        watcher.start()
        time.sleep(0.2)
        watch._stop.set()
        watcher.join()
    assert len(looks) == 2
    assert len(caplog.records) == 1, [r.getMessage() for r in caplog.records]
