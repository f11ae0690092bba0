"""HTTP endpoints of the worker: profiles, Prometheus metrics and health."""

from __future__ import annotations

from typing import Any

import faust
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from models.engine import FeedbackEngine
from stream.health import Health
from stream.privacy import pseudonymise
from stream.settings import Settings
from stream.stored_profile import StoredProfile, expand_recommendations


def register(
    app: faust.App,
    settings: Settings,
    engine: FeedbackEngine,
    registry: CollectorRegistry,
    profiles: Any,
    health: Health,
) -> None:
    """Add the worker's pages to ``app``: ``profiles`` is the profile table,
    ``registry`` the metrics to expose, ``health`` what the probes answer."""
    key = settings.pseudonymise_key.encode()

    @app.page("/users/{user_id}")
    class UserPage(View):
        """The user's profile; a user owned by another worker is forwarded there."""

        @app.table_route(table=profiles, match_info="user_id")  # type: ignore[arg-type]
        async def get(self, request: Request, user_id: str) -> Response:
            stored_id = pseudonymise(user_id, key) if key else user_id
            profile = profiles.get(stored_id)
            if profile is None:
                return self.json({"error": f"unknown user {user_id!r}"}, status=404)
            return self.json(profile_view(profile, engine.user_summary(stored_id)))

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


def profile_view(profile: StoredProfile, features: dict[str, Any] | None) -> dict[str, Any]:
    """What ``GET /users/{id}`` returns: the stored profile less internal fields,
    with the models' features of the user (``features``)."""
    return {
        "user_id": profile["user_id"],
        "events": profile["events"],
        "first_event_time": profile["first_event_time"],
        "last_event_time": profile["last_event_time"],
        "segment": profile["segment"],
        "variant": profile.get("variant"),
        "recommendation_id": profile["recommendation_id"],
        # Kept as [item, score, reason] triples; answered as before.
        "recommendations": expand_recommendations(profile["recommendations"]),
        "features": features,
    }
