"""Start the Faust worker for the configured settings, and stop it on time.

Before Faust starts, the worker waits for its broker (probing with backoff,
creating the topics once it answers) while it already answers its health
probes: a worker started before Kafka, or during an outage, keeps running and
says why it is not ready instead of exiting with a traceback. Once running,
SIGTERM or SIGINT stop it gracefully (commits, final checkpoint); if that has
not finished within ``FEEDBACK_STOP_TIMEOUT_SECONDS`` (a broker that went away
makes Faust wait for it), the process exits anyway, so an orchestrator's stop
never waits for SIGKILL.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from stream.health import Health, RepeatFilter, serve_probes_until_ready
from stream.settings import Settings

log = logging.getLogger(__name__)


def run_worker(settings: Settings) -> int:
    """Wait for the broker and create the topics, then run until SIGTERM or SIGINT."""
    from stream.kafka import create_topics

    Path(settings.state_dir).mkdir(parents=True, exist_ok=True)
    quiet_repeats(logging.getLogger())

    async def topics() -> None:
        # Created up front with the configured partition count: a topic
        # auto-created by a producer would get the broker's default instead.
        created = await create_topics(settings)
        if created:
            log.info("created topics %s", ", ".join(created))

    async def prepare() -> bool:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            return await serve_probes_until_ready(settings, Health(settings), topics, stop)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    if not asyncio.run(prepare()):
        log.info("stopped before the broker answered")
        return 0
    return run_faust(settings)


def run_faust(settings: Settings) -> int:
    from stream.app import build_app

    fa = build_app(settings)
    threading.excepthook = _thread_exception
    worker = _worker_class()(
        fa.app, loglevel=settings.log_level, quiet=True,
        # Faust would log whatever reaches stderr (a traceback) one write per
        # WARNING line; stderr stays stderr.
        redirect_stdouts=False,
    )
    worker.stop_timeout = settings.stop_timeout_seconds
    worker.execute_from_commandline()
    return 0


def _thread_exception(args: threading.ExceptHookArgs) -> None:
    """A Faust thread cancelled while it stops (its broker gone) is one line, not a
    traceback; anything else keeps Python's report."""
    if args.exc_type is not None and issubclass(args.exc_type, asyncio.CancelledError):
        name = args.thread.name if args.thread is not None else "?"
        log.warning("thread %s cancelled while stopping", name)
        return
    threading.__excepthook__(args)


def quiet_repeats(logger: logging.Logger) -> None:
    """One of each repeated Kafka client log line per 30 s, on every handler."""
    for handler in logger.handlers:
        if not any(isinstance(f, RepeatFilter) for f in handler.filters):
            handler.addFilter(RepeatFilter())


def _worker_class() -> Any:
    import faust

    class Worker(faust.Worker):
        """Faust's worker with a deadline on the graceful stop and quiet repeats."""

        stop_timeout = 8.0
        _deadline: threading.Timer | None = None

        def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
            # Faust's terminal spinner sets the root logger to DEBUG (its handler
            # spins once per record) and leaves it there: every debug call of
            # aiokafka and Faust then built a record that the handlers dropped,
            # 5 % of a worker's CPU under load, in a log file no one watches.
            self.spinner = None
            super().on_setup_root_logger(logger, level)
            quiet_repeats(logger)

        def _on_sigterm(self) -> None:
            self._arm_deadline("SIGTERM")
            super()._on_sigterm()

        def _on_sigint(self) -> None:
            self._arm_deadline("SIGINT")
            super()._on_sigint()

        def _arm_deadline(self, name: str) -> None:
            if self._deadline is None:
                self._deadline = threading.Timer(self.stop_timeout, self._force_exit, (name,))
                self._deadline.daemon = True
                self._deadline.start()

        def _force_exit(self, name: str) -> None:
            log.error(
                "graceful stop after %s did not finish within %.0f s (is the broker "
                "reachable?): exiting now; events not yet committed are read again "
                "at the next start", name, self.stop_timeout,
            )
            for handler in logging.getLogger().handlers:
                handler.flush()
            sys.stderr.flush()
            os._exit(1)

    return Worker
