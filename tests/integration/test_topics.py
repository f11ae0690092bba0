"""``feedback-stream topics`` against the embedded broker: creates every topic
once; run again, it changes nothing and says so."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from stream.kafka import client_kwargs
from stream.settings import Settings
from stream.topics import topic_specs
from tests.integration.conftest import isolated_settings, settings_env
from tools.cli import main

pytestmark = pytest.mark.integration


def described(settings: Settings) -> dict[str, int]:
    """Partitions of each of the settings' topics, as the broker describes them."""

    async def read() -> dict[str, int]:
        admin = AIOKafkaAdminClient(**client_kwargs(settings))
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            names = [spec.name for spec in topic_specs(settings) if spec.name in existing]
            if not names:  # describe_topics([]) describes every topic
                return {}
            out = {}
            for topic in await admin.describe_topics(names):
                out[topic["topic"]] = len(topic["partitions"])
            return out
        finally:
            await admin.close()

    return asyncio.run(read())


def test_topics_is_idempotent(
    broker: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    s = isolated_settings(broker, tmp_path, partitions=3)
    for name, value in settings_env(s).items():
        monkeypatch.setenv(name, value)
    specs = {spec.name: spec.partitions for spec in topic_specs(s)}
    # Every topic has the asked partitions but the globals', which has one owner.
    assert specs == {**dict.fromkeys(specs, 3), s.topic_globals: 1}
    assert described(s) == {}

    assert main(["topics"]) == 0
    first = capsys.readouterr().out.splitlines()
    assert sorted(first) == sorted(f"created {n} ({p} partitions)" for n, p in specs.items())
    assert described(s) == specs

    # Again, even asking for more partitions: nothing is created or changed.
    assert main(["topics", "--partitions", "6"]) == 0
    assert capsys.readouterr().out.splitlines() == ["all topics exist already"]
    assert described(s) == specs
