"""Model checkpoints without a broker: round trip, versions, corruption, and the
ordering that keeps them consistent with the profile changelog."""

from __future__ import annotations

import asyncio
import pickle
from pathlib import Path

import pytest

from models.bandit import SegmentedThompson
from models.engine import FeedbackEngine
from models.events import Event
from models.strategies import STRATEGIES
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
    path = checkpoint.save(settings, checkpoint.dumps(checkpoint.Models(engine)))
    assert path == checkpoint.path_for(settings) and not list(path.parent.glob("*.tmp*"))
    restored = checkpoint.load_or_new(settings).engine
    assert restored is not engine
    for user in ("u0", "u5"):
        assert restored.user_summary(user) == engine.user_summary(user)
    assert restored.recommend("u1", 5) == engine.recommend("u1", 5)


def test_versions_are_recorded_and_a_mismatch_is_ignored(settings: Settings) -> None:
    blob = checkpoint.dumps(checkpoint.Models(trained_engine()))
    data = pickle.loads(blob)
    assert set(data["versions"]) == {"format", "feedback-stream", "river", "numpy"}
    data["versions"]["river"] = "0.0.1"
    checkpoint.save(settings, pickle.dumps(data))
    assert checkpoint.load(checkpoint.path_for(settings)) is None
    assert checkpoint.load_or_new(settings).engine.user_summary("u0") is None  # fresh models


@pytest.mark.parametrize("content", [b"", b"\x80\x05garbage", pickle.dumps([1, 2])])
def test_an_unreadable_checkpoint_means_fresh_models_not_a_crash(
    settings: Settings, content: bytes
) -> None:
    path = checkpoint.path_for(settings)
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    assert checkpoint.load(path) is None
    assert isinstance(checkpoint.load_or_new(settings).engine, FeedbackEngine)


def test_the_file_is_written_only_after_the_flush(settings: Settings) -> None:
    """The snapshot must not reach disk before the profile writes it has seen are
    durable; otherwise a crash could restore models that learned events the
    restored profiles do not list, and the replay would teach them twice."""
    engine = trained_engine()
    checkpoint.save(settings, checkpoint.dumps(checkpoint.Models(FeedbackEngine())))  # older
    seen_at_flush: list[object] = []

    async def flush() -> None:
        old = checkpoint.load(checkpoint.path_for(settings))
        seen_at_flush.append(old.engine.user_summary("u0") if old else "missing")

    asyncio.run(checkpoint.save_consistent(settings, checkpoint.Models(engine), flush))
    assert seen_at_flush == [None], "the new checkpoint was on disk before the flush"
    restored = checkpoint.load(checkpoint.path_for(settings))
    assert restored is not None
    assert restored.engine.user_summary("u0") == engine.user_summary("u0")


def trained_bandit() -> SegmentedThompson:
    bandit = SegmentedThompson(STRATEGIES, seed=3)
    for i in range(300):
        for arm in STRATEGIES:
            bandit.expose(i % 2, arm)
        if i % 3 == 0:
            bandit.reward(i % 2, "blend")
    return bandit


def test_the_bandit_posteriors_survive_a_restart(tmp_path: Path) -> None:
    """Without them a restart would send traffic back to the prior's coin flips."""
    on = Settings.from_env({}, state_dir=str(tmp_path), bandit=True, bandit_seed=9)
    bandit = trained_bandit()

    async def flush() -> None:
        pass

    asyncio.run(checkpoint.save_consistent(on, checkpoint.Models(trained_engine(), bandit), flush))
    restored = checkpoint.load_or_new(on).bandit
    assert restored is not None and restored is not bandit
    assert restored.snapshot() == bandit.snapshot()
    assert restored.best(0) == "blend" and restored.seed == 9  # today's seed, not the saved one
    # Turned off since: no bandit; turned on with other arms: a fresh one is started instead.
    off = Settings.from_env({}, state_dir=str(tmp_path), bandit=False)
    assert checkpoint.load_or_new(off).bandit is None
    other = SegmentedThompson(["blend", "popularity"])
    checkpoint.save(on, checkpoint.dumps(checkpoint.Models(trained_engine(), other)))
    assert checkpoint.load_or_new(on).bandit is None
