"""The worker's per-batch logic, free of Faust so that it can be tested directly.

The Faust agent (``stream/app.py``) hands :meth:`Processor.handle` a batch of
raw input messages; the processor validates each one, de-duplicates it against
the user's stored profile, lets the engine predict then learn, runs the
feedback loop (:mod:`models.feedback_loop`) and returns the output messages
(recommendations, alerts, dead letters) for the agent to publish. Its parts
with state of their own: the debounce (:mod:`stream.debounce`) and the
eviction (:mod:`stream.eviction`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
import uuid
from collections.abc import Callable, Container, Generator, Sequence
from typing import Any, TypeVar

import orjson

from models.attribution import Exposure, UserExposures
from models.bandit import SegmentedThompson, segment_key
from models.engine import Alert, FeedbackEngine, Outcome, Recommendation
from models.events import Event
from models.feedback_loop import FeedbackLoop, should_recommend
from models.item_updates import Outbox, attach, encode_updates, partition_of
from stream.contract import Rejected, decode_event, format_timestamp
from stream.debounce import Debounce, Held
from stream.dp import (
    PAIR_REASONS,
    BudgetExhausted,
    DPPublisher,
    engine_contributions,
    private_reason,
)
from stream.erasure import ERASED_PARTS
from stream.eviction import Eviction
from stream.metrics import Metrics
from stream.privacy import pseudonymise, pseudonymise_key_bytes, scrub_pii
from stream.pull import PulledExposures
from stream.records import InputMessage, OutputMessage
from stream.settings import Settings
from stream.stored_profile import (
    ProfileStore,
    StoredProfile,
    from_changelog,
    new_stored_profile,
    recommendation_json,
    update_stored_profile,
)

# Reasons the stream layer adds to those of stream.contract.REJECTION_REASONS.
STREAM_REJECTION_REASONS = ("key_mismatch",)

# Namespace of the deterministic output ids: re-processing the same event after a
# crash yields the same recommendation_id / alert_id, so consumers can de-duplicate.
_ID_NAMESPACE = uuid.UUID("6b0c1d2e-8f7a-4c55-9e3b-2a6f0d9c4b17")


def _rfc3339(ts: float) -> str:
    return format_timestamp(ts, timespec="milliseconds")


T = TypeVar("T")

#: Work done in slices: a generator that pauses (yields ``None``) between two
#: slices, each at most about ``Settings.batch_slice_seconds`` long and ending
#: between two events, and returns its result.
Slices = Generator[None, None, T]


def run(steps: Slices[T]) -> T:
    """Run ``steps`` to its end without pausing; its result."""
    while True:
        try:
            next(steps)
        except StopIteration as end:
            return end.value


class Slicer:
    """One piece of work's time slices: :meth:`run` drives a generator of steps,
    which yields wherever a pause may come (between two steps), and pauses there
    (yields, see :data:`Slices`) once ``budget`` seconds (``time.perf_counter``)
    have passed since the start or the last pause. The step generators one
    Slicer runs in turn share its slice."""

    __slots__ = ("budget", "pause_at")

    def __init__(self, budget: float) -> None:
        self.budget = budget
        self.pause_at = time.perf_counter() + budget

    def run(self, steps: Generator[None, None, T]) -> Slices[T]:
        """Run ``steps`` to its end, pausing at its yields once the slice is up;
        its result."""
        while True:
            try:
                next(steps)
            except StopIteration as end:
                return end.value
            if time.perf_counter() >= self.pause_at:
                yield
                self.pause_at = time.perf_counter() + self.budget

    async def turn(self) -> None:
        """An async caller's step boundary: let the event loop run once the slice
        is up (the next slice starts when it is back)."""
        if time.perf_counter() >= self.pause_at:
            await asyncio.sleep(0)
            self.pause_at = time.perf_counter() + self.budget


async def run_async(steps: Slices[T]) -> T:
    """Run ``steps`` to its end, letting the event loop run at each of its pauses.

    The worker's HTTP pulls (and its other tasks) wait for one slice, not for a
    whole batch. At a pause every event before it has been processed whole:
    the models and profiles a pull reads are those after an event, as they are
    between batches.
    """
    while True:
        try:
            next(steps)
        except StopIteration as end:
            return end.value
        await asyncio.sleep(0)


# The currency label of attributed revenue from purchases that name none.
NO_CURRENCY = "unspecified"


class Processor:
    """Validate, de-duplicate, learn and emit; one instance per worker process.

    ``profiles`` is the per-user state: a Faust table in the worker (backed by a
    compacted changelog topic), a plain dict in tests. With ``debounce`` (the
    worker), recommendations are held across batches (:mod:`stream.debounce`);
    without (tests, offline tools), every batch publishes its own before
    :meth:`handle` returns.
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
        engine.quality_sample = settings.quality_sample
        self.profiles = profiles
        self.metrics = metrics
        self.clock = clock
        self.max_event_time = 0.0
        # The Faust app refits the customer-value model off its event loop
        # (stream/refit.py) and turns this off; a synchronous caller keeps it.
        self.refit_customer_value_in_tick = True
        self._types_by_topic = settings.input_topics
        self._key = settings.pseudonymise_key.encode()
        # What is published about items and segments, differentially private.
        self.publisher = DPPublisher(
            lambda: engine_contributions(self.engine), settings.dp_config,
            n_segments=engine.config.n_segments,
            domain=lambda: self.engine.catalogue.ids,
        )
        # ``bandit`` is a restored one (stream/checkpoint.py); else a new one from the prior.
        if settings.bandit and bandit is None:
            bandit = FeedbackLoop.new_bandit(settings.bandit_seed)
        self.loop = FeedbackLoop(
            variants=settings.experiment_variants,
            salt=settings.experiment_salt,
            fatigue_impressions=settings.fatigue_impressions,
            fatigue_strategies=settings.fatigue_strategies,
            top_k=settings.top_k,
            seed=settings.bandit_seed,
            bandit=bandit if settings.bandit else None,
            popular_ranking=self._published_popular,
        )
        self.debounce = Debounce(
            min_interval=settings.recommend_min_interval_seconds,
            quiet=settings.recommend_debounce_seconds,
            max_delay=settings.recommend_max_delay_seconds,
            enabled=debounce and settings.recommend_debounce_seconds > 0,
        )
        # The consumer's high-water mark of an input partition as of its last
        # fetch (the worker sets it; None where unknown): a held trigger whose
        # partition has nothing past the batch is published at the batch's end.
        self.highwater: Callable[[str, int], int | None] | None = None
        # Parsed exposure logs of this batch's users: (the profile and the JSON
        # they came from, log).
        self._exposure_logs: dict[str, tuple[StoredProfile, Any, UserExposures]] = {}
        # Logs changed since their profile's JSON was written, by id(profile): a
        # basket's lines attribute one after another, so the JSON is written once
        # per profile per batch (:meth:`_store_exposures`), not once per event.
        self._unsaved: dict[int, tuple[StoredProfile, UserExposures]] = {}
        # Pulled lists (stream/pull.py) waiting for their user's next event.
        self.pulled = PulledExposures(
            window=settings.attribution_window_seconds,
            max_exposures=settings.attribution_max_exposures,
        )
        self.eviction = Eviction(
            engine, profiles, metrics.users_evicted,
            retention=settings.user_retention_seconds,
            max_users=settings.max_users,
            per_tick=settings.evictions_per_tick,
            held=self.debounce.held,
            forget=self._forget_user,
        )
        # Item-side sharing (docs/architecture.md): the engine's outbox, when set.
        self.outbox: Outbox | None = None
        # Profile writes of the last batch, while :meth:`handle` is told not to write.
        self._unwritten: dict[str, tuple[StoredProfile, InputMessage]] = {}
        # Per-event metric children by event type: labels() costs a lock and a lookup.
        self._per_type_metrics: dict[str, tuple[Any, Any]] = {}
        # Every event series exists from the start, at 0. A counter series born
        # at its first increment has no earlier sample, so Prometheus' rate()
        # and increase() miss whatever a new replica handled before its first
        # scrape (a scaled-out worker could look idle on the dashboard).
        for etype in self._types_by_topic.values():
            for outcome in ("processed", "duplicate", "dead_lettered"):
                metrics.events.labels(etype, outcome)

    @property
    def bandit(self) -> SegmentedThompson | None:
        return self.loop.bandit

    def _forget_user(self, user_id: str) -> None:
        self._drop_exposures(user_id)
        self.pulled.forget(user_id)

    # -- the hot path ---------------------------------------------------------

    def share_items(self, outbox: Outbox) -> None:
        """Record this worker's item-side increments in ``outbox``; every batch then
        returns them as item-update messages (one per destination partition)."""
        attach(self.engine, outbox)
        self.outbox = outbox

    def handle(self, batch: Sequence[InputMessage], write: bool = True) -> list[OutputMessage]:
        """Process a batch in order; never raises for bad input.

        With ``write=False`` the batch's profile writes wait for
        :meth:`write_profiles`: the worker publishes the batch's item updates
        first, so that no profile (the de-duplication ledger) records an event
        whose item-side increments could still be lost.
        """
        return run(self.handle_in_slices(batch, write))

    def handle_in_slices(
        self, batch: Sequence[InputMessage], write: bool = True
    ) -> Slices[list[OutputMessage]]:
        """:meth:`handle` in slices (see :data:`Slices`): the worker runs it with
        :func:`run_async`. Nothing is written or published between two slices
        that :meth:`handle` would not have done by then; the batch's offsets are
        released to the commit guard only after its end (the worker's ``settle``)."""
        out: list[OutputMessage] = []
        outbox = self.outbox
        self._store_exposures()
        self._exposure_logs.clear()
        self.debounce.start_batch()
        # One profile write per user per batch: each write is a changelog record.
        dirty: dict[str, tuple[StoredProfile, InputMessage]] = {}
        # The user of each input partition's last event in the batch (see Debounce).
        last_user: dict[tuple[str, int], str] = {}
        now = self.clock()
        slicer = Slicer(self.settings.batch_slice_seconds)
        yield from slicer.run(self._events(batch, now, out, dirty, last_user))
        due = self.debounce.batch_due(now, last_user, self._drained(batch))
        written = yield from slicer.run(self._publish(due, now, out))
        for user_id, (profile, source) in written.items():
            dirty.setdefault(user_id, (profile, source))
        self._store_exposures()
        if outbox is not None:
            out.extend(self._item_updates(outbox))
        self._unwritten = dirty
        if write:
            yield from self.write_profiles_in_slices()
        return out

    def _drained(self, batch: Sequence[InputMessage]) -> set[tuple[str, int]]:
        """The batch's input partitions the consumer had read to the end at its
        last fetch: their last users' baskets have no more lines to come yet."""
        highwater = self.highwater
        if highwater is None or not self.debounce.held:
            return set()
        last = {(msg.topic, msg.partition): msg.offset for msg in batch}
        return {
            part for part, offset in last.items()
            if (mark := highwater(*part)) is not None and offset + 1 >= mark
        }

    def _events(self, batch: Sequence[InputMessage], now: float, out: list[OutputMessage],
                dirty: dict[str, tuple[StoredProfile, InputMessage]],
                last_user: dict[tuple[str, int], str]) -> Generator[None, None, None]:
        """The batch's events, one step each (see :class:`Slicer`): each user's
        profile to write into ``dirty``, each partition's last user into
        ``last_user``, the outputs into ``out``."""
        outbox = self.outbox
        for msg in batch:
            yield  # before an event: the event loop's turn, once the slice is up
            start = time.perf_counter()
            etype = self._types_by_topic.get(msg.topic, "unknown")
            try:
                event = self._decode(msg, now)
            except Rejected as rejection:
                out.append(self.dead_letter(msg, rejection))
                self.metrics.events.labels(etype, "dead_lettered").inc()
                continue
            last_user[(msg.topic, msg.partition)] = event.user_id
            cached = dirty.get(event.user_id)
            if cached is not None:
                profile = cached[0]
            else:
                stored = self.profiles.get(event.user_id)
                profile = (
                    from_changelog(stored) if stored is not None
                    else new_stored_profile(event.user_id)
                )
            if event.event_id in profile.recent_event_ids:
                self.metrics.events.labels(etype, "duplicate").inc()
                if (
                    profile.held_trigger == event.event_id
                    and event.user_id not in self.debounce
                ):
                    # Replayed after a crash or a rebalance with its recommendation
                    # still held (the commit guard held this offset): hold it again.
                    self._hold(profile, event, msg, now)
                continue
            if outbox is not None:
                outbox.at(f"{msg.topic}:{msg.partition}", msg.offset)
            outcome = self.engine.process(event)
            self._observe(outcome)
            update_stored_profile(profile, event, outcome, self.settings.dedup_window)
            dirty[event.user_id] = (profile, msg)
            if event.type != "review":
                # Before this event's own recommendation exists: never credited to it.
                self._attribute(profile, event, etype)
            if should_recommend(
                profile.recommended_at, event, self.settings.recommend_min_interval_seconds
            ):
                self._trigger(profile, event, msg, now, out)
            out.extend(self._alert(a, now) for a in outcome.alerts)
            self.max_event_time = max(self.max_event_time, event.timestamp)
            processed, seconds = self._per_type(etype)
            processed.inc()
            seconds.observe(time.perf_counter() - start)

    def write_profiles(self) -> None:
        """The profile writes of the last :meth:`handle`."""
        run(self.write_profiles_in_slices())

    def write_profiles_in_slices(self) -> Slices[None]:
        """:meth:`write_profiles` in slices (see :data:`Slices`)."""
        dirty, self._unwritten = self._unwritten, {}
        yield from Slicer(self.settings.batch_slice_seconds).run(self._write(dirty))

    def _write(self, dirty: dict[str, tuple[StoredProfile, InputMessage]]
               ) -> Generator[None, None, None]:
        for user_id, (profile, source) in dirty.items():
            self.profiles.put(user_id, profile, source)
            yield

    def _item_updates(self, outbox: Outbox) -> list[OutputMessage]:
        """The batch's item-side increments, one message per destination partition
        of the item-updates topic (the partition of the item id, as Kafka's default
        partitioner would choose it)."""
        updates = outbox.drain()
        if not updates:
            return []
        split: dict[int, dict[str, Any]] = {}
        partitions = self.settings.partitions
        for item_id, entries in updates.items():
            split.setdefault(partition_of(item_id, partitions), {})[item_id] = entries
        self.metrics.item_updates_sent.inc(sum(len(e) for e in updates.values()))
        topic = self.settings.topic_item_updates
        return [
            OutputMessage(topic, None, encode_updates(part), partition=p)
            for p, part in split.items()
        ]

    def _trigger(
        self, profile: StoredProfile, event: Event, msg: InputMessage, now: float,
        out: list[OutputMessage],
    ) -> None:
        """Hold the user's recommendation answering ``event`` (see
        :class:`~stream.debounce.Debounce` for when it is due). The interval of
        :func:`should_recommend` starts now, so later clicks do not trigger again."""
        while (earlier := self._hold(profile, event, msg, now)) is not None:
            self._publish_one(earlier, now, out)
        profile.recommended_at = event.timestamp

    def _hold(
        self, profile: StoredProfile, event: Event, msg: InputMessage, now: float
    ) -> Held | None:
        """Hold, and name the trigger in the profile so that a replay holds it
        again; or return the user's earlier held trigger, due first."""
        earlier = self.debounce.trigger(
            event.user_id, profile, event, msg, profile.recommended_at, now
        )
        if earlier is None:
            profile.held_trigger = event.event_id
        return earlier

    def _publish_one(self, held: Held, now: float, out: list[OutputMessage]) -> None:
        profile = held.profile
        profile.held_trigger = None
        rec = self._recommend(profile, held.event, held.record, now)
        if rec is None:
            # Nothing published: the next trigger may try again.
            profile.recommended_at = held.previous
        else:
            out.append(rec)

    def _publish(
        self, due: list[Held], now: float, out: list[OutputMessage]
    ) -> Generator[None, None, dict[str, tuple[StoredProfile, InputMessage]]]:
        """Publish the ``due`` recommendations, one step each (see
        :class:`Slicer`); their profiles to write."""
        written: dict[str, tuple[StoredProfile, InputMessage]] = {}
        for held in due:
            yield
            self._publish_one(held, now, out)
            written[held.event.user_id] = (held.profile, held.record)
        self.metrics.recommendations_held.set(len(self.debounce))
        return written

    def publish_due(self) -> list[OutputMessage]:
        """Between batches (the worker calls it often): publish the held
        recommendations due now, and write those profiles."""
        return run(self.publish_due_in_slices())

    def publish_due_in_slices(self) -> Slices[list[OutputMessage]]:
        """:meth:`publish_due` in slices (see :data:`Slices`)."""
        if not self.debounce.held:
            return []
        now = self.clock()
        return (yield from self._publish_between_batches(now, now))

    def publish_all(self) -> list[OutputMessage]:
        """Publish every held recommendation now (offline callers, tests)."""
        return run(self._publish_between_batches(math.inf, self.clock()))

    def _publish_between_batches(
        self, due_at: float, now: float
    ) -> Slices[list[OutputMessage]]:
        out: list[OutputMessage] = []
        written = yield from Slicer(self.settings.batch_slice_seconds).run(
            self._publish(self.debounce.due(due_at), now, out))
        self._store_exposures()
        for user_id, (profile, source) in written.items():
            self.profiles.put(user_id, profile, source)
        return out

    def drop_held(self, partitions: Container[tuple[str, int]]) -> int:
        """Forget the held recommendations of input records on ``partitions``
        (revoked by a rebalance): the partitions' next owner reads the records
        again and holds them (the profile names the trigger). Returns how many
        were dropped."""
        dropped = self.debounce.drop(partitions)
        self.metrics.recommendations_held.set(len(self.debounce))
        return dropped

    def settle(self) -> tuple[list[InputMessage], list[InputMessage]]:
        """``(hold, release)`` for the commit guard: see :meth:`Debounce.settle`."""
        return self.debounce.settle()

    def evict(self) -> int:
        """Forget inactive users (:class:`~stream.eviction.Eviction`); how many."""
        return self.eviction.evict(self.max_event_time)

    def tick(self) -> list[OutputMessage]:
        """Time-driven work: churn checks at the latest event time, model gauges."""
        out: list[OutputMessage] = []
        if self.max_event_time:
            now = self.clock()
            alerts = self.engine.tick(self.max_event_time, self.refit_customer_value_in_tick)
            out.extend(self._alert(a, now) for a in alerts)
        # Segment sizes are published (the metrics endpoint is open): DP sizes.
        self.metrics.segment_users.clear()
        try:
            sizes = self.publisher.segments().sizes
        except BudgetExhausted:
            sizes = {}
        for segment, size in sizes.items():
            self.metrics.segment_users.labels(str(segment)).set(size)
        assert self.publisher.ledger is not None
        for release, spent in self.publisher.ledger.by_release().items():
            self.metrics.dp_epsilon_spent.labels(release).set(spent)
        for release, count in self.publisher.ledger.releases().items():
            self.metrics.dp_releases.labels(release).set(count)
        self._bandit_gauges()
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
            changes["text"] = scrub_pii(event.text, (event.user_id,))
        if event.title:
            changes["title"] = scrub_pii(event.title, (event.user_id,))
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

    def _exposures(self, profile: StoredProfile) -> UserExposures:
        # Parsed once per user per batch (a basket's lines, a click session), not
        # per event; reused while the profile still holds the compact log it came from.
        raw = profile.exposures
        cached = self._exposure_logs.get(profile.user_id)
        if cached is not None and cached[0] is profile and cached[1] is raw:
            return cached[2]
        log = UserExposures.from_json(
            raw,
            window=self.settings.attribution_window_seconds,
            max_exposures=self.settings.attribution_max_exposures,
        )
        self._exposure_logs[profile.user_id] = (profile, raw, log)
        return log

    def _save_exposures(self, profile: StoredProfile, log: UserExposures) -> None:
        """``log`` is the profile's from now on; its compact form is written into the
        profile by :meth:`_store_exposures`, before the profile is."""
        self._exposure_logs[profile.user_id] = (profile, profile.exposures, log)
        self._unsaved[id(profile)] = (profile, log)

    def _store_exposures(self) -> None:
        """Write the changed logs' compact form into their profiles (before any profile
        write, and before the parsed logs are dropped)."""
        for profile, log in self._unsaved.values():
            raw = profile.exposures = log.compact()
            cached = self._exposure_logs.get(profile.user_id)
            if cached is not None and cached[0] is profile:
                self._exposure_logs[profile.user_id] = (profile, raw, log)
        self._unsaved.clear()

    def _drop_exposures(self, user_id: str) -> None:
        self._exposure_logs.pop(user_id, None)
        for key in [k for k, (p, _) in self._unsaved.items() if p.user_id == user_id]:
            del self._unsaved[key]

    def _attribute(self, profile: StoredProfile, event: Event, etype: str) -> None:
        """Credit a click or purchase to one of the user's recent recommendations."""
        m = self.metrics
        if event.type == "purchase" and event.quantity <= 0:
            return  # returns are not attributed
        log = self._exposures(profile)
        pulled = self.pulled.merge(event.user_id, log)  # lists pulled since its last event
        hit = self.loop.attribute(log, event)
        if hit is None:
            reason = (
                "unknown_recommendation_id" if event.recommendation_id else "not_recommended"
            )
            m.attribution_unmatched.labels(etype, reason).inc()
            if pulled:
                self._save_exposures(profile, log)
            return
        exp = hit.exposure
        labels = (exp.variant, exp.strategy)
        if hit.kind == "click":
            m.attributed_clicks.labels(*labels, hit.matched_by).inc()
            if hit.first:
                m.recommendations_clicked.labels(*labels).inc()
        else:
            m.attributed_purchases.labels(*labels).inc()
            if hit.revenue > 0:
                # Per currency: amounts in different currencies are never added up.
                currency = event.currency or NO_CURRENCY
                m.attributed_revenue.labels(*labels, currency).inc(hit.revenue)
            if hit.first:
                m.recommendations_converted.labels(*labels).inc()
        self._save_exposures(profile, log)

    def choose(self, user_id: str, segment: int | None, key: str) -> tuple[str, str]:
        """``(variant, strategy)`` of a recommendation for ``user_id`` (the bandit's counted)."""
        variant, strategy = self.loop.choose(user_id, segment, key)
        if self.loop.bandit is not None:
            self.metrics.bandit_choices.labels(segment_key(segment), strategy).inc()
        return variant, strategy

    def exposures_of(self, profile: StoredProfile) -> UserExposures:
        """The user's stored exposure log (read-only use: the fatigue of a pulled list)."""
        return self._exposures(profile)

    def expose_pulled(self, user_id: str, exposure: Exposure) -> None:
        """Count a pulled list as shown; it joins the user's log at their next event."""
        self.loop.expose(self.pulled.log_of(user_id), exposure)
        self.metrics.exposures.labels(exposure.variant, exposure.strategy).inc()

    def _published_popular(self) -> list[str]:
        """The DP popularity list: what the popularity control shows (docs/privacy.md)."""
        try:
            return self.publisher.popular()
        except BudgetExhausted:  # no release yet and no budget left: nothing to show
            return []

    def publishable(self, items: list[Recommendation]) -> list[Recommendation]:
        """``items`` with each reason quoting an item pair ("bought together with X")
        kept only when the DP count of the pair supports it (docs/privacy.md)."""
        return [
            dataclasses.replace(r, reason=private_reason(r.item_id, r.reason, self.publisher))
            if r.reason.startswith(PAIR_REASONS) else r
            for r in items
        ]

    def _recommend(
        self, profile: StoredProfile, event: Event, msg: InputMessage, now: float
    ) -> OutputMessage | None:
        segment = profile.segment
        variant, strategy = self.choose(event.user_id, segment, event.event_id)
        log = self._exposures(profile)
        items = self.loop.recommend(
            self.engine, event.user_id, strategy, log, key=event.event_id
        )
        if not items:
            # Nothing the user has not already bought yet (a cold catalogue): an
            # empty list helps no consumer, so nothing is published.
            return None
        rec_id = str(uuid.uuid5(_ID_NAMESPACE, f"rec:{event.event_id}:{strategy}"))
        items = self.publishable(items)
        as_json = [recommendation_json(r) for r in items]  # once for the profile and payload
        shown = tuple(r.item_id for r in items)  # the profile's and the exposure's
        profile.recommend(
            rec_id, shown, [r["score"] for r in as_json], [r["reason"] for r in as_json],
            event.timestamp, variant,
        )
        self.loop.expose(
            log, Exposure(rec_id, shown, strategy, variant, event.timestamp, segment)
        )
        self._save_exposures(profile, log)
        self.metrics.exposures.labels(variant, strategy).inc()
        self.engine.information.on_list(strategy, items, self.engine)
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
            "event_time": _rfc3339(event.timestamp),
            "generated_at": _rfc3339(now),
        }
        self.metrics.recommendations.labels(strategy).inc()
        if msg.timestamp:
            self.metrics.recommendation_latency_seconds.observe(max(0.0, now - msg.timestamp))
        return OutputMessage(
            self.settings.topic_recommendations, event.user_id.encode(), orjson.dumps(payload)
        )

    def _bandit_gauges(self) -> None:
        # Experiment rates and their intervals are not exported: Prometheus
        # computes them from the counters of every worker (ops/prometheus/rules.yml).
        m = self.metrics
        if self.loop.bandit is not None:
            for segment, arms in self.loop.bandit.snapshot().items():
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
            "event_time": _rfc3339(alert.timestamp),
            "generated_at": _rfc3339(now),
        }
        self.metrics.alerts.labels(alert.kind, alert.severity).inc()
        return OutputMessage(
            self.settings.topic_alerts, alert.subject.encode(), orjson.dumps(payload)
        )

    def dead_letter(self, msg: InputMessage, rejection: Rejected) -> OutputMessage:
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
            headers.append(("source.timestamp", _rfc3339(msg.timestamp).encode()))
        key = msg.key
        if self.settings.deadletter_pseudonymise_keys:
            key = pseudonymise_key_bytes(key, self._key)
        return OutputMessage(self.settings.topic_deadletter, key, msg.value or b"", headers)

    # -- erasure on request (docs/privacy.md) ---------------------------------------

    def erase(self, user_id: str) -> tuple[list[OutputMessage], dict[str, int]]:
        """Erase everything held about ``user_id`` (as the events name it).

        The profile (a changelog tombstone: de-duplication ids, exposures and
        their attribution flags go with it), the models' per-user state, a
        recommendation still owed (its trigger record is released for commit:
        nothing will answer it). Returns the outputs to publish, a tombstone
        under the user's key on the recommendations topic, and what was erased
        by part (``stream.erasure.ERASED_PARTS``). Idempotent.
        """
        stored = pseudonymise(user_id, self._key) if self._key else user_id
        erased = dict.fromkeys(ERASED_PARTS, 0)
        if self.debounce.forget(stored):
            erased["pending"] = 1
            self.metrics.recommendations_held.set(len(self.debounce))
        profile = self.profiles.get(stored)
        if profile is not None:
            erased["dedupe_ids"] = len(profile.recent_event_ids)
            erased["exposures"] = len(profile.exposures)
            erased["attribution"] = sum(1 for e in profile.exposures if e[6] or e[7])
            erased["profile"] = self.profiles.delete([stored])
        self._drop_exposures(stored)
        pulled = self.pulled.pending.pop(stored, None)  # pulled lists not yet stored
        if pulled is not None:
            erased["exposures"] += len(pulled.exposures)
        erased["engine_state"] = self.engine.erase(stored)
        erased["recommendations"] = 1
        tombstone = OutputMessage(self.settings.topic_recommendations, stored.encode(), None)
        return [tombstone], erased


class DictStore(dict[str, StoredProfile]):
    """An in-memory :class:`ProfileStore` (tests, the evaluation tools)."""

    def put(self, user_id: str, profile: StoredProfile, source: InputMessage) -> None:
        self[user_id] = profile

    def delete(self, user_ids: Sequence[str]) -> int:
        return sum(self.pop(user_id, None) is not None for user_id in user_ids)
