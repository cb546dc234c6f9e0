"""`streamvec monitor`, `streamvec drift pin-reference` and `streamvec audit`."""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from streamvec.commands import common
from streamvec.settings import Settings

if TYPE_CHECKING:
    from streamvec.commands.role import Role
    from streamvec.health import TurnHook

log = logging.getLogger(__name__)

# The library's defaults, named here so that `streamvec --help` need not load the monitor:
# MonitorOptions() of monitor/service.py and DEFAULT_ROWS, SOURCES of monitor/reference.py.
# tests/streamvec/commands/test_commands.py keeps them equal.
DEFAULT_OPTIONS = {"drift": 60.0, "canary": 10.0, "recall": 60.0, "window_rows": 1000}
DEFAULT_REFERENCE_ROWS = 1000
REFERENCE_SOURCES = ("auto", "segments", "topic")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `monitor`, `drift` and `audit` commands to the top-level parser."""
    _register_monitor(sub)
    _register_drift(sub)
    a = sub.add_parser("audit", help="list the audit trail",
                       description="List who created, dropped or re-pinned what, oldest first.")
    a.add_argument("--collection", help="only entries about this collection")
    a.add_argument("--limit", type=common.positive_int, default=50,
                   help="latest entries to show (default 50)")
    common.add_json(a, "print JSON: a list of entries, oldest first")
    a.set_defaults(handler=_audit)


def _register_monitor(sub: argparse._SubParsersAction) -> None:
    defaults = DEFAULT_OPTIONS
    m = sub.add_parser(
        "monitor", help="watch drift, freshness and recall of collections",
        description="Read each collection's topic in the group sv.NAME.monitor for the drift "
        "windows, run the freshness canary and the recall probe, export everything on "
        "/metrics and keep a summary in Redis for `streamvec status`. SIGTERM stops it.")
    m.add_argument("--collection", action="append", required=True,
                   help="collection to watch (repeatable)")
    common.add_metrics_port(m)
    m.add_argument("--drift-every", type=float, default=defaults["drift"],
                   help=f"seconds between drift checks, 0 = off (default {defaults['drift']:g})")
    m.add_argument("--canary-every", type=float, default=defaults["canary"],
                   help=f"seconds between canary cycles, 0 = off (default {defaults['canary']:g})")
    m.add_argument("--recall-every", type=float, default=defaults["recall"],
                   help=f"seconds between recall probes, 0 = off (default {defaults['recall']:g})")
    m.add_argument("--window-rows", type=common.positive_int, default=defaults["window_rows"],
                   help=f"rows in the current drift window (default {defaults['window_rows']})")
    common.add_max_seconds(m)
    m.set_defaults(handler=_monitor)


def _register_drift(sub: argparse._SubParsersAction) -> None:
    verbs = common.add_group(sub, "drift", help="manage the drift reference",
                             description="Manage the reference window drift is measured against.")
    pin = verbs.add_parser(
        "pin-reference", help="pin the latest rows as the drift reference",
        description="Store the collection's latest N rows (from the registered segments, or "
        "the topic's end) in Redis as the reference every monitor compares against.")
    pin.add_argument("--collection", required=True)
    pin.add_argument("--rows", type=int, default=DEFAULT_REFERENCE_ROWS,
                     help=f"rows to pin (default {DEFAULT_REFERENCE_ROWS})")
    pin.add_argument("--source", choices=REFERENCE_SOURCES, default="auto",
                     help="where to read them (default auto: segments, else the topic)")
    common.add_json(pin)
    pin.set_defaults(handler=_pin)


def _monitor(args: argparse.Namespace, settings: Settings) -> int:
    return common.run_role_command("monitor", args, settings, _watching)


@contextmanager
def _watching(args: argparse.Namespace, settings: Settings, turn_hook: TurnHook) -> Iterator[Role]:
    """The monitor of the collections, with the evaluation of running challenges beside it."""
    from prometheus_client import REGISTRY

    from lifecycle import evaluation
    from monitor.service import MonitorOptions, Service
    from streamvec.commands.role import Role

    options = MonitorOptions(drift=args.drift_every, canary=args.canary_every,
                             recall=args.recall_every, window_rows=args.window_rows)
    service = Service(settings, args.collection, registry=REGISTRY, options=options,
                      tasks=[evaluation.monitor_task(settings, REGISTRY)], turn_hook=turn_hook)
    names = ", ".join(m.spec.name for m in service.monitors)
    log.info("monitor watching %s", names)
    yield Role(service, f"watching {names}", stopping="stopping the monitor")


def _pin(args: argparse.Namespace, settings: Settings) -> int:
    from monitor.reference import pin_latest

    ref = pin_latest(settings, args.collection, rows=args.rows, source=args.source)
    rows, dim = ref.vectors.shape
    if args.json:
        return common.print_json({"collection": args.collection, "rows": rows, "dim": dim,
                                  "source": ref.source})
    print(f"drift reference of {args.collection} pinned: {rows} rows of dim {dim} "
          f"from the {ref.source}")
    return 0


def _audit(args: argparse.Namespace, settings: Settings) -> int:
    from ingest import audit

    entries = audit.read(settings.redis_client(), args.limit, collection=args.collection)
    if args.json:
        return common.print_json([entry.to_json() for entry in entries])
    if not entries:
        print("no audit entries")
        return 0
    print(f"{'TIME (UTC)':<20} {'ACTOR':<16} {'ACTION':<20} {'TARGET':<24} DETAILS")
    for e in entries:
        when = common.utc(e.time) if math.isfinite(e.time) else "-"
        details = json.dumps(e.details, sort_keys=True, separators=(",", ":"))
        print(f"{when:<20} {e.actor:<16} {e.action:<20} {e.target:<24} {details}")
    return 0
