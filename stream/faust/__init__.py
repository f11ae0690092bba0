"""Everything that knows Faust's and aiokafka's private internals.

faust-streaming is pinned (0.15.3, with aiokafka 0.14); on an upgrade, the
modules here are the ones to re-check, each override against the behaviour its
docstring names:

* :mod:`stream.faust.consumer`: the consumer (records lost on a rebalance, the
  commit guard's hooks, the fetch wait);
* :mod:`stream.faust.recovery`: table recovery to the changelog's real end,
  a producer flush that empties the send buffer;
* :mod:`stream.faust.table_store`: the profile table's writes and tombstones;
* :mod:`stream.faust.offset_trace`: the per-partition offset trace;
* :mod:`stream.faust.monitor`: Faust's main sensor without its per-event
  bookkeeping.

The upstream write-ups are docs/faust-rebalance-record-loss.md and
docs/faust-sigterm-offset-race.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import faust

from stream.commit_guard import CommitGuard
from stream.faust.consumer import Consumer, ConsumerFixes
from stream.faust.monitor import MONITORS
from stream.faust.offset_trace import OffsetTrace
from stream.faust.recovery import ChangelogRecovery, GuardedTableManager, Producer
from stream.faust.table_store import (
    PROFILE_CODEC,
    ProfileValue,
    TableStore,
    acknowledged,
    send_through,
    write_as,
    write_through,
)
from stream.settings import Settings

__all__ = [
    "PROFILE_CODEC", "OffsetTrace", "ProfileValue", "TableStore", "acknowledged", "create_app",
    "in_order", "send_through", "write_as", "write_through",
]


def in_order(app: faust.App, events: Sequence[Any]) -> list[Any]:
    """The agent's ``events`` without those past a record of their partition
    that Faust lost, which is read again first
    (:meth:`stream.faust.consumer.ConsumerFixes.in_order`)."""
    consumer = app.consumer
    if isinstance(consumer, ConsumerFixes):
        return consumer.in_order(events)
    return list(events)


def create_app(
    settings: Settings, commit_guard: CommitGuard, trace: OffsetTrace | None, **options: Any
) -> faust.App:
    """A ``faust.App`` (``options`` as for it) built with the project's classes.

    The consumer (:class:`~stream.faust.consumer.Consumer`) and the Monitor
    of ``settings.faust_monitor`` (:mod:`stream.faust.monitor`) always; the table
    recovery and the producer of :mod:`stream.faust.recovery` when
    ``settings.recovery_guards`` is on. The consumer consults ``commit_guard``
    (itself off when the guards are) and logs to ``trace`` if there is one.
    """
    if settings.recovery_guards:
        recovery = type("ChangelogRecovery", (ChangelogRecovery,), {"settings": settings})
        options["TableManager"] = type(
            "GuardedTableManager", (GuardedTableManager,), {"recovery_class": recovery}
        )
    options.setdefault("Monitor", MONITORS[settings.faust_monitor])
    app = faust.App(settings.app_id, **options)
    # Faust builds the consumer itself: the app's own subclass carries its guard and trace.
    app.transport.Consumer = type(  # type: ignore[misc]
        "Consumer", (Consumer,), {
            "commit_guard": commit_guard, "offset_trace": trace,
            "fetch_max_wait_ms": max(1, round(settings.fetch_max_wait_seconds * 1000)),
        }
    )
    if settings.recovery_guards:
        app.transport.Producer = Producer  # type: ignore[misc]
    return app
