"""W workers sharing item-side knowledge, in one process: ``evaluate --workers W``.

The replay a deployment with W workers would see, with the real mechanism of
:mod:`models.item_updates` and :mod:`models.item_state`:

* each event goes to the user-side engine of ``partition_of(user_id, W)`` (the
  Kafka default partitioner, W = partitions), tagged with that partition's
  offset in its outbox;
* every ``period`` seconds of **event time**, each worker's outbox is drained,
  split by ``partition_of(item_id, W)`` and encoded; the W item owners decode
  and apply it (idempotently); each owner publishes its changed items' models,
  encoded as the compacted topic's records; every engine decodes and applies
  them all; the blend weights are averaged over the workers.

The assumption: in live traffic event time tracks wall time, and the transit
of an update (a batch, the owner's apply, the reader) is short next to the
period, so the staleness of what another worker learnt is at most ``period``
of event time, as in a deployment whose item model period is ``period``.
``share`` restricts what is shared (the ablations); what is not shared stays
learnt per worker from its own users' events only.

``every`` instead delivers every that many events of the whole stream: the
staleness of a deployment whose workers together process ``every`` events per
period (4,500 events per CPU-second per worker, 1 s: ``every = 4500 * W``),
which the sparse event time of the public datasets does not reproduce.
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from models.alerts import Alert
from models.engine import EngineConfig, FeedbackEngine, Outcome, Recommendation
from models.events import Event
from models.item_state import ItemOwner, ItemParams
from models.item_updates import (
    Outbox,
    attach,
    decode_model,
    decode_updates,
    encode_model,
    partition_of,
)

#: What can be shared, and the published model's fields of each.
PARTS: dict[str, tuple[str, ...]] = {
    "cooccurrence": ("nb", "m"),
    "popularity": ("p", "n"),
    "segment": ("s",),
    "taste": ("q", "qb"),
    "rating": ("r", "rb", "rn"),
    "sentiment": ("e",),
    "price": ("$",),
    "blend": (),
}


def parse_share(text: str) -> frozenset[str]:
    """``"all"``, ``"none"`` or a comma-separated subset of :data:`PARTS`."""
    if text == "all":
        return frozenset(PARTS)
    if text == "none":
        return frozenset()
    names = frozenset(n.strip() for n in text.split(",") if n.strip())
    unknown = sorted(names - PARTS.keys())
    if unknown:
        raise ValueError(f"unknown part {unknown[0]!r}; choose from {', '.join(PARTS)}")
    return names


@dataclass
class Traffic:
    """What crossed the (simulated) topics."""

    deliveries: int = 0
    update_messages: int = 0
    update_bytes: int = 0
    entries_applied: int = 0
    entries_skipped: int = 0
    model_records: int = 0
    model_bytes: int = 0
    blend_merges: int = 0
    by_worker: list[int] = field(default_factory=list)
    # The owners' changelog, when measured: records and bytes (keys and values)
    # written as ItemState.changelog writes them, and as whole records would be.
    changelog_records: int = 0
    changelog_bytes: int = 0
    changelog_records_whole: int = 0
    changelog_bytes_whole: int = 0


class _Segments:
    """The workers' segmentations read as one (for the silhouette)."""

    def __init__(self, engines: list[FeedbackEngine]) -> None:
        self.engines = engines

    def snapshot(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        parts = [e.segmentation.snapshot() for e in self.engines]
        parts = [p for p in parts if p[0]]
        if not parts:
            return [], np.zeros((0, 0)), np.zeros(0, dtype=np.int64)
        users = [u for p in parts for u in p[0]]
        return users, np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])


class _Blend:
    """``recommender.weights`` of the cluster: the mean of the workers' weights."""

    def __init__(self, engines: list[FeedbackEngine]) -> None:
        self.engines = engines

    @property
    def weights(self) -> np.ndarray:
        return np.mean([e.recommender.weights for e in self.engines], axis=0)


