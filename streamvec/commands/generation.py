"""`streamvec reindex`, `generation list|rollback` and `compact`: index generations, compaction."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from streamvec.commands import common
from streamvec.commands.common import collection_arg as _name
from streamvec.settings import Settings

if TYPE_CHECKING:
    from lifecycle.generations import SwitchReport

# lifecycle.generations.DEFAULT_KEEP, named here so that `streamvec --help` need not load the
# lifecycle package; tests/streamvec/commands/test_commands.py keeps the two equal.
DEFAULT_KEEP = 3


def register(sub: argparse._SubParsersAction) -> None:
    """Add `reindex`, the `generation` group and `compact` to the top-level parser."""
    re_p = sub.add_parser(
        "reindex", help="rebuild every sealed segment with another index, then switch",
        description="Rebuild the collection's sealed segments from their raw vectors with "
                    "--index into a new generation over the same offsets, then switch to it "
                    "atomically. Ingest and queries go on meanwhile; the last --keep "
                    "generations stay available to `streamvec generation rollback`.")
    common.add_collection(re_p)
    re_p.add_argument("--index", required=True,
                      help="'auto' or a FAISS index_factory string, e.g. HNSW32, IVF256,PQ32")
    re_p.add_argument("--keep", type=common.positive_int, default=DEFAULT_KEEP,
                      help=f"generations to keep for rollback (default {DEFAULT_KEEP})")
    common.add_no_progress(re_p)
    common.add_json(re_p, common.REPORT_JSON)
    re_p.set_defaults(handler=_reindex)

    verbs = common.add_group(sub, "generation", help="list index generations or roll back to one",
                             description="Index generations: the same offsets built with "
                                         "different index specs.")
    ls = verbs.add_parser("list", help="list a collection's generations",
                          description="Print each kept generation: index spec, state, origin.")
    ls.add_argument("collection", help="collection name")
    common.add_json(ls)
    ls.set_defaults(handler=_list)
    rb = verbs.add_parser("rollback", help="switch back to an earlier generation",
                          description="Switch atomically back to the generation the active one "
                                      "was built from (or --to). Folders still kept are reused "
                                      "as they are, so answers are those from before.")
    rb.add_argument("collection", help="collection name")
    rb.add_argument("--to", type=int, help="generation number (default: the previous one)")
    common.add_no_progress(rb)
    common.add_json(rb, common.REPORT_JSON)
    rb.set_defaults(handler=_rollback)

    cp = sub.add_parser(
        "compact", help="merge small sealed segments and purge hidden rows",
        description="Merge runs of consecutive sealed segments of each partition that has more "
                    "than --max-segments segments into segments of at most --max-rows rows, "
                    "dropping rows that later writes hide. Each merge replaces its inputs "
                    "atomically. Indexers also do this on their own: see `streamvec indexer "
                    "--compact-interval`.")
    cp.add_argument("collection", help="collection name")
    cp.add_argument("--max-rows", type=common.positive_int,
                    help="largest merged segment, in rows (default: 8 x the seal_rows policy)")
    cp.add_argument("--max-segments", type=common.positive_int, default=4,
                    help="compact partitions with more segments than this (default 4)")
    cp.add_argument("--dry-run", action="store_true", help="only print what would be merged")
    common.add_json(cp, common.REPORT_JSON)
    cp.set_defaults(handler=_compact)


def _reindex(args: argparse.Namespace, settings: Settings) -> int:
    from lifecycle import generations

    name = _name(args.collection)
    report = generations.reindex(settings, name, args.index, keep=args.keep,
                                 progress=not args.no_progress)
    _print_switch(report, args.json, "reindexed")
    return 0


def _rollback(args: argparse.Namespace, settings: Settings) -> int:
    from lifecycle import generations

    name = _name(args.collection)
    report = generations.rollback(settings, name, to=args.to, progress=not args.no_progress)
    _print_switch(report, args.json, "rolled back")
    return 0


def _list(args: argparse.Namespace, settings: Settings) -> int:
    from indexer.registry import Registry

    name = _name(args.collection)
    registry = Registry(settings.redis_client(), name)
    active, known = registry.active_generation(), registry.generations()
    rows = [{"generation": g, "active": g == active, "index": i.index, "state": i.state,
             "source": i.source, "created_at": i.created_at, "actor": i.actor}
            for g, i in sorted(known.items())]
    if args.json:
        return common.print_json({"collection": name, "active": active, "generations": rows})
    if not rows:
        print(f"{name}: generation {active} (no reindex yet)")
        return 0
    print(f"{'GEN':>4}  {'STATE':<9} {'INDEX':<24} {'FROM':>4}  ACTOR")
    for row in rows:
        mark = "*" if row["active"] else " "
        source = "" if row["source"] is None else str(row["source"])
        print(f"{row['generation']:>3}{mark}  {row['state']:<9} {row['index']:<24} "
              f"{source:>4}  {row['actor']}")
    return 0


def _compact(args: argparse.Namespace, settings: Settings) -> int:
    from ingest import catalog
    from lifecycle import compaction

    name = _name(args.collection)
    spec = catalog.load_spec(settings.redis_client(), name)
    policy = compaction.CompactionPolicy(args.max_rows or 8 * spec.seal_rows, args.max_segments)
    report = compaction.compact(settings, name, policy, dry_run=args.dry_run)
    if args.json:
        return common.print_json(report.to_json())
    if not report.merged:
        print(f"{name}: nothing to compact ({report.segments_before} segments)")
        return 0
    verb = "would merge" if args.dry_run else "merged"
    for group in report.merged:
        print(f"{verb} {group[0]} .. {group[-1]} ({len(group)} segments)")
    if not args.dry_run:
        print(f"{name}: {report.segments_before} -> {report.segments_after} segments, "
              f"{report.rows_in - report.rows_out} hidden rows purged in {report.seconds:.1f}s")
    return 0


def _print_switch(report: SwitchReport, as_json: bool, verb: str) -> None:
    if as_json:
        common.print_json(report.to_json())
        return
    print(f"{report.collection}: {verb} to generation {report.generation} ({report.index}) "
          f"from {report.previous}: {report.built} segments built, {report.reused} reused, "
          f"{report.rows} rows, {report.seconds:.1f}s")
