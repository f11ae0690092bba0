"""Two workers share the partitions; one is killed (SIGKILL) mid-stream; the other
takes over every partition with the per-user state, and nothing is lost."""

from __future__ import annotations

import dataclasses
import signal
import time

import orjson
import pytest

from tests.integration.conftest import wait_for
from tests.integration.reliability_helpers import (
    PacedProducer,
    account,
    complete,
    explain_lost,
    locate,
    make_events,
    read_profiles,
    records_for,
    wait_metric,
)
from tools.broker import free_port

pytestmark = pytest.mark.integration


def owned_partitions(worker) -> set[tuple[str, str]]:
    """Input partitions the worker reports a high-water mark for (its assignment)."""
    _, body = worker.get("/metrics")
    owned = set()
    for line in body.decode().splitlines():
        if line.startswith("feedback_input_highwater_offset{"):
            labels = dict(
                kv.split("=", 1) for kv in line[line.index("{") + 1 : line.index("}")].split(",")
            )
            owned.add((labels["topic"].strip('"'), labels["partition"].strip('"')))
    return owned


def test_survivor_takes_over_every_partition_with_state(worker_factory) -> None:
    a = worker_factory()
    s = a.settings
    b = worker_factory(settings=dataclasses.replace(s, web_port=free_port()))
    events = make_events(200, 50, seed=3)  # 10,000 events, 200 users
    producer = PacedProducer(s, records_for(s, events), rate=1500).start()

    # Both workers learn: the group is shared before the kill.
    assert wait_metric(a, "feedback_events_total", 1000, 90, outcome="processed") >= 1000
    assert wait_metric(b, "feedback_events_total", 1000, 90, outcome="processed") >= 1000
    # The gauges follow the assignment on each tick: wait for both to report theirs.
    assert wait_for(lambda: bool(owned_partitions(a)) and bool(owned_partitions(b)), 30), (
        "the partitions were not shared"
    )
    a_owned = owned_partitions(a)
    killed_at = time.monotonic()
    a.stop(signal.SIGKILL)

    sent = producer.join()
    everything = {(t, str(p)) for t in s.input_topics for p in range(s.partitions)}
    assert wait_for(lambda: owned_partitions(b) == everything, timeout=60), owned_partitions(b)
    profiles = read_profiles(s, complete(events), timeout=120)
    takeover = time.monotonic() - killed_at
    acc = account(events, profiles)
    print(f"\n{acc.line('rebalance')} partitions_taken_over={len(a_owned)} "
          f"all_learned_after_kill_s={takeover:.1f}")
    if acc.lost_ids:
        print(f"[rebalance] lost events at {locate(s, acc.lost_ids[:50])}")
        for line in explain_lost(s, acc.lost_ids[:10], events):
            print(f"[rebalance] {line}")
    assert sent == len(events)
    assert (acc.lost, acc.learned_twice, acc.foreign) == (0, 0, 0), acc.line("rebalance")

    # The survivor answers for every user, the killed worker's ones included,
    # from the state it restored (not from zero).
    expected: dict[str, int] = {}
    for e in events:
        expected[e["user_id"]] = expected.get(e["user_id"], 0) + 1
    for user, n in expected.items():
        status, body = b.get(f"/users/{user}")
        assert status == 200, (user, body[:200])
        assert sum(orjson.loads(body)["events"].values()) == n, user
