"""`streamvec collection create|list|describe|drop|reshard|shards`: collection administration."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from streamvec.commands.common import add_group, add_json, print_json
from streamvec.commands.errors import UsageError
from streamvec.settings import Settings

# ingest.spec.METRICS and ingest.partition.PARTITIONERS, named here so that `streamvec --help`
# need not load numpy; tests/streamvec/commands/test_commands.py keeps each pair equal.
METRICS = ("l2", "ip", "cosine")
PARTITIONERS = ("kafka", "streamvec")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `collection` command group to the top-level parser."""
    verbs = add_group(sub, "collection", help="create, list, describe and drop collections",
                      description="Manage collections: topics, dead-letter topics and specs.")

    create = verbs.add_parser("create", help="create a collection (idempotent for an equal spec)",
                              description="Create the topic, its dead-letter topic and the spec.")
    create.add_argument("name", help="collection name, e.g. products or products@v4")
    create.add_argument("--dim", type=int, required=True, help="vector dimension")
    create.add_argument("--metric", choices=METRICS, default="l2", help="distance (default l2)")
    create.add_argument("--partitions", type=int, default=4, help="topic partitions (default 4)")
    create.add_argument("--index", default="auto",
                        help="FAISS index_factory string, or auto (default: segments below "
                             "20,000 rows are written Flat and folded into one graph by each "
                             "searcher from 1,000 rows; larger ones are written HNSW32)")
    create.add_argument("--ef", type=int, default=0, metavar="N",
                        help="HNSW efSearch of queries that name none, 1..4096 (default 0: the "
                             "searcher's, 128)")
    create.add_argument("--nprobe", type=int, default=0, metavar="N",
                        help="IVF lists probed by queries that name none, 1..65536 (default 0: "
                             "the index's own)")
    create.add_argument("--seal-rows", type=int, default=100_000,
                        help="seal a growing segment at this many rows (default 100000)")
    create.add_argument("--seal-seconds", type=float, default=60.0,
                        help="seal a growing segment this old (default 60)")
    create.add_argument("--seal-bytes", type=int, default=256 * 1024 * 1024,
                        help="seal a growing segment this large in bytes (default 256 MiB)")
    create.add_argument("--partitioner", choices=PARTITIONERS, default="kafka",
                        help="how ids map to partitions: kafka, the Java client's default "
                             "for keyed records, which any Kafka producer can match (default), "
                             "or streamvec, the partitioner of collections made before the choice")
    create.add_argument("--model-version", default="",
                        help="embedding model version (implied by NAME@VERSION)")
    create.add_argument("--adopt-store", action="store_true",
                        help="accept segment folders an earlier collection of this name left in "
                             "the segment store, to rebuild its registry from them")
    create.add_argument("--replication", type=int, default=None,
                        help="topic replication factor (default: min(3, brokers))")
    add_json(create)
    create.set_defaults(handler=_create)

    lister = verbs.add_parser("list", help="list collections", description="List collections.")
    add_json(lister, "print JSON instead of a table")
    lister.set_defaults(handler=_list)

    describe = verbs.add_parser("describe", help="show a collection's spec and partitions",
                                description="Show the spec, topics and per-partition offsets.")
    describe.add_argument("name")
    add_json(describe)
    describe.set_defaults(handler=_describe)

    drop = verbs.add_parser(
        "drop", help="delete a collection, its topics, keys and unreferenced segments",
        description="Delete topics and Redis keys (point-in-time snapshots too) and the "
                    "segment folders no other collection references.")
    drop.add_argument("name")
    drop.add_argument("--yes", action="store_true", help="confirm the deletion (required)")
    add_json(drop)
    drop.set_defaults(handler=_drop)

    reshard = verbs.add_parser(
        "reshard", help="change how many shards serve a collection, without failing a query",
        description="Switch the shard map to N shards of contiguous partitions (1: unsharded). "
                    "Start the new shards' searchers first (`streamvec searcher --shard I/N`); "
                    "the map switches once each new shard has a live, caught-up searcher, and "
                    "the old searchers drain their streams and exit (docs/operations.md).")
    reshard.add_argument("name")
    reshard.add_argument("--shards", type=int, required=True, metavar="N",
                         help="shards to serve the collection (1..its partitions)")
    reshard.add_argument("--wait", type=float, default=60.0, metavar="SECONDS",
                         help="how long to wait for the new shards' searchers (default 60)")
    add_json(reshard)
    reshard.set_defaults(handler=_reshard)

    shards = verbs.add_parser(
        "shards", help="show a collection's shard map and live searchers",
        description="Print the shard map (absent: unsharded) and every live searcher's "
                    "advert: its shard, state, readiness and segments per partition.")
    shards.add_argument("name")
    add_json(shards)
    shards.set_defaults(handler=_shards)


