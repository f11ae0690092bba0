"""Workers stopped twice in the middle of one event stream, first with
SIGTERM (graceful), then with SIGKILL (crash), each restarted with its own
state directory and port: nothing lost, nothing learned twice, per-user state
and models come back, and recommendations resume within 30 s.

Run alone (one worker: the SIGTERMed worker's successor is then SIGKILLed) and
with three workers sharing six partitions (one of the three SIGTERMed, another
SIGKILLed, each while the other two keep working). Item sharing is on: the
owners' ``item_state`` must end with every item's all-time popularity exactly
the sum of its events' strengths, although the killed worker's item updates
are re-sent by its partitions' next owner and an owner's uncommitted
item-update messages are read again (the per-source offset watermark skips
them).

One stream for both stops keeps the suite short on a 2-core machine; each stop
has its own figures. The test prints them (collected in docs/reliability.md):
events sent, learned, lost, learned twice, duplicated outputs, the model
learning steps lost at each stop, the re-sent item entries skipped, and the
time from each stop to the first recommendation of the restarted worker.

The 30 s of the README is the figure printed here; the assert allows 120 s
(180 s with three workers, whose restart is a rebalance of all three), which a
loaded shared machine keeps (8-20 s measured on a quiet one), and still catches
a worker that never resumes. The guard against Tansu's short ListOffsets
(docs/faust-sigterm-offset-race.md) is shown necessary by
tests/integration/test_reliability_recovery.py, which builds that case on
purpose; here it depends on how the last changelog batch happens to fall.
"""

from __future__ import annotations

import dataclasses
import itertools
import signal
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from tests.integration.conftest import Worker, consume, wait_for
from tests.integration.reliability_helpers import (
    PacedProducer,
    account,
    assert_items_exact,
    assert_nothing_lost,
    complete,
    make_events,
    port_free,
    read_profiles,
    records_for,
    wait_metric,
)
from tools.broker import free_port

pytestmark = pytest.mark.integration

N_USERS, PER_USER = 400, 50  # 20,000 events alone; 50 < the de-dup window of 128
RATE = 2000.0  # events/s offered; the workers are slower, so both stops land mid-stream
SAMPLE = [f"user-{u:04d}" for u in range(0, N_USERS, 4)]  # 100 users


def learning_gap(worker: Worker) -> tuple[int, int, int]:
    """(events in the sampled profiles, of which the models have not learned,
    users unknown to the models). Profile and model counts come from one
    ``/users`` answer (forwarded to the user's owner), so they are a consistent
    snapshot; a gap never closes, since a de-duplicated event is not learned again."""
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


def processed(worker: Worker) -> float:
    try:
        return worker.metric("feedback_events_total", outcome="processed")
    except OSError:
        return 0.0


def stop_mid_stream(worker_factory: Any, target: Worker, others: list[Worker],
                    sig: signal.Signals, at_least: float, resume: float,
                    then: Callable[[], Any] = lambda: None,
                    ) -> tuple[Worker, float, float, int]:
    """Stop ``target`` once it has processed ``at_least`` events, start its
    successor (same settings: same port, so the same checkpoint); returns it,
    the seconds from the stop to its first recommendation, the events the
    workers had processed at the stop, and the stopped worker's exit code."""
    # Generous: the 2-core CI machine is shared with other test runs.
    seen = wait_metric(target, "feedback_events_total", at_least, 240, outcome="processed")
    assert seen >= at_least, f"the worker to stop processed {seen:.0f} of {at_least:.0f} in 240 s"
    done = sum(processed(w) for w in [target, *others])
    stopped_at = time.monotonic()
    # A SIGTERM ends by itself: gracefully (0), or after the worker's own 8 s
    # deadline (1; a loaded machine's final checkpoint can take longer), whose
    # uncommitted events are read again. Alone, the learning lost says which.
    code = target.stop(sig, timeout=120)
    assert code in ((0, 1) if sig == signal.SIGTERM else (-signal.SIGKILL,)), code
    # A checkpoint's child process (forked mid-write) can hold the listening
    # socket a moment after the worker is gone.
    assert wait_for(lambda: port_free(target.settings.web_port), 60), "web port still held"
    successor = worker_factory(settings=target.settings, wait=False)
    then()
    assert wait_metric(successor, "feedback_recommendations_emitted_total", 1, resume) >= 1, (
        "the restarted worker published no recommendation"
    )
    return successor, time.monotonic() - stopped_at, done, code


