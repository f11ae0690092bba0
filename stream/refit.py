"""The customer-value refit, off the event loop.

A refit of the MBG/NBD and Gamma-Gamma population parameters
(:mod:`models.clv`) is a maximum-likelihood fit over every customer's
statistics: tenths of a second of CPU for tens of thousands of customers,
which would stall every agent, timer and HTTP view of the worker if it ran in
the tick. Here the loop only copies the statistics (:meth:`CustomerValue.fit_job`,
a few milliseconds of numpy), a worker thread fits them (:func:`run_fit`, pure,
on its own copies), and the loop swaps the new parameters in
(:meth:`CustomerValue.apply_fit`, two attribute assignments with no ``await``
between them, so no batch sees half a fit). The engine learns on meanwhile;
what it learns during a fit counts towards the next one.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

from models.clv import Fit, FitJob, run_fit
from models.engine import FeedbackEngine


def _timed_fit(job: FitJob) -> tuple[Fit, float]:
    start = time.perf_counter()
    fit = run_fit(job)
    return fit, time.perf_counter() - start


class CustomerValueRefit:
    """Runs due customer-value refits in one worker thread, one at a time.

    Parameters
    ----------
    engine
        The engine whose ``customer_value`` is refitted; a restored checkpoint
        may replace that object while a fit runs, and the fit is then dropped.
    seconds
        Optional histogram observed with each fit's duration.
    executor
        Where :func:`run_fit` runs (default: a private one-thread pool).
    """

    def __init__(
        self, engine: FeedbackEngine, seconds: Any = None, executor: Executor | None = None
    ) -> None:
        self.engine = engine
        self.seconds = seconds
        self.executor = executor or ThreadPoolExecutor(1, thread_name_prefix="clv-refit")
        self.running = False
        self.applied = 0

    async def run_once(self, now: float) -> bool:
        """Refit if one is due at event time ``now`` and none is running; True if applied."""
        cv = self.engine.customer_value
        if self.running or not cv.due_for_refit(now):
            return False
        self.running = True
        try:
            job = cv.fit_job(now)
            loop = asyncio.get_running_loop()
            fit, seconds = await loop.run_in_executor(self.executor, _timed_fit, job)
        finally:
            self.running = False
        if self.seconds is not None:
            self.seconds.observe(seconds)
        if self.engine.customer_value is not cv:
            return False  # replaced while fitting: these parameters describe other data
        cv.apply_fit(fit)
        self.applied += 1
        return True

    def close(self) -> None:
        """Stop the worker thread (a running fit finishes first)."""
        self.executor.shutdown(wait=True)
