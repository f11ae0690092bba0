"""How many rankings the processor makes for the demo replay, offline (no broker).

``python -m tools.ranking_probe [--events N]`` prints the recommendations
published for the first N demo events (default 20,000), handled in batches of
500, 100 and 50, with and without the worker's debounce (docs/performance.md),
and then in the dataset's order versus read topic-partition by topic-partition
in chunks, as a consumer of the three input topics may read them. Rankings are
the costliest step after learning, so this is what the worker's
recommendations/s (and part of its events per CPU-second) follows.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry

from models.engine import FeedbackEngine
from stream.metrics import Metrics
from stream.processor import DictStore, InputMessage, Processor
from stream.settings import Settings
from tools.bench.workload import input_messages, load_events


def count(settings: Settings, msgs: Sequence[InputMessage], batch: int, debounce: bool) -> int:
    proc = Processor(
        settings, FeedbackEngine(), DictStore(), Metrics(CollectorRegistry()), debounce=debounce
    )
    topic = settings.topic_recommendations
    n = 0
    for i in range(0, len(msgs), batch):
        n += sum(o.topic == topic for o in proc.handle(msgs[i : i + batch]))
    return n + sum(o.topic == topic for o in proc.publish_all())


def chunked(msgs: Sequence[InputMessage], k: int) -> list[InputMessage]:
    """Round-robin over the topic-partitions, ``k`` records of each at a time."""
    queues: dict[tuple[str, int], list[InputMessage]] = defaultdict(list)
    for m in msgs:
        queues[(m.topic, m.partition)].append(m)
    order: list[InputMessage] = []
    while any(queues.values()):
        for q in queues.values():
            order.extend(q[:k])
            del q[:k]
    return order


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    args = p.parse_args(argv)
    settings = Settings.from_env({})
    events = load_events("demo", args.data_dir, args.events)
    msgs = input_messages(events, settings, args.partitions)
    print(f"{len(msgs):,} demo events, dataset order")
    for batch in (500, 100, 50):
        for debounce in (False, True):
            n = count(settings, msgs, batch, debounce)
            print(f"  batches of {batch:>3}, debounce {'on ' if debounce else 'off'}: "
                  f"{n:,} recommendations")
    print("read by topic-partition in chunks of k records, batches of 200, debounce off")
    for k in (1, 50, 200, 1000):
        print(f"  k = {k:>4}: {count(settings, chunked(msgs, k), 200, False):,} recommendations")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
