"""The customer-value refit runs in a worker thread and is swapped in on the loop."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
from prometheus_client import CollectorRegistry

import stream.refit as refit_module
from models.clv import DAY, CustomerValue, FitJob, TransactionParams, run_fit
from models.engine import FeedbackEngine
from stream.metrics import Metrics
from stream.processor import DictStore, Processor
from stream.refit import CustomerValueRefit
from stream.settings import Settings

NOW = 200 * DAY


def fill(cv: CustomerValue, customers: int = 400, seed: int = 3) -> None:
    """Seeded customers buying on Poisson days, enough for a refit to be due."""
    rng = np.random.default_rng(seed)
    for c in range(customers):
        start = rng.uniform(0, 150)
        for day in np.sort(rng.uniform(start, 200, size=1 + rng.poisson(3))):
            cv.learn_one(f"c{c}", float(day) * DAY, float(rng.gamma(4.0, 10.0)))


async def test_the_fit_runs_off_the_loop_while_the_loop_learns(monkeypatch) -> None:
    engine = FeedbackEngine()
    cv = engine.customer_value
    fill(cv)
    assert cv.due_for_refit(NOW)
    loop_thread = threading.get_ident()
    started, release = threading.Event(), threading.Event()
    fit_threads: list[int] = []

    def held_fit(job: FitJob):  # type: ignore[no-untyped-def]
        fit_threads.append(threading.get_ident())
        started.set()
        # Only a loop that is still running can learn the purchases below and
        # release this fit: a fit on the loop would wait here in vain.
        assert release.wait(10), "the event loop was blocked by the fit"
        return run_fit(job)

    monkeypatch.setattr(refit_module, "run_fit", held_fit)
    refit = CustomerValueRefit(engine)
    task = asyncio.create_task(refit.run_once(NOW))
    for _ in range(500):
        if started.is_set():
            break
        await asyncio.sleep(0.01)
    assert started.is_set()
    assert not await refit.run_once(NOW)  # one fit at a time
    for i in range(7):  # learnt while the fit runs: new for the next one
        cv.learn_one(f"late{i}", NOW, 10.0)
    release.set()
    assert await task
    refit.close()
    assert fit_threads and fit_threads[0] != loop_thread
    assert cv.fits == 1 and cv.fitted_at == NOW
    assert cv.new_since_fit == 7
    assert cv.transactions != TransactionParams()


async def test_the_thread_fits_what_the_inline_refit_fits() -> None:
    threaded, inline = FeedbackEngine(), FeedbackEngine()
    fill(threaded.customer_value)
    fill(inline.customer_value)
    refit = CustomerValueRefit(threaded)
    assert await refit.run_once(NOW)
    assert not await refit.run_once(NOW)  # no longer due
    refit.close()
    inline.customer_value.refit(NOW)
    assert threaded.customer_value.transactions == inline.customer_value.transactions
    assert threaded.customer_value.spend == inline.customer_value.spend


async def test_a_fit_for_a_replaced_model_is_dropped() -> None:
    engine = FeedbackEngine()
    old = engine.customer_value
    fill(old)
    refit = CustomerValueRefit(engine)
    task = asyncio.create_task(refit.run_once(NOW))
    await asyncio.sleep(0)  # the statistics are copied and the fit submitted
    replacement = CustomerValue()
    engine.customer_value = replacement  # as a restored checkpoint would
    assert not await task
    refit.close()
    assert old.fits == 0 and replacement.fits == 0


def test_the_worker_tick_leaves_the_refit_to_the_thread() -> None:
    def processor() -> Processor:
        proc = Processor(
            Settings.from_env({}), FeedbackEngine(), DictStore(), Metrics(CollectorRegistry())
        )
        fill(proc.engine.customer_value)
        proc.max_event_time = NOW
        return proc

    off_loop, inline = processor(), processor()
    off_loop.refit_customer_value_in_tick = False
    off_loop.tick()
    inline.tick()
    assert off_loop.engine.customer_value.fits == 0
    assert inline.engine.customer_value.fits == 1
