"""The worker's per-batch logic, free of Faust so that it can be tested directly.

The Faust agent (``stream/app.py``) hands :meth:`Processor.handle` a batch of
raw input messages; the processor validates each one, de-duplicates it against
the user's profile, lets the engine predict then learn, and returns the output
messages (recommendations, alerts, dead letters) for the agent to publish.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

from models.attribution import Attribution, Exposure, UserExposures
from models.bandit import SegmentedThompson, segment_key
from models.engine import Alert, FeedbackEngine, Outcome, Recommendation
from models.events import Event
from models.experiments import Experiment, parse_strategies, parse_variants, wilson
from models.strategies import STRATEGIES, Strategies
from stream.contract import Rejected, decode_event
from stream.metrics import Metrics
from stream.privacy import pseudonymise, scrub_pii
from stream.settings import Settings

# Reasons the stream layer adds to those of stream.contract.REJECTION_REASONS.
STREAM_REJECTION_REASONS = ("key_mismatch",)

# Namespace of the deterministic output ids: re-processing the same event after a
# crash yields the same recommendation_id / alert_id, so consumers can de-duplicate.
_ID_NAMESPACE = uuid.UUID("6b0c1d2e-8f7a-4c55-9e3b-2a6f0d9c4b17")

Profile = dict[str, Any]
# The profile key naming the trigger whose recommendation is owed (deferred, not
# yet published); absent otherwise. Written to the changelog with the profile, so
# that a replay after a crash or a rebalance publishes what was owed (see
# Processor._defer).
PENDING_TRIGGER = "pending_trigger"


class ProfileStore(Protocol):
    """Per-user state: a Faust table in the worker, :class:`DictStore` in tests."""

    def get(self, user_id: str) -> Profile | None: ...

    def put(self, user_id: str, profile: Profile, source: InputMessage) -> None: ...

    def delete(self, user_ids: Sequence[str]) -> int:
        """Forget these users' profiles (durably); returns how many existed."""
        ...

    def keys(self) -> Iterable[str]: ...

    def __len__(self) -> int: ...


@dataclass(slots=True)
class _Deferred:
    """A user's owed recommendation, answering their latest trigger."""

    profile: Profile
    event: Event  # the trigger the recommendation will name
    msg: InputMessage  # its input record: held uncommitted until the publication
    previous: float | None  # the user's recommended_at before the first deferred trigger
    since: float  # wall clock when the first of the merged triggers was deferred
    last: float  # wall clock of the latest trigger
    batch: int  # the batch that brought the latest trigger


@dataclass(slots=True)
class InputMessage:
    """One Kafka record as the agent received it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: float | None = None  # Kafka record time, Unix seconds
    context: Any = None  # the transport's own event object (Faust's), passed back to the store


@dataclass(slots=True)
class OutputMessage:
    """One record for the agent to publish."""

    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def rfc3339(ts: float) -> str:
    """Unix seconds as RFC 3339 UTC with millisecond precision."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z"
    )


