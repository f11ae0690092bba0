"""Model checkpoints without a broker: round trip, versions, corruption, and the
ordering that keeps them consistent with the profile changelog."""

from __future__ import annotations

import asyncio
import logging
import pickle
import re
import time
from pathlib import Path
from typing import Any

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


@pytest.mark.parametrize("fork", [True, False], ids=["forked", "without-fork"])
def test_the_file_is_written_only_after_the_flush(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, fork: bool
) -> None:
    """The snapshot must not reach disk before the profile writes it has seen are
    durable; otherwise a crash could restore models that learned events the
    restored profiles do not list, and the replay would teach them twice.
    Without fork (other platforms) the snapshot is pickled in the loop."""
    if not fork:
        monkeypatch.delattr("os.fork")
    engine = trained_engine()
    checkpoint.save(settings, checkpoint.dumps(checkpoint.Models(FeedbackEngine())))  # older
    seen_at_flush: list[object] = []

    async def flush() -> None:
        old = checkpoint.load(checkpoint.path_for(settings))
        seen_at_flush.append(old.engine.user_summary("u0") if old else "missing")

    path = asyncio.run(checkpoint.save_consistent(settings, checkpoint.Models(engine), flush))
    assert path == checkpoint.path_for(settings)
    assert seen_at_flush == [None], "the new checkpoint was on disk before the flush"
    restored = checkpoint.load(path)
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


