import asyncio
import logging
import time
from pathlib import Path

import pytest

from stream.stall import LoopWatch
from tools import stall_log

# The worker's log format (mode's default, the bench's worker-0.log).
FORMAT = "[%(asctime)s] [%(process)s] [%(levelname)s] %(message)s"


class Samples:
    def observe(self, value: float) -> None:
        pass


def hold_the_loop_with_work(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def hold_the_loop_waiting(seconds: float) -> None:
    time.sleep(seconds)


def worker_log(tmp_path: Path) -> Path:
    """A log written by the worker's LoopWatch, in the worker's format."""
    path = tmp_path / "worker-0.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(FORMAT))
    logger = logging.getLogger("stream.stall")
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    watch = LoopWatch(Samples(), stall_log_seconds=0.1, beat=0.01)

    async def main() -> None:
        task = asyncio.create_task(watch.run())
        await asyncio.sleep(0.05)
        for _ in range(2):
            hold_the_loop_with_work(0.3)
            await asyncio.sleep(0.05)
        hold_the_loop_waiting(0.3)
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        asyncio.run(main())
    finally:
        logger.removeHandler(handler)
        handler.close()
    return path


def test_the_stalls_are_summed_by_the_place_that_held_the_loop(tmp_path: Path) -> None:
    with open(worker_log(tmp_path)) as f:
        stalls = stall_log.parse(f)
    rows = {own: (n, wall, cpu) for (_, own, _), n, wall, _, cpu in stall_log.summarise(stalls)}
    work = rows.pop("tests/tools/test_stall_log.py:hold_the_loop_with_work")
    assert work[0] == 2
    assert work[1] >= 0.5 and work[2] is not None and work[2] >= 0.5, work
    # The sleeping stack is in time.sleep, called from this file's function.
    waiting = rows.pop("tests/tools/test_stall_log.py:hold_the_loop_waiting")
    assert waiting[0] == 1 and waiting[1] >= 0.25, waiting
    assert waiting[2] is not None and waiting[2] < 0.1, waiting


def test_the_command_prints_the_places_within_the_window(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = worker_log(tmp_path)
    assert stall_log.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("3 stalls, ")
    assert "hold_the_loop_with_work" in out and "hold_the_loop_waiting" in out
    assert stall_log.main([str(path), "--since", "99"]) == 0
    assert capsys.readouterr().out.startswith("0 stalls, ")


def test_an_unreadable_log_is_one_line(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert stall_log.main([str(tmp_path / "missing.log")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.log" in err
