"""How long the worker's event loop goes without a turn, and what held it.

Every event, pull and timer of a worker runs on one asyncio loop: a piece of
synchronous work that runs for a second delays all of them by a second. The
loop's lag (how late a short sleep wakes up) is the histogram
``feedback_event_loop_lag_seconds``. With ``FEEDBACK_LOOP_STALL_LOG_SECONDS``
set, a thread also watches the loop's heartbeat and, when the loop has had no
turn for that long, logs the stack the loop is running (once per stall): the
place to cut the work in slices; the heartbeat then logs how long the stall
lasted in all, once the loop wakes it, and how much CPU time the loop's thread
used over it and the heartbeat's sleep before it (so at most ``beat`` seconds of
other work on top of the stall's; ``python -m tools.stall_log`` sums them by
place).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback
from typing import Any

log = logging.getLogger(__name__)

#: How often the loop's heartbeat runs, s.
BEAT_SECONDS = 0.05


class LoopWatch:
    """The event loop's heartbeat (:meth:`run`, a task) and its stall reporter (a thread)."""

    def __init__(self, lag: Any, stall_log_seconds: float = 0.0,
                 beat: float = BEAT_SECONDS) -> None:
        self.lag = lag  # a Histogram (or anything with .observe)
        self.stall_log_seconds = stall_log_seconds
        self.beat = beat
        self.last = time.monotonic()
        self._loop_thread: int | None = None
        self._stop = threading.Event()

    async def run(self) -> None:
        """Sleep ``beat`` seconds at a time; each wake-up's delay is the loop's lag."""
        self._loop_thread = threading.get_ident()
        watcher = None
        if self.stall_log_seconds > 0:
            watcher = threading.Thread(target=self._watch, name="loop-stall-watch", daemon=True)
            watcher.start()
        try:
            while True:
                start = self.last = time.monotonic()
                cpu = time.thread_time()
                await asyncio.sleep(self.beat)
                now = self.last = time.monotonic()
                late = max(0.0, now - start - self.beat)
                self.lag.observe(late)
                if 0 < self.stall_log_seconds <= late:
                    # The watcher logged the stack at the stall's start; its length
                    # is known only now. The loop thread's CPU time over it tells
                    # the work that held the loop from the machine's other jobs
                    # (which stretch it in wall time only).
                    log.warning("event loop stall over: no turn for %.3f s, %.3f s of CPU",
                                late, time.thread_time() - cpu)
        finally:
            self._stop.set()

    def stalled_stack(self) -> str | None:
        """The loop thread's current stack, if it has had no turn for
        ``stall_log_seconds``; else None."""
        stall = self._stall()
        return None if stall is None else stall[1]

    def _stall(self) -> tuple[float, str] | None:
        """(the heartbeat the loop has not passed since, its stack) during a stall.

        ``last`` is read once: the heartbeat can move it between the staleness
        check and the report, and a second read would make one stall two."""
        last = self.last
        if self._loop_thread is None:
            return None
        if time.monotonic() - last < self.beat + self.stall_log_seconds:
            return None
        frame = sys._current_frames().get(self._loop_thread)
        return None if frame is None else (last, "".join(traceback.format_stack(frame)))

    def _watch(self) -> None:
        reported = None
        while not self._stop.wait(self.stall_log_seconds / 4):
            stall = self._stall()
            if stall is None:
                reported = None
            elif reported != stall[0]:  # once per stall
                reported = stall[0]
                log.warning("event loop without a turn for %.2f s, running:\n%s",
                            time.monotonic() - stall[0] - self.beat, stall[1])
