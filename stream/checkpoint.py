"""Model checkpoints: the pickled engine with the versions that wrote it.

River's pickles carry no promise across versions, so a checkpoint written by
another River or feedback-stream version is ignored (with a warning) rather
than loaded into a subtly different class.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import pickle
from pathlib import Path
from typing import Any

from models.engine import FeedbackEngine
from stream.settings import Settings

log = logging.getLogger(__name__)
FORMAT = 1


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


def dumps(engine: FeedbackEngine) -> bytes:
    return pickle.dumps({"versions": versions(), "engine": engine}, protocol=5)


def save(settings: Settings, blob: bytes) -> Path:
    """Write atomically: a crash mid-write leaves the previous checkpoint intact."""
    path = path_for(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load(path: Path) -> FeedbackEngine | None:
    try:
        with open(path, "rb") as f:
            data: dict[str, Any] = pickle.load(f)
    except FileNotFoundError:
        return None
    if data.get("versions") != versions():
        log.warning(
            "Ignoring checkpoint %s written by %s (running %s)", path, data.get("versions"),
            versions(),
        )
        return None
    engine = data["engine"]
    return engine if isinstance(engine, FeedbackEngine) else None


def load_or_new(settings: Settings) -> FeedbackEngine:
    engine = load(path_for(settings))
    if engine is not None:
        log.info("Restored the models from %s", path_for(settings))
        return engine
    return FeedbackEngine()
