"""Model checkpoints without a broker: round trip, versions, corruption, and the
ordering that keeps them consistent with the profile changelog."""

from __future__ import annotations

import asyncio
import pickle
from pathlib import Path

import pytest

from models.engine import FeedbackEngine
from models.events import Event
from stream import checkpoint
from stream.settings import Settings


def trained_engine() -> FeedbackEngine:
    engine = FeedbackEngine()
    for i in range(60):
        engine.process(Event("purchase", f"e{i}", f"u{i % 6}", f"sku-{i % 9}",
                             1_714_557_600.0 + 60 * i, quantity=1, price=5.0))
    return engine


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.from_env({}, state_dir=str(tmp_path), app_id="ckpt-test", web_port=7001)


def test_round_trip_restores_the_learned_state(settings: Settings) -> None:
    engine = trained_engine()
    path = checkpoint.save(settings, checkpoint.dumps(engine))
    assert path == checkpoint.path_for(settings) and not list(path.parent.glob("*.tmp*"))
    restored = checkpoint.load_or_new(settings)
    assert restored is not engine
    for user in ("u0", "u5"):
        assert restored.user_summary(user) == engine.user_summary(user)
    assert restored.recommend("u1", 5, now=1_714_600_000.0) == engine.recommend(
        "u1", 5, now=1_714_600_000.0
    )


def test_versions_are_recorded_and_a_mismatch_is_ignored(settings: Settings) -> None:
    blob = checkpoint.dumps(trained_engine())
    data = pickle.loads(blob)
    assert set(data["versions"]) == {"format", "feedback-stream", "river", "numpy"}
    data["versions"]["river"] = "0.0.1"
    checkpoint.save(settings, pickle.dumps(data))
    assert checkpoint.load(checkpoint.path_for(settings)) is None
    assert checkpoint.load_or_new(settings).user_summary("u0") is None  # fresh models


@pytest.mark.parametrize("content", [b"", b"\x80\x05garbage", pickle.dumps([1, 2])])
def test_an_unreadable_checkpoint_means_fresh_models_not_a_crash(
    settings: Settings, content: bytes
) -> None:
    path = checkpoint.path_for(settings)
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    assert checkpoint.load(path) is None
    assert isinstance(checkpoint.load_or_new(settings), FeedbackEngine)


def test_the_file_is_written_only_after_the_flush(settings: Settings) -> None:
    """The snapshot must not reach disk before the profile writes it has seen are
    durable; otherwise a crash could restore models that learned events the
    restored profiles do not list, and the replay would teach them twice."""
    engine = trained_engine()
    checkpoint.save(settings, checkpoint.dumps(FeedbackEngine()))  # an older one
    seen_at_flush: list[object] = []

    async def flush() -> None:
        old = checkpoint.load(checkpoint.path_for(settings))
        seen_at_flush.append(old.user_summary("u0") if old else "missing")

    asyncio.run(checkpoint.save_consistent(settings, engine, flush))
    assert seen_at_flush == [None], "the new checkpoint was on disk before the flush"
    restored = checkpoint.load(checkpoint.path_for(settings))
    assert restored is not None and restored.user_summary("u0") == engine.user_summary("u0")