@pytest.mark.parametrize(("n_workers", "partitions", "per_user"), [
    (1, 4, PER_USER),
    # Three workers share two cores with the broker: 12,000 events, and the time
    # a loaded machine needs for three starts, two restarts and the catch-up.
    pytest.param(3, 6, 30, marks=pytest.mark.timeout(1500)),
])
def test_sigterm_then_sigkill_mid_stream_loses_nothing(
    worker_factory, n_workers: int, partitions: int, per_user: int
) -> None:
    # Three workers need six partitions: Faust's co-partitioned assignor fills
    # workers up to ceil(partitions / workers) each, so four would leave one idle.
    first = worker_factory(partitions=partitions, wait=False)
    s = first.settings
    workers = [first] + [
        worker_factory(settings=dataclasses.replace(s, web_port=free_port()), wait=False)
        for _ in range(n_workers - 1)
    ]
    for w in workers:  # started together: one rebalance; generous, the CI machine is shared
        w.wait_ready(timeout=180)
    resume = 120.0 if n_workers == 1 else 180.0
    # No returns: an item's popularity is then the plain sum of its events' strengths.
    events = make_events(N_USERS, per_user, returns=False)
    # In four parts: the second sent once the SIGTERMed worker's successor is
    # starting, the fourth once the SIGKILLed one's is, so that each successor
    # has events of its own to recommend on, however fast the others caught up;
    # the third as the wait for the SIGKILL starts, so that the worker to kill
    # has the events it is to process before the kill (it would otherwise wait,
    # idle, for events only sent after it: the others may have taken all the
    # second part while the first successor started).
    cuts = [0, *(int(len(events) * f) for f in (0.4, 0.55, 0.85)), None]
    parts = [records_for(s, events[a:b]) for a, b in itertools.pairwise(cuts)]
    producers = [PacedProducer(s, parts[0], rate=RATE).start()]

    def send(part: int) -> Callable[[], None]:
        return lambda: producers.append(PacedProducer(s, parts[part], rate=RATE).start())

    # SIGTERM one worker once it has learnt its share of the first quarter.
    share = len(events) / 4 / n_workers
    term = workers[0]
    second, recovery_term, done_term, code_term = stop_mid_stream(
        worker_factory, term, workers[1:], signal.SIGTERM, share, resume, send(1))
    workers[0] = second
    # Alone, what the SIGTERM lost of the models' learning (nothing: a final
    # checkpoint); with three, the stop moved users between workers anyway.
    gap_term = learning_gap(second)[1] if n_workers == 1 else 0
    # Then SIGKILL: alone, the successor; with three, another of the original
    # workers, once it has learnt a further share of an eighth.
    k = 0 if n_workers == 1 else 1
    kill = workers[k]
    at_least = processed(kill) + share / 2
    send(2)()
    third, recovery_kill, done_kill, _ = stop_mid_stream(
        worker_factory, kill, [w for w in workers if w is not kill], signal.SIGKILL,
        at_least, resume, send(3))
    workers[k] = third
    sent = sum(p.join() for p in producers)

    profiles = read_profiles(s, complete(events), timeout=300)
    acc = account(events, profiles)
    assert wait_metric(third, "feedback_events_total", 1, 10) >= 1
    sampled, gap_total, unknown = learning_gap(third)
    recs = consume(s, s.topic_recommendations, until=lambda r: False, timeout=3)
    triggers = Counter(orjson.loads(m.value)["trigger_event_id"] for m in recs)
    label = f"restart, {n_workers} worker{'s' if n_workers > 1 else ''}"
    term_gap = (f" learning_steps_lost={gap_term}/{sampled} (sampled users)"
                if n_workers == 1 else "")
    moved = ", and users moved between workers" if n_workers > 1 else ""
    print(
        f"\n{acc.line(label)} duplicated_outputs={sum(n - 1 for n in triggers.values())}"
        f"\n[sigterm] recovery_seconds={recovery_term:.1f} processed_at_stop={done_term:.0f}"
        f" exit_code={code_term}"
        f"{term_gap}"
        f"\n[sigkill] recovery_seconds={recovery_kill:.1f} processed_at_stop={done_kill:.0f}"
        f" learning_steps_lost={gap_total - gap_term}/{sampled} (sampled users, checkpoint"
        f" every {s.checkpoint_interval_seconds:g} s{moved})"
    )
    assert sent == len(events)
    assert_nothing_lost(s, events, acc, label)
    # The item side: nothing lost, nothing applied twice (the last workers' skips).
    assert_items_exact(s, events, workers, label, timeout=180)

    if n_workers == 1:
        # Its own successor restores every user's models from the checkpoint; with
        # three, a user whose partition moved to another worker is learnt from
        # their next event on (docs/reliability.md), so only "never more than
        # the profile" (in learning_gap) holds for every user.
        assert unknown == 0, "models restarted from zero for some users"
        # A graceful stop writes a final checkpoint: no learning is lost.
        assert gap_term == 0
    for stop, seconds in (("SIGTERM", recovery_term), ("SIGKILL", recovery_kill)):
        assert seconds < resume, f"recommendations resumed {seconds:.1f} s after the {stop}"
