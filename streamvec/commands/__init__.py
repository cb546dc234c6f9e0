"""The `streamvec` console command: global connection flags plus one subcommand per area."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from streamvec import __version__, logs
from streamvec.errors import CommandError
from streamvec.settings import Settings

# Each module exposes `register(subparsers)`; its parsers set `handler(args, settings)`.
# Listed by name so that `streamvec --help` stays fast and one broken area cannot hide the rest.
COMMAND_MODULES = (
    "streamvec.commands.dev",
    "streamvec.commands.collection",
    "streamvec.commands.produce",
    "streamvec.commands.alias",
    "streamvec.commands.indexer",
    "streamvec.commands.registry",
    "streamvec.commands.generation",
    "streamvec.commands.snapshot",
    "streamvec.commands.searcher",
    "streamvec.commands.monitor",
    "streamvec.commands.challenge",
    "monitor.status",
    "streamvec.commands.demo",
    "streamvec.commands.config",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the full argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="streamvec",
        description="Streaming vector indexer: Kafka in, FAISS segments, queries over Redis.",
    )
    parser.add_argument("--version", action="version", version=f"streamvec {__version__}")
    conn = parser.add_argument_group("connections (flags override STREAMVEC_* env vars)")
    conn.add_argument("--kafka", help="Kafka bootstrap servers [env STREAMVEC_KAFKA]")
    conn.add_argument("--redis", help="Redis URL, redis:// or rediss:// [env STREAMVEC_REDIS]")
    conn.add_argument("--store", "--snapshots", dest="store",
                      help="segment store folder; --snapshots is its earlier name "
                           "[env STREAMVEC_STORE]")
    conn.add_argument(
        "--kafka-option",
        action="append",
        metavar="KEY=VALUE",
        help="extra librdkafka option, repeatable [env STREAMVEC_KAFKA_OPTIONS]",
    )
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING... [env STREAMVEC_LOG_LEVEL]")
    parser.add_argument("--actor", help="who acts, for the audit trail "
                        "[env STREAMVEC_ACTOR; default: the OS user]")
    sub = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Build Settings from the global flags, falling back to env vars and defaults."""
    overrides: dict[str, object] = {}
    for field in ("kafka", "redis", "store", "actor"):
        value = getattr(args, field, None)
        if value:
            overrides[field] = value
    if getattr(args, "kafka_option", None):
        merged = dict(Settings().kafka_options)
        for pair in args.kafka_option:
            key, sep, value = pair.partition("=")
            if not sep:
                raise CommandError(f"--kafka-option {pair!r} is not of the form KEY=VALUE")
            merged[key.strip()] = value.strip()
        overrides["kafka_options"] = merged
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise CommandError(f"invalid settings: {problems}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `streamvec` command and return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        # A group such as `streamvec collection` without its verb: show what it offers.
        (getattr(args, "group_parser", None) or parser).print_help()
        return 2
    logs.configure(args.log_level)
    try:
        return int(handler(args, settings_from_args(args)) or 0)
    except CommandError as exc:
        print(f"streamvec: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("streamvec: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
