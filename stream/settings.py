"""Worker settings: one frozen object read from the environment, validated at start-up.

Every setting has a working default for the embedded broker, so ``make run``
needs no configuration; a real cluster needs ``FEEDBACK_BOOTSTRAP_SERVERS`` and,
usually, the security settings.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from models.experiments import parse_strategies, parse_variants
from stream.auth import parse_tokens
from stream.dp import DPConfig
from stream.privacy import MIN_KEY_BYTES

PREFIX = "FEEDBACK_"
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
TABLE_STORES = ("memory", "rocksdb")
FAUST_MONITORS = ("faust", "lean")  # stream/faust/monitor.py
# Kafka's legal topic names.
_TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]{1,249}")


class SettingsError(ValueError):
    """A setting has a value the worker cannot run with; the message names it."""


@dataclass(frozen=True)
class Settings:
    """Every knob of the worker; the environment variable is ``FEEDBACK_<NAME>``."""

    bootstrap_servers: str = "localhost:9092"
    app_id: str = "feedback-stream"
    partitions: int = 4
    replication_factor: int = 1
    web_host: str = "127.0.0.1"
    # The address other workers use to forward profile look-ups to this one.
    # Empty: the bind address, or this host's IP when binding to every interface.
    advertised_host: str = ""
    web_port: int = 6066
    state_dir: str = "var"
    log_level: str = "INFO"

    topic_clicks: str = "feedback.clicks"
    topic_purchases: str = "feedback.purchases"
    topic_reviews: str = "feedback.reviews"
    topic_recommendations: str = "feedback.recommendations"
    topic_alerts: str = "feedback.alerts"
    topic_deadletter: str = "feedback.deadletter"
    # Internal topics of the item-side sharing (docs/architecture.md): the
    # workers' item increments keyed by item (partitions = FEEDBACK_PARTITIONS),
    # the owners' compact item models (compacted), and the small global models
    # (blend weights, segment centres; one partition, compacted).
    topic_item_updates: str = "feedback.item-updates"
    topic_item_model: str = "feedback.item-model"
    topic_globals: str = "feedback.globals"
    # The item owners publish the models of the items that changed this often,
    # and every worker its blend weights: the staleness bound of what other
    # workers learnt (plus transit, well under a second on a healthy cluster).
    item_model_period_seconds: float = 1.0
    # On: share item-side knowledge across workers through the topics above.
    # Off: every worker learns from its own partitions' events only.
    share_items: bool = True
    # Erasure requests in (key user_id) and their receipts out (docs/privacy.md).
    topic_erasure: str = "feedback.erasure"
    topic_erasure_done: str = "feedback.erasure.done"

    # Short group-join timings suit the embedded broker, which takes half the
    # session timeout to complete a join; a real cluster may want the defaults.
    session_timeout_seconds: float = 6.0
    heartbeat_seconds: float = 1.0

    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    sasl_username: str = ""
    # Secrets stay out of repr(): settings objects end up in logs and tracebacks.
    sasl_password: str = field(default="", repr=False)
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""

    # Keyed hash applied to user ids before anything is stored or emitted.
    pseudonymise_key: str = field(default="", repr=False)
    # On: dead letters keep their original value bytes but their key (the user id)
    # is replaced by its pseudonym under pseudonymise_key (docs/privacy.md).
    deadletter_pseudonymise_keys: bool = False

    # Access control of the HTTP endpoints (stream/auth.py): "client=token,..." bearer
    # tokens; every path but /metrics and the health checks needs one. Without
    # tokens those endpoints answer 401, or are open when the server binds to
    # loopback only (development).
    api_tokens: str = field(default="", repr=False)
    # Per-client token bucket: this many requests per second on average, in bursts
    # of up to rate_limit_burst; over it, 429.
    rate_limit_per_second: float = 200.0
    rate_limit_burst: int = 400

    # Differential privacy of the published item and segment statistics
    # (stream/dp.py, docs/privacy.md): epsilon per release, the per-user
    # contribution bounds, the popularity list's length, how often a release is
    # recomputed, the support a "bought together" reason needs, the total
    # epsilon the releases may spend (0: account only), and the delta of the
    # thresholded neighbour release (items bought together, GET /items/...).
    dp_epsilon: float = 1.0
    dp_max_items_per_user: int = 20
    dp_max_pairs_per_user: int = 10
    dp_top_k: int = 20
    dp_interval_seconds: float = 300.0
    dp_min_pair_support: int = 20
    dp_budget: float = 0.0
    dp_delta: float = 1e-6

    max_payload_bytes: int = 65_536
    max_text_chars: int = 10_000
    # Timestamps later than the wall clock by more than this are rejected.
    max_future_skew_seconds: float = 86_400.0

    top_k: int = 10
    # A user's recommendations are recomputed and published at most this often
    # (event time), and always after a purchase or a review.
    recommend_min_interval_seconds: float = 60.0
    # Event ids remembered per user for de-duplication.
    dedup_window: int = 128
    # A batch of input events is handed to the processor once it holds 500 or
    # after this wait: the latency a partial batch adds (docs/performance.md,
    # "The fixed waits": this, the fetch wait and the debounce measured together).
    batch_max_wait_seconds: float = 0.01
    # How long the worker's consumer lets the broker hold an empty fetch. Kafka
    # answers as soon as data arrives, the embedded broker (Tansu) only at the
    # end of the wait: there it is the latency an event waits to be read, and
    # shorter waits cost idle fetches.
    fetch_max_wait_seconds: float = 0.02
    # The worker processes a batch in slices of about this long, each ending
    # between two events, and lets its event loop run in between: an HTTP pull
    # (GET /recommendations) waits for one slice, not for a whole batch.
    batch_slice_seconds: float = 0.005
    # When the worker's event loop has had no turn for this long, a watching
    # thread logs the stack it is running (stream/stall.py); 0: off.
    loop_stall_log_seconds: float = 0.0
    # The worker's debounce of recommendations across batches (docs/performance.md):
    # a user's recommendation waits for their triggers to stop, and is published
    # at the end of the first batch without a new trigger of theirs, or this long
    # after the last one when no batch comes first; 0: at the end of each batch
    # (then shorter batch waits mean more rankings).
    recommend_debounce_seconds: float = 0.05
    # ...and at the latest this long after the first trigger it answers.
    recommend_max_delay_seconds: float = 0.5
    # On: a held trigger is also published at the end of its batch when the batch
    # drained its input partition (the consumer's last fetch held nothing past
    # it: no more lines have been sent). Off: it waits for the next batch too,
    # so a basket whose lines come in two fetches is ranked once, not twice.
    recommend_publish_drained: bool = True
    checkpoint_interval_seconds: float = 30.0
    # Share of events whose predictions feed the online quality gauges (hit rate,
    # rating error, drift alerts), picked by a seeded hash of the event id. Every
    # event is still learnt from (and positive events scored for the blend's
    # step); `feedback-stream evaluate` checks every event.
    quality_sample: float = 0.1
    # SIGTERM/SIGINT: the graceful stop (commits, final checkpoint) gets this long,
    # then the process exits anyway (orchestrators send SIGKILL after 10-30 s).
    stop_timeout_seconds: float = 8.0
    # How often the worker runs the engine's time-driven checks (churn) and refreshes gauges.
    tick_interval_seconds: float = 5.0
    # Users inactive for longer than this (event time, behind the newest event)
    # are forgotten by the models and their profile deleted (a changelog
    # tombstone); a later event starts a fresh profile. 0 keeps every user. The
    # default is twice the churn-risk horizon (90 days), and a pending churn
    # alert holds its user until it has fired.
    user_retention_seconds: float = 180 * 86_400.0
    # Hard cap on users in this worker's models (least recently active evicted
    # first, pending churn alerts included); 0: no cap.
    max_users: int = 0
    # Where Faust keeps the profile table: "memory" (the worker's heap, rebuilt from
    # the changelog at start) or "rocksdb" (on disk under state_dir, through the
    # optional rocksdict package: pip install 'feedback-stream[rocksdb]').
    table_store: str = "memory"
    # Faust's standby copies of each table partition on other workers (the
    # profiles and the item states): a standby follows the active worker's
    # changelog, so a failover resumes from it instead of replaying the
    # changelog; every worker then also reads W - 1 others' changelog writes.
    table_standby_replicas: int = 1
    # Faust's main sensor: "lean" (only what Faust's own stream-idle warning
    # reads) or "faust" (its Monitor: bookkeeping on every message, stream event
    # and table access, about 3.7 us of CPU per event more, shown only by Faust's
    # /stats/ page; `python -m tools.sensor_cost`, docs/performance.md).
    faust_monitor: str = "lean"
    # The eviction step runs on its own tick, every this many seconds, and
    # forgets at most `evictions_per_tick` users (about 14 us each in process,
    # plus the changelog tombstone): the pause stays in the tens of ms, and
    # 2,000 users/s keeps up with a worker whose every event is a new user.
    eviction_interval_seconds: float = 0.5
    evictions_per_tick: int = 1000
    # On: the guards of stream/faust/ against Faust's short changelog recovery,
    # early producer flush and commits of unpublished events. Off only
    # reproduces the upstream defects (docs/faust-sigterm-offset-race.md).
    recovery_guards: bool = True
    # On: log every input partition's processed, committed and fetched offsets
    # (stream/faust/offset_trace.py), to investigate records lost or repeated.
    trace_offsets: bool = False

    # Experiments (docs/feedback-loop.md): variants as ``name[:weight],...`` among
    # blend, popularity, explore; a user's variant is a keyed hash of the user id
    # with the salt, the same on every worker and after restarts.
    experiment_variants: str = "blend"
    experiment_salt: str = "feedback-experiment-1"
    # On: a Thompson-sampling bandit picks the strategy per segment from the
    # attributed clicks, for every user (variant "bandit").
    bandit: bool = False
    bandit_seed: int = 42
    # A click or purchase without a recommendation_id is credited to the latest
    # recommendation of that item to that user shown at most this long before
    # (event time); each user's last `attribution_max_exposures` are remembered.
    attribution_window_seconds: float = 1800.0
    attribution_max_exposures: int = 20
    # Items shown this many times without a click (or clicked and not bought) are
    # left out of the user's next recommendations; 0 turns the rule off.
    fatigue_impressions: int = 3
    # The strategies that rule applies to: the personalised ones. The popularity
    # control stays the plain best-seller list a shop shows without this service
    # (add "popularity" to measure the ranking alone, both sides with the rule).
    fatigue_strategies: str = "blend,explore"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Read ``FEEDBACK_*`` variables, apply ``overrides`` and validate.

        >>> Settings.from_env({"FEEDBACK_PARTITIONS": "8"}).partitions
        8
        >>> Settings.from_env({"FEEDBACK_PARTITIONS": "many"})
        Traceback (most recent call last):
        ...
        stream.settings.SettingsError: FEEDBACK_PARTITIONS must be an integer, got 'many'
        """
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            name = PREFIX + f.name.upper()
            if f.name in overrides and overrides[f.name] is not None:
                values[f.name] = overrides[f.name]
            elif name in env:
                values[f.name] = _parse(name, env[name], f.type)
        settings = cls(**values)  # type: ignore[arg-type]
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise :class:`SettingsError` naming the first invalid setting."""
        checks: list[tuple[bool, str]] = [
            (bool(self.bootstrap_servers.strip()), "FEEDBACK_BOOTSTRAP_SERVERS is empty"),
            (all(":" in s for s in self.bootstrap_servers.split(",")),
             f"FEEDBACK_BOOTSTRAP_SERVERS must be host:port[,host:port], "
             f"got {self.bootstrap_servers!r}"),
            (self.partitions >= 1, "FEEDBACK_PARTITIONS must be >= 1"),
            (self.replication_factor >= 1, "FEEDBACK_REPLICATION_FACTOR must be >= 1"),
            (0 < self.web_port < 65536, "FEEDBACK_WEB_PORT must be in 1..65535"),
            (self.security_protocol in SECURITY_PROTOCOLS,
             f"FEEDBACK_SECURITY_PROTOCOL must be one of {', '.join(SECURITY_PROTOCOLS)}"),
            (self.sasl_mechanism in SASL_MECHANISMS,
             f"FEEDBACK_SASL_MECHANISM must be one of {', '.join(SASL_MECHANISMS)}"),
            (not self.security_protocol.startswith("SASL")
             or bool(self.sasl_username and self.sasl_password),
             "FEEDBACK_SASL_USERNAME and FEEDBACK_SASL_PASSWORD are required with SASL"),
            (self.heartbeat_seconds < self.session_timeout_seconds,
             "FEEDBACK_HEARTBEAT_SECONDS must be below FEEDBACK_SESSION_TIMEOUT_SECONDS"),
            (not self.pseudonymise_key or len(self.pseudonymise_key.encode()) >= MIN_KEY_BYTES,
             f"FEEDBACK_PSEUDONYMISE_KEY must be at least {MIN_KEY_BYTES} bytes "
             "(a keyed hash with a short key is easy to brute-force)"),
            (self.max_payload_bytes >= 256, "FEEDBACK_MAX_PAYLOAD_BYTES must be >= 256"),
            (self.max_text_chars >= 1, "FEEDBACK_MAX_TEXT_CHARS must be >= 1"),
            (self.top_k >= 1, "FEEDBACK_TOP_K must be >= 1"),
            (self.dedup_window >= 1, "FEEDBACK_DEDUP_WINDOW must be >= 1"),
            (self.checkpoint_interval_seconds > 0,
             "FEEDBACK_CHECKPOINT_INTERVAL_SECONDS must be > 0"),
            (0 < self.quality_sample <= 1,
             f"FEEDBACK_QUALITY_SAMPLE must be > 0 and <= 1, got {self.quality_sample!r}"),
            (self.tick_interval_seconds > 0, "FEEDBACK_TICK_INTERVAL_SECONDS must be > 0"),
            (1 <= self.stop_timeout_seconds <= 300,
             "FEEDBACK_STOP_TIMEOUT_SECONDS must be >= 1 and <= 300"),
            (0 < self.batch_max_wait_seconds <= 5,
             "FEEDBACK_BATCH_MAX_WAIT_SECONDS must be > 0 and <= 5"),
            (0.001 <= self.fetch_max_wait_seconds <= 5,
             "FEEDBACK_FETCH_MAX_WAIT_SECONDS must be >= 0.001 and <= 5"),
            (0 < self.batch_slice_seconds <= 1,
             "FEEDBACK_BATCH_SLICE_SECONDS must be > 0 and <= 1"),
            (0 <= self.loop_stall_log_seconds <= 60,
             "FEEDBACK_LOOP_STALL_LOG_SECONDS must be >= 0 (0: off) and <= 60"),
            (0 <= self.recommend_debounce_seconds <= 60,
             "FEEDBACK_RECOMMEND_DEBOUNCE_SECONDS must be >= 0 and <= 60"),
            (self.recommend_debounce_seconds <= self.recommend_max_delay_seconds <= 300,
             "FEEDBACK_RECOMMEND_MAX_DELAY_SECONDS must be >= "
             "FEEDBACK_RECOMMEND_DEBOUNCE_SECONDS and <= 300"),
            (self.user_retention_seconds == 0
             or self.user_retention_seconds >= self.attribution_window_seconds,
             "FEEDBACK_USER_RETENTION_SECONDS must be 0 (off) or at least "
             "FEEDBACK_ATTRIBUTION_WINDOW_SECONDS (a user's recent exposures must survive)"),
            (self.max_users >= 0, "FEEDBACK_MAX_USERS must be >= 0 (0: no cap)"),
            (self.table_store in TABLE_STORES,
             f"FEEDBACK_TABLE_STORE must be one of {', '.join(TABLE_STORES)}"),
            (self.faust_monitor in FAUST_MONITORS,
             f"FEEDBACK_FAUST_MONITOR must be one of {', '.join(FAUST_MONITORS)}"),
            (self.evictions_per_tick >= 1, "FEEDBACK_EVICTIONS_PER_TICK must be >= 1"),
            (0 <= self.table_standby_replicas <= 10,
             "FEEDBACK_TABLE_STANDBY_REPLICAS must be >= 0 and <= 10"),
            (self.eviction_interval_seconds > 0,
             "FEEDBACK_EVICTION_INTERVAL_SECONDS must be > 0"),
            (self.log_level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR"),
             "FEEDBACK_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR"),
            (self.attribution_window_seconds > 0,
             "FEEDBACK_ATTRIBUTION_WINDOW_SECONDS must be > 0"),
            (self.attribution_max_exposures >= 1,
             "FEEDBACK_ATTRIBUTION_MAX_EXPOSURES must be >= 1"),
            (self.fatigue_impressions >= 0, "FEEDBACK_FATIGUE_IMPRESSIONS must be >= 0"),
            (0.05 <= self.item_model_period_seconds <= 3600,
             "FEEDBACK_ITEM_MODEL_PERIOD_SECONDS must be >= 0.05 and <= 3600"),
        ]
        names = [
            ("FEEDBACK_TOPIC_CLICKS", self.topic_clicks),
            ("FEEDBACK_TOPIC_PURCHASES", self.topic_purchases),
            ("FEEDBACK_TOPIC_REVIEWS", self.topic_reviews),
            ("FEEDBACK_TOPIC_RECOMMENDATIONS", self.topic_recommendations),
            ("FEEDBACK_TOPIC_ALERTS", self.topic_alerts),
            ("FEEDBACK_TOPIC_DEADLETTER", self.topic_deadletter),
            ("FEEDBACK_TOPIC_ITEM_UPDATES", self.topic_item_updates),
            ("FEEDBACK_TOPIC_ITEM_MODEL", self.topic_item_model),
            ("FEEDBACK_TOPIC_GLOBALS", self.topic_globals),
            ("FEEDBACK_TOPIC_ERASURE", self.topic_erasure),
            ("FEEDBACK_TOPIC_ERASURE_DONE", self.topic_erasure_done),
        ]
        seen: dict[str, str] = {}
        for env_name, topic in names:
            checks.append((bool(_TOPIC_NAME.fullmatch(topic)),
                           f"{env_name} must be 1-249 of [a-zA-Z0-9._-], "
                           f"got {topic!r}"))
            checks.append((topic not in seen,
                           f"{env_name} names the same topic as {seen.get(topic)}"))
            seen.setdefault(topic, env_name)
        try:
            parse_variants(self.experiment_variants)
        except ValueError as exc:
            checks.append((False, f"FEEDBACK_EXPERIMENT_VARIANTS: {exc}"))
        try:
            parse_strategies(self.fatigue_strategies)
        except ValueError as exc:
            checks.append((False, f"FEEDBACK_FATIGUE_STRATEGIES: {exc}"))
        problem = bootstrap_problem(self.bootstrap_servers)
        checks.append((problem is None, f"FEEDBACK_BOOTSTRAP_SERVERS: {problem}"))
        try:
            parse_tokens(self.api_tokens)
        except ValueError as exc:
            checks.append((False, str(exc)))
        checks += [
            (not self.deadletter_pseudonymise_keys or bool(self.pseudonymise_key),
             "FEEDBACK_DEADLETTER_PSEUDONYMISE_KEYS needs FEEDBACK_PSEUDONYMISE_KEY"),
            (0 < self.rate_limit_per_second < float("inf"),
             "FEEDBACK_RATE_LIMIT_PER_SECOND must be > 0"),
            (self.rate_limit_burst >= 1, "FEEDBACK_RATE_LIMIT_BURST must be >= 1"),
            (0 < self.dp_epsilon < float("inf"), "FEEDBACK_DP_EPSILON must be > 0"),
            (self.dp_max_items_per_user >= 1, "FEEDBACK_DP_MAX_ITEMS_PER_USER must be >= 1"),
            (self.dp_max_pairs_per_user >= 1, "FEEDBACK_DP_MAX_PAIRS_PER_USER must be >= 1"),
            (self.dp_top_k >= 1, "FEEDBACK_DP_TOP_K must be >= 1"),
            (self.dp_interval_seconds >= 0, "FEEDBACK_DP_INTERVAL_SECONDS must be >= 0"),
            (self.dp_min_pair_support >= 1, "FEEDBACK_DP_MIN_PAIR_SUPPORT must be >= 1"),
            (0 <= self.dp_budget < float("inf"), "FEEDBACK_DP_BUDGET must be >= 0 (0: no limit)"),
            (0 < self.dp_delta < 1e-3, "FEEDBACK_DP_DELTA must be > 0 and < 0.001"),
        ]
        for path in (self.ssl_cafile, self.ssl_certfile, self.ssl_keyfile):
            checks.append((not path or Path(path).is_file(), f"TLS file not found: {path}"))
        for ok, message in checks:
            if not ok:
                raise SettingsError(message)

    @property
    def input_topics(self) -> dict[str, str]:
        """Event type by input topic name."""
        return {
            self.topic_clicks: "click",
            self.topic_purchases: "purchase",
            self.topic_reviews: "review",
        }

    def topic_of(self, event_type: str) -> str:
        """The input topic that carries ``event_type`` (``KeyError`` for an unknown type)."""
        return {etype: topic for topic, etype in self.input_topics.items()}[event_type]

    def event_type_of(self, topic: str) -> str | None:
        """The event type an input topic carries, ``None`` for any other topic."""
        return self.input_topics.get(topic)

    @property
    def web_is_loopback(self) -> bool:
        """The HTTP server binds to a loopback address only."""
        return self.web_host in ("127.0.0.1", "::1", "localhost") or self.web_host.startswith(
            "127."
        )

    @property
    def dp_config(self) -> DPConfig:
        return DPConfig(
            epsilon=self.dp_epsilon,
            max_items_per_user=self.dp_max_items_per_user,
            max_pairs_per_user=self.dp_max_pairs_per_user,
            top_k=self.dp_top_k,
            interval_seconds=self.dp_interval_seconds,
            min_pair_support=self.dp_min_pair_support,
            budget=self.dp_budget,
            delta=self.dp_delta,
        )

    @property
    def web_url(self) -> str:
        """Where this worker answers locally (tools and tests call it)."""
        host = "127.0.0.1" if self.web_host in WILDCARD_HOSTS else self.web_host
        return f"http://{host}:{self.web_port}"

    @property
    def canonical_url(self) -> str:
        """The URL this worker advertises to the others for table routing.

        A wildcard bind (0.0.0.0 in a container) is not an address another
        replica can reach, so the host's own IP stands in for it.
        """
        host = self.advertised_host
        if not host:
            host = self.web_host
            if host in WILDCARD_HOSTS:
                host = routable_host()
        return f"http://{host}:{self.web_port}"


def routable_host() -> str:
    """This host's IP, or its name where the name resolves to loopback only."""
    name = socket.gethostname()
    try:
        ip = socket.gethostbyname(name)
    except OSError:
        return name
    return name if ip.startswith("127.") else ip


