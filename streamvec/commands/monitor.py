"""`streamvec monitor`, `streamvec drift pin-reference` and `streamvec audit`."""

from __future__ import annotations

import argparse
import json
import logging
import math
import signal
import time

from prometheus_client import REGISTRY
from redis.exceptions import RedisError

from ingest import audit
from ingest.errors import IngestError
from streamvec.errors import CommandError
from streamvec.health import Health, redis_check, serve
from streamvec.settings import Settings

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `monitor`, `drift` and `audit` commands to the top-level parser."""
    _register_monitor(sub)
    _register_drift(sub)
    a = sub.add_parser("audit", help="list the audit trail",
                       description="List who created, dropped or re-pinned what, oldest first.")
    a.add_argument("--collection", help="only entries about this collection")
    a.add_argument("--limit", type=int, default=50, help="latest entries to show (default 50)")
    a.add_argument("--json", action="store_true", help="print JSON lines")
    a.set_defaults(handler=_audit)


def _register_monitor(sub: argparse._SubParsersAction) -> None:
    from monitor.service import MonitorOptions

    defaults = MonitorOptions()
    m = sub.add_parser(
        "monitor", help="watch drift, freshness and recall of collections",
        description="Read each collection's topic in the group sv.NAME.monitor for the drift "
        "windows, run the freshness canary and the recall probe, export everything on "
        "/metrics and keep a summary in Redis for `streamvec status`. SIGTERM stops it.")
    m.add_argument("--collection", action="append", required=True,
                   help="collection to watch (repeatable)")
    m.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus /metrics on this port [env STREAMVEC_METRICS_PORT]")
    m.add_argument("--drift-every", type=float, default=defaults.drift,
                   help=f"seconds between drift checks, 0 = off (default {defaults.drift:g})")
    m.add_argument("--canary-every", type=float, default=defaults.canary,
                   help=f"seconds between canary cycles, 0 = off (default {defaults.canary:g})")
    m.add_argument("--recall-every", type=float, default=defaults.recall,
                   help=f"seconds between recall probes, 0 = off (default {defaults.recall:g})")
    m.add_argument("--window-rows", type=int, default=defaults.window_rows,
                   help=f"rows in the current drift window (default {defaults.window_rows})")
    m.add_argument("--max-seconds", type=float, default=None,
                   help="exit after this many seconds (default: run until stopped)")
    m.set_defaults(handler=_monitor)


def _register_drift(sub: argparse._SubParsersAction) -> None:
    from monitor.reference import DEFAULT_ROWS, SOURCES

    group = sub.add_parser("drift", help="manage the drift reference",
                           description="Manage the reference window drift is measured against.")
    group.set_defaults(group_parser=group)
    verbs = group.add_subparsers(title="verbs", metavar="VERB")
    pin = verbs.add_parser(
        "pin-reference", help="pin the latest rows as the drift reference",
        description="Store the collection's latest N rows (from the registered segments, or "
        "the topic's end) in Redis as the reference every monitor compares against.")
    pin.add_argument("--collection", required=True)
    pin.add_argument("--rows", type=int, default=DEFAULT_ROWS,
                     help=f"rows to pin (default {DEFAULT_ROWS})")
    pin.add_argument("--source", choices=SOURCES, default="auto",
                     help="where to read them (default auto: segments, else the topic)")
    pin.set_defaults(handler=_pin)


def _monitor(args: argparse.Namespace, settings: Settings) -> int:
    from monitor.service import MonitorOptions, Service

    options = MonitorOptions(drift=args.drift_every, canary=args.canary_every,
                          recall=args.recall_every, window_rows=args.window_rows)
    try:
        service = Service(settings, args.collection, registry=REGISTRY, options=options)
    except (IngestError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    health = Health("monitor")
    serve(health, args.metrics_port or settings.metrics_port)
    # Every periodic task reports its turns: the monitor is ready once each has run once.
    for m in service.monitors:
        m.tasks = [(name, every, health.turn(fn, name=name)) for name, every, fn in m.tasks]
    health.add_check(redis_check(settings))
    health.ready("watching " + ", ".join(m.spec.name for m in service.monitors))

    def _stop(signum, _frame):
        log.info("signal %s: stopping the monitor", signal.Signals(signum).name)
        health.not_ready("stopping")
        service.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log.info("monitor watching %s", ", ".join(m.spec.name for m in service.monitors))
    service.run(max_seconds=args.max_seconds)
    return 0


def _pin(args: argparse.Namespace, settings: Settings) -> int:
    from monitor.reference import PinError, pin_latest

    try:
        ref = pin_latest(settings, args.collection, rows=args.rows, source=args.source)
    except (IngestError, PinError) as exc:
        raise CommandError(str(exc)) from None
    except RedisError as exc:
        raise CommandError(f"Redis failed: {exc}") from None
    rows, dim = ref.vectors.shape
    print(f"drift reference of {args.collection} pinned: {rows} rows of dim {dim} "
          f"from the {ref.source}")
    return 0


def _audit(args: argparse.Namespace, settings: Settings) -> int:
    if args.limit < 1:
        raise CommandError("--limit must be at least 1")
    try:
        entries = audit.read(settings.redis_client(), args.limit, collection=args.collection)
    except RedisError as exc:
        raise CommandError(f"Redis failed: {exc}") from None
    if args.json:
        for entry in entries:
            print(json.dumps(entry.to_json(), sort_keys=True))
        return 0
    if not entries:
        print("no audit entries")
        return 0
    print(f"{'TIME (UTC)':<20} {'ACTOR':<16} {'ACTION':<20} {'TARGET':<24} DETAILS")
    for e in entries:
        when = (time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e.time))
                if math.isfinite(e.time) else "-")
        details = json.dumps(e.details, sort_keys=True, separators=(",", ":"))
        print(f"{when:<20} {e.actor:<16} {e.action:<20} {e.target:<24} {details}")
    return 0
