"""``python -m tools.sensor_cost``: CPU per event of Faust's sensor calls, by Monitor.

For every input record a Faust worker calls its sensors (``app.sensors``, which
holds the app's Monitor) four times: ``on_message_in`` when the stream tracks
it, ``on_stream_event_in`` / ``on_stream_event_out`` around the agent's step,
and ``on_message_out`` when it is acked; the worker's profile table adds one
``on_table_get`` and one ``on_table_set`` per user in a batch. This runs those
six calls ``--events`` times through a real app's sensor set, for each
``FEEDBACK_FAUST_MONITOR`` choice and with no sensor at all, the choices
alternated ``--rounds`` times; it prints the best microseconds of CPU per event
of each. No broker: the figure is what the Monitor's choice changes on the
bench's agents, without the machine's other load in it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import orjson


class _Task:
    pass


class _Stream:
    """What the Monitor reads of a stream (weakly referenced: a class of its own)."""

    def __init__(self) -> None:
        self.task_owner = _Task()


def _delegate(monitor: str | None) -> Any:
    import faust

    from stream.faust.monitor import MONITORS

    app = faust.App("sensor-cost", Monitor=MONITORS[monitor or "faust"])
    if monitor is not None:
        app.sensors.add(app.monitor)  # what App.on_init_dependencies does at start
    return app.sensors


def per_event_us(monitor: str | None, events: int) -> float:
    """Microseconds of CPU per event of the six sensor calls (None: no sensor)."""
    from faust.types import TP

    sensors = _delegate(monitor)
    tps = [TP("feedback.clicks", p) for p in range(4)]
    stream = _Stream()
    table = SimpleNamespace(name="profiles")
    messages = [SimpleNamespace(time_in=None, time_out=None, time_total=None)
                for _ in range(64)]
    start = time.process_time()
    for i in range(events):
        tp, message = tps[i & 3], messages[i & 63]
        sensors.on_message_in(tp, i, message)
        state = sensors.on_stream_event_in(tp, i, stream, message)
        sensors.on_table_get(table, i)
        sensors.on_table_set(table, i, None)
        sensors.on_stream_event_out(tp, i, stream, message, state)
        sensors.on_message_out(tp, i, message)
    return 1e6 * (time.process_time() - start) / events


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.sensor_cost", description=__doc__)
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    if args.events < 1 or args.rounds < 1:
        print("need --events >= 1 and --rounds >= 1", file=sys.stderr)
        return 2
    choices: list[str | None] = ["faust", "lean", None]
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        for choice in choices:
            us = per_event_us(choice, args.events)
            key = choice or "none"
            best[key] = min(best.get(key, us), us)
    print(orjson.dumps({
        "events": args.events, "rounds": args.rounds,
        "sensor_us_per_event": {k: round(v, 3) for k, v in best.items()},
    }).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
