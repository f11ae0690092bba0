"""Faust's main sensor, with or without its per-event bookkeeping.

Faust installs a :class:`faust.sensors.Monitor` in every app and calls it
(through ``app.sensors``) for every message read and acked, every stream event
in and out and every table read and write: counters per topic, stream and
task, a per-event state dict and timing. The worker reports its own metrics
(``stream/metrics.py``) and never reads the Monitor's, which only Faust's
``/stats/`` page shows. The one figure Faust itself uses is when each
partition's stream last took an event (``stream_inbound_time``, read by the
consumer's "stream idle" warning), which :class:`LeanMonitor` keeps.
"""

from __future__ import annotations

from time import monotonic
from typing import Any

from faust.sensors import Monitor


class LeanMonitor(Monitor):
    """A Monitor that records only each partition's last stream event time."""

    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        pass

    def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> None:
        self.stream_inbound_time[tp] = monotonic()

    def on_stream_event_out(
        self, tp: Any, offset: int, stream: Any, event: Any, state: Any = None
    ) -> None:
        pass

    def on_message_out(self, tp: Any, offset: int, message: Any) -> None:
        pass

    def on_table_get(self, table: Any, key: Any) -> None:
        pass

    def on_table_set(self, table: Any, key: Any, value: Any) -> None:
        pass

    def on_table_del(self, table: Any, key: Any) -> None:
        pass


#: ``FEEDBACK_FAUST_MONITOR`` values (stream.settings.FAUST_MONITORS).
MONITORS: dict[str, type[Monitor]] = {"faust": Monitor, "lean": LeanMonitor}