def test_the_snapshot_does_not_pause_the_event_loop(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pickling runs in a forked child: the loop keeps serving events meanwhile,
    and the file holds the models as they were when the snapshot was taken."""
    engine = trained_engine()
    slow = 2.0  # seconds each pickling takes here: in the loop it would stall it this long
    real_dumps = checkpoint.dumps

    def slow_dumps(models: checkpoint.Models) -> bytes:
        time.sleep(slow)
        return real_dumps(models)

    monkeypatch.setattr(checkpoint, "dumps", slow_dumps)

    async def run() -> tuple[float, int, int]:
        done = asyncio.Event()
        gaps: list[float] = []
        learned = 0

        async def serve() -> None:  # the worker's loop: events keep arriving
            nonlocal learned
            last = time.monotonic()
            while not done.is_set():
                await asyncio.sleep(0.01)
                now = time.monotonic()
                gaps.append(now - last)
                last = now
                engine.process(Event("click", f"late{learned}", "late-user", "sku-1",
                                     1_714_600_000.0 + learned))
                learned += 1

        async def flush() -> None:
            pass

        server = asyncio.create_task(serve())
        while learned < 3:
            await asyncio.sleep(0.01)
        at_snapshot = learned  # save_consistent forks before its first await
        await checkpoint.save_consistent(settings, checkpoint.Models(engine), flush)
        done.set()
        await server
        return max(gaps), at_snapshot, learned

    longest_pause, at_snapshot, learned = asyncio.run(run())
    assert longest_pause < slow / 2, f"the loop stalled {longest_pause:.2f} s during the snapshot"
    assert learned > at_snapshot, "no event was served while the snapshot was written"
    restored = checkpoint.load(checkpoint.path_for(settings))
    assert restored is not None
    # What the loop learned after the fork is not in the file: a point-in-time snapshot.
    assert restored.engine.user_summary("late-user")["clicks"] == at_snapshot
    assert sorted(restored.engine.profiles) == sorted(engine.profiles)


class FakeApp:
    """What ``checkpoint.register`` uses of a Faust app: a timer, the shutdown
    signal and the producer's flush."""

    def __init__(self, fail_flush: bool = False) -> None:
        self.timers: list[tuple[float, str, Any]] = []
        self.shutdown: list[Any] = []
        self.flushes = 0
        self.fail_flush = fail_flush
        self.producer = self
        self.on_before_shutdown = self

    def timer(self, interval: float, name: str) -> Any:
        def add(fun: Any) -> Any:
            self.timers.append((interval, name, fun))
            return fun
        return add

    def connect(self, handler: Any) -> None:
        self.shutdown.append(handler)

    async def flush(self) -> None:
        self.flushes += 1
        if self.fail_flush:
            raise RuntimeError("broker gone")


def test_register_checkpoints_on_a_timer_and_at_shutdown(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from prometheus_client import CollectorRegistry

    from stream.metrics import Metrics

    s = Settings.from_env({}, state_dir=str(tmp_path), checkpoint_interval_seconds=7.5)
    registry = CollectorRegistry()
    app, engine = FakeApp(), trained_engine()
    checkpoint.register(app, s, checkpoint.Models(engine), Metrics(registry))
    ((interval, name, tick),) = app.timers
    assert (interval, name) == (7.5, "checkpoint") and len(app.shutdown) == 1
    assert not checkpoint.path_for(s).exists()

    assert registry.get_sample_value(
        "feedback_model_checkpoint_last_start_timestamp_seconds") == 0
    before = time.time()
    asyncio.run(tick())
    after = time.time()
    assert app.flushes == 1
    # When it began and when it was written: the bench splits its latencies by them.
    started = registry.get_sample_value("feedback_model_checkpoint_last_start_timestamp_seconds")
    written = registry.get_sample_value("feedback_model_checkpoint_last_end_timestamp_seconds")
    assert before <= started <= written <= after
    assert registry.get_sample_value("feedback_model_checkpoint_seconds_sum") < 60
    assert checkpoint.load(checkpoint.path_for(s)) is not None
    assert registry.get_sample_value("feedback_model_checkpoints_total") == 1
    assert registry.get_sample_value("feedback_model_checkpoint_seconds_count") == 1

    engine.process(Event("click", "last", "u-last", "sku-1", 1_714_600_000.0))
    caplog.set_level(logging.INFO, logger="stream.checkpoint")
    asyncio.run(app.shutdown[0](app))  # the final checkpoint holds the last event
    assert f"Final model checkpoint written to {checkpoint.path_for(s)}" in [
        r.getMessage() for r in caplog.records
    ]
    restored = checkpoint.load(checkpoint.path_for(s))
    assert restored is not None and restored.engine.user_summary("u-last") is not None
    assert registry.get_sample_value("feedback_model_checkpoints_total") == 2


def test_a_failed_final_checkpoint_keeps_the_previous_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from prometheus_client import CollectorRegistry

    from stream.metrics import Metrics

    s = Settings.from_env({}, state_dir=str(tmp_path))
    checkpoint.save(s, checkpoint.dumps(checkpoint.Models(trained_engine())))
    before = checkpoint.path_for(s).read_bytes()
    app = FakeApp(fail_flush=True)
    registry = CollectorRegistry()
    checkpoint.register(app, s, checkpoint.Models(FeedbackEngine()), Metrics(registry))
    asyncio.run(app.shutdown[0](app))  # logged, not raised: the shutdown goes on
    assert [r.getMessage() for r in caplog.records] == [
        "Final model checkpoint failed; the previous one stays"
    ]
    assert checkpoint.path_for(s).read_bytes() == before
    # Nor does the snapshot child leave its file behind (it writes within ms).
    time.sleep(1.0)
    assert not list(checkpoint.path_for(s).parent.glob("*.snap*"))
    assert registry.get_sample_value("feedback_model_checkpoints_total") == 0


def test_the_file_lives_under_the_state_directory(tmp_path: Path) -> None:
    s = Settings.from_env({}, state_dir=str(tmp_path / "a" / "b"), app_id="app", web_port=7002)
    assert checkpoint.path_for(s) == tmp_path / "a" / "b" / "checkpoints" / "app-7002.pkl"
    # Folders that do not exist yet are created, by both ways of writing.
    assert checkpoint.save(s, checkpoint.dumps(checkpoint.Models(FeedbackEngine()))).is_file()
    other = Settings.from_env({}, state_dir=str(tmp_path / "c" / "d"))

    async def flush() -> None:
        pass

    assert asyncio.run(checkpoint.save_consistent(
        other, checkpoint.Models(FeedbackEngine()), flush)).is_file()


def test_the_blob_records_its_protocol_versions_and_time() -> None:
    before = time.time()
    blob = checkpoint.dumps(checkpoint.Models(trained_engine()))
    assert blob[:2] == b"\x80\x05"  # pickle protocol 5: out-of-band buffers for numpy
    data = pickle.loads(blob)
    assert data["versions"] == checkpoint.versions()
    assert data["versions"]["format"] == str(checkpoint.FORMAT)
    assert before <= data["saved_at"] <= time.time()


def test_what_is_ignored_and_restored_is_logged(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="stream.checkpoint")
    path = checkpoint.path_for(settings)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x80\x05garbage")
    assert checkpoint.load(path) is None
    (message,) = [r.getMessage() for r in caplog.records]
    assert message.startswith(f"Ignoring unreadable checkpoint {path}: UnpicklingError")
    caplog.clear()

    data = pickle.loads(checkpoint.dumps(checkpoint.Models(trained_engine())))
    data["versions"]["river"] = "0.0.1"
    path.write_bytes(pickle.dumps(data))
    assert checkpoint.load(path) is None
    assert [r.getMessage() for r in caplog.records] == [
        f"Ignoring checkpoint {path} written by {data['versions']} "
        f"(running {checkpoint.versions()})"
    ]
    caplog.clear()

    data = pickle.loads(checkpoint.dumps(checkpoint.Models(trained_engine())))
    data["bandit"] = {"not": "a bandit"}
    path.write_bytes(pickle.dumps(data))
    restored = checkpoint.load(path)
    assert restored is not None and restored.bandit is None
    caplog.clear()

    checkpoint.save(settings, checkpoint.dumps(checkpoint.Models(trained_engine())))
    assert checkpoint.load_or_new(settings).engine.user_summary("u0") is not None
    age, restored_from = [r.getMessage() for r in caplog.records]
    assert re.fullmatch(rf"Checkpoint {re.escape(str(path))} is 0\.\d s old", age)
    assert restored_from == f"Restored the models from {path}"


def test_a_failed_snapshot_child_is_an_error_and_leaves_no_file(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(models: checkpoint.Models) -> bytes:
        raise MemoryError  # in the child, before it opens its file

    monkeypatch.setattr(checkpoint, "dumps", broken)

    async def flush() -> None:
        pass

    with pytest.raises(checkpoint.CheckpointError, match="exited with status 256"):
        asyncio.run(checkpoint.save_consistent(
            settings, checkpoint.Models(trained_engine()), flush))
    assert not checkpoint.path_for(settings).exists()
    assert not list(checkpoint.path_for(settings).parent.glob("*.snap*"))


def test_the_heap_is_frozen_while_the_child_lives(tmp_path: Path) -> None:
    import gc

    settings = Settings.from_env({}, state_dir=str(tmp_path))
    engine = trained_engine()
    frozen_at_flush: list[int] = []

    async def flush() -> None:
        frozen_at_flush.append(gc.get_freeze_count())

    gc.unfreeze()
    try:
        asyncio.run(checkpoint.save_consistent(settings, checkpoint.Models(engine), flush))
        # The worker's collections skip the models while the child pickles them (no
        # copy-on-write of the whole heap); the hourly full collection thaws them.
        assert frozen_at_flush and frozen_at_flush[0] > 0
    finally:
        gc.unfreeze()
