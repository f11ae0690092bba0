"""Three workers share the partitions while events stream in: one is killed
(SIGKILL), another stopped (SIGTERM), a new one joins (a rebalance each time).
Nothing is lost or learned twice, on the user side (the profiles) or on the
item side (the owners' item_state table: every item's all-time popularity is
exactly the sum of its events' strengths, although item updates are re-sent
and re-read after the kill)."""

from __future__ import annotations

import dataclasses
import signal

import pytest

from tests.integration.conftest import wait_for
from tests.integration.reliability_helpers import (
    PacedProducer,
    account,
    assert_items_exact,
    assert_nothing_lost,
    complete,
    make_events,
    read_profiles,
    records_for,
    wait_metric,
)
from tools.broker import free_port

pytestmark = pytest.mark.integration


def test_three_workers_kill_stop_join_lose_and_repeat_nothing(worker_factory) -> None:
    # Six partitions: Faust's co-partitioned assignor fills workers up to
    # ceil(partitions / workers) each, so four would leave one of three idle.
    # The graceful stop is asserted below: on a loaded 2-core CI machine, three
    # workers' stop (commit, final checkpoint, flush) can outlast the 8 s default.
    a = worker_factory(partitions=6, stop_timeout_seconds=60.0, wait=False)
    s = a.settings
    b, c = (worker_factory(settings=dataclasses.replace(s, web_port=free_port()), wait=False)
            for _ in range(2))
    for w in (a, b, c):  # started together: one rebalance; generous, the CI machine is shared
        w.wait_ready(timeout=180)
    # No returns: an item's popularity is then the plain sum of its events' strengths.
    events = make_events(150, 60, seed=13, returns=False)  # 9,000 events, 150 users
    producer = PacedProducer(s, records_for(s, events), rate=300).start()

    # Each one learns: the group is shared by the three before the kill.
    for w in (a, b, c):
        assert wait_metric(w, "feedback_events_total", 200, 90, outcome="processed") >= 200
    a.stop(signal.SIGKILL)  # mid-stream: its uncommitted batches and item updates are redone

    assert wait_for(lambda: producer.sent >= len(events) // 2, 120)
    b_sent = b.metric("feedback_item_update_entries_sent_total")
    assert b.stop(signal.SIGTERM, timeout=90) == 0
    d = worker_factory(settings=dataclasses.replace(s, web_port=free_port()), wait=False)
    d.wait_ready(timeout=180)

    assert producer.join() == len(events)
    profiles = read_profiles(s, complete(events), timeout=180)
    acc = account(events, profiles)
    print(f"\n{acc.line('three workers')}")
    assert_nothing_lost(s, events, acc, "three workers")
    states = assert_items_exact(s, events, (c, d), "three workers", timeout=120,
                                note=f" b_sent_before_sigterm={b_sent:.0f}")
    assert sum(len(st["applied"]) for st in states.values()) > 0
