"""HTTP endpoints of the worker: profiles, erasure, Prometheus metrics and health.

Every request first passes the access gate (stream/auth.py) in an aiohttp
middleware, so that no page, and no path without a page, answers without it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import faust
from aiohttp import web
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from models.engine import FeedbackEngine
from stream.auth import Gate
from stream.dp import BudgetExhausted
from stream.erasure import ErasureRequest, encode_request
from stream.faust.routing import user_route
from stream.health import Health
from stream.metrics import Metrics
from stream.privacy import pseudonymise
from stream.published import item_page, segments_page
from stream.pull import BadRequest, Pulls, parse_id, parse_k
from stream.settings import Settings
from stream.stored_profile import StoredProfile

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: The answer of a statistic whose first release the privacy budget did not allow.
BUDGET_SPENT = {"error": "privacy budget spent"}


def gate_middleware(settings: Settings, metrics: Metrics) -> Any:
    """The aiohttp middleware that authenticates and rate-limits every request.

    Without tokens the protected endpoints are open only on a loopback bind.
    """
    gate = Gate.from_setting(
        settings.api_tokens, settings.rate_limit_per_second, settings.rate_limit_burst,
        open_without_tokens=settings.web_is_loopback,
    )
    denied = {
        401: metrics.http_denied.labels("unauthorized"),
        429: metrics.http_denied.labels("rate_limited"),
    }

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        decision = gate.check(
            request.path, request.headers.getall("Authorization", []), request.remote,
            time.monotonic(),
        )
        if not decision.allowed:
            denied[decision.status].inc()
            return web.Response(
                status=decision.status, body=decision.body, headers=dict(decision.headers)
            )
        return await handler(request)

    return check


def register(
    app: faust.App,
    settings: Settings,
    engine: FeedbackEngine,
    registry: CollectorRegistry,
    profiles: Any,
    health: Health,
    pulls: Pulls,
) -> None:
    """Add the worker's pages to ``app``: ``profiles`` is the profile table,
    ``registry`` the metrics to expose, ``health`` what the probes answer,
    ``pulls`` the pull API."""
    key = settings.pseudonymise_key.encode()
    register_pulls(app, settings, profiles, pulls)

    @app.page("/users/{user_id}")
    class UserPage(View):
        """The user's profile; a user owned by another worker is forwarded there."""

        @user_route(app, profiles)
        async def get(self, request: Request, user_id: str) -> Response:
            stored_id = pseudonymise(user_id, key) if key else user_id
            profile = profiles.get(stored_id)
            if profile is None:
                return self.json({"error": f"unknown user {user_id!r}"}, status=404)
            return self.json(profile_view(profile, engine.user_summary(stored_id)))

        async def delete(self, request: Request, user_id: str) -> Response:
            """Erase the user: a request on the erasure topic, keyed by the user, which
            the worker owning them carries out; 202 with the id its receipt will carry."""
            erasure = ErasureRequest(user_id, time.time(), f"http-{uuid.uuid4().hex}")
            await app.producer.send_and_wait(
                settings.topic_erasure, user_id.encode("utf-8", "surrogatepass"),
                encode_request(erasure), None, None, None,
            )
            return self.json({"request_id": erasure.request_id, "status": "accepted"}, status=202)

    # Item and segment statistics are DP releases (stream/published.py).
    publisher = pulls.processor.publisher

    @app.page("/segments")
    class SegmentsPage(View):
        """Customer portraits of this worker's segments, differentially private."""

        async def get(self, request: Request) -> Response:
            try:
                segments = segments_page(publisher, engine.customer_value.horizon_days)
            except BudgetExhausted:
                return self.json(BUDGET_SPENT, status=503)
            return self.json({"segments": segments})

    @app.page("/items/{item_id}")
    class ItemPage(View):
        """Noisy buyers, reviewers, viewers and bought-together of one item."""

        async def get(self, request: Request, item_id: str) -> Response:
            try:
                parse_id("item_id", item_id)
            except BadRequest as exc:
                return self.json({"error": str(exc)}, status=400)
            try:
                return self.json(item_page(publisher, item_id))
            except BudgetExhausted:
                return self.json(BUDGET_SPENT, status=503)

    @app.page("/metrics")
    class MetricsPage(View):
        async def get(self, request: Request) -> Response:
            # aiohttp refuses a charset inside content_type=, so set the header whole.
            return self.bytes(
                generate_latest(registry),
                headers={"Content-Type": CONTENT_TYPE_LATEST},
            )

    @app.page("/livez")
    class LivePage(View):
        """200 while the process runs and its event loop answers."""

        async def get(self, request: Request) -> Response:
            return self.json(health.liveness_body())

    @app.page("/healthz")
    class HealthPage(LivePage):
        """The same as /livez, for the probes configured before /livez existed."""

    @app.page("/readyz")
    class ReadyPage(View):
        """200 when the worker does its job, else 503 with the reasons."""

        async def get(self, request: Request) -> Response:
            status, body = health.readiness_body()
            return self.json(body, status=status)


def register_pulls(app: faust.App, settings: Settings, profiles: Any, pulls: Pulls) -> None:
    """``GET /recommendations/{user_id}`` (routed to the user's worker, as
    ``/users``) and ``GET /items/{item_id}/similar`` (answered where asked)."""
    key = settings.pseudonymise_key.encode()
    metrics = pulls.processor.metrics

    def answer(view: View, endpoint: str, started: float, body: Any, status: int = 200) -> Any:
        metrics.pull_requests.labels(endpoint, str(status)).inc()
        metrics.pull_seconds.labels(endpoint).observe(time.perf_counter() - started)
        return view.json(body, status=status)

    @app.page("/recommendations/{user_id}")
    class RecommendationsPage(View):
        """The user's recommendation now; an unknown user gets the popular items."""

        @user_route(app, profiles)
        async def get(self, request: Request, user_id: str) -> Response:
            started = time.perf_counter()
            query = request.query
            try:
                parse_id("user_id", user_id)
                k = parse_k(query.get("k"), settings.top_k)
                item = parse_id("item", query.get("item"))
                session = parse_id("session", query.get("session"))
            except BadRequest as exc:
                return answer(self, "recommendations", started, {"error": str(exc)}, 400)
            stored = pseudonymise(user_id, key) if key else user_id
            body = pulls.recommend(user_id, k, item, session, stored_id=stored)
            return answer(self, "recommendations", started, body)

    @app.page("/items/{item_id}/similar")
    class SimilarPage(View):
        """Items used together with one item, differentially private (any id answers)."""

        async def get(self, request: Request, item_id: str) -> Response:
            started = time.perf_counter()
            try:
                parse_id("item_id", item_id)
                k = parse_k(request.query.get("k"), settings.top_k)
            except BadRequest as exc:
                return answer(self, "similar", started, {"error": str(exc)}, 400)
            try:
                body = pulls.similar(item_id, k)
            except BudgetExhausted:
                return answer(self, "similar", started, BUDGET_SPENT, 503)
            return answer(self, "similar", started, body)


def profile_view(profile: StoredProfile, features: dict[str, Any] | None) -> dict[str, Any]:
    """What ``GET /users/{id}`` returns: the stored profile less internal fields,
    with the models' features of the user (``features``)."""
    return {
        "user_id": profile.user_id,
        "events": profile.events,
        "first_event_time": profile.first_event_time,
        "last_event_time": profile.last_event_time,
        "segment": profile.segment,
        "variant": profile.variant,
        "recommendation_id": profile.recommendation_id,
        "recommendations": profile.recommendations(),
        "features": features,
    }
