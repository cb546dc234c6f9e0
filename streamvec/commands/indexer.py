"""`streamvec indexer`: run one indexer worker of a collection until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import logging
import signal

from indexer.ownership import CheckpointOutOfRange
from indexer.worker import DEFAULT_MAX_HELD_BYTES, Worker
from ingest.errors import CollectionNotFound
from lifecycle.compaction import AutoCompactor, CompactionPolicy
from streamvec.errors import CommandError
from streamvec.health import Health, redis_check, serve
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
    p.add_argument("--compact-interval", type=float, default=60.0,
                   help="seconds between automatic compaction runs; 0 turns it off (default 60)")
    p.add_argument("--compact-max-rows", type=int, default=None,
                   help="largest merged segment in rows (default 8 x the collection's seal_rows)")
    p.add_argument("--compact-max-segments", type=int, default=4,
                   help="compact partitions holding more segments than this (default 4)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="exit after this many seconds (default: run until stopped)")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace, settings: Settings) -> int:
    health = Health("indexer")
    serve(health, args.metrics_port or settings.metrics_port)
    try:
        worker = Worker(settings, args.collection, group_id=args.group_id,
                        max_held_bytes=args.max_held_mb * 2**20)
    except CollectionNotFound as exc:
        raise CommandError(str(exc)) from None
    # The worker subscribes before its first turn, so a finished turn means it is consuming.
    worker.step = health.turn(worker.step, name="consume")
    health.add_check(redis_check(settings))
    health.ready(f"indexing {args.collection}")

    def _stop(signum, _frame):
        log.info("signal %s: finishing builds in flight, then exiting", signal.Signals(signum).name)
        health.not_ready("stopping")
        worker.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    compactor = _compactor(args, settings, worker)
    try:
        worker.run(max_seconds=args.max_seconds)
    except CheckpointOutOfRange as exc:
        health.failed(str(exc))
        raise CommandError(str(exc)) from None
    finally:
        if compactor is not None:
            compactor.stop()
    return 0


def _compactor(args: argparse.Namespace, settings: Settings,
               worker: Worker) -> AutoCompactor | None:
    """Start automatic compaction unless turned off; workers of one collection take turns."""
    if args.compact_interval <= 0:
        return None
    try:
        policy = CompactionPolicy(args.compact_max_rows or 8 * worker.spec.seal_rows,
                                  args.compact_max_segments)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    compactor = AutoCompactor(settings, args.collection, policy, args.compact_interval)
    compactor.start()
    return compactor