def _parse(name: str, raw: str, kind: object) -> object:
    kind_name = kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
    raw = raw.strip()
    if kind_name == "int":
        try:
            return int(raw)
        except ValueError:
            raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if kind_name == "bool":
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off", ""):
            return False
        raise SettingsError(f"{name} must be 1/0 (true/false), got {raw!r}")
    if kind_name == "float":
        try:
            return float(raw)
        except ValueError:
            raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    return raw


def bootstrap_problem(servers: str) -> str | None:
    """What is wrong with a ``host:port[,host:port]`` list, ``None`` when nothing is.

    >>> bootstrap_problem("kafka-1:9092,[::1]:9093") is None
    True
    >>> bootstrap_problem("kafka:notaport")
    "port of 'kafka:notaport' is not a number in 1..65535"
    """
    for server in servers.split(","):
        server = server.strip()
        host, sep, port = server.rpartition(":")
        if not sep or not host:
            return f"{server!r} is not host:port"
        if host.startswith("[") != host.endswith("]"):
            return f"host of {server!r} is not a valid address"
        if not port.isdigit() or not 0 < int(port) < 65536:
            return f"port of {server!r} is not a number in 1..65535"
        if any(c.isspace() or c in "/?#@" for c in host):
            return f"host of {server!r} is not a valid host name"
    return None


