"""`streamvec snapshot create|list|restore|delete` and `streamvec gc`: snapshots, store cleanup."""

from __future__ import annotations

import argparse

from streamvec.commands.common import (
    REPORT_JSON,
    add_group,
    add_json,
    add_no_progress,
    at_least,
    print_json,
    utc,
)
from streamvec.commands.common import collection_arg as _name
from streamvec.settings import Settings

# lifecycle.gc's DEFAULT_GRACE_S and DEFAULT_KEEP_GENERATIONS, named here so that `streamvec
# --help` need not load the lifecycle package; tests/streamvec/commands/test_commands.py
# keeps them equal.
DEFAULT_GRACE_S = 600.0
DEFAULT_KEEP_GENERATIONS = 3

_VIEW_NOTE = ("The restored collection references the original's segment folders (nothing is "
              "copied): it is a read-only view of the data as of the snapshot. Search it; do not "
              "produce to it or run indexers on it.")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `snapshot` command group and the `gc` command to the top-level parser."""
    verbs = add_group(
        sub, "snapshot",
        help="point-in-time snapshots of a collection: take, list, restore, delete",
        description="A point-in-time snapshot records a collection's registry (segments, "
                    "checkpoints, generation, spec) without copying any file; the garbage "
                    "collector keeps every folder a snapshot names. " + _VIEW_NOTE)

    create = verbs.add_parser("create", help="take a snapshot of a collection now",
                              description="Record the collection's registry as it is now.")
    create.add_argument("name", help="collection name")
    create.add_argument("--label", help="the snapshot's id (default: UTC time plus 4 hex digits)")
    add_json(create)
    create.set_defaults(handler=_create)

    lister = verbs.add_parser("list", help="list a collection's snapshots, oldest first",
                              description="List a collection's snapshots, oldest first.")
    lister.add_argument("name", help="collection name")
    add_json(lister)
    lister.set_defaults(handler=_list)

    restore = verbs.add_parser(
        "restore", help="restore a snapshot as a new, read-only collection",
        description="Create collection --as with the snapshot's spec and registry. " + _VIEW_NOTE)
    restore.add_argument("name", help="collection the snapshot was taken of")
    restore.add_argument("--as", dest="as_name", required=True, metavar="NEW",
                         help="name of the new collection (must not exist)")
    restore.add_argument("--snapshot", help="snapshot id (default: the latest)")
    add_json(restore)
    restore.set_defaults(handler=_restore)

    delete = verbs.add_parser("delete", help="delete a snapshot (folders go at the next gc)",
                              description="Forget a snapshot. Folders only it referenced are "
                                          "removed by the next `streamvec gc`.")
    delete.add_argument("name", help="collection name")
    delete.add_argument("--snapshot", required=True, help="snapshot id")
    add_json(delete)
    delete.set_defaults(handler=_delete)
    _register_gc(sub)


def _register_gc(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser(
        "gc", help="remove segment folders that nothing references",
        description="Remove segment folders (with their markers) that no registry and no "
                    "snapshot of any collection references, and stale temp folders. Kept: "
                    "folders younger than --grace, folders written but not yet registered, "
                    "and the last --keep-generations generations of each collection (in the "
                    "active generation only referenced folders stay).")
    g.add_argument("--collection", help="only this collection's folders (default: all)")
    g.add_argument("--grace", type=at_least(0, float), default=DEFAULT_GRACE_S,
                   metavar="S", help=f"keep folders younger than this many seconds "
                                     f"(default {DEFAULT_GRACE_S:g})")
    g.add_argument("--keep-generations", type=at_least(0),
                   default=DEFAULT_KEEP_GENERATIONS, metavar="N",
                   help=f"generations kept for rollback (default "
                        f"{DEFAULT_KEEP_GENERATIONS})")
    g.add_argument("--dry-run", action="store_true", help="list what would go, delete nothing")
    add_no_progress(g)
    add_json(g, REPORT_JSON)
    g.set_defaults(handler=_gc)


def _create(args: argparse.Namespace, settings: Settings) -> int:
    from lifecycle import snapshots

    pit = snapshots.create(settings, _name(args.name), args.label)
    if args.json:
        return print_json(pit.summary())
    print(f"snapshot {pit.snapshot_id} of {pit.collection}: {pit.segments} segments, "
          f"{pit.rows} rows, generation {pit.generation}")
    return 0


def _list(args: argparse.Namespace, settings: Settings) -> int:
    from lifecycle import snapshots

    found = snapshots.list_snapshots(settings, _name(args.name))
    if args.json:
        return print_json([p.summary() for p in found])
    if not found:
        print(f"{args.name}: no snapshots")
        return 0
    print(f"{'ID':<28} {'CREATED (UTC)':<19} {'SEGMENTS':>8} {'ROWS':>10} {'GEN':>4}  ACTOR")
    for p in found:
        print(f"{p.snapshot_id:<28} {utc(p.created_at):<19} {p.segments:>8} {p.rows:>10} "
              f"{p.generation:>4}  {p.actor}")
    return 0


def _restore(args: argparse.Namespace, settings: Settings) -> int:
    from lifecycle import snapshots

    done = snapshots.restore(settings, _name(args.name), _name(args.as_name), args.snapshot)
    if args.json:
        return print_json(done.to_json())
    print(f"restored snapshot {done.snapshot_id} of {done.source} as {done.collection}: "
          f"{done.segments} segments, {done.rows} rows (a read-only view; start a searcher "
          f"with `streamvec searcher --collection {done.collection}`)")
    return 0


def _delete(args: argparse.Namespace, settings: Settings) -> int:
    from lifecycle import snapshots

    pit = snapshots.delete(settings, _name(args.name), args.snapshot)
    if args.json:
        return print_json({**pit.summary(), "deleted": True})
    print(f"snapshot {pit.snapshot_id} of {pit.collection} deleted; run `streamvec gc` to "
          "free folders only it referenced")
    return 0


def _gc(args: argparse.Namespace, settings: Settings) -> int:
    from lifecycle import gc

    name = None if args.collection is None else _name(args.collection)
    report = gc.collect(settings, name, grace_s=args.grace,
                        keep_generations=args.keep_generations, dry_run=args.dry_run,
                        progress=not args.no_progress)
    if args.json:
        return print_json(report.to_json())
    verb = "would remove" if args.dry_run else "removed"
    for path in report.removed if args.dry_run else ():
        print(f"{verb} {path}")
    kept = ", ".join(f"{n} {reason}" for reason, n in sorted(report.kept.items())) or "nothing"
    print(f"{verb} {len(report.removed)} entries ({report.bytes_freed / 2**20:.1f} MiB) in "
          f"{len(report.collections)} collection folders; kept {kept}")
    for skipped in report.skipped:
        print(f"skipped {skipped}: its lifecycle lock is held; run gc again later")
    return 0
