"""FeedbackEngine: every model of the service behind one predict-then-learn call.

The worker calls :meth:`FeedbackEngine.process` once per validated event and
:meth:`FeedbackEngine.tick` every few seconds; the evaluation tool replays files
through exactly the same calls. Every prediction in an :class:`Outcome` is made
*before* the engine learns from the event (progressive validation), and time
only ever comes from events.
"""

from __future__ import annotations

import heapq
import itertools
import math
import zlib
from collections import deque
from collections.abc import Collection, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.alerts import ALERT_KINDS, Alert, BehaviourAnomaly, Cooldown, QualityDrift
from models.catalogue import ItemCatalogue, grown
from models.churn import ChurnModel
from models.clv import CustomerValue, Prediction
from models.events import Event
from models.factorization import RatingFactorization
from models.information import BehaviourShift, ListInformation
from models.item_updates import (
    Outbox,
    apply_item_models,
    apply_item_models_in_steps,
    blend_state,
    merge_blend,
)
from models.profiles import DAY, History, UserProfile
from models.recommender import BlendedRecommender, exclude_seen, top_k
from models.segmentation import OnlineSegmentation
from models.sentiment import ItemSentiment, SentimentModel
from models.session import (
    SESSION_FEATURES,
    SESSION_REASONS,
    SessionRecommender,
    strongest,
    with_session,
)

__all__ = [
    "ALERT_KINDS",
    "USER_ALERT_KINDS",
    "Alert",
    "EngineConfig",
    "FeedbackEngine",
    "Outcome",
    "Recommendation",
]

#: Alert kinds whose subject is a user id (their cooldowns are per-user state).
USER_ALERT_KINDS = ("churn_risk", "anomalous_behaviour")


@dataclass(frozen=True, slots=True)
class Recommendation:
    """One recommended item, its blend score and why."""

    item_id: str
    score: float
    reason: str


@dataclass(slots=True)
class Outcome:
    """What one event produced; every figure measured before learning from it."""

    alerts: list[Alert] = field(default_factory=list)
    hit: bool | None = None
    rating_error: float | None = None
    sentiment: float | None = None
    segment: int | None = None
    anomaly_score: float | None = None


@dataclass(frozen=True)
class EngineConfig:
    """Every knob of the engine, with defaults that work on the shared datasets.

    Interaction strengths feed co-occurrence and popularity; a review's
    strength is ``review_weight`` scaled up by how much it was liked.
    """

    seed: int = 42
    top_k: int = 10
    # user memory bounds
    history_size: int = 20
    max_seen_items: int = 2000
    # interaction strengths
    click_weight: float = 0.3
    purchase_weight: float = 1.0
    review_weight: float = 0.6
    # recommender
    history_decay: float = 0.9
    max_neighbours: int = 200
    pair_decay: float = 0.9
    mass_alpha: float = 0.5
    cooccurrence_pmi: bool = False  # positive PMI instead of the cosine-like normalisation
    trending_half_life_s: float = DAY
    segment_half_life_s: float = 7 * DAY
    n_factors: int = 16
    bpr_lr: float = 0.05
    bpr_l2: float = 0.01
    bpr_negatives: int = 2
    bpr_popular_negatives: bool = True
    rating_factors: int = 10
    blend_lr: float = 0.05
    blend_l2: float = 0.01
    # segmentation
    n_segments: int = 4
    segment_margin: float = 0.05
    segment_warmup: int = 50
    segment_refit_every: int = 2000
    segment_refit_sample: int = 4096
    refresh_users_per_tick: int = 1000
    # sentiment
    lexicon_prior_weight: float = 3.0
    sentiment_lr: float = 0.8
    sentiment_l2: float = 1e-5
    # alerts
    alert_cooldown_s: float = DAY
    drift_cooldown_s: float = 7 * DAY
    spike_min_reviews: int = 10
    spike_z: float = 3.0
    spike_min_increase: float = 0.25
    spike_min_rate: float = 0.5
    anomaly_quantile: float = 0.999
    anomaly_min_score: float = 0.8
    anomaly_warmup: int = 1000
    drift_delta: float = 0.002
    drift_min_events: int = 1000
    # churn
    churn_horizon_days: float = 90.0
    churn_overdue_factor: float = 3.0
    churn_min_orders: int = 3
    # churn_risk alerts when the customer-value model's P(alive) falls below this
    churn_alive_threshold: float = 0.5
    # customer value (models.clv): MBG/NBD + Gamma-Gamma refitted from the stream
    clv_horizon_days: float = 90.0
    clv_refit_fraction: float = 0.1
    clv_refit_days: float = 7.0
    clv_max_fit_customers: int = 50_000
    # MBG/CNBD-k regularity (models.clv): k is chosen by likelihood from the
    # stream (CDNOW: 1, Online Retail's regular re-orderers: 2); False keeps k = 1
    # and skips the search (up to 8 numerical fits on a cold start)
    clv_regularity: bool = True
    # behaviour shift (models.information): windows in events, cooldown in event time
    shift_block: int = 500
    shift_current_blocks: int = 4
    shift_reference_blocks: int = 8
    shift_z: float = 6.0
    shift_min_divergence: float = 0.02
    shift_cooldown_s: float = DAY
    # eviction: users are indexed by last activity in buckets of this much event time
    activity_bucket_s: float = 3600.0
    # sessions (models.session): a click without session_id after this gap starts one
    session_gap_s: float = 1800.0
    # weights of the session rows (current item, repeats, rules, neighbours) and of
    # the blend, scaled to [0, 1], when the user has a live session
    session_weights: tuple[float, float, float, float] = (4.0, 0.5, 1.0, 1.0)
    session_blend_weight: float = 0.2
    session_rule_window: int = 10
    session_sample: int = 500
    session_neighbours: int = 100
    max_sessions: int = 50_000