class Processor:
    """Validate, de-duplicate, learn and emit; one instance per worker process.

    ``profiles`` is the per-user state: a Faust table in the worker (backed by a
    compacted changelog topic), a plain dict in tests.
    """

    def __init__(
        self,
        settings: Settings,
        engine: FeedbackEngine,
        profiles: ProfileStore,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        bandit: SegmentedThompson | None = None,
        debounce: bool = False,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.profiles = profiles
        self.metrics = metrics
        self.clock = clock
        self.max_event_time = 0.0
        self._types_by_topic = settings.input_topics
        self._key = settings.pseudonymise_key.encode()
        # The feedback loop: who sees which strategy, and what it earned.
        self.experiment = Experiment(
            parse_variants(settings.experiment_variants), settings.experiment_salt
        )
        self.strategies = Strategies(
            seed=settings.bandit_seed,
            fatigue_strategies=parse_strategies(settings.fatigue_strategies),
        )
        # ``bandit`` is a restored one (stream/checkpoint.py); else a new one from the prior.
        if settings.bandit and bandit is None:
            bandit = SegmentedThompson(STRATEGIES, seed=settings.bandit_seed)
        self.bandit = bandit if settings.bandit else None
        # (exposures, clicked, converted) per variant since start, for the rate gauges.
        self.variant_counts: dict[str, list[int]] = {}
        # Parsed exposure logs of this batch's users: (the JSON they came from, log).
        self._exposure_logs: dict[str, tuple[Any, UserExposures]] = {}
        # Per-event metric children by event type: labels() costs a lock and a lookup.
        self._per_type_metrics: dict[str, tuple[Any, Any]] = {}
        # Owed recommendations by user (see _defer). Without ``debounce`` (tests,
        # offline tools) every batch publishes its own before handle() returns;
        # the worker keeps them across batches (stream/app.py).
        self.debounce = debounce and settings.recommend_debounce_seconds > 0
        self._pending: dict[str, _Deferred] = {}
        self._batches = 0
        # Input records whose outputs are owed, for the commit guard (settle()):
        # deferred since the last settle() and still owed...
        self._owed_new: dict[tuple[str, int, int], InputMessage] = {}
        # ...and announced as owed by an earlier settle(), no longer owed now.
        self._released: list[InputMessage] = []
        # Profile ids the eviction sweep still has to look at (see evict).
        self._sweep: list[str] = []
        # Every event series exists from the start, at 0. A counter series born
        # at its first increment has no earlier sample, so Prometheus' rate()
        # and increase() miss whatever a new replica handled before its first
        # scrape (a scaled-out worker could look idle on the dashboard).
        for etype in self._types_by_topic.values():
            for outcome in ("processed", "duplicate", "dead_lettered"):
                metrics.events.labels(etype, outcome)

    # -- the hot path ---------------------------------------------------------

    def handle(self, batch: Sequence[InputMessage]) -> list[OutputMessage]:
        """Process a batch in order; never raises for bad input."""
        out: list[OutputMessage] = []
        self._exposure_logs.clear()
        self._batches += 1
        # One profile write per user per batch: each write is a changelog record.
        dirty: dict[str, tuple[Profile, InputMessage]] = {}
        # The user of each input partition's last event in the batch (see below).
        last_user: dict[tuple[str, int], str] = {}
        now = self.clock()
        for msg in batch:
            start = time.perf_counter()
            etype = self._types_by_topic.get(msg.topic, "unknown")
            try:
                event = self._decode(msg, now)
            except Rejected as rejection:
                out.append(self._dead_letter(msg, rejection))
                self.metrics.events.labels(etype, "dead_lettered").inc()
                continue
            last_user[(msg.topic, msg.partition)] = event.user_id
            cached = dirty.get(event.user_id)
            if cached is not None:
                profile = cached[0]
            else:
                profile = self.profiles.get(event.user_id) or new_profile(event.user_id)
            if event.event_id in profile["recent_event_ids"]:
                self.metrics.events.labels(etype, "duplicate").inc()
                if (
                    profile.get(PENDING_TRIGGER) == event.event_id
                    and event.user_id not in self._pending
                ):
                    # Replayed after a crash or a rebalance with its recommendation
                    # still owed (the commit guard held this offset): owe it again.
                    self._owe(profile, event, msg, profile["recommended_at"], now, now)
                continue
            outcome = self.engine.process(event)
            self._observe(outcome)
            update_profile(profile, event, outcome, self.settings.dedup_window)
            dirty[event.user_id] = (profile, msg)
            if event.type != "review":
                # Before this event's own recommendation exists: never credited to it.
                self._attribute(profile, event, etype)
            if should_recommend(profile, event, self.settings.recommend_min_interval_seconds):
                self._defer(profile, event, msg, now, out)
            out.extend(self._alert(a, now) for a in outcome.alerts)
            self.max_event_time = max(self.max_event_time, event.timestamp)
            processed, seconds = self._per_type(etype)
            processed.inc()
            seconds.observe(time.perf_counter() - start)
        # Owed recommendations are published now when the user's triggers have
        # stopped: untouched by this batch, or followed on their partition by
        # another user's event (a basket's lines are consecutive records); and
        # any at the max-delay deadline. What stays owed is the last user of a
        # partition in the batch, whose basket may go on in the next one.
        deadline = now - self.settings.recommend_max_delay_seconds

        def due(e: _Deferred) -> bool:
            return (
                not self.debounce or e.batch < self._batches or e.since <= deadline
                or last_user.get((e.msg.topic, e.msg.partition)) != e.event.user_id
            )

        for user_id, (profile, source) in self._publish_due(out, now, due).items():
            dirty.setdefault(user_id, (profile, source))
        for user_id, (profile, source) in dirty.items():
            self.profiles.put(user_id, profile, source)
        return out

    def _defer(
        self, profile: Profile, event: Event, msg: InputMessage, now: float,
        out: list[OutputMessage],
    ) -> None:
        """Owe the user a recommendation answering ``event``: a debounce.

        Ranking is the costliest step of an event, and a basket of 20 invoice
        lines or a review right after a purchase would otherwise publish 20 or 2
        lists within milliseconds, each obsolete at once. A trigger less than
        ``recommend_min_interval_seconds`` (event time) after the user's owed
        one replaces it; a later one publishes the owed one first. The interval
        starts now, so later clicks do not trigger again.

        The owed recommendation is published at the end of the batch if
        another user's event follows the trigger on its partition, else at the
        end of the first batch that brings no new trigger of the user, or once
        ``recommend_debounce_seconds`` passed since the last trigger without a
        batch (:meth:`flush_due`), and at the latest
        ``recommend_max_delay_seconds`` after the first merged trigger; without
        ``debounce``, at the end of the batch. Until then the trigger's input
        record stays uncommitted (:meth:`settle`, the commit guard) and the
        profile names it (``PENDING_TRIGGER``), so a replay owes it again.
        """
        earlier = self._pending.pop(event.user_id, None)
        interval = self.settings.recommend_min_interval_seconds
        if earlier is not None and event.timestamp - earlier.event.timestamp >= interval:
            self._publish(earlier, now, out)
            earlier = None
        if earlier is None:
            self._owe(profile, event, msg, profile["recommended_at"], now, now)
        else:
            self._release(earlier.msg)  # the new trigger carries its obligation
            self._owe(profile, event, msg, earlier.previous, earlier.since, now)
        profile["recommended_at"] = event.timestamp

    def _owe(
        self, profile: Profile, event: Event, msg: InputMessage, previous: float | None,
        since: float, now: float,
    ) -> None:
        self._pending[event.user_id] = _Deferred(
            profile, event, msg, previous, since, now, self._batches
        )
        self._owed_new[(msg.topic, msg.partition, msg.offset)] = msg
        profile[PENDING_TRIGGER] = event.event_id

    def _release(self, msg: InputMessage) -> None:
        if self._owed_new.pop((msg.topic, msg.partition, msg.offset), None) is None:
            self._released.append(msg)

    def _publish(self, entry: _Deferred, now: float, out: list[OutputMessage]) -> None:
        profile = entry.profile
        profile.pop(PENDING_TRIGGER, None)
        rec = self._recommend(profile, entry.event, entry.msg, now)
        if rec is None:
            # Nothing published: the next trigger may try again.
            profile["recommended_at"] = entry.previous
        else:
            out.append(rec)
        self._release(entry.msg)

    def _publish_due(
        self, out: list[OutputMessage], now: float, due: Callable[[_Deferred], bool]
    ) -> dict[str, tuple[Profile, InputMessage]]:
        """Publish the owed recommendations ``due`` says; their profiles to write."""
        written: dict[str, tuple[Profile, InputMessage]] = {}
        for user_id in [u for u, e in self._pending.items() if due(e)]:
            entry = self._pending.pop(user_id)
            self._publish(entry, now, out)
            written[user_id] = (entry.profile, entry.msg)
        self.metrics.recommendations_pending.set(len(self._pending))
        return written

    def flush_due(self) -> list[OutputMessage]:
        """Time-driven publishing between batches (the worker calls it often):
        owed recommendations whose user's triggers stopped
        ``recommend_debounce_seconds`` ago, or at the max-delay deadline."""
        if not self._pending:
            return []
        now = self.clock()
        quiet = now - self.settings.recommend_debounce_seconds
        deadline = now - self.settings.recommend_max_delay_seconds
        return self._flush(now, lambda e: e.last <= quiet or e.since <= deadline)

    def flush_all(self) -> list[OutputMessage]:
        """Publish every owed recommendation now (offline callers, tests)."""
        return self._flush(self.clock(), lambda e: True)

    def _flush(self, now: float, due: Callable[[_Deferred], bool]) -> list[OutputMessage]:
        """Between batches: publish what ``due`` says and write those profiles."""
        out: list[OutputMessage] = []
        for user_id, (profile, source) in self._publish_due(out, now, due).items():
            self.profiles.put(user_id, profile, source)
        return out

    def drop_pending(self, partitions: Container[tuple[str, int]]) -> int:
        """Forget the owed recommendations of input records on ``partitions``
        (revoked by a rebalance): unpublished, their records uncommitted, so the
        partitions' next owner reads them again and owes them (the profile names
        the trigger). Returns how many were dropped."""
        dropped = [
            u for u, e in self._pending.items() if (e.msg.topic, e.msg.partition) in partitions
        ]
        for user_id in dropped:
            msg = self._pending.pop(user_id).msg
            self._owed_new.pop((msg.topic, msg.partition, msg.offset), None)
        self.metrics.recommendations_pending.set(len(self._pending))
        return len(dropped)

    def settle(self) -> tuple[list[InputMessage], list[InputMessage]]:
        """``(held, released)`` since the last call, for the commit guard: input
        records whose recommendation is still owed (do not commit them), and
        records announced as held before whose owed outputs are now among the
        outputs returned (commit them once those are published)."""
        held, released = list(self._owed_new.values()), self._released
        self._owed_new = {}
        self._released = []
        return held, released

    def tick(self) -> list[OutputMessage]:
        """Time-driven work: churn checks at the latest event time, model gauges."""
        out: list[OutputMessage] = []
        if self.max_event_time:
            now = self.clock()
            out.extend(self._alert(a, now) for a in self.engine.tick(self.max_event_time))
        self.metrics.segment_users.clear()
        for segment, size in self.engine.segment_sizes().items():
            self.metrics.segment_users.labels(str(segment)).set(size)
        self._experiment_gauges()
        return out

    # -- steps ----------------------------------------------------------------

    def _decode(self, msg: InputMessage, now: float) -> Event:
        etype = self._types_by_topic.get(msg.topic)
        if etype is None:
            raise Rejected("unknown_type", f"topic {msg.topic!r} is not an input topic")
        event = decode_event(
            msg.value,
            etype,  # type: ignore[arg-type]
            max_bytes=self.settings.max_payload_bytes,
            max_text_chars=self.settings.max_text_chars,
        )
        if msg.key is not None and msg.key != event.user_id.encode():
            # Partitioning, per-user state and HTTP routing all rely on key = user_id.
            raise Rejected(
                "key_mismatch",
                f"record key {msg.key[:64]!r} differs from user_id {event.user_id[:64]!r}",
            )
        if event.timestamp > now + self.settings.max_future_skew_seconds:
            raise Rejected(
                "out_of_range",
                f'field "timestamp" is {event.timestamp - now:.0f} s in the future '
                f"(at most {self.settings.max_future_skew_seconds:.0f} s allowed)",
            )
        changes: dict[str, Any] = {}
        if self._key:
            changes["user_id"] = pseudonymise(event.user_id, self._key)
        if event.text:
            changes["text"] = scrub_pii(event.text)
        if event.title:
            changes["title"] = scrub_pii(event.title)
        return dataclasses.replace(event, **changes) if changes else event

    def _observe(self, outcome: Outcome) -> None:
        m = self.metrics
        if outcome.hit is not None:
            m.model_positives.inc()
            if outcome.hit:
                m.model_hits.inc()
        if outcome.rating_error is not None:
            m.rating_error.observe(abs(outcome.rating_error))
        if outcome.sentiment is not None:
            m.review_sentiment.observe(outcome.sentiment)

    def _per_type(self, etype: str) -> tuple[Any, Any]:
        children = self._per_type_metrics.get(etype)
        if children is None:
            children = self._per_type_metrics[etype] = (
                self.metrics.events.labels(etype, "processed"),
                self.metrics.processing_seconds.labels(etype),
            )
        return children

    def _exposures(self, profile: Profile) -> UserExposures:
        # Parsed once per user per batch (a basket's lines, a click session), not
        # per event; reused while the profile still holds the JSON it came from.
        raw = profile.get("exposures")
        cached = self._exposure_logs.get(profile["user_id"])
        if cached is not None and cached[0] is raw:
            return cached[1]
        log = UserExposures.from_json(
            raw,
            window=self.settings.attribution_window_seconds,
            max_exposures=self.settings.attribution_max_exposures,
        )
        self._exposure_logs[profile["user_id"]] = (raw, log)
        return log

    def _save_exposures(self, profile: Profile, log: UserExposures) -> None:
        raw = profile["exposures"] = log.to_json()
        self._exposure_logs[profile["user_id"]] = (raw, log)

    def _attribute(self, profile: Profile, event: Event, etype: str) -> Attribution | None:
        """Credit a click or purchase to one of the user's recent recommendations."""
        m = self.metrics
        if event.type == "purchase" and event.quantity <= 0:
            return None  # returns are not attributed
        log = self._exposures(profile)
        hit = log.attribute(event)
        if hit is None:
            reason = (
                "unknown_recommendation_id" if event.recommendation_id else "not_recommended"
            )
            m.attribution_unmatched.labels(etype, reason).inc()
            return None
        exp = hit.exposure
        labels = (exp.variant, exp.strategy)
        counts = self.variant_counts.setdefault(exp.variant, [0, 0, 0])
        if hit.kind == "click":
            m.attributed_clicks.labels(*labels, hit.matched_by).inc()
            if hit.first:
                m.recommendations_clicked.labels(*labels).inc()
                counts[1] += 1
                if self.bandit is not None and exp.variant == "bandit":
                    self.bandit.reward(exp.segment, exp.strategy)
        else:
            m.attributed_purchases.labels(*labels).inc()
            if hit.revenue > 0:
                m.attributed_revenue.labels(*labels).inc(hit.revenue)
            if hit.first:
                m.recommendations_converted.labels(*labels).inc()
                counts[2] += 1
        self._save_exposures(profile, log)
        return hit

    def _choose(self, profile: Profile, event: Event) -> tuple[str, str]:
        """``(variant, strategy)`` for this recommendation."""
        if self.bandit is not None:
            segment = profile.get("segment")
            strategy = self.bandit.choose(segment, key=event.event_id)
            self.metrics.bandit_choices.labels(segment_key(segment), strategy).inc()
            return "bandit", strategy
        variant = self.experiment.variant_of(event.user_id)
        return variant, variant

    def _recommend(
        self, profile: Profile, event: Event, msg: InputMessage, now: float
    ) -> OutputMessage | None:
        variant, strategy = self._choose(profile, event)
        log = self._exposures(profile)
        items = self.strategies.recommend(
            strategy, self.engine, event.user_id, self.settings.top_k,
            now=event.timestamp, key=event.event_id,
            avoid=log.fatigued(self.settings.fatigue_impressions),
        )
        if not items:
            # Nothing the user has not already bought yet (a cold catalogue): an
            # empty list helps no consumer, so nothing is published.
            return None
        rec_id = str(uuid.uuid5(_ID_NAMESPACE, f"rec:{event.event_id}:{strategy}"))
        as_json = [recommendation_json(r) for r in items]  # once for the profile and payload
        profile["recommendations"] = compact_recommendations(as_json)
        profile["recommendation_id"] = rec_id
        profile["recommended_at"] = event.timestamp
        profile["variant"] = variant
        segment = profile.get("segment")
        log.expose(
            Exposure(
                rec_id, tuple(r.item_id for r in items), strategy, variant, event.timestamp,
                segment,
            )
        )
        self._save_exposures(profile, log)
        self.metrics.exposures.labels(variant, strategy).inc()
        self.engine.information.on_list(strategy, items, self.engine)
        self.variant_counts.setdefault(variant, [0, 0, 0])[0] += 1
        if self.bandit is not None:
            self.bandit.expose(segment, strategy)
        payload = {
            "recommendation_id": rec_id,
            "user_id": event.user_id,
            "items": [
                {"rank": i + 1, **r} for i, r in enumerate(as_json)
            ],
            "strategy": strategy,
            "variant": variant,
            "trigger_event_id": event.event_id,
            "trigger_event_type": event.type,
            "event_time": rfc3339(event.timestamp),
            "generated_at": rfc3339(now),
        }
        self.metrics.recommendations.labels(strategy).inc()
        if msg.timestamp:
            self.metrics.recommendation_latency_seconds.observe(max(0.0, now - msg.timestamp))
        return OutputMessage(
            self.settings.topic_recommendations, event.user_id.encode(), orjson.dumps(payload)
        )

    def _experiment_gauges(self) -> None:
        m = self.metrics
        for variant, (exposures, clicked, converted) in self.variant_counts.items():
            for metric, successes in (("ctr", clicked), ("conversion", converted)):
                rate = wilson(min(successes, exposures), exposures)
                for bound, value in (
                    ("value", rate.value), ("lower", rate.lower), ("upper", rate.upper)
                ):
                    m.experiment_rate.labels(variant, metric, bound).set(value)
        if self.bandit is not None:
            for segment, arms in self.bandit.snapshot().items():
                for strategy, stats in arms.items():
                    m.bandit_mean_ctr.labels(segment, strategy).set(stats["mean"])

    def _alert(self, alert: Alert, now: float) -> OutputMessage:
        key = f"alert:{alert.kind}:{alert.subject}:{alert.timestamp}"
        alert_id = uuid.uuid5(_ID_NAMESPACE, key)
        payload = {
            "alert_id": str(alert_id),
            "kind": alert.kind,
            "severity": alert.severity,
            "subject": alert.subject,
            "message": alert.message,
            "value": alert.value,
            "threshold": alert.threshold,
            "event_time": rfc3339(alert.timestamp),
            "generated_at": rfc3339(now),
        }
        self.metrics.alerts.labels(alert.kind, alert.severity).inc()
        return OutputMessage(
            self.settings.topic_alerts, alert.subject.encode(), orjson.dumps(payload)
        )

    def _dead_letter(self, msg: InputMessage, rejection: Rejected) -> OutputMessage:
        self.metrics.deadletter.labels(rejection.reason, msg.topic).inc()
        # Kafka Connect's convention: the original bytes untouched, the why in headers.
        headers = [
            ("deadletter.reason", rejection.reason.encode()),
            ("deadletter.detail", rejection.detail.encode("utf-8", "replace")[:1024]),
            ("source.topic", msg.topic.encode()),
            ("source.partition", str(msg.partition).encode()),
            ("source.offset", str(msg.offset).encode()),
        ]
        if msg.timestamp is not None:
            headers.append(("source.timestamp", rfc3339(msg.timestamp).encode()))
        return OutputMessage(
            self.settings.topic_deadletter, msg.key, msg.value or b"", headers
        )

    # -- bounded state: the eviction step (run on its own tick, stream/app.py) -----

    def evict(self) -> int:
        """Forget inactive users, in the models and in the profile store alike.

        Users whose last event is older than ``user_retention_seconds`` before the
        newest event time go first (least recently active first; a pending churn
        alert holds its user, see ``FeedbackEngine.evict_inactive``), then, with
        ``max_users``, the least recently active beyond the cap. A sweep over the
        profile store then finds profiles the models do not know (taken over
        from another worker with its partitions) that are just as inactive. At
        most ``evictions_per_tick`` users are forgotten and about as many
        profiles read per call, so the pause is bounded whatever the number of
        users. Returns the number of users forgotten.
        """
        s = self.settings
        budget = s.evictions_per_tick
        total = 0
        before = None
        if s.user_retention_seconds > 0 and self.max_event_time:
            before = self.max_event_time - s.user_retention_seconds
            total += self._evicted(self.engine.evict_inactive(before, budget), "inactive")
        if s.max_users > 0 and total < budget:
            total += self._evicted(
                self.engine.evict_least_recent(s.max_users, budget - total, self._pending),
                "cap",
            )
        if before is not None and total < budget:
            total += self._evicted(self._sweep_profiles(before, budget - total), "inactive")
        return total

    def _evicted(self, user_ids: Sequence[str], reason: str) -> int:
        """Delete the profiles of users forgotten for ``reason`` and count them."""
        if user_ids:
            self.profiles.delete(user_ids)
            for user_id in user_ids:
                self._exposure_logs.pop(user_id, None)
        self.metrics.users_evicted.labels(reason).inc(len(user_ids))
        return len(user_ids)

    def _sweep_profiles(self, before: float, limit: int) -> list[str]:
        """Read up to ``limit`` stored profiles round robin; return those unknown to
        the models and inactive since before ``before`` (for :meth:`_evicted`). A
        pass over the store takes a snapshot of its keys (8 bytes per user),
        refreshed once it is read through."""
        if not self._sweep:
            self._sweep = list(self.profiles.keys())
            self._sweep.reverse()  # popped from the end: oldest-stored first
        known = self.engine.profiles
        stale: list[str] = []
        for _ in range(min(limit, len(self._sweep))):
            user_id = self._sweep.pop()
            if user_id in known:
                continue  # the models' own eviction decides for this one
            profile = self.profiles.get(user_id)
            if profile is not None and is_inactive(profile, before):
                stale.append(user_id)
        return stale


class DictStore(dict[str, Profile]):
    """An in-memory :class:`ProfileStore` (tests, the evaluation tools)."""

    def put(self, user_id: str, profile: Profile, source: InputMessage) -> None:
        self[user_id] = profile

    def delete(self, user_ids: Sequence[str]) -> int:
        return sum(self.pop(user_id, None) is not None for user_id in user_ids)


# -- per-user profile (plain JSON so that the changelog stays readable) ----------


def new_profile(user_id: str) -> Profile:
    return {
        "user_id": user_id,
        "events": {"click": 0, "purchase": 0, "review": 0},
        "first_event_time": None,
        "last_event_time": None,
        "segment": None,
        "recent_event_ids": [],
        "recommendations": [],
        "recommendation_id": None,
        "recommended_at": None,
        "variant": None,
        "exposures": [],
    }


def update_profile(profile: Profile, event: Event, outcome: Outcome, window: int) -> None:
    profile["events"][event.type] += 1
    if profile["first_event_time"] is None or event.timestamp < profile["first_event_time"]:
        profile["first_event_time"] = event.timestamp
    if profile["last_event_time"] is None or event.timestamp > profile["last_event_time"]:
        profile["last_event_time"] = event.timestamp
    profile["segment"] = outcome.segment
    ids: list[str] = profile["recent_event_ids"]
    ids.append(event.event_id)
    if len(ids) > window:
        del ids[: len(ids) - window]


def should_recommend(profile: Profile, event: Event, min_interval: float) -> bool:
    """Publish after a purchase or a review (the user's taste just changed), and
    after a click only when the last publication is older than ``min_interval``
    seconds of event time: a browsing session should not flood the topic."""
    if event.type != "click":
        return True
    last = profile["recommended_at"]
    return last is None or event.timestamp - last >= min_interval


def recommendation_json(rec: Recommendation) -> dict[str, Any]:
    return {"item_id": rec.item_id, "score": round(float(rec.score), 6), "reason": rec.reason}


def compact_recommendations(recs: Sequence[dict[str, Any]]) -> list[Any]:
    """The profile's form of its current recommendations: one flat list
    ``[item_id, score, reason, item_id, score, reason, ...]``. It lives in every
    profile: 10 dicts took about 2 kB per user, 10 triples 1 kB, this 0.3 kB."""
    return [value for r in recs for value in (r["item_id"], r["score"], r["reason"])]


def expand_recommendations(recs: Sequence[Any]) -> list[dict[str, Any]]:
    """Inverse of :func:`compact_recommendations`; a profile written before the
    compact form (a list of dicts, read back from an older changelog) passes as is."""
    if recs and isinstance(recs[0], dict):
        return list(recs)
    return [
        {"item_id": recs[i], "score": recs[i + 1], "reason": recs[i + 2]}
        for i in range(0, len(recs) - 2, 3)
    ]


def is_inactive(profile: Profile, before: float) -> bool:
    """True if the profile's last event is older than ``before`` (event time)."""
    last = profile.get("last_event_time")
    return last is None or last < before
