"""Start the Faust worker for the configured settings."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from stream.settings import Settings

log = logging.getLogger(__name__)


def run_worker(settings: Settings) -> int:
    """Create the topics if needed, then run the worker until SIGTERM or SIGINT."""
    import faust

    from stream.app import build_app
    from stream.kafka import create_topics

    # Created up front with the configured partition count: a topic auto-created
    # by a producer would get the broker's default instead.
    created = asyncio.run(create_topics(settings))
    if created:
        log.info("created topics %s", ", ".join(created))
    Path(settings.state_dir).mkdir(parents=True, exist_ok=True)
    fa = build_app(settings)
    worker = faust.Worker(fa.app, loglevel=settings.log_level, quiet=True)
    worker.execute_from_commandline()
    return 0
