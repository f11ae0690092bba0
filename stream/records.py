"""The records a worker's agent exchanges with the processor: Kafka records in and out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
    value: bytes | None  # None: a tombstone
    headers: list[tuple[str, bytes]] = field(default_factory=list)
