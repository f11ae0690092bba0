"""Every topic the service reads or writes, named from the settings in one place."""

from __future__ import annotations

from dataclasses import dataclass

from stream.settings import Settings

PROFILES_TABLE = "profiles"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str]


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """The topics ``feedback-stream topics`` creates, inputs and outputs alike.

    Inputs and outputs share the partition count so that one user's events,
    state and outputs live on the same partition number. The table changelog
    (``<app_id>-profiles-changelog``) is compacted: only the latest profile of a
    user matters for recovery.
    """
    plain = {"cleanup.policy": "delete"}
    compacted = {"cleanup.policy": "compact"}
    names = [
        settings.topic_clicks,
        settings.topic_purchases,
        settings.topic_reviews,
        settings.topic_recommendations,
        settings.topic_alerts,
        settings.topic_deadletter,
        # Erasure requests share the partition count, so that a request reaches
        # the worker that owns the user's partition (docs/privacy.md).
        settings.topic_erasure,
        settings.topic_erasure_done,
    ]
    specs = [
        TopicSpec(n, settings.partitions, settings.replication_factor, plain) for n in names
    ]
    specs.append(
        TopicSpec(
            changelog_topic(settings),
            settings.partitions,
            settings.replication_factor,
            compacted,
        )
    )
    return specs


def changelog_topic(settings: Settings) -> str:
    return f"{settings.app_id}-{PROFILES_TABLE}-changelog"
