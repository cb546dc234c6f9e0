"""`streamvec searcher` and `streamvec query`: serve a collection's queries, or ask one."""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamvec.commands import common
from streamvec.commands.errors import UsageError
from streamvec.settings import Settings

if TYPE_CHECKING:
    from streamvec.commands.role import Role
    from streamvec.health import TurnHook

log = logging.getLogger(__name__)

# `streamvec searcher` flags over the searcher's budget settings (docs/operations.md).
BUDGET_FLAGS = {
    "--max-request-results": "searcher_max_request_results",
    "--max-request-bytes": "searcher_max_request_bytes",
    "--max-batch-results": "searcher_max_batch_results",
    "--max-waiting": "searcher_max_waiting",
    "--max-tail-rows": "searcher_max_tail_rows",
    "--max-deliveries": "searcher_max_deliveries",
}


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `searcher` and `query` commands to the top-level parser."""
    p = sub.add_parser(
        "searcher", help="serve a collection's queries from its Redis stream",
        description="Load the registered segments, tail Kafka from the checkpoints and answer "
        "the queries on the stream sv:{NAME}:q. Run several replicas: they share the stream "
        "through a consumer group, and a replica claims what a dead one left pending. With "
        "--shard or --partitions it serves only some partitions, from the shard's own stream "
        "sv:{NAME~PARTITIONS}:q (docs/operations.md, \"Shards\").")
    common.add_collection(p, "collection to serve")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--shard", default=None, metavar="I/N",
                       help="serve the I-th of N shards of contiguous partitions: partition p "
                            "is in shard p*N//P + 1 of a collection of P partitions (default: "
                            "every partition)")
    which.add_argument("--partitions", default=None, metavar="LIST",
                       help="serve these partitions, numbers and ranges such as 4-7,9 "
                            "(default: every partition)")
    p.add_argument("--replica", default=None,
                   help="consumer name in the group (default: host-pid)")
    common.add_metrics_port(p)
    p.add_argument("--batch-max", type=int, default=64, help="requests per batch (default 64)")
    p.add_argument("--threads", type=int, default=1,
                   help="FAISS/OpenMP threads per search call (default 1: batches are small, "
                   "and spinning threads cost more than they give on a shared machine)")
    p.add_argument("--search-threads", type=common.at_least(0), default=None,
                   dest="search_threads", metavar="N",
                   help=f"{Settings.model_fields['search_threads'].description} "
                        "[env STREAMVEC_SEARCH_THREADS]")
    p.add_argument("--fold", action=argparse.BooleanOptionalAction, default=None,
                   dest="searcher_fold",
                   help=f"{Settings.model_fields['searcher_fold'].description} "
                        "[env STREAMVEC_SEARCHER_FOLD; default on]")
    p.add_argument("--fold-min-segments", type=common.at_least(2), default=None,
                   dest="searcher_fold_min_segments", metavar="N",
                   help=f"{Settings.model_fields['searcher_fold_min_segments'].description} "
                        "[env STREAMVEC_SEARCHER_FOLD_MIN_SEGMENTS; default 2]")
    for flag, field in BUDGET_FLAGS.items():
        p.add_argument(flag, type=common.positive_int, default=None, dest=field, metavar="N",
                       help=f"{Settings.model_fields[field].description} "
                            f"[env STREAMVEC_{field.upper()}]")
    common.add_max_seconds(p)
    p.set_defaults(handler=_serve)

    q = sub.add_parser(
        "query", help="search a collection from the command line",
        description="Embed TEXT with the demo's sentence model (or read vectors from a .npy "
        "file) and print the nearest rows.")
    q.add_argument("collection", help="collection or alias")
    q.add_argument("text", nargs="*", help="query text (one query)")
    q.add_argument("--vectors", help=".npy file of float32 query vectors (n x dim)")
    q.add_argument("-k", type=int, default=10, help="results per query (default 10)")
    q.add_argument("--filter", metavar="JSON|@FILE",
                   help='metadata filter as JSON, or @FILE to read it from a file, e.g. '
                        '\'{"topic": "cooking", "year": {"gte": 2020}}\' (the filter language: '
                        'docs/protocol.md 7.1.1)')
    q.add_argument("--consistency", default="eventual",
                   help="eventual, strong, bounded:<ms> or session:<json offsets>")
    q.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    q.add_argument("--ef", type=int, default=None, metavar="N",
                   help="HNSW efSearch for this query, 1..4096 and >= k (default: the "
                        "collection's)")
    q.add_argument("--nprobe", type=int, default=None, metavar="N",
                   help="IVF lists probed for this query, 1..65536 (default: the collection's)")
    common.add_json(q)
    q.set_defaults(handler=_query)


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from searcher.errors import ShardMapError
    from searcher.shards import Selection

    # Budget flags win over their env vars, as every flag does.
    given = {f: getattr(args, f) for f in (*BUDGET_FLAGS.values(), "search_threads",
                                           "searcher_fold", "searcher_fold_min_segments")
             if getattr(args, f) is not None}
    settings = settings.model_copy(update=given) if given else settings
    try:
        args.selection = Selection.parse(args.shard, args.partitions)
    except ShardMapError as exc:  # the flag's text is the user's: say which and why
        flag = "--shard" if args.shard is not None else "--partitions"
        raise UsageError(f"{flag}: {exc}") from None
    return common.run_role_command("searcher", args, settings, _serving)


@contextmanager
def _serving(args: argparse.Namespace, settings: Settings, turn_hook: TurnHook) -> Iterator[Role]:
    """The query server of one replica, over an engine with its segments loaded and tail running."""
    import faiss
    from prometheus_client import REGISTRY

    from searcher.engine import Engine
    from searcher.metrics import SearcherMetrics
    from searcher.server import Server
    from streamvec.commands.role import Role

    faiss.omp_set_num_threads(max(1, args.threads))
    metrics = SearcherMetrics(REGISTRY, args.collection)
    engine = Engine(settings, args.collection, metrics=metrics,
                    selection=getattr(args, "selection", None))
    replica = args.replica or f"{socket.gethostname()}-{os.getpid()}"
    engine.start()  # segments loaded, the tail running; the shard known
    try:
        server = Server(settings, args.collection, engine, consumer=replica, metrics=metrics,
                        batch_max=args.batch_max, turn_hook=turn_hook, shard=engine.shard)
        doing = f"serving {args.collection}" + (
            "" if engine.shard is None else f" shard {engine.shard.label}")
        log.info("searcher replica=%s collection=%s stream=%s serving", replica,
                 args.collection, server.stream)
        yield Role(server, doing, checks=(engine.problem,))
    finally:
        engine.stop()


def _query(args: argparse.Namespace, settings: Settings) -> int:
    from searcher.client import Client

    vectors = _query_vectors(args)
    consistency = _consistency(args.consistency)
    query_filter = _filter_arg(args.filter) if args.filter else None
    client = Client(settings=settings)
    result = client.search(args.collection, vectors, k=args.k, filter=query_filter,
                           consistency=consistency, timeout=args.timeout, with_metadata=True,
                           ef=args.ef, nprobe=args.nprobe)
    if args.json:
        return common.print_json([[{"id": i, "score": s, "metadata": m}
                                   for i, s, m in result.rows(q)] for q in range(len(result))])
    for q in range(len(result)):
        for rank, (id_, score, meta) in enumerate(result.rows(q), 1):
            text = (meta or {}).get("text", "") if isinstance(meta, dict) else ""
            print(f"{rank:>3}  {score:>9.4f}  {id_:<24} {text}")
    return 0


def _query_vectors(args: argparse.Namespace) -> Any:
    """The query's float32 vectors: read from --vectors, or the embedded TEXT."""
    import numpy as np

    if args.vectors:
        try:
            return np.load(args.vectors, allow_pickle=False).astype(np.float32)
        except (OSError, ValueError) as exc:  # the file is the user's: say which and why
            raise UsageError(f"cannot read {args.vectors}: {exc}") from None
    if not args.text:
        raise UsageError("give query TEXT or --vectors FILE.npy")
    from streamvec import embed

    return embed.SentenceEncoder.load().encode([" ".join(args.text)])


def _consistency(text: str):
    if text in ("eventual", "strong"):
        return text
    level, _, value = text.partition(":")
    if level == "bounded" and value.isdigit():
        return {"bounded_ms": int(value)}
    if level == "session" and value:
        offsets = _json_arg(value, "--consistency session")
        return {"session": {int(p): int(o) for p, o in offsets.items()}}
    raise UsageError(f"--consistency {text!r}: use eventual, strong, bounded:<ms> or "
                     'session:{"<partition>": <offset>, ...}')


def _filter_arg(text: str) -> dict:
    """The --filter object: JSON text, or @FILE holding it; checked before anything is sent."""
    from searcher import filters

    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:  # the file is the user's: say which, why
            raise UsageError(f"--filter {text[:200]}: cannot read it: {exc}") from None
    value = _json_arg(text, "--filter")
    try:
        filters.parse(value)
    except filters.FilterError as exc:
        raise UsageError(f"--filter: {exc}") from None
    return value


def _json_arg(text: str, flag: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as exc:  # the text is the user's: say which flag and why
        raise UsageError(f"{flag} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{flag} must be a JSON object")
    return value

