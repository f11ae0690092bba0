"""aiokafka clients (admin, producer, consumer) configured from the settings,
for the tools that talk to Kafka outside the Faust worker."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from stream.settings import Settings
from stream.topics import topic_specs


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of the configured security protocol (None without TLS);
    the tools' clients and the Faust worker both use it."""
    if settings.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    context = ssl.create_default_context(cafile=settings.ssl_cafile or None)
    if settings.ssl_certfile:
        context.load_cert_chain(settings.ssl_certfile, settings.ssl_keyfile or None)
    return context


def client_kwargs(settings: Settings) -> dict[str, Any]:
    """aiokafka client arguments: the brokers and the security settings."""
    kwargs: dict[str, Any] = {
        "bootstrap_servers": [s.strip() for s in settings.bootstrap_servers.split(",")],
        "security_protocol": settings.security_protocol,
    }
    context = ssl_context(settings)
    if context is not None:
        kwargs["ssl_context"] = context
    if settings.security_protocol.startswith("SASL"):
        kwargs.update(
            sasl_mechanism=settings.sasl_mechanism,
            sasl_plain_username=settings.sasl_username,
            sasl_plain_password=settings.sasl_password,
        )
    return kwargs


async def create_topics(settings: Settings) -> list[str]:
    """Create every topic of :func:`stream.topics.topic_specs`; returns those created.

    Existing topics are left as they are (re-running is safe)."""
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    await admin.start()
    created: list[str] = []
    try:
        existing = set(await admin.list_topics())
        for spec in topic_specs(settings):
            if spec.name in existing:
                continue
            try:
                await admin.create_topics(
                    [
                        NewTopic(
                            spec.name,
                            num_partitions=spec.partitions,
                            replication_factor=spec.replication_factor,
                            topic_configs=spec.config,
                        )
                    ]
                )
                created.append(spec.name)
            except TopicAlreadyExistsError:
                pass
    finally:
        await admin.close()
    return created


async def wait_for_topics(settings: Settings, names: list[str], timeout: float = 30.0) -> None:
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    await admin.start()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if set(names) <= set(await admin.list_topics()):
                return
            await asyncio.sleep(0.2)
        raise TimeoutError(f"topics {names} not visible after {timeout} s")
    finally:
        await admin.close()


def producer(settings: Settings, **extra: Any) -> AIOKafkaProducer:
    # Tansu has no idempotent producer; acks=all still makes each send durable.
    return AIOKafkaProducer(**client_kwargs(settings), acks="all", **extra)
