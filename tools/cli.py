"""``feedback-stream``: the one command-line entry point.

Subcommands import their modules lazily so that ``--help`` and the model-only
tools start fast and never touch Kafka.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import sys
from collections.abc import Sequence

from stream.settings import Settings, SettingsError, unknown_variables


class CommandError(RuntimeError):
    """A command cannot do what was asked; ``main`` prints the message as one line."""


# The address the last command was configured with, for the unreachable-broker line.
_bootstrap: list[str] = []


def _quiet_kafka_logs() -> None:
    # The short-lived commands report a broker problem once, as one line; aiokafka
    # would log every failed connection attempt before that.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


def _settings(args: argparse.Namespace) -> Settings:
    settings = _read_settings(args)
    _bootstrap[:] = [settings.bootstrap_servers]
    return settings


def _read_settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(
        bootstrap_servers=getattr(args, "bootstrap_servers", None),
        partitions=getattr(args, "partitions", None),
        web_port=getattr(args, "web_port", None),
        web_host=getattr(args, "web_host", None),
        app_id=getattr(args, "app_id", None),
        state_dir=getattr(args, "state_dir", None),
    )


def _kafka_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--bootstrap-servers",
        help="host:port[,host:port] (env FEEDBACK_BOOTSTRAP_SERVERS, default localhost:9092)",
    )


def cmd_broker(args: argparse.Namespace) -> int:
    from tools import broker
    from tools.local import terminate_as_interrupt

    with terminate_as_interrupt():
        proc = broker.start(args.port, args.host)
        # The line tells a caller the broker answers, so a SIGTERM may follow it
        # at once: it must already be inside the ``try`` that stops the broker.
        try:
            print(
                f"embedded Kafka-compatible broker (Tansu) on {args.host}:{args.port}, "
                f"pid {proc.pid}; Ctrl-C or SIGTERM stops it",
                flush=True,
            )
            code = proc.wait()
        except KeyboardInterrupt:
            broker.stop(proc)
            print(f"broker on {args.host}:{args.port} stopped", file=sys.stderr, flush=True)
            return 0
    raise CommandError(f"the broker on {args.host}:{args.port} exited with code {code}")


def cmd_topics(args: argparse.Namespace) -> int:
    from stream.kafka import create_topics
    from stream.topics import topic_specs

    settings = _settings(args)
    _quiet_kafka_logs()
    created = asyncio.run(create_topics(settings))
    partitions = {spec.name: spec.partitions for spec in topic_specs(settings)}
    for name in created:
        print(f"created {name} ({partitions.get(name, settings.partitions)} partitions)")
    if not created:
        print("all topics exist already")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from stream.worker import run_worker

    return run_worker(_settings(args))


def cmd_produce(args: argparse.Namespace) -> int:
    from tools import produce

    settings = _settings(args)
    _quiet_kafka_logs()
    return produce.run(args, settings)


def cmd_consume(args: argparse.Namespace) -> int:
    from tools import consume

    settings = _settings(args)
    _quiet_kafka_logs()
    return consume.run(args, settings)


def cmd_run(args: argparse.Namespace) -> int:
    from tools import demo

    return demo.run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="feedback-stream",
        description="Real-time customer-feedback processor: clicks, purchases and reviews in; "
        "recommendations, segments and alerts out.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("broker", help="run the embedded Kafka-compatible broker in the foreground")
    p.add_argument("--port", type=int, default=9092)
    p.add_argument("--host", default="127.0.0.1")
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("topics", help="create the input, output and changelog topics")
    _kafka_options(p)
    p.add_argument("--partitions", type=int, help="env FEEDBACK_PARTITIONS, default 4")
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser("worker", help="run the stream worker (Faust)")
    _kafka_options(p)
    p.add_argument("--web-port", type=int, help="HTTP port (env FEEDBACK_WEB_PORT, default 6066)")
    p.add_argument("--web-host", help="HTTP bind address (env FEEDBACK_WEB_HOST, 127.0.0.1)")
    p.add_argument("--state-dir", help="checkpoints folder (env FEEDBACK_STATE_DIR, default var)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("produce", help="replay a JSONL file or a shared dataset into the topics")
    _kafka_options(p)
    from tools.produce import add_arguments

    add_arguments(p)
    p.set_defaults(func=cmd_produce)

    p = sub.add_parser(
        "consume", help="print the messages of any topic, with their headers (kcat-like)"
    )
    _kafka_options(p)
    from tools.consume import add_arguments as add_consume_arguments

    add_consume_arguments(p)
    p.set_defaults(func=cmd_consume)

    p = sub.add_parser(
        "run", help="the whole thing on real data: broker, topics, worker and a replay"
    )
    from tools.demo import add_arguments as add_demo_arguments

    add_demo_arguments(p)
    p.set_defaults(func=cmd_run)

    # Listed for --help; `main` hands their arguments to their own parsers.
    for name, (_, _, summary) in DELEGATED.items():
        sub.add_parser(name, help=summary, add_help=False)
    return parser


# Tools with parsers of their own: (module, argument prefix, summary).
DELEGATED = {
    "evaluate": ("tools.evaluate", [], "replay a JSONL file through the models and measure them"),
    "convert": ("tools.datasets", ["convert"], "convert a shared dataset into contract JSONL"),
    "bench": ("tools.bench", [], "measure the worker's throughput, latency and memory"),
    "simulate": ("tools.simulate", [], "simulated users who react to the recommendations"),
    "dp-utility": ("tools.dp_utility", [], "what differential privacy costs the popularity list"),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for warning in unknown_variables():
        print(f"feedback-stream: warning: {warning}", file=sys.stderr)
    try:
        if argv and argv[0] in DELEGATED:
            module, prefix, _ = DELEGATED[argv[0]]
            return int(importlib.import_module(module).main([*prefix, *argv[1:]]))
        args = build_parser().parse_args(argv)
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        message, code = user_error(exc)
        if message is None:
            raise
        print(f"feedback-stream: {message}", file=sys.stderr)
        return code


def user_error(exc: BaseException) -> tuple[str | None, int]:
    """The one line and exit code for an error a user can fix; ``None`` for a bug.

    2 for what was asked (a setting, a path, a dataset), 1 for what was found
    (no broker, a broker or worker that died).
    """
    from aiokafka.errors import KafkaConnectionError, KafkaError

    from stream.health import StartupError
    from tools.broker import BrokerError
    from tools.consume import ConsumeError
    from tools.local import LocalStackError

    if isinstance(exc, SettingsError):
        return f"invalid setting: {exc}", 2
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}", 2
    if isinstance(exc, FileNotFoundError | NotADirectoryError | PermissionError):
        return str(exc), 2
    if isinstance(exc, KafkaConnectionError):
        where = _bootstrap[0] if _bootstrap else "the configured address"
        return (
            f"cannot reach the Kafka broker at {where} (is it running? set "
            "--bootstrap-servers or FEEDBACK_BOOTSTRAP_SERVERS)", 1
        )
    if isinstance(exc, KafkaError):
        return f"Kafka error: {exc}", 1
    if isinstance(
        exc, BrokerError | CommandError | ConsumeError | LocalStackError | StartupError
    ):
        return str(exc), 1
    return None, 1


if __name__ == "__main__":
    sys.exit(main())
