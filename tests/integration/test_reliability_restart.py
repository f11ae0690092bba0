"""A worker stopped twice in the middle of one 20,000-event stream, first with
SIGTERM (graceful), then its successor with SIGKILL (crash), each restarted:
nothing lost, nothing learned twice, per-user state and models come back, and
recommendations resume within 30 s.

One stream for both stops keeps the suite short on a 2-core machine; each stop
has its own figures. The test prints them (collected in docs/reliability.md):
events sent, learned, lost, learned twice, duplicated outputs, the model
learning steps lost at each stop, and the time from each stop to the first
recommendation of the restarted worker.

The 30 s of the README is the figure printed here; the assert allows 120 s,
which a loaded shared machine keeps (8-20 s measured on a quiet one), and still
catches a worker that never resumes. The guard against Tansu's short
ListOffsets (docs/faust-sigterm-offset-race.md) is shown necessary by
tests/integration/test_reliability_recovery.py, which builds that case on
purpose; here it depends on how the last changelog batch happens to fall.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from typing import Any

import orjson
import pytest

from tests.integration.conftest import Worker, consume
from tests.integration.reliability_helpers import (
    PacedProducer,
    account,
    complete,
    locate,
    make_events,
    read_profiles,
    records_for,
    wait_metric,
)

pytestmark = pytest.mark.integration

N_USERS, PER_USER = 400, 50  # 20,000 events; 50 < the de-dup window of 128
RATE = 2000.0  # events/s offered; the worker is slower, so both stops land mid-stream
SAMPLE = [f"user-{u:04d}" for u in range(0, N_USERS, 4)]  # 100 users


def learning_gap(worker: Worker) -> tuple[int, int, int]:
    """(events in the sampled profiles, of which the models have not learned,
    users unknown to the models). Profile and model counts come from one
    ``/users`` answer, so they are a consistent snapshot; a gap never closes,
    since a de-duplicated event is not learned again."""
    learned = gap = unknown = 0
    for user in SAMPLE:
        status, body = worker.get(f"/users/{user}")
        if status != 200:
            continue
        p = orjson.loads(body)
        n = sum(p["events"].values())
        f = p["features"]
        steps = 0 if f is None else int(f["clicks"] + f["purchase_lines"] + f["reviews"])
        assert steps <= n, f"{user}: the models learned {steps} events, the profile has {n}"
        learned += n
        gap += n - steps
        unknown += f is None
    return learned, gap, unknown


def stop_mid_stream(worker_factory: Any, current: Worker, sig: signal.Signals, at_least: float
                    ) -> tuple[Worker, float]:
    """Stop ``current`` once it has processed ``at_least`` events, start its
    successor; returns it and the seconds from the stop to its first recommendation."""
    # Generous: the 2-core CI machine is shared with other test runs.
    seen = wait_metric(current, "feedback_events_total", at_least, 240, outcome="processed")
    assert seen >= at_least, f"worker too slow: {seen} events in 240 s"
    stopped_at = time.monotonic()
    current.stop(sig)
    successor = worker_factory(settings=current.settings)
    assert wait_metric(successor, "feedback_recommendations_emitted_total", 1, 120) >= 1, (
        "the restarted worker published no recommendation"
    )
    return successor, time.monotonic() - stopped_at


def test_sigterm_then_sigkill_mid_stream_loses_nothing(worker_factory) -> None:
    first = worker_factory()
    s = first.settings
    events = make_events(N_USERS, PER_USER)
    producer = PacedProducer(s, records_for(s, events), rate=RATE).start()

    second, recovery_term = stop_mid_stream(worker_factory, first, signal.SIGTERM, 5000)
    _, gap_term, _ = learning_gap(second)
    third, recovery_kill = stop_mid_stream(worker_factory, second, signal.SIGKILL, 5000)
    sent = producer.join()

    profiles = read_profiles(s, complete(events), timeout=180)
    acc = account(events, profiles)
    assert wait_metric(third, "feedback_events_total", 1, 10) >= 1
    sampled, gap_total, unknown = learning_gap(third)
    recs = consume(s, s.topic_recommendations, until=lambda r: False, timeout=3)
    triggers = Counter(orjson.loads(m.value)["trigger_event_id"] for m in recs)
    print(
        f"\n{acc.line('restart')} duplicated_outputs={sum(n - 1 for n in triggers.values())}"
        f"\n[sigterm] recovery_seconds={recovery_term:.1f} learning_steps_lost={gap_term}"
        f"/{sampled} (sampled users)"
        f"\n[sigkill] recovery_seconds={recovery_kill:.1f} learning_steps_lost="
        f"{gap_total - gap_term}/{sampled} (sampled users, checkpoint every "
        f"{s.checkpoint_interval_seconds:g} s)"
    )
    if acc.lost_ids:
        print(f"[restart] lost events at {locate(s, acc.lost_ids[:50])}")
    assert sent == len(events)
    assert (acc.lost, acc.learned_twice, acc.foreign) == (0, 0, 0), acc.line("restart")
    assert unknown == 0, "models restarted from zero for some users"
    # A graceful stop writes a final checkpoint: no learning is lost.
    assert gap_term == 0
    for label, seconds in (("SIGTERM", recovery_term), ("SIGKILL", recovery_kill)):
        assert seconds < 120, f"recommendations resumed {seconds:.1f} s after the {label}"
