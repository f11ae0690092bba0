"""``python -m tools.handle_profile``: the worker's batch logic on demo events, to profile.

No broker and no Faust: the worker's :class:`~stream.processor.Processor` (all
models, the debounce off, an in-memory profile store) handles ``--events``
demo events in batches of ``--batch``; the first third warms the models and
the rest is timed. It prints the timed part's events per CPU-second, the
rankings it published (each a ``Processor._recommend``: rank, explain, publish)
with their CPU time each and their share, and with ``--cprofile N`` the top N
functions by cumulative time. Under py-spy::

    py-spy record -r 100 -f raw -o spy.txt -- python -m tools.handle_profile
    python -m tools.handle_profile --summarise spy.txt

``--summarise`` prints each function's inclusive share of a py-spy raw file's
samples (a function counted once per sample however deep it recurses).

``--digest N`` prints, per output topic, how many records the batch logic
emitted for the first N demo events and a hash of them, and a hash of the
segments it stored: the same figures from two checkouts show that a change left
the outputs alone. The hashes leave out what is not reproducible: the
``generated_at`` wall-clock time and the reasons (the "bought together" ones
carry DP noise).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"(.*?) \((.*?):\d+\)")


def summarise(path: Path, top: int) -> list[tuple[float, str]]:
    """Inclusive share of the samples per ``function (file)`` in a py-spy raw file."""
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        names = set()
        for frame in stack.split(";"):
            m = _FRAME.match(frame)
            names.add(f"{m.group(1)} ({m.group(2).split('/')[-1]})" if m else frame)
        for name in names:
            inclusive[name] += n
    return [(c / max(total, 1), name) for name, c in inclusive.most_common(top)]


class RankingClock:
    """Counts the calls of a processor's ``_recommend`` and their CPU time (this thread's)."""

    def __init__(self, proc: Any) -> None:
        self.calls = 0
        self.seconds = 0.0
        inner = proc._recommend

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.thread_time()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds += time.thread_time() - start
                self.calls += 1

        proc._recommend = timed

    def reset(self) -> None:
        self.calls = 0
        self.seconds = 0.0


def reproducible(value: Any) -> Any:
    """``value`` (decoded JSON) without its ``generated_at`` times and reasons.

    >>> reproducible({"generated_at": "t", "items": [{"item_id": "a", "reason": "r"}]})
    {'items': [{'item_id': 'a'}]}
    """
    if isinstance(value, dict):
        return {
            k: reproducible(v) for k, v in value.items() if k not in ("generated_at", "reason")
        }
    if isinstance(value, list):
        return [reproducible(v) for v in value]
    return value


def digest(args: argparse.Namespace) -> dict[str, tuple[int, str]]:
    """``{topic: (records, hash)}`` of what the batch logic emits for the first
    ``args.digest`` demo events, plus ``"segments"``: the stored profiles' segments."""
    import orjson
    from prometheus_client import CollectorRegistry

    from models.engine import FeedbackEngine
    from stream.metrics import Metrics
    from stream.processor import DictStore, Processor, StoredProfile
    from stream.records import InputMessage
    from stream.settings import Settings
    from tools.bench.workload import input_messages, load_events

    hashes: dict[str, Any] = collections.defaultdict(hashlib.sha256)
    counts: collections.Counter[str] = collections.Counter()

    class Store(DictStore):
        def put(self, user_id: str, profile: StoredProfile, source: InputMessage) -> None:
            hashes["segments"].update(f"{user_id}:{profile.get('segment')}\n".encode())
            counts["segments"] += 1
            super().put(user_id, profile, source)

    settings = Settings.from_env({})
    msgs = input_messages(load_events("demo", args.data_dir, args.digest), settings, 4)
    proc = Processor(settings, FeedbackEngine(), Store(), Metrics(CollectorRegistry()))
    for i in range(0, len(msgs), args.batch):
        for out in proc.handle(msgs[i : i + args.batch]):
            value = out.value or b"-"
            if out.value is not None:
                value = orjson.dumps(
                    reproducible(orjson.loads(out.value)), option=orjson.OPT_SORT_KEYS
                )
            hashes[out.topic].update((out.key or b"") + b"\0" + value + b"\n")
            counts[out.topic] += 1
    return {topic: (counts[topic], h.hexdigest()[:16]) for topic, h in sorted(hashes.items())}


def run(args: argparse.Namespace) -> float:
    import cProfile
    import pstats

    from prometheus_client import CollectorRegistry

    from models.engine import FeedbackEngine
    from stream.metrics import Metrics
    from stream.processor import DictStore, Processor
    from stream.settings import Settings
    from tools.bench.workload import input_messages, load_events

    settings = Settings.from_env({})
    events = load_events("demo", args.data_dir, args.events)
    msgs = input_messages(events, settings, args.partitions)
    proc = Processor(settings, FeedbackEngine(), DictStore(), Metrics(CollectorRegistry()))
    rankings = RankingClock(proc)
    warm = len(msgs) // 3
    for i in range(0, warm, args.batch):
        proc.handle(msgs[i : min(i + args.batch, warm)])
    rankings.reset()
    profiler = cProfile.Profile() if args.cprofile else None
    start = time.process_time()
    if profiler is not None:
        profiler.enable()
    for i in range(warm, len(msgs), args.batch):
        proc.handle(msgs[i : i + args.batch])
    if profiler is not None:
        profiler.disable()
    seconds = max(time.process_time() - start, 1e-9)
    timed = len(msgs) - warm
    rate = timed / seconds
    print(f"{timed:,} events timed: {rate:,.0f} events per CPU-second")
    each = 1e6 * rankings.seconds / max(rankings.calls, 1)
    print(
        f"{rankings.calls:,} rankings ({rankings.calls / timed:.3f} per event): "
        f"{each:,.0f} us of CPU each, {100 * rankings.seconds / seconds:.1f} % of the timed CPU"
    )
    if profiler is not None:
        pstats.Stats(profiler, stream=sys.stdout).sort_stats("cumulative").print_stats(
            args.cprofile
        )
    return rate


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=30_000)
    p.add_argument("--batch", type=int, default=200)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    p.add_argument("--cprofile", type=int, default=0, metavar="N", help="print the top N")
    p.add_argument("--summarise", type=Path, metavar="RAW", help="a py-spy raw file")
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--digest", type=int, default=0, metavar="N",
                   help="hash the outputs of the first N events instead of timing")
    args = p.parse_args(argv)
    if args.summarise is not None:
        if not args.summarise.is_file():
            print(f"handle_profile: no such file: {args.summarise}", file=sys.stderr)
            return 2
        for share, name in summarise(args.summarise, args.top):
            print(f"{100 * share:5.1f} %  {name}")
        return 0
    if args.digest:
        for topic, (count, value) in digest(args).items():
            print(f"{topic}: {count:,} records, {value}")
        return 0
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
