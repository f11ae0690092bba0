"""The worker process's Faust worker (stream/worker.py), without a broker."""

from __future__ import annotations

import io
import logging

from prometheus_client import CollectorRegistry

from models.engine import FeedbackEngine
from stream.app import build_app
from stream.settings import Settings
from stream.worker import _worker_class


def test_the_root_logger_stays_at_the_configured_level(tmp_path: object) -> None:
    """Faust's spinner would set the root logger to DEBUG: every aiokafka debug
    call would build a record the handlers then drop."""
    settings = Settings.from_env({}, state_dir=str(tmp_path))
    fa = build_app(settings, engine=FeedbackEngine(), registry=CollectorRegistry())
    root = logging.getLogger()
    saved = root.level, list(root.handlers)
    try:
        worker = _worker_class()(fa.app, loglevel="WARNING", quiet=True,
                                 redirect_stdouts=False, stdout=io.StringIO())
        worker._setup_logging()
        assert root.level == logging.WARNING
        assert not logging.getLogger("aiokafka.consumer.fetcher").isEnabledFor(logging.DEBUG)
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
