"""`streamvec indexer`: run one indexer worker of a collection until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from streamvec.commands import common
from streamvec.settings import Settings

if TYPE_CHECKING:
    from streamvec.commands.role import Role
    from streamvec.health import TurnHook

# The worker's own default (indexer.worker.DEFAULT_MAX_HELD_BYTES), named here so that
# `streamvec --help` need not load the worker; a unit test keeps the two equal.
DEFAULT_MAX_HELD_MB = 1024


# Searchers fold the small segments of every partition into one graph, so more segments cost
# a query little; a merge rewrites segments, and every searcher then adds their rows to its
# fold again (a core-second per ~6,000 rows at 384-d). Merging at 4 segments per partition
# made searchers rebuild their folds from scratch every minute under steady ingest.
AUTO_COMPACT_MAX_SEGMENTS = 16


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
    common.add_collection(p, "collection to index")
    p.add_argument("--group-id", help="consumer group (default sv.NAME.indexer)")
    common.add_metrics_port(p)
    p.add_argument("--max-held-mb", type=int, default=DEFAULT_MAX_HELD_MB,
                   help="memory cap for growing and building segments, MiB "
                        f"(default {DEFAULT_MAX_HELD_MB})")
    p.add_argument("--compact-interval", type=float, default=60.0,
                   help="seconds between automatic compaction runs; 0 turns it off (default 60)")
    p.add_argument("--compact-max-rows", type=common.positive_int, default=None,
                   help="largest merged segment in rows (default 8 x the collection's seal_rows)")
    p.add_argument("--compact-max-segments", type=common.positive_int,
                   default=AUTO_COMPACT_MAX_SEGMENTS,
                   help="compact partitions holding more segments than this (default "
                        f"{AUTO_COMPACT_MAX_SEGMENTS})")
    common.add_max_seconds(p)
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace, settings: Settings) -> int:
    return common.run_role_command("indexer", args, settings, _indexing)


@contextmanager
def _indexing(args: argparse.Namespace, settings: Settings, turn_hook: TurnHook) -> Iterator[Role]:
    """A worker consuming the collection, with automatic compaction beside it unless off."""
    from indexer.worker import Worker
    from lifecycle.compaction import AutoCompactor, CompactionPolicy
    from streamvec.commands.role import Role

    worker = Worker(settings, args.collection, group_id=args.group_id,
                    max_held_bytes=args.max_held_mb * 2**20, turn_hook=turn_hook)
    compactor = None
    if args.compact_interval > 0:  # workers of one collection take turns compacting
        policy = CompactionPolicy(args.compact_max_rows or 8 * worker.spec.seal_rows,
                                  args.compact_max_segments)
        compactor = AutoCompactor(settings, args.collection, policy, args.compact_interval)
        compactor.start()
    try:
        yield Role(worker, f"indexing {args.collection}",
                   stopping="finishing builds in flight, then exiting",
                   checks=(worker.problem,))
    finally:
        if compactor is not None:
            compactor.stop()
