"""The recovery guards as create_app installs them (stream.faust.recovery),
without a broker; tests/integration/test_reliability_*.py run them for real."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from faust.tables.recovery import Recovery
from faust.transport.producer import ProducerBuffer

from stream.commit_guard import CommitGuard
from stream.faust import create_app
from stream.faust.consumer import Consumer
from stream.faust.recovery import ChangelogRecovery, FlushingProducerBuffer
from stream.settings import Settings


def app_for(guards: bool, tmp_path: Any) -> Any:
    settings = Settings.from_env(
        {"FEEDBACK_RECOVERY_GUARDS": "1" if guards else "0", "FEEDBACK_STATE_DIR": str(tmp_path)}
    )
    guard = CommitGuard(settings.input_topics, settings.recovery_guards)
    app = create_app(settings, guard, None, broker="kafka://127.0.0.1:9",
                     datadir=str(tmp_path / "faust"), autodiscover=False)
    return app, settings, guard


def test_the_guards_are_the_classes_the_app_builds(tmp_path: Any) -> None:
    app, settings, guard = app_for(True, tmp_path)
    assert isinstance(app.tables.recovery, ChangelogRecovery)
    assert app.tables.recovery.settings is settings
    assert isinstance(app.producer.buffer, FlushingProducerBuffer)
    assert issubclass(app.transport.Consumer, Consumer)
    assert app.transport.Consumer.commit_guard is guard and guard.enabled


def test_without_the_guards_faust_keeps_its_own(tmp_path: Any) -> None:
    app, _, guard = app_for(False, tmp_path)
    assert type(app.tables.recovery) is Recovery
    assert type(app.producer.buffer) is ProducerBuffer
    # The rebalance fixes of the consumer stay; its commit guard is off.
    assert issubclass(app.transport.Consumer, Consumer) and not guard.enabled


class GivesUp:
    """Faust's flush_atmost as it behaves on a loaded machine: it returns once
    no message left within its timeout, with messages still queued (here one
    message leaves per call)."""

    async def flush_atmost(self, max_messages: int | None) -> int:
        await asyncio.sleep(0)
        if self.queued:  # type: ignore[attr-defined]
            self.queued -= 1  # type: ignore[attr-defined]
        return 1

    @property
    def size(self) -> int:
        return self.queued  # type: ignore[attr-defined,no-any-return]


@pytest.mark.parametrize("buffer_class, left", [
    (FlushingProducerBuffer, 0), (ProducerBuffer, 2),  # Faust's own returns early
])
def test_flush_returns_only_once_the_buffer_is_empty(buffer_class: type, left: int) -> None:
    buffer = type("Buffer", (GivesUp, buffer_class), {})()
    buffer.queued = 3
    asyncio.run(buffer.flush())
    assert buffer.size == left
