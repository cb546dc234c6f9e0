"""`streamvec registry show|rebuild`: inspect a registry, or rebuild it from the segment store."""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from typing import TYPE_CHECKING

from streamvec.commands.common import add_collection, add_group, add_json, print_json
from streamvec.commands.common import collection_arg as _name
from streamvec.commands.errors import UsageError
from streamvec.settings import Settings

if TYPE_CHECKING:
    from indexer.rebuild import RebuildReport
    from indexer.store import FetchReport, SegmentStore


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `registry` command group to the top-level parser."""
    verbs = add_group(sub, "registry", help="show a collection's registry or rebuild it",
                      description="The Redis registry: checkpoints and sealed segments.")

    show = verbs.add_parser("show", help="print checkpoints and registered segments",
                            description="Print each partition's checkpoint and owner epoch, "
                                        "then every registered segment.")
    add_collection(show)
    add_json(show, "print JSON instead of tables")
    show.set_defaults(handler=_show)

    rebuild_p = verbs.add_parser(
        "rebuild", help="rebuild the registry from the segment store",
        description="Derive checkpoints and segments from the registered, checksum-verified "
                    "segment folders of the segment store. Without --yes, only print the plan. "
                    "Stop the collection's indexer workers first.")
    add_collection(rebuild_p)
    rebuild_p.add_argument("--generation", type=int, default=None,
                           help="generation (default: the active one, 0 if Redis lost it)")
    rebuild_p.add_argument("--yes", action="store_true",
                           help="replace the registry (otherwise a dry run)")
    rebuild_p.add_argument("--from-remote", action="store_true",
                           help="first copy the collection's folders and markers from the object "
                                "store (STREAMVEC_STORE_URL) into the local segment store")
    add_json(rebuild_p, "print the plan or the rebuilt registry as JSON")
    rebuild_p.set_defaults(handler=_rebuild)


def _show(args: argparse.Namespace, settings: Settings) -> int:
    from indexer.registry import Registry

    name = _name(args.collection)
    registry = Registry(settings.redis_client(), name)
    ckpts, records, version = registry.checkpoints(), registry.segments(), registry.version()
    epochs = {p: registry.epoch(p) for p in ckpts}
    if args.json:
        return print_json({"collection": name, "version": version,
                           "checkpoints": {str(p): c for p, c in sorted(ckpts.items())},
                           "epochs": {str(p): e for p, e in sorted(epochs.items())},
                           "segments": [asdict(r) for r in records]})
    print(f"collection {name}  registry version {version}")
    if not ckpts:
        print("no registered segments")
        return 0
    print(f"{'PARTITION':>9} {'CHECKPOINT':>12} {'EPOCH':>6} {'SEGMENTS':>8} {'ROWS':>10}")
    for p, c in sorted(ckpts.items()):
        mine = [r for r in records if r.partition == p]
        print(f"{p:>9} {c:>12} {epochs[p]:>6} {len(mine):>8} {sum(r.rows for r in mine):>10}")
    print(f"\n{'SEGMENT':<32} {'ROWS':>8} {'GEN':>4} {'FACTORY':<20} CREATED")
    for r in records:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.created_at))
        print(f"{r.segment_id:<32} {r.rows:>8} {r.generation:>4} {r.factory:<20} {created}")
    return 0


def _rebuild(args: argparse.Namespace, settings: Settings) -> int:
    from indexer.rebuild import plan_rebuild, rebuild
    from indexer.registry import Registry
    from indexer.store import SegmentStore

    name = _name(args.collection)
    store = SegmentStore.from_settings(settings)
    if args.from_remote and store.remote is None:
        raise UsageError("--from-remote needs an object store: set STREAMVEC_STORE_URL "
                         "(and STREAMVEC_STORE_OPTIONS)")
    if args.generation is None:
        args.generation = Registry(settings.redis_client(), name).active_generation()
    fetched = _fetch_remote(store, name, args.generation, args.json) if args.from_remote else None
    if args.yes:
        # Folders fetched from the object store get their recovered markers there too.
        report = rebuild(settings.redis_client(), store, name, args.generation,
                         mirror_markers=args.from_remote)
    else:
        report = plan_rebuild(store, name, args.generation)
    if args.json:
        return print_json({"collection": report.collection, "generation": report.generation,
                           "dry_run": report.version is None, "version": report.version,
                           "partitions": [asdict(p) for p in report.partitions],
                           "recovered": list(report.recovered), "ignored": list(report.ignored),
                           "fetched": None if fetched is None else asdict(fetched)})
    _print_report(report)
    if report.version is None:
        print("dry run: nothing written; add --yes to replace the registry")
    else:
        print(f"registry of {name} rebuilt: version {report.version}")
    return 0


def _fetch_remote(store: SegmentStore, name: str, generation: int, quiet: bool) -> FetchReport:
    """Copy the collection's remote folders (verified) and markers into the local store.

    The caller has checked that the store has a remote. Prints what was fetched unless `quiet`.
    """
    fetched = store.fetch_collection(name, generation)
    if quiet:
        return fetched
    print(f"from {store.remote.url}: {len(fetched.fetched)} folders fetched, "
          f"{len(fetched.kept)} already here, {fetched.markers} markers copied")
    for rel, why in fetched.refused.items():
        print(f"refused {rel}: {why}")
    return fetched


def _print_report(report: RebuildReport) -> None:
    print(f"collection {report.collection} generation {report.generation}")
    print(f"{'PARTITION':>9} {'SEGMENTS':>8} {'ROWS':>10} {'CHECKPOINT':>12}")
    for p in report.partitions:
        print(f"{p.partition:>9} {p.segments:>8} {p.rows:>10} {p.checkpoint:>12}")
    if not report.partitions:
        print("(no segment folders)")
    for seg_id in report.recovered:
        print(f"recovered {seg_id}: registered but unmarked (a later segment depends on it)")
    for seg_id in report.ignored:
        print(f"ignored {seg_id}: never registered")