class Cluster:
    """W user-partitioned engines and W item owners; an engine's interface for the replay.

    ``process``, ``recommend``, ``popular`` and ``churn_risk`` go to the user's
    worker; ``tick`` ticks every worker. ``share=None`` or W = 0 is not allowed:
    the plain single engine is :class:`models.engine.FeedbackEngine` itself.
    """

    def __init__(
        self,
        workers: int,
        config: EngineConfig | None = None,
        period: float = 1.0,
        share: Collection[str] = frozenset(PARTS),
        every: int | None = None,
        changelog: bool = False,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.config = config if config is not None else EngineConfig()
        self.workers = workers
        self.period = period
        self.every = every
        self.changelog = changelog
        self.seen = 0
        self.share = frozenset(share)
        self.dropped = tuple(f for part in PARTS if part not in self.share for f in PARTS[part])
        self.engines = [FeedbackEngine(self.config) for _ in range(workers)]
        self.outboxes = [Outbox(workers) for _ in range(workers)]
        for engine, outbox in zip(self.engines, self.outboxes, strict=True):
            attach(engine, outbox)
        params = ItemParams.of(self.config)
        self.owners = [ItemOwner(params) for _ in range(workers)]
        self.offsets = [0] * workers
        self.next_delivery: float | None = None
        self.traffic = Traffic(by_worker=[0] * workers)
        self.profiles = ChainMap(*(e.profiles for e in self.engines))
        self.segmentation = _Segments(self.engines)
        self.recommender = _Blend(self.engines)

    # -- the engine interface the replay uses --------------------------------------
    def engine_of(self, user_id: str) -> FeedbackEngine:
        """The worker that owns ``user_id``'s partition."""
        return self.engines[partition_of(user_id, self.workers)]

    def process(self, event: Event) -> Outcome:
        """Deliver what is due by ``event``'s time, then the user's worker processes it."""
        t = event.timestamp
        self.seen += 1
        if self.every is not None:
            if self.seen % self.every == 0:
                self.deliver(t)
        elif self.next_delivery is None:
            self.next_delivery = t + self.period
        elif t >= self.next_delivery:
            self.deliver(t)
            self.next_delivery = t + self.period
        w = partition_of(event.user_id, self.workers)
        self.outboxes[w].at(f"events:{w}", self.offsets[w])
        self.offsets[w] += 1
        self.traffic.by_worker[w] += 1
        return self.engines[w].process(event)

    def tick(self, now: float) -> list[Alert]:
        """Every worker's periodic work."""
        return [alert for engine in self.engines for alert in engine.tick(now)]

    def recommend(
        self,
        user_id: str,
        k: int = 10,
        avoid: Collection[str] = (),
        session_id: str | None = None,
        item_id: str | None = None,
    ) -> list[Recommendation]:
        return self.engine_of(user_id).recommend(
            user_id, k, avoid=avoid, session_id=session_id, item_id=item_id
        )

    def popular(
        self,
        user_id: str,
        k: int = 10,
        avoid: Collection[str] = (),
        ranking: Sequence[str] | None = None,
    ) -> list[Recommendation]:
        return self.engine_of(user_id).popular(user_id, k, avoid=avoid, ranking=ranking)

    def churn_risk(self, user_id: str, now: float | None = None) -> float | None:
        return self.engine_of(user_id).churn_risk(user_id, now)

    def segment_profiles(self) -> dict[int, dict[str, float]]:
        """Worker 0's segment centres (the same on every worker when they are shared)."""
        return self.engines[0].segment_profiles()

    # -- the sharing ------------------------------------------------------------------
    def deliver(self, now: float) -> None:
        """One period: outboxes to the owners, the owners' models to every engine."""
        tr = self.traffic
        tr.deliveries += 1
        touched: list[set[str]] = [set() for _ in self.owners]
        for outbox in self.outboxes:
            for partition, payload in outbox.messages(self.workers).items():
                tr.update_messages += 1
                tr.update_bytes += len(payload)
                updates = decode_updates(payload)
                applied, skipped = self.owners[partition].apply(updates)
                tr.entries_applied += applied
                tr.entries_skipped += skipped
                if self.changelog:
                    touched[partition].update(updates)
        if self.changelog:
            # One owner batch per delivery: each item it changed written once.
            for owner, ids in zip(self.owners, touched, strict=True):
                for item_id in ids:
                    state = owner.items[item_id]
                    key = len(item_id.encode())
                    tr.changelog_records_whole += 1
                    tr.changelog_bytes_whole += key + len(orjson.dumps(state.to_dict()))
                    for k, record in state.changelog(item_id):
                        tr.changelog_records += 1
                        tr.changelog_bytes += len(k.encode()) + len(orjson.dumps(record))
        records = [
            (item_id, encode_model(self._shared(model)))
            for owner in self.owners
            for item_id, model in owner.publish(now)
        ]
        tr.model_records += len(records)
        tr.model_bytes += sum(len(value) for _, value in records)
        # Every worker's reader decodes the same bytes alike: decoded once here.
        models = [(item_id, decode_model(value)) for item_id, value in records]
        for engine in self.engines:
            engine.apply_item_models(models)
        if "segment" in self.share and self.workers > 1:
            # One owner of the centres (worker 0, the owner of item partition 0): the
            # segment ids of the shared per-segment popularity agree on every worker.
            centres = self.engines[0].segmentation.centres_state()
            if centres is not None:
                for engine in self.engines[1:]:
                    engine.segmentation.adopt(centres)
        if "blend" in self.share and self.workers > 1:
            states = [engine.blend_state() for engine in self.engines]
            for engine in self.engines:
                engine.merge_blend(states)
            tr.blend_merges += 1

    def _shared(self, model: dict[str, Any]) -> dict[str, Any]:
        for name in self.dropped:
            model.pop(name, None)
        return model

    def report(self) -> dict[str, Any]:
        """The mechanism's figures for the evaluation's JSON."""
        tr = self.traffic
        return {
            "workers": self.workers,
            "item_model_period_s": None if self.every is not None else self.period,
            "item_model_period_events": self.every,
            "shared": sorted(self.share),
            "events_by_worker": tr.by_worker,
            "deliveries": tr.deliveries,
            "item_update_messages": tr.update_messages,
            "item_update_bytes": tr.update_bytes,
            "item_update_entries_applied": tr.entries_applied,
            "item_update_entries_skipped": tr.entries_skipped,
            "item_model_records": tr.model_records,
            "item_model_bytes": tr.model_bytes,
            "blend_merges": tr.blend_merges,
            **({
                "changelog_records": tr.changelog_records,
                "changelog_bytes": tr.changelog_bytes,
                "changelog_records_whole_records": tr.changelog_records_whole,
                "changelog_bytes_whole_records": tr.changelog_bytes_whole,
            } if self.changelog else {}),
        }
