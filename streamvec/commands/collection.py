"""`streamvec collection create|list|describe|drop`: collection administration."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from streamvec.commands.common import add_group, add_json, print_json
from streamvec.commands.errors import UsageError
from streamvec.settings import Settings

# ingest.spec.METRICS, named here so that `streamvec --help` need not load numpy;
# tests/streamvec/commands/test_commands.py keeps the two equal.
METRICS = ("l2", "ip", "cosine")


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
                        help="FAISS index_factory string, or auto (default)")
    create.add_argument("--seal-rows", type=int, default=100_000,
                        help="seal a growing segment at this many rows (default 100000)")
    create.add_argument("--seal-seconds", type=float, default=60.0,
                        help="seal a growing segment this old (default 60)")
    create.add_argument("--seal-bytes", type=int, default=256 * 1024 * 1024,
                        help="seal a growing segment this large in bytes (default 256 MiB)")
    create.add_argument("--model-version", default="",
                        help="embedding model version (implied by NAME@VERSION)")
    create.add_argument("--adopt-store", action="store_true",
                        help="accept segment folders an earlier collection of this name left in "
                             "the segment store, to rebuild its registry from them")
    create.add_argument("--replication", type=int, default=None,
                        help="topic replication factor (default: min(3, brokers))")
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
    drop.set_defaults(handler=_drop)


def _create(args: argparse.Namespace, settings: Settings) -> int:
    from ingest.spec import CollectionSpec
    from lifecycle import collections

    spec = CollectionSpec(
        name=args.name, dim=args.dim, metric=args.metric, partitions=args.partitions,
        index=args.index, seal_rows=args.seal_rows, seal_seconds=args.seal_seconds,
        seal_bytes=args.seal_bytes, model_version=args.model_version,
    )
    created = collections.create_collection(settings, spec, replication=args.replication,
                                             adopt_store=args.adopt_store)
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
    print(f"collection {args.name} dropped")
    return 0