class FeedbackEngine:
    """Recommender, segmentation, sentiment, anomaly, drift and churn in one object.

    All state lives in plain attributes (numpy arrays, dicts, River models), so
    the engine pickles as a whole. Memory per user and per item is bounded:
    see :class:`models.profiles.UserProfile` (history and seen-item caps),
    :class:`models.cooccurrence.ItemCooccurrence` (neighbour cap) and the
    fixed-size per-item arrays; the number of users and items itself grows
    with the data.

    Examples
    --------
    >>> engine = FeedbackEngine(EngineConfig(seed=1))
    >>> t = 1_700_000_000.0
    >>> for i, (user, item) in enumerate([("a", "x"), ("a", "y"), ("b", "x")]):
    ...     out = engine.process(Event("purchase", f"e{i}", user, item, t + i, quantity=1))
    >>> [r.item_id for r in engine.recommend("b")]
    ['y']
    >>> engine.recommend("b")[0].reason
    'bought together with x (2.0x chance)'
    """

    #: Share of events whose predictions are checked (hit, rating error and the drift
    #: detectors on them): 1 in the evaluation; the worker sets its own
    #: (``FEEDBACK_QUALITY_SAMPLE``). A class default, so older checkpoints load.
    quality_sample: float = 1.0

    def __init__(self, config: EngineConfig | None = None) -> None:
        self.config = config if config is not None else EngineConfig()
        c = self.config
        self.catalogue = ItemCatalogue()
        self.profiles: dict[str, UserProfile] = {}
        self.recommender = BlendedRecommender(
            history_size=c.history_size,
            history_decay=c.history_decay,
            max_neighbours=c.max_neighbours,
            pair_decay=c.pair_decay,
            mass_alpha=c.mass_alpha,
            cooccurrence_pmi=c.cooccurrence_pmi,
            trending_half_life=c.trending_half_life_s,
            segment_half_life=c.segment_half_life_s,
            n_segments=c.n_segments,
            n_factors=c.n_factors,
            bpr_lr=c.bpr_lr,
            bpr_l2=c.bpr_l2,
            bpr_negatives=c.bpr_negatives,
            bpr_popular_negatives=c.bpr_popular_negatives,
            blend_lr=c.blend_lr,
            blend_l2=c.blend_l2,
            seed=c.seed,
        )
        self.sessions = SessionRecommender(
            gap_s=c.session_gap_s,
            rule_window=c.session_rule_window,
            sample=c.session_sample,
            neighbours=c.session_neighbours,
            max_sessions=c.max_sessions,
        )
        self.ratings = RatingFactorization(n_factors=c.rating_factors, seed=c.seed + 1)
        self.segmentation = OnlineSegmentation(
            k=c.n_segments,
            margin=c.segment_margin,
            warmup=c.segment_warmup,
            refit_every=c.segment_refit_every,
            refit_sample=c.segment_refit_sample,
            seed=c.seed,
        )
        self.sentiment = SentimentModel(c.lexicon_prior_weight, c.sentiment_lr, c.sentiment_l2)
        self.item_sentiment = ItemSentiment()
        self.anomaly = BehaviourAnomaly(
            quantile=c.anomaly_quantile,
            min_score=c.anomaly_min_score,
            warmup=c.anomaly_warmup,
            seed=c.seed,
        )
        self.hit_drift = QualityDrift(higher_is_better=True, delta=c.drift_delta)
        self.rating_drift = QualityDrift(higher_is_better=False, delta=c.drift_delta)
        self.churn = ChurnModel(
            horizon_days=c.churn_horizon_days,
            overdue_factor=c.churn_overdue_factor,
            min_orders=c.churn_min_orders,
        )
        self.customer_value = CustomerValue(
            horizon_days=c.clv_horizon_days,
            refit_fraction=c.clv_refit_fraction,
            refit_days=c.clv_refit_days,
            max_fit_customers=c.clv_max_fit_customers,
            regularity=c.clv_regularity,
            seed=c.seed,
        )
        self.shift = BehaviourShift(
            block=c.shift_block,
            current_blocks=c.shift_current_blocks,
            reference_blocks=c.shift_reference_blocks,
            z=c.shift_z,
            min_divergence=c.shift_min_divergence,
        )
        # What the worker's published lists showed (fed by the stream layer).
        self.information = ListInformation()
        self.cooldown = Cooldown(
            c.alert_cooldown_s,
            {"model_drift": c.drift_cooldown_s, "behaviour_shift": c.shift_cooldown_s},
        )
        self.item_price = np.zeros(16)
        self.item_price_n = np.zeros(16)
        self.item_ratings = np.zeros((16, 2))  # per item: rated reviews, sum of stars
        # Users by last activity: bucket (last_seen // activity_bucket_s) -> users
        # (a dict as an insertion-ordered set), the buckets' numbers in a heap,
        # and the users held back from eviction by a pending churn alert.
        self.activity: dict[int, dict[str, None]] = {}
        self.activity_heap: list[int] = []
        self.held: dict[str, None] = {}
        # Set (models.item_updates.attach) on a worker that shares what it learns
        # about items; None: nothing recorded, nothing paid.
        self.outbox: Outbox | None = None
        self.clock: float | None = None
        self.events = 0
        self.hits_seen = 0
        self.ratings_seen = 0

    # -- the per-event path ----------------------------------------------------
    def _gauged(self, event: Event) -> bool:
        """Whether ``event`` feeds the quality gauges (hit, rating error, drift): all
        events at ``quality_sample`` 1, else a seeded hash of the event id picks them
        (the same events on every run and worker). Learning never depends on it."""
        rate = self.quality_sample
        if rate >= 1.0:
            return True
        key = zlib.crc32(event.event_id.encode(), self.config.seed & 0xFFFFFFFF)
        return key < rate * 4_294_967_296.0
    def _profile(self, user_id: str, t: float) -> UserProfile:
        profile = self.profiles.get(user_id)
        if profile is None:
            profile = UserProfile(user_id, t, t, History(self.config.history_size))
            self.profiles[user_id] = profile
            self._activity_add(user_id, t)
        elif t > profile.last_seen:
            self._activity_move(user_id, profile.last_seen, t)
        return profile

    # -- the activity index (eviction) -------------------------------------------
    def _bucket(self, t: float) -> int:
        return int(t // self.config.activity_bucket_s)

    def _activity_add(self, user_id: str, t: float) -> None:
        b = self._bucket(t)
        users = self.activity.get(b)
        if users is None:
            users = self.activity[b] = {}
            heapq.heappush(self.activity_heap, b)
        users[user_id] = None

    def _activity_move(self, user_id: str, old: float, new: float) -> None:
        # Where the user is now: the bucket of their last activity, or held.
        if self.held.pop(user_id, 0) is None:
            self._activity_add(user_id, new)
            return
        b = self._bucket(old)
        if b != self._bucket(new):
            users = self.activity.get(b)
            if users is not None:
                users.pop(user_id, None)
            self._activity_add(user_id, new)

    def _activity_remove(self, user_id: str, last_seen: float) -> None:
        if self.held.pop(user_id, 0) is None:
            return
        users = self.activity.get(self._bucket(last_seen))
        if users is not None:
            users.pop(user_id, None)

    def _oldest_bucket(self) -> tuple[int, dict[str, None]] | None:
        """The earliest non-empty activity bucket (empty ones are dropped on the way)."""
        heap = self.activity_heap
        while heap:
            users = self.activity.get(heap[0])
            if users:
                return heap[0], users
            self.activity.pop(heapq.heappop(heap), None)
        return None

    def _strengths(self, event: Event, sentiment: float | None) -> tuple[float, float]:
        """``(strength, preference)`` of an event, see ``BlendedRecommender.learn``."""
        c = self.config
        if event.type == "click":
            return c.click_weight, c.click_weight
        if event.type == "purchase":
            if event.quantity < 0:
                return -c.purchase_weight, -c.purchase_weight
            return c.purchase_weight, c.purchase_weight
        if event.rating is not None:
            liking = min(1.0, max(0.0, (event.rating - 1.0) / 4.0))
        elif sentiment is not None:
            liking = sentiment
        else:
            liking = 0.5
        return c.review_weight * (0.5 + liking), 2.0 * liking - 1.0

    def process(self, event: Event) -> Outcome:
        """Predict for ``event`` (hit, rating, sentiment, anomaly), then learn from it."""
        c = self.config
        t = event.timestamp
        self.clock = t if self.clock is None else max(self.clock, t)
        self.events += 1
        n_known = len(self.catalogue)  # items that could have been recommended
        item = self.catalogue.add(event.item_id)
        n_items = len(self.catalogue)
        profile = self._profile(event.user_id, t)
        out = Outcome()

        # ---- predict (nothing below has learnt from this event yet) ----
        gauged = self._gauged(event)
        scored = None
        if event.is_positive:
            if item < n_known:
                # Scored on every positive event: the blend weights learn from it.
                scored = self.recommender.score(profile, n_known)
                if gauged:
                    rank = self.recommender.rank_of(scored, item)
                    out.hit = rank is not None and rank < c.top_k
            elif gauged:
                out.hit = False
        if gauged and event.type == "review" and event.rating is not None:
            out.rating_error = self.ratings.predict_one(event.user_id, item) - event.rating
        words = None
        if event.type == "review" and event.text:
            # The title ("Disappointed", "Love it!") is part of what the reviewer said.
            text = f"{event.title}. {event.text}" if event.title else event.text
            words = self.sentiment.features(text)  # computed once: predict, then learn
            out.sentiment = self.sentiment.predict_proba_one(words)
        if event.type == "purchase":
            out.anomaly_score = self._anomaly_score(event, profile, item)

        # ---- learn ----
        strength, preference = self._strengths(event, out.sentiment)
        if self.outbox is not None:
            self.outbox.record(self, event, profile, item, strength, out.sentiment)
        self.recommender.learn_one(profile, item, strength, preference, t, n_items)
        if scored is not None:
            self.recommender.learn_blend(scored, item)
        if strength > 0 and event.type != "review":  # browsing and buying make sessions
            self.sessions.learn_one(
                event.user_id, item, t, event.session_id, browsing=event.type == "click"
            )
        else:
            self.sessions.pause(event.user_id)
        if event.rating is not None and event.type == "review":
            self.ratings.learn_one(event.user_id, item, event.rating)
            self.item_ratings = grown(self.item_ratings, item + 1)
            self.item_ratings[item] += (1.0, event.rating)
        if words is not None:
            self.sentiment.learn_one(words, event.rating)
        previous_order = profile.last_order_time
        new_order = profile.learn_one(event, out.sentiment)
        if event.type == "purchase" and event.quantity > 0:
            self.customer_value.learn_one(event.user_id, t, event.revenue)
        if new_order:
            self.churn.learn_one(profile, previous_order, self._churn_due(event.user_id))
        profile.mark_seen(item, event.type, c.max_seen_items)
        # A click moves only log(clicks) in the segmentation vector: re-segment on
        # the 1st, 2nd, 4th, 8th, ... click (and for unsegmented users); purchases
        # and reviews always re-segment.
        if (
            event.type != "click"
            or profile.segment is None
            or profile.clicks & (profile.clicks - 1) == 0
        ):
            spend = self.customer_value.expected_spend_one(event.user_id, t)
            profile.segment = self.segmentation.learn_one(
                event.user_id,
                profile.segment_vector(spend if spend is not None else 0.0),
                profile.last_seen,
            )
        out.segment = profile.segment

        # ---- alerts ----
        if out.sentiment is not None:
            self._check_spike(event, out.sentiment, out.alerts)
        if out.anomaly_score is not None and out.anomaly_score > self.anomaly.threshold():
            self._alert(
                out.alerts,
                "anomalous_behaviour",
                "critical" if out.anomaly_score >= 0.99 else "warning",
                event.user_id,
                f"Unusual purchase by user {event.user_id}: {event.quantity} x "
                f"{event.item_id} at {event.price:g}.",
                out.anomaly_score,
                self.anomaly.threshold(),
                t,
            )
        self._check_drift(out, t)
        shift = self.shift.learn_one(event)
        if shift is not None:
            self._shift_alert(shift, out.alerts, t)
        return out

    def _shift_alert(self, shift: dict[str, float], alerts: list[Alert], t: float) -> None:
        names = [k for k in BehaviourShift.DISTRIBUTIONS if k in shift]
        worst = max(names, key=lambda k: shift[k])
        detail = ", ".join(f"{k.replace('_', ' ')} {shift[k]:.3f}" for k in names)
        window = self.shift.block * self.shift.current_blocks
        reference = self.shift.block * self.shift.reference_blocks
        self._alert(
            alerts,
            "behaviour_shift",
            "critical" if shift[worst] >= 4 * self.shift.min_divergence else "warning",
            "stream",
            f"The last {window:,} events differ from the {reference:,} before them"
            f", most in {worst.replace('_', ' ')} (Jensen-Shannon bits: {detail}).",
            shift["score"],
            self.shift.z,
            t,
        )

    def _anomaly_score(self, event: Event, profile: UserProfile, item: int) -> float | None:
        self.item_price = grown(self.item_price, item + 1)
        self.item_price_n = grown(self.item_price_n, item + 1)
        n = self.item_price_n[item]
        mean_price = self.item_price[item] if n > 0 else event.price
        features = [
            float(event.quantity),
            event.price,
            abs(event.revenue),
            event.price / mean_price - 1.0 if mean_price > 0 else 0.0,
            (event.timestamp - profile.last_seen) / 3600.0 if profile.purchase_lines else 0.0,
        ]
        score = self.anomaly.score_learn_one(features)
        self.item_price_n[item] = n + 1
        self.item_price[item] = mean_price + (event.price - mean_price) / (n + 1)
        return score

    def _alert(
        self,
        alerts: list[Alert],
        kind: str,
        severity: str,
        subject: str,
        message: str,
        value: float,
        threshold: float,
        t: float,
    ) -> None:
        if self.cooldown.allow(kind, subject, t):
            alerts.append(Alert(kind, severity, subject, message, value, threshold, t))

    def _check_spike(self, event: Event, p_positive: float, alerts: list[Alert]) -> None:
        """Alert when an item's recent negative rate is significantly above its baseline.

        The recent rate is an exponential average over about ``n_eff`` reviews;
        it must exceed the baseline by ``spike_z`` binomial standard errors (the
        baseline floored at 5% so that a spotless item does not alert on one bad
        review), by ``spike_min_increase`` in absolute terms, and reach
        ``spike_min_rate``, after at least ``spike_min_reviews`` reviews.
        """
        c = self.config
        recent, baseline, count = self.item_sentiment.learn_one(
            event.item_id, p_positive, event.timestamp
        )
        if count < c.spike_min_reviews:
            return
        fast = self.item_sentiment.fast
        n_eff = (2.0 - fast) / fast
        p0 = max(baseline, 0.05)
        threshold = max(
            p0 + c.spike_z * math.sqrt(p0 * (1.0 - p0) / n_eff),
            baseline + c.spike_min_increase,
            c.spike_min_rate,
        )
        if recent > threshold:
            self._alert(
                alerts,
                "negative_review_spike",
                "critical" if recent >= 0.75 else "warning",
                event.item_id,
                f"Negative reviews of {event.item_id} are up: {recent:.0%} of recent reviews "
                f"against a baseline of {baseline:.0%}.",
                recent,
                threshold,
                event.timestamp,
            )

    def _check_drift(self, out: Outcome, t: float) -> None:
        c = self.config
        if out.hit is not None:
            self.hits_seen += 1
            change = self.hit_drift.learn_one(float(out.hit))
            if change is not None and self.hits_seen >= c.drift_min_events:
                self._alert(
                    out.alerts,
                    "model_drift",
                    "warning",
                    "recommender",
                    f"Recommender hit rate fell from {change[1]:.3f} to {change[0]:.3f}.",
                    change[0],
                    change[1],
                    t,
                )
        if out.rating_error is not None:
            self.ratings_seen += 1
            change = self.rating_drift.learn_one(abs(out.rating_error))
            if change is not None and self.ratings_seen >= c.drift_min_events:
                self._alert(
                    out.alerts,
                    "model_drift",
                    "warning",
                    "rating_model",
                    f"Rating model error rose from {change[1]:.3f} to {change[0]:.3f}.",
                    change[0],
                    change[1],
                    t,
                )

    # -- periodic work -----------------------------------------------------------
    def tick(self, now: float, refit_customer_value: bool = True) -> list[Alert]:
        """Churn alerts due by event time ``now``; a few segment refreshes.

        Cost is proportional to the alerts that fell due plus
        ``refresh_users_per_tick``, never to the number of users, except for
        the customer-value refit when one is due: a worker passes
        ``refit_customer_value=False`` and runs that refit off its event loop
        (``stream/refit.py``).
        """
        alerts: list[Alert] = []
        c = self.config
        for user_id, version, due in self.churn.due(now):
            profile = self.profiles.get(user_id)
            if profile is None or profile.churn_version != version or profile.churn_due != due:
                continue  # ordered again since (or evicted): that due date is stale
            profile.churn_due = None  # checked: no longer holds the user back from eviction
            self._check_churn(user_id, profile, now, alerts)
        self.segmentation.refresh(c.refresh_users_per_tick)
        if refit_customer_value:
            self.customer_value.maybe_refit(now)
        if len(self.cooldown.last) > 10_000:
            self.cooldown.prune(now)
        return alerts

    def _churn_due(self, user_id: str) -> float | None:
        return self.customer_value.alive_due(user_id, self.config.churn_alive_threshold)

    def _check_churn(
        self, user_id: str, profile: UserProfile, now: float, alerts: list[Alert]
    ) -> None:
        """Alert if the customer-value model's P(alive) is below the threshold at ``now``.

        The parameters may have been refitted since the check was scheduled: a
        customer still above the threshold is checked again at the new due date.
        """
        c = self.config
        value = self.customer_value.predict_one(user_id, now, c.churn_horizon_days)
        if value is None:
            return
        if value.p_alive > c.churn_alive_threshold * (1 + 1e-6):
            due = self._churn_due(user_id)
            if due is not None and due > now:
                self.churn.schedule(profile, due)
            return
        assert profile.last_order_time is not None
        silent = (now - profile.last_order_time) / DAY
        self._alert(
            alerts,
            "churn_risk",
            "critical" if value.p_purchase <= 0.1 else "warning",
            user_id,
            f"Customer {user_id} has probably stopped buying: P(still a customer) "
            f"{value.p_alive:.2f} after {silent:.0f} days without an order "
            f"({profile.orders} orders before); expected purchase-days in the next "
            f"{c.churn_horizon_days:.0f} days {value.expected_purchases:.2f}.",
            1.0 - value.p_alive,
            1.0 - c.churn_alive_threshold,
            now,
        )

    # -- item-side knowledge shared between workers (models.item_updates) ------------
    def apply_item_models(self, models: Iterable[tuple[str, Mapping[str, Any]]]) -> int:
        """Overwrite the local item-side state of published item models; how many."""
        return apply_item_models(self, models)

    def apply_item_models_in_steps(
        self, models: Iterable[tuple[str, Mapping[str, Any]]]
    ) -> Generator[None, None, int]:
        """:meth:`apply_item_models`, pausing between two models
        (:func:`models.item_updates.apply_item_models_in_steps`)."""
        return apply_item_models_in_steps(self, models)

    def blend_state(self) -> dict[str, Any]:
        """This engine's record for the blend weights' periodic averaging."""
        return blend_state(self)

    def merge_blend(self, states: Iterable[Mapping[str, Any]]) -> bool:
        """Set the blend weights to the step-weighted mean of every worker's record."""
        return merge_blend(self, states)

    # -- per-user state bounds ------------------------------------------------------
    def forget(self, user_id: str) -> bool:
        """Drop every per-user structure of ``user_id``; False if unknown.

        The profile (history, seen items, counters, churn state), both
        factorisations' user vectors, the segmentation row and the user's alert
        cooldowns. Item-side models keep what the user taught them. A later
        event from the user starts from nothing, as for a new user.
        """
        profile = self.profiles.pop(user_id, None)
        if profile is not None:
            self._activity_remove(user_id, profile.last_seen)
        self.recommender.taste.forget(user_id)
        self.sessions.forget(user_id)
        self.ratings.forget(user_id)
        self.segmentation.remove(user_id)
        self.customer_value.forget(user_id)
        for kind in USER_ALERT_KINDS:
            self.cooldown.last.pop((kind, user_id), None)
        return profile is not None

    def erase(self, user_id: str) -> int:
        """Erase ``user_id`` on request: :meth:`forget` plus the entries eviction
        leaves to lapse (the churn heap's due dates), so that no structure of
        the engine, hence no checkpoint, holds the id. Returns the number of
        records removed (0: the engine held nothing of the user): the live
        session, the profile and the churn due dates.

        Item-side models (co-occurrence, popularity, item factors, sentiment)
        keep the user's past contribution, with no id: docs/privacy.md says why.

        >>> engine = FeedbackEngine()
        >>> _ = engine.process(Event("purchase", "e1", "u1", "x", 1e9, quantity=1))
        >>> engine.erase("u1"), engine.erase("u1"), "u1" in engine.profiles
        (2, 0, False)
        """
        removed = self.sessions.erase(user_id)  # before forget() drops the session
        removed += int(self.forget(user_id))
        removed += self.churn.forget(user_id)
        return removed

    def evict_inactive(self, before: float, limit: int) -> list[str]:
        """Forget users whose last event is older than ``before`` (event time).

        Users are indexed by the hour (``activity_bucket_s``) of their last
        event, so whatever order partitions were processed in, the step reads
        the oldest first, at most ``limit`` users, and stops at the first bucket
        that is not older than ``before``: the cost is O(``limit``) whatever the
        number of users. A user whose churn alert is still pending
        (``UserProfile.churn_due``) is held back and looked at again on later
        calls: the alert of a customer who goes quiet fires before they are
        forgotten. Returns the ids forgotten.
        """
        evicted: list[str] = []
        budget = max(limit, 0)
        # Held users first: those whose alert has been checked since may go now.
        for user_id in list(itertools.islice(self.held, budget)):
            if self.profiles[user_id].churn_due is None:
                evicted.append(user_id)
                budget -= 1
            else:  # still pending: to the back of the queue
                del self.held[user_id]
                self.held[user_id] = None
        for user_id in evicted:
            self.forget(user_id)
        width = self.config.activity_bucket_s
        while budget > 0:
            oldest = self._oldest_bucket()
            if oldest is None or oldest[0] * width >= before:
                break
            b, users = oldest
            whole = (b + 1) * width <= before
            # Reading is cheap next to forgetting: the straddling bucket's newer
            # users are read (at most ``limit``) without using up the budget.
            batch = list(itertools.islice(users, budget if whole else max(limit, 0)))
            for user_id in batch:
                if budget <= 0:
                    break
                profile = self.profiles[user_id]
                if not whole and profile.last_seen >= before:
                    continue
                budget -= 1
                if profile.churn_due is not None:
                    del users[user_id]
                    self.held[user_id] = None
                else:
                    evicted.append(user_id)
                    self.forget(user_id)
            if not whole:
                break  # the bucket straddling ``before``: every later one is newer
        return evicted

    def evict_least_recent(
        self, keep: int, limit: int, spare: Collection[str] = ()
    ) -> list[str]:
        """Forget the least recently active users beyond the ``keep`` most recent,
        at most ``limit`` of them (a hard cap on users; pending churn alerts of
        those users are lost), never one in ``spare`` (the worker's users whose
        recommendation is still owed). Returns the ids forgotten."""
        excess = min(len(self.profiles) - max(keep, 0), limit)
        if excess <= 0:
            return []  # the usual case on the eviction tick: no bucket is sorted
        evicted: list[str] = []
        for user_id in self._least_recent():
            if user_id not in spare:
                evicted.append(user_id)
                if len(evicted) == excess:
                    break
        for user_id in evicted:  # after the walk: nothing it reads changes under it
            self.forget(user_id)
        return evicted

    def _least_recent(self) -> Iterator[str]:
        """Users from the least recently active on: held ones first, then by bucket."""
        yield from self.held
        for b in sorted(self.activity):  # hour buckets: a few thousand over the retention
            yield from self.activity[b]

    # -- queries -----------------------------------------------------------------
    def recommend(
        self,
        user_id: str,
        k: int = 10,
        avoid: Collection[str] = (),
        session_id: str | None = None,
        item_id: str | None = None,
    ) -> list[Recommendation]:
        """Top-``k`` items for ``user_id``, excluding items they bought or reviewed
        and the ``avoid`` items (e.g. those the user keeps passing over).

        An unknown user gets the popular items. Inside a live session (see
        :meth:`models.session.SessionRecommender.context`: ``session_id`` picks
        it, ``item_id`` is the item being viewed; a session cut by the gap is live
        until the latest event time is ``session_gap_s`` past its last event) the
        session signals lead, the blend breaks ties.
        """
        n = len(self.catalogue)
        if n == 0:
            return []
        profile = self.profiles.get(user_id)
        if profile is None:
            profile = UserProfile(user_id, 0.0, 0.0, deque(maxlen=self.config.history_size))
        scored = self.recommender.score(profile, n, exclude_all_seen=False)
        # Excluded before the top k is taken, so reasons are built for the k returned only.
        self._exclude(scored.scores, avoid)
        viewed = self.catalogue.get(item_id) if item_id is not None else None
        context = self.sessions.context(
            user_id, self.clock, session_id, viewed
        )
        if context:
            return self._recommend_in_session(scored, profile, context, k)
        top = self.recommender.top(scored, k)
        reasons = self.recommender.reasons(scored, top, profile, self.catalogue)
        ids = self.catalogue.ids
        return [
            Recommendation(ids[i], value, reason)
            for i, value, reason in zip(top, scored.scores[top].tolist(), reasons, strict=True)
        ]

    def _recommend_in_session(
        self, scored: Any, profile: UserProfile, context: list[int], k: int
    ) -> list[Recommendation]:
        c = self.config
        n = scored.scores.shape[0]
        live = self.sessions.current.get(profile.user_id)
        own = live.number if live is not None and live.items and live.items[-1] in context else None
        signals = self.sessions.signals(context, n, own)
        weights = np.asarray(c.session_weights)
        scores, unit = with_session(scored.scores, signals, weights, c.session_blend_weight)
        top = top_k(scores, k)
        why = strongest(signals, weights, unit, top)
        blend = len(SESSION_FEATURES)
        from_blend = [i for i, j in zip(top, why, strict=True) if j == blend]
        blend_reasons = dict(
            zip(
                from_blend,
                self.recommender.reasons(scored, from_blend, profile, self.catalogue),
                strict=True,
            )
        )
        ids = self.catalogue.ids
        out = []
        for i, j, value in zip(top, why, scores[top].tolist(), strict=True):
            reason = blend_reasons.get(i) if j == blend else None
            if reason is None:
                signal = SESSION_FEATURES[j]
                source = self.sessions.rule_source(signals, i) if signal == "rules" else None
                reason = SESSION_REASONS[signal].format(
                    item=ids[source] if source is not None else "it"
                )
            out.append(Recommendation(ids[i], value, reason))
        return out

    def segment_of(self, user_id: str) -> int | None:
        """The user's current segment, ``None`` if unknown or before warm-up."""
        return self.segmentation.segment_of(user_id)

    def segment_profiles(self) -> dict[int, dict[str, float]]:
        """Each segment's centre in real units (recency in days at the latest event)."""
        return self.segmentation.profiles(self.clock)

    def segment_sizes(self) -> dict[int, int]:
        """Users per segment."""
        return self.segmentation.sizes()

    def churn_risk(self, user_id: str, now: float | None = None) -> float | None:
        """P(no order within the churn horizon) for a customer with orders."""
        profile = self.profiles.get(user_id)
        t = now if now is not None else self.clock
        if profile is None or t is None:
            return None
        return self.churn.risk(profile, t)

    def customer_value_of(
        self, user_id: str, now: float | None = None, horizon_days: float | None = None
    ) -> Prediction | None:
        """Expected purchase-days, spend and P(alive) over the horizon; ``None`` if none yet."""
        t = now if now is not None else self.clock
        if t is None:
            return None
        return self.customer_value.predict_one(user_id, t, horizon_days)

    def item_summary(self, item_id: str) -> dict[str, Any] | None:
        """Per-item figures: popularity and sentiment over time."""
        idx = self.catalogue.get(item_id)
        if idx is None:
            return None
        n = len(self.catalogue)
        return {
            "item_id": item_id,
            "popularity_recent": float(self.recommender.popularity.recent(n)[idx]),
            "popularity_all_time": float(self.recommender.popularity.all_time(n)[idx]),
            "sentiment": self.item_sentiment.summary(item_id),
        }

    def user_summary(self, user_id: str) -> dict[str, Any] | None:
        """JSON-able per-user features for the HTTP profile, ``None`` if unknown."""
        profile = self.profiles.get(user_id)
        if profile is None:
            return None
        now = self.clock if self.clock is not None else profile.last_seen
        summary = profile.summary(now)
        summary["user_id"] = user_id
        summary["segment"] = self.segment_of(user_id)
        risk = self.churn.risk(profile, now)
        summary["churn_risk"] = None if risk is None or math.isnan(risk) else risk
        value = self.customer_value.predict_one(user_id, now)
        summary["customer_value"] = value.as_dict() if value is not None else None
        return summary

    def _exclude(self, scores: np.ndarray, items: Collection[str]) -> None:
        """Set the scores of ``items`` (ids; unknown ones ignored) to ``-inf``."""
        if not items:
            return
        get, n = self.catalogue.get, scores.shape[0]
        idx = [i for i in map(get, items) if i is not None and i < n]
        if idx:
            scores[idx] = -np.inf

    def popular(
        self,
        user_id: str,
        k: int = 10,
        avoid: Collection[str] = (),
        ranking: Sequence[str] | None = None,
    ) -> list[Recommendation]:
        """All-time most popular items ``user_id`` has not bought or reviewed (nor ``avoid``).

        The non-personalised baseline every personalised ranking must beat: the
        popularity component's own counts, the exclusion rule of
        :meth:`recommend`, ties broken by catalogue order; one vectorised pass.
        With ``ranking`` (a published popularity list, best first) the list
        follows it instead, each item scored ``len(ranking) - rank`` (0-based),
        and items outside it are never recommended.

        >>> engine = FeedbackEngine()
        >>> for i, item in enumerate("aab"):
        ...     _ = engine.process(Event("purchase", f"e{i}", f"u{i}", item, 1e9 + i, quantity=1))
        >>> [(r.item_id, r.score) for r in engine.popular("u0", ranking=["b", "a", "zz"])]
        [('b', 3.0)]
        """
        n = len(self.catalogue)
        if n == 0 or k <= 0:
            return []
        if ranking is None:
            counts = self.recommender.popularity.all_time(n)
            scores = np.where(counts > 0, counts, -np.inf)
        else:
            scores = np.full(n, -np.inf)
            for rank, item in enumerate(ranking):
                idx = self.catalogue.get(item)
                if idx is not None and idx < n and not np.isfinite(scores[idx]):
                    scores[idx] = float(len(ranking) - rank)
        profile = self.profiles.get(user_id)
        if profile is not None:
            exclude_seen(scores, profile)
        self._exclude(scores, avoid)
        return [
            Recommendation(self.catalogue.ids[i], float(scores[i]), "popular with everyone")
            for i in top_k(scores, k)
        ]
