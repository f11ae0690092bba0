"""Two, then three workers share the partitions; one is killed (SIGKILL)
mid-stream; the others take over its partitions with the per-user state and the
item owners' state, and nothing is lost or learned twice, on the user side (the
profiles) or on the item side (every item's all-time popularity in
``item_state`` is exactly the sum of its events' strengths, although the killed
worker's item updates are re-sent by its partitions' next owners)."""

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
    assert_items_exact,
    assert_nothing_lost,
    complete,
    make_events,
    owned_partitions,
    read_profiles,
    records_for,
    wait_metric,
)
from tools.broker import free_port

pytestmark = pytest.mark.integration


# Three workers need six partitions: Faust's co-partitioned assignor fills
# workers up to ceil(partitions / workers) each, so four would leave one idle.
@pytest.mark.parametrize(("n_workers", "partitions"), [(2, 4), (3, 6)])
def test_survivors_take_over_every_partition_with_state(
    worker_factory, n_workers: int, partitions: int
) -> None:
    first = worker_factory(partitions=partitions, wait=False)
    s = first.settings
    workers = [first] + [
        worker_factory(settings=dataclasses.replace(s, web_port=free_port()), wait=False)
        for _ in range(n_workers - 1)
    ]
    for w in workers:  # started together: one rebalance; generous, the CI machine is shared
        w.wait_ready(timeout=180)
    # No returns: an item's popularity is then the plain sum of its events' strengths.
    events = make_events(200, 50, seed=3, returns=False)  # 10,000 events, 200 users
    producer = PacedProducer(s, records_for(s, events), rate=1500).start()

    # All learn: the group is shared before the kill.
    for w in workers:
        assert wait_metric(w, "feedback_events_total", 200, 180, outcome="processed") >= 200
    # The gauges follow the assignment on each tick: wait for all to report theirs.
    assert wait_for(lambda: all(owned_partitions(w) for w in workers), 30), (
        "the partitions were not shared"
    )
    killed, survivors = workers[0], workers[1:]
    killed_owned = owned_partitions(killed)
    killed_at = time.monotonic()
    killed.stop(signal.SIGKILL)

    sent = producer.join()
    everything = {(t, str(p)) for t in s.input_topics for p in range(s.partitions)}

    def taken_over() -> bool:
        owned = [owned_partitions(w) for w in survivors]
        return set().union(*owned) == everything and sum(map(len, owned)) == len(everything)

    assert wait_for(taken_over, timeout=60), [owned_partitions(w) for w in survivors]
    # Generous: on a loaded shared machine the survivors catch up for minutes.
    profiles = read_profiles(s, complete(events), timeout=300)
    takeover = time.monotonic() - killed_at
    acc = account(events, profiles)
    label = f"rebalance, {n_workers} workers"
    print(f"\n{acc.line(label)} partitions_taken_over={len(killed_owned)} "
          f"all_learned_after_kill_s={takeover:.1f}")
    assert sent == len(events)
    assert_nothing_lost(s, events, acc, label)
    assert_items_exact(s, events, survivors, label, timeout=120)

    # The survivors answer for every user (a request reaches the user's owner),
    # the killed worker's ones included, from the state they restored (not from zero).
    expected: dict[str, int] = {}
    for e in events:
        expected[e["user_id"]] = expected.get(e["user_id"], 0) + 1
    for user, n in expected.items():
        status, body = survivors[0].get(f"/users/{user}")
        assert status == 200, (user, body[:200])
        assert sum(orjson.loads(body)["events"].values()) == n, user
