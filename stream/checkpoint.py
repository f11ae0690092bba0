"""Model checkpoints: the pickled models with the versions that wrote them.

A checkpoint holds :class:`Models`: the engine and, when ``FEEDBACK_BANDIT`` is
on, the strategy bandit, whose posteriors are what the attributed clicks taught
it (without them a restart would send traffic back to the prior's coin flips).

River's pickles carry no promise across versions, so a checkpoint written by
another River or feedback-stream version is ignored (with a warning) rather
than loaded into a subtly different class. A corrupt or unreadable file is
ignored the same way: the worker starts with fresh models instead of crashing.

Consistency with the profile table (the de-duplication ledger): a snapshot is
taken between two batches (under the agent's lock, held from learning a batch
to writing its profiles), and the file is
written only after the producer has flushed, i.e. after every profile write the
snapshot has seen is in the changelog. So after any crash the restored profiles
contain every event the restored models learned, the replayed ones are
recognised as duplicates, and no event is learned twice. The price is the
reverse case: events learned after the last checkpoint are in the profiles but
not in the models, so they are not learned again. That loss is bounded by
``checkpoint_interval_seconds`` x the event rate for a crash, and is zero for a
graceful stop (SIGTERM), which writes a final checkpoint once the consumer has
stopped (see :func:`register`). docs/reliability.md has the measured figures.

Restoring reads a local file only: it never asks the broker for offsets.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.metadata
import itertools
import logging
import os
import pickle
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.bandit import SegmentedThompson
from models.engine import FeedbackEngine
from models.strategies import STRATEGIES
from stream.settings import Settings

log = logging.getLogger(__name__)
# 2: the pickle holds the bandit beside the engine.
# 3: UserProfile.churn_due and OnlineSegmentation.users (eviction of inactive
#    users); a format-2 engine lacks both, so it is ignored, not half-loaded.
FORMAT = 3


@dataclass
class Models:
    """Everything a checkpoint restores: the engine and the bandit (``None`` when off)."""

    engine: FeedbackEngine
    bandit: SegmentedThompson | None = None


def versions() -> dict[str, str]:
    return {
        "format": str(FORMAT),
        "feedback-stream": importlib.metadata.version("feedback-stream"),
        "river": importlib.metadata.version("river"),
        "numpy": importlib.metadata.version("numpy"),
    }


def path_for(settings: Settings) -> Path:
    # One file per worker process: the web port tells co-located workers apart.
    return Path(settings.state_dir) / "checkpoints" / f"{settings.app_id}-{settings.web_port}.pkl"


def dumps(models: Models) -> bytes:
    return pickle.dumps(
        {
            "versions": versions(),
            "saved_at": time.time(),
            "engine": models.engine,
            "bandit": models.bandit,
        },
        protocol=5,
    )


def save(settings: Settings, blob: bytes) -> Path:
    """Write atomically: a crash mid-write leaves the previous checkpoint intact."""
    path = path_for(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    _write(tmp, blob)
    _publish(tmp, path)
    return path


def _write(tmp: Path, blob: bytes) -> None:
    with open(tmp, "wb") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())


def _publish(tmp: Path, path: Path) -> None:
    os.replace(tmp, path)
    # The rename itself is durable only once the directory entry is.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class CheckpointError(RuntimeError):
    pass


_snapshots = itertools.count()


def _fork_snapshot(models: Models, tmp: Path) -> int:
    """Pickle ``models`` into ``tmp`` from a forked child; returns the child's pid.

    The child holds a copy-on-write image of the models as they are at the fork, so
    the snapshot is as consistent as pickling in the event loop, without
    blocking it for the seconds that pickling a large engine takes (the Redis
    BGSAVE approach). The child only pickles and writes, then leaves through
    ``os._exit`` so that no handler, buffer or thread of the worker runs in it.
    """
    # Objects moved to the permanent generation are not traversed by the worker's
    # collections while the child lives: a full collection writes to every tracked
    # object's header, which would copy the whole heap page by page (copy-on-write
    # faults in the worker's event loop). New objects are still collected; the
    # worker's hourly full collection (stream.app.Collector) thaws them all.
    gc.freeze()
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            # Background work: on a busy machine the worker's events go first (a
            # snapshot that takes a core for seconds showed in the latency tail).
            os.nice(19)
            _write(tmp, dumps(models))
            code = 0
        except BaseException:  # nothing may escape a forked child
            pass
        finally:
            os._exit(code)
    return pid


def load(path: Path) -> Models | None:
    try:
        with open(path, "rb") as f:
            data: dict[str, Any] = pickle.load(f)
    except FileNotFoundError:
        return None
    except Exception as exc:  # truncated, corrupt, or a class that no longer exists
        log.warning("Ignoring unreadable checkpoint %s: %r", path, exc)
        return None
    if not isinstance(data, dict) or data.get("versions") != versions():
        log.warning(
            "Ignoring checkpoint %s written by %s (running %s)", path,
            data.get("versions") if isinstance(data, dict) else None, versions(),
        )
        return None
    engine, bandit = data.get("engine"), data.get("bandit")
    if not isinstance(engine, FeedbackEngine):
        return None
    if not isinstance(bandit, SegmentedThompson):
        bandit = None
    saved_at = data.get("saved_at")
    if isinstance(saved_at, float):
        log.info("Checkpoint %s is %.1f s old", path, time.time() - saved_at)
    return Models(engine, bandit)


def load_or_new(settings: Settings) -> Models:
    """The checkpointed models, or a fresh engine.

    The bandit comes back only when the settings still want it and its arms are
    today's strategies; otherwise it is ``None`` and the processor starts one
    from the prior.
    """
    models = load(path_for(settings))
    if models is None:
        return Models(FeedbackEngine())
    log.info("Restored the models from %s", path_for(settings))
    bandit = models.bandit
    if not settings.bandit or bandit is None or bandit.arms != list(STRATEGIES):
        models.bandit = None
    else:
        bandit.seed = settings.bandit_seed
    return models


async def save_consistent(
    settings: Settings, models: Models, flush: Callable[[], Awaitable[Any]],
    between: asyncio.Lock | None = None,
) -> Path:
    """Snapshot the models now, make the profile writes they have seen durable, then write.

    The snapshot is taken between two batches: while holding ``between`` (the
    lock the agent holds from learning a batch to writing its profiles), in a
    forked child where the platform has ``fork``, else by pickling in the event
    loop; the file replaces the previous checkpoint only after the flush.
    """
    loop = asyncio.get_running_loop()
    lock = between if between is not None else asyncio.Lock()
    if not hasattr(os, "fork"):
        async with lock:
            blob = dumps(models)
        await flush()
        return await loop.run_in_executor(None, save, settings, blob)
    path = path_for(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".snap{os.getpid()}-{next(_snapshots)}")
    async with lock:
        pid = _fork_snapshot(models, tmp)
    try:
        await flush()
    except BaseException:
        # A failed flush (broker gone) must not leave the child unreaped or its file.
        await loop.run_in_executor(None, os.waitpid, pid, 0)
        tmp.unlink(missing_ok=True)
        raise
    _, status = await loop.run_in_executor(None, os.waitpid, pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"the checkpoint child exited with status {status}")
    await loop.run_in_executor(None, _publish, tmp, path)
    return path


def register(
    app: Any, settings: Settings, models: Models, metrics: Any,
    between: asyncio.Lock | None = None,
) -> Callable[[], Awaitable[None]]:
    """Periodic checkpoints, plus a final one on a graceful stop; returns the
    function that writes one now (an erasure calls it). ``between``: see
    :func:`save_consistent`.

    The final one runs on Faust's ``on_before_shutdown``: the consumer has
    stopped and every event it delivered has been processed, and the producer
    is still open for the flush. One checkpoint at a time: a snapshot taken
    before an erasure must not replace the file written after it.
    """
    one_at_a_time = asyncio.Lock()

    async def checkpoint_now() -> None:
        async with one_at_a_time:
            start = time.perf_counter()
            metrics.checkpoint_started.set(time.time())
            await save_consistent(settings, models, app.producer.flush, between)
            metrics.checkpoints.inc()
            metrics.checkpoint_seconds.observe(time.perf_counter() - start)
            metrics.checkpoint_written.set(time.time())

    app.timer(settings.checkpoint_interval_seconds, name="checkpoint")(checkpoint_now)

    async def on_before_shutdown(sender: Any, **kwargs: Any) -> None:
        try:
            await checkpoint_now()
            log.info("Final model checkpoint written to %s", path_for(settings))
        except Exception:
            log.exception("Final model checkpoint failed; the previous one stays")

    app.on_before_shutdown.connect(on_before_shutdown)
    return checkpoint_now
