"""``feedback-stream bench``: what the worker sustains, measured against reference loops.

One run, one broker, the same pre-encoded events for every contestant:

1. **Ceilings.** Three reference consumers, each in its own process, read the
   same N events (pre-loaded into their own topics) and report progress:
   ``raw`` (a plain aiokafka loop: consume, ``orjson.loads``, one produce per
   event), ``faust-decode`` (a trivial Faust agent that only decodes) and
   ``faust-send`` (a trivial Faust agent that sends one output per event with
   ``topic.send``).
2. **Throughput.** The real worker (``python -m tools.cli worker``, all models
   on) reads the same N events pre-loaded into its own topics; sustained input
   events/s and recommendations/s are the rates between the moments 10 % and
   90 % of the events were processed (read from ``/metrics``), so start-up and
   the last partial batch do not count.
3. **Latency.** The warm worker then gets the *next* events of the replay at a
   fixed offered load (half the measured maximum); the bench stamps each record
   with its produce time and reads ``feedback.recommendations``: latency = the
   bench's receive time of a recommendation - the produce time of the event that
   triggered it (``trigger_event_id``).
4. **Memory.** Peak RSS of the worker (``VmHWM``, psutil samples as a fallback)
   over phases 2-3, then its RSS after events of ``--users`` (default 100,000)
   new distinct users: real Online Retail / demo events whose user ids are
   replaced by synthetic ones, one event per user.

5. **Memory bound.** ``--eviction-users`` new users whose event times span
   several retention horizons: once the horizon is full, RSS should stop growing.

Every rate is also given as a ratio to the raw loop measured in the same run:
absolute numbers drift on shared machines, ratios much less. ``--workers 2``
runs phases 2-5 with two workers in one consumer group (combined and
per-worker figures). Everything is seeded and every wait has a deadline.

Usage: ``python -m tools.bench [--events 100000] [--workers 1] [--json]``.

The package: :mod:`~tools.bench.stats` (rates and percentiles from sampled
counters), :mod:`~tools.bench.workload` (the events and their pre-loading),
:mod:`~tools.bench.processes` (the processes started and sampled),
:mod:`~tools.bench.references` (the reference loops), :mod:`~tools.bench.phases`
(one function per phase), :mod:`~tools.bench.report` and :mod:`~tools.bench.cli`.
"""

from tools.bench.cli import main

__all__ = ["main"]
