"""`streamvec indexer`: run one indexer worker of a collection until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import logging
import signal

from prometheus_client import start_http_server

from indexer.ownership import CheckpointOutOfRange
from indexer.worker import DEFAULT_MAX_HELD_BYTES, Worker
from ingest.errors import CollectionNotFound
from streamvec.errors import CommandError
from streamvec.settings import Settings

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `indexer` command to the top-level parser."""
    p = sub.add_parser(
        "indexer",
        help="run an indexer worker for a collection",
        description="Consume the collection's topic in the consumer group sv.NAME.indexer, seal "
        "segments by the collection's policy, build FAISS indexes, write snapshots and register "
        "them. Run any number of workers: the group spreads the partitions. SIGTERM finishes "
        "builds in flight and exits; growing rows are replayed by the next owner.",
    )
    p.add_argument("--collection", required=True, help="collection to index")
    p.add_argument("--group-id", help="consumer group (default sv.NAME.indexer)")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus /metrics on this port [env STREAMVEC_METRICS_PORT]")
    p.add_argument("--max-held-mb", type=int, default=DEFAULT_MAX_HELD_BYTES // 2**20,
                   help="memory cap for growing and building segments, MiB (default 1024)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="exit after this many seconds (default: run until stopped)")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace, settings: Settings) -> int:
    port = args.metrics_port or settings.metrics_port
    if port:
        start_http_server(port, addr="0.0.0.0")  # noqa: S104 - scraped from other hosts
    try:
        worker = Worker(settings, args.collection, group_id=args.group_id,
                        max_held_bytes=args.max_held_mb * 2**20)
    except CollectionNotFound as exc:
        raise CommandError(str(exc)) from None

    def _stop(signum, _frame):
        log.info("signal %s: finishing builds in flight, then exiting", signal.Signals(signum).name)
        worker.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        worker.run(max_seconds=args.max_seconds)
    except CheckpointOutOfRange as exc:
        raise CommandError(str(exc)) from None
    return 0