def _create(args: argparse.Namespace, settings: Settings) -> int:
    from ingest.spec import CollectionSpec
    from lifecycle import collections

    spec = CollectionSpec(
        name=args.name, dim=args.dim, metric=args.metric, partitions=args.partitions,
        index=args.index, seal_rows=args.seal_rows, seal_seconds=args.seal_seconds,
        seal_bytes=args.seal_bytes, model_version=args.model_version,
        partitioner=args.partitioner, search_ef=args.ef, search_nprobe=args.nprobe,
    )
    created = collections.create_collection(settings, spec, replication=args.replication,
                                             adopt_store=args.adopt_store)
    if args.json:
        return print_json({"collection": spec.name, "created": created,
                           "topic": spec.collection.topic, "partitions": spec.partitions,
                           "dlq_topic": spec.collection.dlq_topic})
    state = "created" if created else "already exists with this spec"
    print(f"collection {spec.name} {state}: topic {spec.collection.topic} "
          f"({spec.partitions} partitions), dead letters {spec.collection.dlq_topic}")
    return 0


def _list(args: argparse.Namespace, settings: Settings) -> int:
    from ingest import admin

    specs = admin.list_collections(settings)
    if args.json:
        return print_json([asdict(s) for s in specs])
    if not specs:
        print("no collections")
        return 0
    header = f"{'NAME':<32} {'DIM':>6} {'METRIC':<7} {'PARTS':>5} {'INDEX':<16} MODEL"
    print(header)
    for s in specs:
        print(f"{s.name:<32} {s.dim:>6} {s.metric:<7} {s.partitions:>5} {s.index:<16} "
              f"{s.model_version or '-'}")
    return 0


def _describe(args: argparse.Namespace, settings: Settings) -> int:
    from lifecycle import collections

    info = collections.describe_collection(settings, args.name)
    spec = info["spec"]
    if args.json:
        return print_json({**info, "spec": asdict(spec),
                           "partitions": [asdict(p) for p in info["partitions"]]})
    for field, value in asdict(spec).items():
        print(f"{field:<14} {value}")
    print(f"{'topic':<14} {info['topic']}")
    print(f"{'dead letters':<14} {info['dlq_topic']}")
    print(f"{'snapshots':<14} {info['snapshots']}")
    print(f"{'PARTITION':>9} {'LOW':>12} {'HIGH':>12}")
    for p in info["partitions"]:
        print(f"{p.partition:>9} {p.low:>12} {p.high:>12}")
    return 0


def _drop(args: argparse.Namespace, settings: Settings) -> int:
    from lifecycle import collections

    if not args.yes:
        raise UsageError(f"dropping {args.name} deletes its topics and snapshots; add --yes")
    collections.drop_collection(settings, args.name)
    if args.json:
        return print_json({"collection": args.name, "dropped": True})
    print(f"collection {args.name} dropped")
    return 0


def _reshard(args: argparse.Namespace, settings: Settings) -> int:
    from lifecycle import shards

    if args.wait < 0:
        raise UsageError(f"--wait must be >= 0 seconds, got {args.wait:g}")
    done = shards.reshard(settings, args.name, args.shards, wait_s=args.wait)
    if args.json:
        return print_json(done.to_json())
    if not done.changed:
        print(f"collection {args.name} already served as {', '.join(done.to_json()['shards'])}")
        return 0
    info = done.to_json()
    print(f"collection {args.name} shard map version {info['version']}: "
          f"{', '.join(info['shards'])}; retired (draining, then exiting): "
          f"{', '.join(info['retired']) or 'none'}")
    return 0


def _shards(args: argparse.Namespace, settings: Settings) -> int:
    from ingest import catalog
    from searcher import shards

    client = settings.redis_client()
    catalog.load_spec(client, args.name)  # a missing collection is an error, not "unsharded"
    current = shards.read_map(client, args.name)
    adverts = shards.read_adverts(client, args.name)
    if args.json:
        return print_json({
            "collection": args.name, "version": 0 if current is None else current.version,
            "shards": ["all"] if current is None else [s.name for s in current.shards],
            "searchers": [{**json.loads(a.to_json()), "segments_total": sum(a.segments.values())}
                          for a in adverts]})
    layout = "unsharded (all partitions)" if current is None else (
        f"version {current.version}: " + ", ".join(s.name for s in current.shards))
    print(f"collection {args.name} shard map {layout}")
    print(f"{'SHARD':<16} {'REPLICA':<28} {'STATE':<9} {'READY':<5} {'SEGMENTS':>8}  REASON")
    for a in adverts:
        print(f"{a.shard or 'all':<16} {a.replica[:28]:<28} {a.state:<9} "
              f"{'yes' if a.ready else 'no':<5} {sum(a.segments.values()):>8}  {a.reason or ''}")
    return 0
