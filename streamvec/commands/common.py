"""What the command modules share: argument types, flags several commands declare, output."""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from ingest.names import CollectionName
from streamvec.settings import Settings

if TYPE_CHECKING:
    from streamvec.commands.role import Role
    from streamvec.health import TurnHook

REPORT_JSON = "print the report as JSON"  # the --json help of commands that print a report

RoleStart = Callable[[argparse.Namespace, Settings, "TurnHook"], AbstractContextManager["Role"]]


def collection_arg(text: str) -> str:
    """A validated, normalised collection name from the command line; InvalidName if not one."""
    return str(CollectionName.parse(text))


def at_least(low: float, kind: Callable[[str], float] = int) -> Callable[[str], float]:
    """An argparse type: `kind` of the text, refused below `low`."""
    what = "an integer" if kind is int else "a number"

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low:g}, got {text}")
        return value

    return parse


positive_int = at_least(1)


def add_collection(parser: argparse.ArgumentParser, help: str = "collection name") -> None:
    """The required `--collection NAME` option."""
    parser.add_argument("--collection", required=True, help=help)


def add_json(parser: argparse._ActionsContainer, help: str = "print JSON") -> None:
    """The `--json` flag: one JSON document on stdout instead of text.

    Every command that prints declares it (tests/streamvec/commands/test_json.py walks the
    parser to check); in JSON mode `main` reports a failure as {"error", "status"} on stderr.
    """
    parser.add_argument("--json", action="store_true", help=help)


def add_no_progress(parser: argparse.ArgumentParser) -> None:
    """The `--no-progress` flag of commands that show a progress bar."""
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_metrics_port(parser: argparse.ArgumentParser) -> None:
    """The `--metrics-port` option of a long-running role."""
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="serve Prometheus /metrics on this port [env STREAMVEC_METRICS_PORT]")


def add_max_seconds(parser: argparse.ArgumentParser) -> None:
    """The `--max-seconds` option of a long-running role."""
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="exit after this many seconds (default: run until stopped)")


def run_role_command(component: str, args: argparse.Namespace, settings: Settings,
                     start: RoleStart) -> int:
    """Run the role `start` builds until it is stopped; the exit status of a role command.

    The command declares `--metrics-port` and `--max-seconds` (`add_metrics_port`,
    `add_max_seconds`).
    """
    from streamvec.commands.role import run_role

    return run_role(component, settings, args.metrics_port,
                    lambda turn_hook: start(args, settings, turn_hook),
                    max_seconds=args.max_seconds)


def print_json(value: Any) -> int:
    """Print `value` as one indented JSON document; the exit status 0, for handlers that stop there.

    NaN and infinities, which JSON cannot hold, are printed as null.
    """
    print(json.dumps(_finite(value), indent=2, allow_nan=False))
    return 0


def _finite(value: Any) -> Any:
    """`value` with every non-finite float (at any depth) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def utc(seconds: float) -> str:
    """A Unix time as `YYYY-MM-DD HH:MM:SS` in UTC, as tables print it."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))


def add_group(sub: argparse._SubParsersAction, name: str, *, title: str = "verbs",
              metavar: str = "VERB", **kwargs: Any) -> argparse._SubParsersAction:
    """Add a command group such as `alias` and return the action its verbs are added to.

    The group alone, without a verb, prints its help (`group_parser`, read by `main`).
    """
    group = sub.add_parser(name, **kwargs)
    group.set_defaults(group_parser=group)
    return group.add_subparsers(title=title, metavar=metavar)
