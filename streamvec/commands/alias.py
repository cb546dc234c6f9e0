"""`streamvec alias set|get|list|history|delete` and `streamvec rollback`: alias administration."""

from __future__ import annotations

import argparse

from streamvec.commands.common import add_group, add_json, positive_int, print_json, utc
from streamvec.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `alias` command group and the `rollback` command to the top-level parser."""
    verbs = add_group(
        sub, "alias", help="point stable names at collections (blue-green, rollback)",
        description="An alias such as `products` points at one collection, such as "
        "products@v4; clients search the alias and follow every switch at once.")

    s = verbs.add_parser("set", help="point an alias at a collection (creates the alias)",
                         description="Switch ALIAS to TARGET atomically; the switch is kept in "
                         "the alias's history so `streamvec rollback ALIAS` can undo it.")
    s.add_argument("alias", help="alias name, e.g. products (no @version)")
    s.add_argument("target", help="an existing collection, e.g. products@v4")
    add_json(s)
    s.set_defaults(handler=_set)

    g = verbs.add_parser("get", help="show where an alias points",
                         description="Show an alias's target, since when and who set it.")
    g.add_argument("alias")
    add_json(g)
    g.set_defaults(handler=_get)

    lister = verbs.add_parser("list", help="list aliases", description="List every alias.")
    add_json(lister, "print JSON instead of a table")
    lister.set_defaults(handler=_list)

    h = verbs.add_parser("history", help="list an alias's past switches",
                         description="List an alias's switches, newest first.")
    h.add_argument("alias")
    h.add_argument("--limit", type=positive_int, default=20,
                   help="switches to show (default 20)")
    add_json(h)
    h.set_defaults(handler=_history)

    d = verbs.add_parser("delete", help="delete an alias and its history",
                         description="Delete an alias, its history and any ended challenge's "
                         "records; searches of the alias fail from then on.")
    d.add_argument("alias")
    add_json(d)
    d.set_defaults(handler=_delete)

    r = sub.add_parser("rollback", help="switch an alias back to its previous target",
                       description="Return ALIAS to the collection it pointed at before its "
                       "last switch. The rollback is itself a switch: a second one goes "
                       "forward again.")
    r.add_argument("alias")
    add_json(r)
    r.set_defaults(handler=_rollback)


def _set(args: argparse.Namespace, settings: Settings) -> int:
    from lifecycle import aliases

    previous = aliases.set_alias(settings.redis_client(), args.alias, args.target,
                                 settings.actor)
    if args.json:
        return print_json({"alias": args.alias, "target": args.target, "previous": previous,
                           "switched": previous != args.target})
    if previous == args.target:
        print(f"alias {args.alias} already points at {args.target}")
    elif previous is None:
        print(f"alias {args.alias} -> {args.target} (new alias)")
    else:
        print(f"alias {args.alias} -> {args.target} (was {previous})")
    return 0


def _get(args: argparse.Namespace, settings: Settings) -> int:
    from lifecycle import aliases

    found = aliases.get(settings.redis_client(), args.alias)
    if args.json:
        return print_json(found.to_json())
    print(f"{found.name} -> {found.target} (since {utc(found.since)} UTC, set by {found.actor})")
    return 0


def _list(args: argparse.Namespace, settings: Settings) -> int:
    from lifecycle import aliases

    found = aliases.list_aliases(settings.redis_client())
    if args.json:
        return print_json([a.to_json() for a in found])
    if not found:
        print("no aliases")
        return 0
    print(f"{'ALIAS':<24} {'TARGET':<32} {'SINCE (UTC)':<20} ACTOR")
    for a in found:
        print(f"{a.name:<24} {a.target:<32} {utc(a.since):<20} {a.actor}")
    return 0


def _history(args: argparse.Namespace, settings: Settings) -> int:
    from lifecycle import aliases

    client = settings.redis_client()
    aliases.get(client, args.alias)  # a clear error for an unknown alias
    switches = aliases.history(client, args.alias, args.limit)
    if args.json:
        return print_json([s.to_json() for s in switches])
    print(f"{'TIME (UTC)':<20} {'ACTOR':<16} {'ACTION':<9} {'FROM':<32} TO")
    for s in switches:
        print(f"{utc(s.at):<20} {s.actor:<16} {s.action:<9} {s.source or '-':<32} {s.target}")
    return 0


def _delete(args: argparse.Namespace, settings: Settings) -> int:
    from lifecycle import aliases

    target = aliases.delete(settings.redis_client(), args.alias, settings.actor)
    if args.json:
        return print_json({"alias": args.alias, "deleted": True, "target": target})
    print(f"alias {args.alias} deleted (it pointed at {target})")
    return 0


def _rollback(args: argparse.Namespace, settings: Settings) -> int:
    from lifecycle import aliases

    before, after = aliases.rollback(settings.redis_client(), args.alias, settings.actor)
    if args.json:
        return print_json({"alias": args.alias, "from": before, "to": after})
    print(f"alias {args.alias} rolled back: {before} -> {after}")
    return 0


