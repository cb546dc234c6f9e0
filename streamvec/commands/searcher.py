"""`streamvec searcher` and `streamvec query`: serve a collection's queries, or ask one."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket

import numpy as np
from prometheus_client import REGISTRY

from ingest.errors import CollectionNotFound
from streamvec.errors import CommandError
from streamvec.health import Health, redis_check, serve
from streamvec.settings import Settings

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `searcher` and `query` commands to the top-level parser."""
    p = sub.add_parser(
        "searcher", help="serve a collection's queries from its Redis stream",
        description="Load the registered segments, tail Kafka from the checkpoints and answer "
        "the queries on the stream sv:{NAME}:q. Run several replicas: they share the stream "
        "through a consumer group, and a replica claims what a dead one left pending.")
    p.add_argument("--collection", required=True, help="collection to serve")
    p.add_argument("--replica", default=None,
                   help="consumer name in the group (default: host-pid)")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus /metrics on this port [env STREAMVEC_METRICS_PORT]")
    p.add_argument("--batch-max", type=int, default=64, help="requests per batch (default 64)")
    p.add_argument("--threads", type=int, default=1,
                   help="FAISS/OpenMP threads per search call (default 1: batches are small, "
                   "and spinning threads cost more than they give on a shared machine)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="exit after this many seconds (default: run until stopped)")
    p.set_defaults(handler=_serve)

    q = sub.add_parser(
        "query", help="search a collection from the command line",
        description="Embed TEXT with the demo's sentence model (or read vectors from a .npy "
        "file) and print the nearest rows.")
    q.add_argument("collection", help="collection or alias")
    q.add_argument("text", nargs="*", help="query text (one query)")
    q.add_argument("--vectors", help=".npy file of float32 query vectors (n x dim)")
    q.add_argument("-k", type=int, default=10, help="results per query (default 10)")
    q.add_argument("--filter", help='metadata filter as JSON, e.g. {"topic": "cooking"}')
    q.add_argument("--consistency", default="eventual",
                   help="eventual, strong, bounded:<ms> or session:<json offsets>")
    q.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(handler=_query)


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    import faiss

    from searcher.engine import Engine
    from searcher.metrics import SearcherMetrics
    from searcher.server import Server

    faiss.omp_set_num_threads(max(1, args.threads))
    health = Health("searcher")
    serve(health, args.metrics_port or settings.metrics_port)
    metrics = SearcherMetrics(REGISTRY, args.collection)
    try:
        engine = Engine(settings, args.collection, metrics=metrics)
    except CollectionNotFound as exc:
        raise CommandError(str(exc)) from None
    replica = args.replica or f"{socket.gethostname()}-{os.getpid()}"
    server = Server(settings, args.collection, engine, consumer=replica, metrics=metrics,
                    batch_max=args.batch_max)
    server.step = health.turn(server.step, name="serve")
    health.add_check(redis_check(settings))

    def _stop(signum, _frame):
        log.info("signal %s: stopping", signal.Signals(signum).name)
        health.not_ready("stopping")
        server.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    engine.start()
    health.ready(f"serving {args.collection}")  # segments loaded, the tail running
    try:
        log.info("searcher replica=%s collection=%s serving", replica, args.collection)
        server.run(max_seconds=args.max_seconds)
    finally:
        engine.stop()
    return 0


def _query(args: argparse.Namespace, settings: Settings) -> int:
    from searcher.client import Client, SearchError, SearchTimeout

    vectors = _query_vectors(args)
    consistency = _consistency(args.consistency)
    query_filter = _json_arg(args.filter, "--filter") if args.filter else None
    client = Client(settings=settings)
    try:
        result = client.search(args.collection, vectors, k=args.k, filter=query_filter,
                               consistency=consistency, timeout=args.timeout,
                               with_metadata=True)
    except (SearchError, SearchTimeout) as exc:
        raise CommandError(str(exc)) from None
    if args.json:
        out = [[{"id": i, "score": s, "metadata": m} for i, s, m in result.rows(q)]
               for q in range(len(result))]
        print(json.dumps(out, indent=2))
        return 0
    for q in range(len(result)):
        for rank, (id_, score, meta) in enumerate(result.rows(q), 1):
            text = (meta or {}).get("text", "") if isinstance(meta, dict) else ""
            print(f"{rank:>3}  {score:>9.4f}  {id_:<24} {text}")
    return 0


def _query_vectors(args: argparse.Namespace) -> np.ndarray:
    if args.vectors:
        try:
            return np.load(args.vectors, allow_pickle=False).astype(np.float32)
        except (OSError, ValueError) as exc:
            raise CommandError(f"cannot read {args.vectors}: {exc}") from None
    if not args.text:
        raise CommandError("give query TEXT or --vectors FILE.npy")
    from streamvec import embed

    try:
        encoder = embed.SentenceEncoder.load()
    except embed.EmbedderUnavailable as exc:
        raise CommandError(str(exc)) from None
    return encoder.encode([" ".join(args.text)])


def _consistency(text: str):
    if text in ("eventual", "strong"):
        return text
    level, _, value = text.partition(":")
    if level == "bounded" and value.isdigit():
        return {"bounded_ms": int(value)}
    if level == "session" and value:
        offsets = _json_arg(value, "--consistency session")
        return {"session": {int(p): int(o) for p, o in offsets.items()}}
    raise CommandError(f"--consistency {text!r}: use eventual, strong, bounded:<ms> or "
                       'session:{"<partition>": <offset>, ...}')


def _json_arg(text: str, flag: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise CommandError(f"{flag} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise CommandError(f"{flag} must be a JSON object")
    return value

