"""Every Prometheus metric the worker exports, declared in one place.

Names follow the Prometheus conventions (``feedback_<subsystem>_<name>``,
counters end in ``_total``, durations are ``_seconds`` histograms). Label sets
are small and fixed: never a user id or an item id as a label.
"""

from __future__ import annotations

import platform

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from stream.dp import RELEASES

NAMESPACE = "feedback"
# Labels of feedback_users_evicted_total.
EVICTION_REASONS = ("inactive", "cap")
# Labels of feedback_http_denied_total.
DENIAL_REASONS = ("unauthorized", "rate_limited")

# Per-event processing is tens of microseconds; a whole batch can take tens of ms.
PROCESSING_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)
# From an event's produce time to the recommendation it triggered.
END_TO_END_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)
RATING_ERROR_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)
PROBABILITY_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def build_labels() -> dict[str, str]:
    """The labels of ``feedback_build_info``: what runs, for dashboards and bug reports.

    >>> sorted(build_labels())
    ['faust', 'python', 'river', 'version']
    """
    from importlib.metadata import PackageNotFoundError, version

    def of(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return "unknown"

    return {
        "version": of("feedback-stream"),
        "python": platform.python_version(),
        "faust": of("faust-streaming"),
        "river": of("river"),
    }


class Metrics:
    """The worker's metrics, registered in ``registry`` (tests pass a fresh one)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        ns = NAMESPACE
        self.build_info = Info(
            "build", "Versions of feedback-stream, Python, Faust and River in this process.",
            namespace=ns, registry=registry,
        )
        self.build_info.info(build_labels())
        self.broker_reachable = Gauge(
            "broker_reachable",
            "1 when the worker's last check reached a bootstrap server, 0 while it retries "
            "an unreachable broker (with backoff; /readyz answers 503 meanwhile).",
            namespace=ns, registry=registry,
        )
        self.events = Counter(
            "events_total",
            "Input events by type and outcome (processed, duplicate, dead_lettered).",
            ["type", "outcome"], namespace=ns, registry=registry,
        )
        self.processing_seconds = Histogram(
            "event_processing_seconds",
            "Time to validate one event, update every model and emit its outputs.",
            ["type"], namespace=ns, registry=registry, buckets=PROCESSING_BUCKETS,
        )
        self.deadletter = Counter(
            "deadletter_total",
            "Input messages sent to the dead-letter topic, by reason and source topic.",
            ["reason", "topic"], namespace=ns, registry=registry,
        )
        self.recommendations = Counter(
            "recommendations_emitted_total",
            "Recommendation messages published, by strategy.",
            ["strategy"], namespace=ns, registry=registry,
        )
        self.recommendations_held = Gauge(
            "recommendations_held",
            "Users whose recommendation is held until their triggers stop (debounce); "
            "their trigger records stay uncommitted until it is published.",
            namespace=ns, registry=registry,
        )
        self.recommendation_latency_seconds = Histogram(
            "event_to_recommendation_seconds",
            "From the triggering event's Kafka timestamp to its recommendation being sent.",
            namespace=ns, registry=registry, buckets=END_TO_END_BUCKETS,
        )
        self.alerts = Counter(
            "alerts_emitted_total",
            "Alert messages published, by kind and severity.",
            ["kind", "severity"], namespace=ns, registry=registry,
        )
        self.consumer_lag = Gauge(
            "consumer_lag_messages",
            "Messages between the consumer's position and the partition's high-water mark.",
            ["topic", "partition"], namespace=ns, registry=registry,
        )
        self.input_highwater = Gauge(
            "input_highwater_offset",
            "High-water mark of each input partition this worker owns.",
            ["topic", "partition"], namespace=ns, registry=registry,
        )
        # Online model quality, measured before learning from each event.
        self.model_positives = Counter(
            "model_positive_events_total",
            "Positive events (purchase with quantity > 0 or rating >= 4) checked for hit rate "
            "(the FEEDBACK_QUALITY_SAMPLE share of them).",
            namespace=ns, registry=registry,
        )
        self.model_hits = Counter(
            "model_hits_total",
            "Checked positive events whose item was in the user's top-10 before learning.",
            namespace=ns, registry=registry,
        )
        self.rating_error = Histogram(
            "model_rating_absolute_error",
            "Absolute error of the rating prediction made before learning from a review.",
            namespace=ns, registry=registry, buckets=RATING_ERROR_BUCKETS,
        )
        self.review_sentiment = Histogram(
            "review_sentiment_positive_probability",
            "Predicted probability that a review's text is positive.",
            namespace=ns, registry=registry, buckets=PROBABILITY_BUCKETS,
        )
        self.segment_users = Gauge(
            "segment_users",
            "Users currently assigned to each customer segment.",
            ["segment"], namespace=ns, registry=registry,
        )
        self.users_tracked = Gauge(
            "users_tracked", "Users with state in this worker's models.",
            namespace=ns, registry=registry,
        )
        self.users_evicted = Counter(
            "users_evicted_total",
            "Users forgotten by this worker (models and profile), by reason: inactive "
            "past FEEDBACK_USER_RETENTION_SECONDS, or over the FEEDBACK_MAX_USERS cap.",
            ["reason"], namespace=ns, registry=registry,
        )
        for reason in EVICTION_REASONS:
            self.users_evicted.labels(reason)
        self.items_tracked = Gauge(
            "items_tracked", "Items known to this worker's recommender.",
            namespace=ns, registry=registry,
        )
        # The feedback loop (docs/feedback-loop.md): exposures, attributed clicks and
        # purchases per experiment variant and strategy; CTR = clicked / exposures.
        variant_labels = ["variant", "strategy"]
        self.exposures = Counter(
            "recommendation_exposures_total",
            "Recommendations published (exposures), by experiment variant and strategy.",
            variant_labels, namespace=ns, registry=registry,
        )
        self.recommendations_clicked = Counter(
            "recommendations_clicked_total",
            "Recommendations with at least one attributed click (the CTR numerator).",
            variant_labels, namespace=ns, registry=registry,
        )
        self.recommendations_converted = Counter(
            "recommendations_converted_total",
            "Recommendations with at least one attributed purchase (the conversion numerator).",
            variant_labels, namespace=ns, registry=registry,
        )
        self.attributed_clicks = Counter(
            "attributed_clicks_total",
            "Clicks attributed to a recommendation, by variant, strategy and how they were "
            "matched (id: carried its recommendation_id; window: same item shortly after).",
            [*variant_labels, "matched_by"], namespace=ns, registry=registry,
        )
        self.attributed_purchases = Counter(
            "attributed_purchases_total",
            "Purchase lines (quantity > 0) attributed to a recommendation.",
            variant_labels, namespace=ns, registry=registry,
        )
        self.attributed_revenue = Counter(
            "attributed_revenue_total",
            "Revenue (quantity x unit price) of attributed purchase lines, in the currency "
            "of the purchase (currency=unspecified when it names none).",
            [*variant_labels, "currency"], namespace=ns, registry=registry,
        )
        self.attribution_unmatched = Counter(
            "attribution_unmatched_total",
            "Clicks and purchases credited to no recommendation, by type and reason "
            "(unknown_recommendation_id, not_recommended).",
            ["type", "reason"], namespace=ns, registry=registry,
        )
        self.bandit_choices = Counter(
            "bandit_choices_total",
            "Strategies chosen by the bandit, by customer segment.",
            ["segment", "strategy"], namespace=ns, registry=registry,
        )
        self.bandit_mean_ctr = Gauge(
            "bandit_posterior_mean_ctr",
            "The bandit's posterior mean CTR of each strategy, by customer segment.",
            ["segment", "strategy"], namespace=ns, registry=registry,
        )
        # Item-side sharing (docs/architecture.md). An entry is what one input
        # event taught one item.
        self.item_updates_sent = Counter(
            "item_update_entries_sent_total",
            "Item-update entries this worker's events produced and sent to the item owners.",
            namespace=ns, registry=registry,
        )
        self.item_updates_applied = Counter(
            "item_update_entries_applied_total",
            "Item-update entries the item owner applied to its item_state table.",
            namespace=ns, registry=registry,
        )
        self.item_updates_duplicate = Counter(
            "item_update_entries_duplicate_total",
            "Item-update entries the item owner skipped as already applied (a re-sent or "
            "re-read batch; per-source offset watermark).",
            namespace=ns, registry=registry,
        )
        self.item_state_records_written = Counter(
            "item_state_records_written_total",
            "Changelog records the item owner wrote to its item_state table (item records "
            "and neighbour snapshots).",
            namespace=ns, registry=registry,
        )
        self.item_models_published = Counter(
            "item_models_published_total",
            "Compact item models this worker published as an item owner.",
            namespace=ns, registry=registry,
        )
        self.item_models_applied = Counter(
            "item_model_records_applied_total",
            "Item-model records read and applied to this worker's replica.",
            namespace=ns, registry=registry,
        )
        self.item_model_staleness = Gauge(
            "item_model_staleness_seconds",
            "Age of the newest item model applied to this worker's replica when it was "
            "applied (wall clock: now - its publication time).",
            namespace=ns, registry=registry,
        )
        self.globals_applied = Counter(
            "global_models_applied_total",
            "Global small-model records applied: blend (the averaged blend weights) and "
            "segments (the owner's segment centres).",
            ["kind"], namespace=ns, registry=registry,
        )
        for kind in ("blend", "segments"):
            self.globals_applied.labels(kind)
        # Information measures (models/information.py): what the published lists show,
        # and how far the latest events' behaviour is from the events before them.
        self.list_entropy = Gauge(
            "recommendation_list_entropy_bits",
            "Mean Shannon entropy of published lists over ten popularity strata of the "
            "catalogue (0: best sellers only; 3.32: spread evenly head to tail), by strategy.",
            ["strategy"], namespace=ns, registry=registry,
        )
        self.catalogue_coverage = Gauge(
            "recommendation_catalogue_coverage_ratio",
            "Share of the catalogue shown at least once in a published list, by strategy.",
            ["strategy"], namespace=ns, registry=registry,
        )
        self.exposure_gini = Gauge(
            "recommendation_exposure_gini",
            "Gini coefficient of exposures over the catalogue (0: every item shown alike; "
            "1: one item gets them all), by strategy.",
            ["strategy"], namespace=ns, registry=registry,
        )
        self.behaviour_divergence = Gauge(
            "behaviour_divergence_bits",
            "Jensen-Shannon divergence of the latest window of events from the window before "
            "it (behaviour_shift alert), by distribution: event_types, items, categories.",
            ["distribution"], namespace=ns, registry=registry,
        )
        # Privacy (docs/privacy.md): erasures carried out, the DP budget ledger, and
        # requests the HTTP gate turned away.
        self.erasures = Counter(
            "erasures_total",
            "Erasure requests carried out by this worker (from the erasure topic, which "
            "DELETE /users writes to): profile, models, exposures, outputs.",
            namespace=ns, registry=registry,
        )
        self.dp_epsilon_spent = Gauge(
            "dp_epsilon_spent",
            "Privacy budget (epsilon) spent by this worker's differentially private "
            "releases since it started, by kind of release (basic composition).",
            ["release"], namespace=ns, registry=registry,
        )
        self.dp_releases = Gauge(
            "dp_releases",
            "Differentially private releases computed since this worker started, by kind.",
            ["release"], namespace=ns, registry=registry,
        )
        self.http_denied = Counter(
            "http_denied_total",
            "HTTP requests refused by the access gate: no or bad token (401), or over the "
            "client's rate limit (429).",
            ["reason"], namespace=ns, registry=registry,
        )
        for reason in DENIAL_REASONS:
            self.http_denied.labels(reason)
        for release in RELEASES:
            self.dp_epsilon_spent.labels(release)
            self.dp_releases.labels(release)
        # Recommendations on request (stream/pull.py): endpoint is "recommendations"
        # or "similar", code the HTTP status answered by this worker.
        self.pull_requests = Counter(
            "pull_requests_total",
            "Pull requests answered by this worker, by endpoint and HTTP status code.",
            ["endpoint", "code"], namespace=ns, registry=registry,
        )
        self.pull_seconds = Histogram(
            "pull_seconds",
            "Time to answer one pull request in this worker (ranking and exposure).",
            ["endpoint"], namespace=ns, registry=registry, buckets=PROCESSING_BUCKETS,
        )
        self.checkpoints = Counter(
            "model_checkpoints_total", "Model checkpoints written.",
            namespace=ns, registry=registry,
        )
        self.checkpoint_seconds = Histogram(
            "model_checkpoint_seconds", "Time to serialise and write one model checkpoint.",
            namespace=ns, registry=registry,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )
        # When the last checkpoint began (its snapshot: the fork) and was written:
        # how old the file on disk is, and which stretch of the worker's time a
        # checkpoint child lived through (the bench splits its latencies by it).
        self.checkpoint_started = Gauge(
            "model_checkpoint_last_start_timestamp_seconds",
            "Unix time the last model checkpoint began (its snapshot of the models).",
            namespace=ns, registry=registry,
        )
        self.checkpoint_written = Gauge(
            "model_checkpoint_last_end_timestamp_seconds",
            "Unix time the last model checkpoint was written.",
            namespace=ns, registry=registry,
        )
        self.event_loop_lag_seconds = Histogram(
            "event_loop_lag_seconds",
            "How late the worker's event loop woke a 50 ms sleep: the time every "
            "event, pull and timer waited for synchronous work to yield.",
            namespace=ns, registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )
        self.clv_refit_seconds = Histogram(
            "clv_refit_seconds",
            "Time of one customer-value refit, in a worker thread off the event loop.",
            namespace=ns, registry=registry,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )

    def set_information(
        self, lists: dict[str, dict[str, float]], divergences: dict[str, float]
    ) -> None:
        """The information gauges from ``ListInformation.report`` and ``BehaviourShift.last``."""
        for strategy, value in lists.get("list_entropy", {}).items():
            self.list_entropy.labels(strategy).set(value)
        for strategy, value in lists.get("catalogue_coverage", {}).items():
            self.catalogue_coverage.labels(strategy).set(value)
        for strategy, value in lists.get("exposure_gini", {}).items():
            self.exposure_gini.labels(strategy).set(value)
        for distribution, value in divergences.items():
            self.behaviour_divergence.labels(distribution).set(value)
