"""Rates and percentiles from sampled counters: pure functions, no clock, no I/O."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# Sustained rates are measured between these fractions of the events processed.
WINDOW = (0.1, 0.9)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation (numpy's default).

    >>> percentile([1.0, 2.0, 3.0, 4.0], 50)
    2.5
    """
    if not values:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in 0..100, got {q}")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def time_at(samples: Sequence[tuple[float, float]], count: float) -> float | None:
    """When a monotone counter sampled as ``(time, value)`` first reached ``count``
    (linear interpolation between samples); None if it never did."""
    prev: tuple[float, float] | None = None
    for t, v in samples:
        if v >= count:
            if prev is None or v == prev[1]:
                return t
            t0, v0 = prev
            return t0 + (t - t0) * (count - v0) / (v - v0)
        prev = (t, v)
    return None


def value_at(samples: Sequence[tuple[float, float]], when: float) -> float:
    """A counter's value at time ``when``, interpolated between samples."""
    if not samples:
        return 0.0
    prev = samples[0]
    if when <= prev[0]:
        return prev[1]
    for t, v in samples[1:]:
        if t >= when:
            t0, v0 = prev
            return v0 + (v - v0) * (when - t0) / (t - t0) if t > t0 else v
        prev = (t, v)
    return prev[1]


@dataclass(frozen=True)
class Window:
    """The measuring window of a run: from ``start`` to ``end`` (monotonic seconds)."""

    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start

    def rate(self, samples: Sequence[tuple[float, float]]) -> float:
        """Average rate of a counter over the window."""
        if self.seconds <= 0:
            return math.nan
        return (value_at(samples, self.end) - value_at(samples, self.start)) / self.seconds


def window(
    samples: Sequence[tuple[float, float]], total: int, lo: float = WINDOW[0], hi: float = WINDOW[1]
) -> Window | None:
    """The window between the moments ``lo`` and ``hi`` of ``total`` were counted."""
    start, end = time_at(samples, lo * total), time_at(samples, hi * total)
    if start is None or end is None or end <= start:
        return None
    return Window(start, end)


def completed(
    events: Sequence[tuple[float, float]],
    done: Sequence[tuple[float, float]],
    sent: float,
    total: int,
) -> list[tuple[float, float]]:
    """Events processed *whole*, sampled in the same rounds as ``events``: read by a
    worker, and their item-side increments applied by the item owners.

    ``done`` counts the item-update entries the owners applied (or skipped as
    duplicates) and ``sent`` is how many the ``total`` events produced; an
    owner that lags behind the inputs holds the count back, since its work is
    part of each event's cost. Without item sharing (``sent`` 0) it is ``events``.

    >>> completed([(0, 50), (1, 100)], [(0, 100), (1, 400)], 400, 100)
    [(0, 25.0), (1, 100.0)]
    """
    if sent <= 0:
        return [(t, float(v)) for t, v in events]
    return [
        (t, min(float(v), total * d / sent))
        for (t, v), (_, d) in zip(events, done, strict=False)
    ]


def whole_window(
    events: Sequence[tuple[float, float]],
    done: Sequence[tuple[float, float]],
    total: int,
    lo: float = WINDOW[0],
    hi: float = WINDOW[1],
) -> Window | None:
    """The window of a run whose events are processed whole only once a trailing
    stage (the item owners) has caught up: from the moment ``lo`` of ``total``
    were read (``events``) to the moment ``hi`` of them were done (``done``,
    :func:`completed`). Its rate, ``(hi - lo) * total / seconds``, is the
    input's when the trailing stage keeps pace, and counts the stage's delay
    when it does not (a stage that only starts once the inputs are read would
    otherwise look as fast as it runs alone).

    >>> w = whole_window([(0, 0), (10, 100)], [(0, 0), (10, 50), (20, 100)], 100)
    >>> w.start, w.end
    (1.0, 18.0)
    """
    start, end = time_at(events, lo * total), time_at(done, hi * total)
    if start is None or end is None or end <= start:
        return None
    return Window(start, end)


def ratio(value: float | None, reference: float | None) -> float | None:
    """``value / reference``, None when either is missing or the reference is not positive."""
    if value is None or reference is None or not reference > 0 or math.isnan(value):
        return None
    return value / reference



def per_cpu_second(rate: float | None, cores: float | None) -> float | None:
    """Events per CPU-second from events/s and the cores the process kept busy."""
    if rate is None or cores is None or math.isnan(cores) or cores <= 0:
        return None
    return rate / cores



def combined(series: Sequence[Sequence[tuple[float, float]]]) -> list[tuple[float, float]]:
    """Several workers' counters, sampled in the same rounds, added up per round."""
    return [
        (max(t for t, _ in row), sum(v for _, v in row))
        for row in zip(*series, strict=False)
    ]



def rounded(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(x, digits)


def checkpoint_span(totals: dict[str, float], now: float) -> tuple[float, float] | None:
    """The worker's last model checkpoint as ``(began, written)`` in Unix time, from
    a scrape of its gauges; one still in progress ends ``now``; None if it has
    taken none.

    >>> checkpoint_span({"feedback_model_checkpoint_last_start_timestamp_seconds": 10.0,
    ...                  "feedback_model_checkpoint_last_end_timestamp_seconds": 4.0}, 12.0)
    (10.0, 12.0)
    """
    began = totals.get("feedback_model_checkpoint_last_start_timestamp_seconds", 0.0)
    written = totals.get("feedback_model_checkpoint_last_end_timestamp_seconds", 0.0)
    if began <= 0:
        return None
    return (began, written if written >= began else max(began, now))


def split_by_spans(
    timed: Sequence[tuple[float, float]], spans: Sequence[tuple[float, float]]
) -> tuple[list[float], list[float]]:
    """The latencies of ``timed`` ``(sent at, latency)`` whose time in flight (from
    the send to the answer) overlaps one of ``spans``, and the others.

    >>> split_by_spans([(0.0, 0.1), (1.0, 0.5), (3.0, 0.1)], [(1.2, 2.0)])
    ([0.5], [0.1, 0.1])
    """
    inside: list[float] = []
    outside: list[float] = []
    for sent, latency in timed:
        hit = any(sent <= end and sent + latency >= start for start, end in spans)
        (inside if hit else outside).append(latency)
    return inside, outside


def unchanged_for(samples: Sequence[tuple[float, float]]) -> float:
    """How long a counter sampled as ``(time, value)`` has kept its last value, up
    to its last sample.

    >>> unchanged_for([(0.0, 1.0), (1.0, 2.0), (1.5, 2.0), (3.0, 2.0)])
    2.0
    """
    if not samples:
        return 0.0
    last_t, last_v = samples[-1]
    since = last_t
    for t, v in reversed(samples):
        if v != last_v:
            break
        since = t
    return last_t - since
