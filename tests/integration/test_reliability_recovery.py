"""State restore must not depend on the broker's ListOffsets("latest").

Tansu answers ListOffsets with the base offset of the last record batch + 1;
Faust's table recovery reads a changelog only up to that offset, so without
``stream.faust.recovery.ChangelogRecovery`` a graceful restart forgets the
newest profiles of the last changelog batch of each partition. Their events are
not read again either (their input offsets were committed): they are lost.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import time
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from faust.types import TP

from stream.faust.recovery import fetch_highwaters
from stream.kafka import client_kwargs
from stream.topics import changelog_topic
from tests.integration.conftest import isolated_settings, produce_events, wait_for
from tests.integration.reliability_helpers import (
    account_items,
    make_events,
    plant_last_batch,
    port_free,
    read_item_states,
    records_for,
)
from tools.broker import free_port

pytestmark = pytest.mark.integration


async def list_offsets(settings: Any, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(**client_kwargs(settings), group_id=None)
    await consumer.start()
    try:
        return dict(await consumer.end_offsets(tps))
    finally:
        await consumer.stop()


# Short enough that a fetch loop which waits for its deadline fails here rather than
# running into the mutation run's time limit (tools/mutation.py).
DEADLINE = 12.0


def test_fetch_highwater_is_exact_where_list_offsets_is_not(broker: str, tmp_path) -> None:
    s = isolated_settings(broker, tmp_path)
    topic = s.topic_clicks
    sizes = {0: [1, 10, 20], 1: [30], 2: [1, 1, 1], 3: []}

    async def run() -> tuple[dict, dict]:
        prod = AIOKafkaProducer(**client_kwargs(s), linger_ms=50)
        await prod.start()
        try:
            for partition, batches in sizes.items():
                for n in batches:  # each burst becomes one record batch
                    futures = [await prod.send(topic, b"x", partition=partition) for _ in range(n)]
                    await asyncio.gather(*futures)
        finally:
            await prod.stop()
        tps = [TopicPartition(topic, p) for p in sizes]
        listed = await list_offsets(s, tps)
        hints: dict[TP, int | None] = {
            TP(topic, p): listed[TopicPartition(topic, p)] for p in sizes
        }
        hints[TP(topic, 2)] = None  # no ListOffsets answer: the fetch starts at 0
        started = time.monotonic()
        fetched = await fetch_highwaters(s, hints, timeout=DEADLINE)
        # It returns once every partition answered (well under a second on a quiet
        # machine), not at the deadline.
        assert time.monotonic() - started < DEADLINE * 2 / 3
        return listed, fetched

    listed, fetched = asyncio.run(run())
    truth = {p: sum(b) for p, b in sizes.items()}
    print(f"\n[highwater] true={truth} list_offsets="
          f"{ {tp.partition: v for tp, v in listed.items()} } "
          f"fetch={ {tp.partition: v for tp, v in fetched.items()} }")
    assert {tp.partition: v for tp, v in fetched.items()} == truth


# Three starts, three stops and three restarts on a loaded two-core machine.
@pytest.mark.timeout(1200)
def test_graceful_restart_restores_every_profile(worker_factory) -> None:
    # With FEEDBACK_RECOVERY_GUARDS=0 in the environment the workers run on Faust's
    # own recovery, and this test fails: the planted users are not restored.
    # Three workers over six partitions (Faust's co-partitioned assignor fills
    # workers up to ceil(partitions / workers), so four would leave one idle):
    # each restores its share of both tables, the profiles and item_state.
    first = worker_factory(partitions=6, wait=False)
    s = first.settings
    workers = [first] + [
        worker_factory(settings=dataclasses.replace(s, web_port=free_port()), wait=False)
        for _ in range(2)
    ]
    for w in workers:  # started together: one rebalance; generous, the CI machine is shared
        w.wait_ready(timeout=180)
    # No returns: an item's popularity is then the plain sum of its events' strengths.
    events = make_events(300, 8, seed=11, returns=False)  # 2,400 events, 300 users
    produce_events(s, records_for(s, events))
    assert wait_for(lambda: sum(
        w.metric("feedback_events_total", outcome="processed") for w in workers
    ) >= len(events), timeout=180), "the workers did not process every event"
    # Each stop ends by itself: gracefully (0), or after the worker's own 8 s
    # deadline on a loaded machine (1), which the restore must survive too.
    codes = [w.stop(signal.SIGTERM, timeout=120) for w in workers]
    assert set(codes) <= {0, 1}, codes

    # The changelog ends, in every partition, with one batch of 5 new profiles:
    # ListOffsets then stops 4 records short of each partition's end.
    planted = plant_last_batch(s, 5)
    tps = [TopicPartition(changelog_topic(s), p) for p in range(s.partitions)]
    listed = asyncio.run(list_offsets(s, tps))
    fetched = asyncio.run(fetch_highwaters(s, {TP(t.topic, t.partition): listed[t] for t in tps}))
    short = {t.partition: fetched[TP(t.topic, t.partition)] - listed[t] for t in tps}
    assert short == dict.fromkeys(range(s.partitions), 4), f"ListOffsets short by {short}"

    # A checkpoint's child process (forked mid-write) can hold a listening socket
    # a moment after its worker is gone.
    assert wait_for(lambda: all(port_free(w.settings.web_port) for w in workers), 60)
    restarted = [worker_factory(settings=w.settings, wait=False) for w in workers]
    expected: dict[str, int] = {}
    for e in events:
        expected[e["user_id"]] = expected.get(e["user_id"], 0) + 1
    for user, profile in planted.items():
        expected[user] = sum(profile["events"].values())

    def stale() -> list[str]:
        bad = []
        for user, n in expected.items():
            # Any worker answers: a user owned by another is forwarded there.
            status, body = restarted[0].get(f"/users/{user}")
            if status != 200 or sum(orjson.loads(body)["events"].values()) != n:
                bad.append(user)
        return bad

    # Recovery is over once Faust says so; then the answer cannot change any more.
    for w in restarted:
        assert wait_for(lambda w=w: "Worker ready" in w.log(), timeout=180), w.log()[-3000:]
    wait_for(lambda: not stale(), timeout=30, interval=1.0)
    bad = stale()

    # The item owners restored item_state too: more events on top of it leave
    # every item's popularity the sum over both streams (an owner restarted
    # from nothing would hold the second stream's only).
    more = make_events(300, 2, seed=12, returns=False)  # 600 events
    produce_events(s, records_for(s, more))
    states = read_item_states(s, events + more, timeout=180)
    items = account_items(events + more, states)
    print(f"\n[restore guards={s.recovery_guards}, 3 workers] SIGTERM exit codes={codes} "
          f"changelog records ListOffsets missed={short} users stale after restart="
          f"{len(bad)}/{len(expected)}"
          f"\n{items.line('restore, 3 workers')}")
    assert bad == [], f"profiles not restored to the changelog's end: {bad[:10]}"
    assert items.short == {}, items.line("restore, 3 workers")
