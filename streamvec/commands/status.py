"""`streamvec status`: the status table of every collection, printed once or refreshed."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict

from streamvec.commands.common import add_json, print_json
from streamvec.commands.errors import UsageError
from streamvec.settings import Settings

DEFAULT_WATCH_S = 2.0
_CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear the screen


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `status` command to the top-level parser."""
    p = sub.add_parser("status", help="a table of every collection's health",
                       description="Rows, segments, lag, query rate, drift, recall and freshness "
                       "of every collection (live figures need `streamvec monitor` running).")
    p.add_argument("--collection", action="append",
                   help="show only this collection (repeatable)")
    p.add_argument("--watch", nargs="?", type=float, const=DEFAULT_WATCH_S, default=None,
                   metavar="SECONDS", help=f"refresh every SECONDS (default {DEFAULT_WATCH_S:g})"
                   " until Ctrl-C")
    add_json(p, "print the rows once as JSON (not with --watch)")
    p.set_defaults(handler=_status)


def _status(args: argparse.Namespace, settings: Settings) -> int:
    from monitor.status import collect, render

    if args.json:
        if args.watch is not None:
            raise UsageError("--json prints the rows once; drop --watch (or poll the command)")
        return print_json([asdict(row) for row in collect(settings, args.collection)])
    if args.watch is None:
        print(render(collect(settings, args.collection)))
        return 0
    try:
        while True:
            table = render(collect(settings, args.collection))
            sys.stdout.write(_CLEAR + time.strftime("%H:%M:%S ") + "streamvec status\n"
                             + table + "\n")
            sys.stdout.flush()
            time.sleep(max(args.watch, 0.1))  # the refresh period the user asked for
    except KeyboardInterrupt:  # Ctrl-C is how a watch ends: a clean exit, not an interruption
        return 0