# FEEDBACK_* variables that are not worker settings: read by the tools and the
# compose file (data folders, image tag, topic-creation job) or by the tests.
OTHER_VARIABLES = frozenset({
    "FEEDBACK_DATA_DIR", "FEEDBACK_DATA_HOST_DIR", "FEEDBACK_IMAGE_TAG",
    "FEEDBACK_CHANGELOG_TOPIC", "FEEDBACK_DEADLETTER_RETENTION_MS",
    "FEEDBACK_FUZZ_SEED", "FEEDBACK_LIVE_TEST_EVENTS",
})
OTHER_PREFIXES = ("FEEDBACK_TEST_",)


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """One warning per ``FEEDBACK_*`` variable that nothing reads (a typo, usually).

    >>> unknown_variables({"FEEDBACK_PARTITON": "8", "FEEDBACK_PARTITIONS": "8"})
    ['FEEDBACK_PARTITON is not a setting and is ignored (did you mean FEEDBACK_PARTITIONS?)']
    """
    import difflib

    env = os.environ if environ is None else environ
    known = {PREFIX + f.name.upper() for f in fields(Settings)} | OTHER_VARIABLES
    warnings = []
    for name in sorted(env):
        if not name.startswith(PREFIX) or name in known or name.startswith(OTHER_PREFIXES):
            continue
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.8)
        hint = f" (did you mean {close[0]}?)" if close else ""
        warnings.append(f"{name} is not a setting and is ignored{hint}")
    return warnings
