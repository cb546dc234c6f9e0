"""`streamvec challenge [start|report|stop] ALIAS` and `streamvec promote ALIAS`."""

from __future__ import annotations

import argparse
import os
import socket
from dataclasses import asdict

from streamvec.commands.common import add_json, print_json, utc
from streamvec.commands.errors import UsageError
from streamvec.settings import Settings

VERBS = ("start", "report", "stop")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `challenge` and `promote` commands to the top-level parser."""
    c = sub.add_parser(
        "challenge", help="shadow-test a challenger collection beside an alias's champion",
        usage="streamvec challenge [start] ALIAS --challenger COLLECTION [--share S] [--json]\n"
              "       streamvec challenge report ALIAS [--json]\n"
              "       streamvec challenge stop ALIAS [--json]",
        description="Start: a share of the searches of ALIAS also go, in the background, to "
        "the challenger; callers still get the champion's answer. Report: judge the logged "
        "comparisons not judged yet, then print queries compared, p50/p99 latency, mean "
        "recall@k against exact search and mean overlap@k. Stop: end the challenge.")
    c.add_argument("words", nargs="+", metavar="[VERB] ALIAS",
                   help="start (the default), report or stop, then the alias")
    c.add_argument("--challenger", help="collection to shadow-test (start)")
    c.add_argument("--share", type=float, default=0.1,
                   help="fraction of searches to shadow, 0..1 (start; default 0.1)")
    add_json(c)
    c.set_defaults(handler=_challenge)

    p = sub.add_parser("promote", help="switch an alias to its challenger, ending the challenge",
                       description="Point ALIAS at its active challenge's challenger (a switch "
                       "kept in the alias's history, so `streamvec rollback ALIAS` undoes it) "
                       "and end the challenge.")
    p.add_argument("alias")
    add_json(p)
    p.set_defaults(handler=_promote)


def _challenge(args: argparse.Namespace, settings: Settings) -> int:
    from lifecycle import challenges

    verb, alias = _parse_words(args.words)
    client = settings.redis_client()
    if verb == "start":
        if not args.challenger:
            raise UsageError("starting a challenge needs --challenger COLLECTION")
        config = challenges.start(client, alias, args.challenger, args.share, settings.actor)
        if args.json:
            return print_json({**asdict(config), "active": True})
        print(f"challenge {config.id} started on alias {alias}: champion {config.champion}, "
              f"challenger {config.challenger}, share {config.share:g}")
    elif verb == "stop":
        config = challenges.stop(client, alias, settings.actor)
        if args.json:
            return print_json({**asdict(config), "active": False})
        print(f"challenge {config.id} on alias {alias} stopped (challenger "
              f"{config.challenger}); the alias keeps its target")
    else:
        out = report(settings, alias)
        if args.json:
            return print_json(out)
        print("\n".join(_lines(out)))
    return 0


def _promote(args: argparse.Namespace, settings: Settings) -> int:
    from lifecycle import challenges

    config, previous = challenges.promote(settings.redis_client(), args.alias, settings.actor)
    if args.json:
        return print_json({"alias": args.alias, "target": config.challenger,
                           "previous": previous, "challenge": config.id})
    print(f"alias {args.alias} -> {config.challenger} (was {previous}); challenge {config.id} "
          f"ended. `streamvec rollback {args.alias}` undoes the switch")
    return 0


def report(settings: Settings, alias: str) -> dict:
    """Judge the pending comparisons, then the latest challenge's figures as a JSON-ready dict."""
    from indexer.store import SegmentStore
    from lifecycle import challenges
    from lifecycle.errors import ChallengeNotFound
    from lifecycle.evaluation import Evaluator, stats

    client = settings.redis_client()
    found = challenges.latest(client, alias)
    if found is None:
        raise ChallengeNotFound(f"alias {alias!r} has no challenge, active or ended")
    config, running = found
    consumer = f"report-{socket.gethostname()}-{os.getpid()}"
    evaluator = Evaluator(client, alias, SegmentStore.from_settings(settings), consumer=consumer)
    evaluator.run_once()
    _retire(client, evaluator)
    figures = stats(client, alias, config.id)
    return {"alias": alias, "id": config.id, "active": running, "champion": config.champion,
            "challenger": config.challenger, "share": config.share,
            "started_at": config.started_at, "actor": config.actor, **figures.to_json()}


def _retire(client, evaluator) -> None:
    """Remove the report's consumer from the group once it holds nothing unacknowledged."""
    from lifecycle.evaluation import GROUP

    pending = client.xpending_range(evaluator.log_key, GROUP, "-", "+", 1,
                                    consumername=evaluator.consumer)
    if not pending:
        client.xgroup_delconsumer(evaluator.log_key, GROUP, evaluator.consumer)


def _lines(out: dict) -> list[str]:
    """The human-readable report."""
    from lifecycle.challenges import ROLES

    state = "active" if out["active"] else "ended"
    lines = [f"challenge {out['id']} on alias {out['alias']} ({state}, "
             f"started {utc(out['started_at'])} UTC, "
             f"share {out['share']:g})",
             f"searches {out['searches']}  queries {out['queries']}  compared "
             f"{out['compared']}  shadow errors {out['errors']}",
             f"{'':<16} {'CHAMPION':>24} {'CHALLENGER':>24}",
             f"{'collection':<16} {out['champion']:>24} {out['challenger']:>24}"]
    for label, pick, digits in (("p50 latency ms", lambda r: out["latency_ms"][r]["p50"], 2),
                                ("p99 latency ms", lambda r: out["latency_ms"][r]["p99"], 2),
                                ("mean recall@k", lambda r: out["recall"][r], 4)):
        lines.append(f"{label:<16} " + " ".join(f"{_num(pick(r), digits):>24}" for r in ROLES))
    lines.append(f"{'mean overlap@k':<16} {_num(out['overlap'], 4):>24}")
    return lines


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _parse_words(words: list[str]) -> tuple[str, str]:
    """(verb, alias) from `ALIAS` or `VERB ALIAS`."""
    if len(words) == 1 and words[0] not in VERBS:
        return "start", words[0]
    if len(words) == 2 and words[0] in VERBS:
        return words[0], words[1]
    raise UsageError(f"expected `challenge [start|report|stop] ALIAS`, got "
                     f"{' '.join(words)!r}")


