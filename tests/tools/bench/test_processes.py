"""The bench's waits on its workers, with made-up workers (no process, no broker)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tools.bench.processes import wait_item_models


class Running:
    returncode = None

    def poll(self) -> None:
        return None


class Worker:
    """Publishes or applies an item model on each of its first ``busy`` samples."""

    def __init__(self, busy: int) -> None:
        self.proc: Any = Running()
        self.busy = busy
        self.samples = 0
        self.item_models: list[tuple[float, float]] = []

    def sample(self) -> None:
        self.samples += 1
        value = float(min(self.samples, self.busy))
        self.item_models.append((time.monotonic(), value))


def test_the_latency_phase_waits_until_no_item_model_moves() -> None:
    workers = [Worker(busy=3), Worker(busy=8)]
    took = wait_item_models(workers, timeout=30.0, quiet=0.5)  # type: ignore[arg-type]
    assert took is not None
    # Not before the slower one's last model, and then only once it stayed quiet.
    assert workers[1].samples > 8
    quiet_since = workers[1].item_models[7][0]
    assert workers[1].item_models[-1][0] - quiet_since >= 0.5


def test_a_replica_that_never_settles_is_a_timeout() -> None:
    assert wait_item_models([Worker(busy=10**9)], timeout=0.6, quiet=0.5) is None  # type: ignore[list-item]


def test_a_dead_worker_is_an_error() -> None:
    w = Worker(busy=1)
    w.proc.poll = lambda: 1
    w.proc.returncode = 1
    with pytest.raises(RuntimeError, match="exited with code 1"):
        wait_item_models([w], timeout=5.0, quiet=0.5)  # type: ignore[list-item]
