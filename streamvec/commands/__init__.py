"""The `streamvec` console command: global connection flags plus one subcommand per area.

Every failure ends in one place, `main`: a line `streamvec: error: ...` on stderr and an exit
status that says what kind of failure it was (streamvec/commands/errors.py). With `--json` the
line is a JSON object {"error", "status"}; with `--log-format json`, a JSON log line.
"""
# PYTHON_ARGCOMPLETE_OK (argcomplete's global completion completes a command whose entry
# point module says this in its first 1024 bytes)

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from streamvec import __version__, logs
from streamvec.commands import (
    alias,
    challenge,
    collection,
    completion,
    config,
    demo,
    dev,
    generation,
    indexer,
    monitor,
    produce,
    registry,
    searcher,
    snapshot,
    status,
)
from streamvec.commands.errors import (
    ExitCode,
    UsageError,
    describe,
    exit_code,
    optional_dependencies,
)
from streamvec.settings import Settings, describe_invalid

log = logging.getLogger(__name__)

# Each module has `register(subparsers)`; its parsers set `handler(args, settings)`. The
# modules import their role packages inside the handlers, so `streamvec --help` stays fast.
COMMAND_MODULES = (dev, collection, produce, alias, indexer, registry, generation, snapshot,
                   searcher, monitor, challenge, status, demo, config, completion)


def build_parser() -> argparse.ArgumentParser:
    """Build the full argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="streamvec",
        description="Streaming vector indexer: Kafka in, FAISS segments, queries over Redis.",
    )
    parser.add_argument("--version", action="version", version=f"streamvec {__version__}")
    conn = parser.add_argument_group("connections (flags override STREAMVEC_* env vars)")
    conn.add_argument("--kafka", help="Kafka bootstrap servers [env STREAMVEC_KAFKA]")
    conn.add_argument("--redis", help="Redis URL: redis://, rediss://, or redis+cluster://HOST:PORT"
                      "[,HOST:PORT...] for a Redis Cluster [env STREAMVEC_REDIS]")
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
    parser.add_argument("--log-format", choices=logs.FORMATS,
                        help="text (default), or json: one JSON object per line "
                             "[env STREAMVEC_LOG_FORMAT]")
    parser.add_argument("--actor", help="who acts, for the audit trail "
                        "[env STREAMVEC_ACTOR; default: the OS user]")
    sub = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
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
        for number, pair in enumerate(args.kafka_option, 1):
            key, sep, value = pair.partition("=")
            if not sep:  # not echoed: a mistyped option may hold a password
                raise UsageError(f"--kafka-option number {number} is not of the form KEY=VALUE")
            merged[key.strip()] = value.strip()
        overrides["kafka_options"] = merged
    try:
        return Settings(**overrides)
    except ValidationError as exc:  # the problems only: an input value may be a secret
        raise UsageError(f"invalid settings: {describe_invalid(exc)}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `streamvec` command and return its exit status."""
    parser = build_parser()
    if argv is None and "_ARGCOMPLETE" in os.environ:  # a shell asks for completions
        import argcomplete

        argcomplete.autocomplete(parser)  # prints them and exits
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        # A group such as `streamvec collection` without its verb: show what it offers.
        (getattr(args, "group_parser", None) or parser).print_help()
        return int(ExitCode.USAGE)
    settings = None
    try:
        logs.configure(args.log_level, args.log_format)
        settings = settings_from_args(args)
        with optional_dependencies(args.command):
            return int(handler(args, settings) or 0)
    except KeyboardInterrupt:
        return _fail(args, "interrupted", ExitCode.INTERRUPTED, "streamvec: interrupted")
    except Exception as exc:
        code = exit_code(exc)
        if code is None:  # not a failure the command line knows: a bug, keep its traceback
            raise
        log.debug("the command failed", exc_info=True)
        return _fail(args, describe(exc, settings), code)


def _fail(args: argparse.Namespace, message: str, code: ExitCode, line: str | None = None) -> int:
    """Say on stderr why the command failed, in the form its output takes; its exit status.

    `--json`: one JSON object {"error", "status"}, so a script that reads JSON from stdout reads
    JSON from stderr too; `--log-format json`: a JSON log line, like every other stderr line;
    otherwise `line`, by default `streamvec: error: MESSAGE`.
    """
    if getattr(args, "json", False):
        text = json.dumps({"error": message, "status": int(code)})
    elif logs.active_format() == "json":
        text = logs.json_line("ERROR", log.name, message, status=int(code))
    else:
        text = line or f"streamvec: error: {message}"
    print(text, file=sys.stderr)
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
