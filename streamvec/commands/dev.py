"""`streamvec dev up|down|status|fetch`: the local Kafka + Redis stack from the command line."""

from __future__ import annotations

import argparse
import sys

from streamvec import devstack
from streamvec.commands.common import add_group, add_json, print_json
from streamvec.devstack.jars import S3PROXY, ensure_jars
from streamvec.settings import Settings


def _progress(line: str) -> None:
    # Progress goes to stderr so that `eval "$(streamvec dev up --env)"` reads only exports.
    print(line, file=sys.stderr, flush=True)


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    """Start the stack (or find it running) and print where it listens."""
    info = devstack.up(settings, echo=_progress)
    if args.json:
        return print_json({"kafka": info.kafka, "redis": info.redis,
                           "state_dir": str(info.state_dir), "reused": list(info.reused),
                           "exports": info.exports()})
    if args.env:
        print(info.exports())
        return 0
    for name, address in (("kafka", info.kafka), ("redis", info.redis)):
        state = "already running" if name in info.reused else "started"
        print(f"{name:<6} {address:<28} {state}")
    print(f"data   {info.state_dir}")
    if (settings.kafka, settings.redis_url) != (info.kafka, info.redis):
        print(
            f"note: the current settings point elsewhere ({settings.describe()['kafka']}, "
            f"{settings.describe()['redis']}); run the export line below to use the stack"
        )
    print(info.exports())
    return 0


def cmd_down(args: argparse.Namespace, settings: Settings) -> int:
    """Stop the stack's servers."""
    stopped = devstack.down(settings, purge=args.purge)
    if args.json:
        return print_json({"stopped": list(stopped), "purged": args.purge,
                           "state_dir": str(devstack.state_dir(settings))})
    print(f"stopped {', '.join(stopped)}" if stopped else "nothing was running")
    if args.purge:
        print(f"deleted the stack's data under {devstack.state_dir(settings)}")
    return 0


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    """Print each server's address, pid and health; exit 1 unless all are healthy."""
    rows = devstack.status(settings)
    healthy = all(row.healthy for row in rows)
    if args.json:
        print_json([{"name": row.name, "address": row.address, "pid": row.pid,
                     "healthy": row.healthy, "log": str(row.log)} for row in rows])
        return 0 if healthy else 1
    for row in rows:
        if row.pid is None:
            state = "stopped"
        else:
            state = f"pid {row.pid}, " + ("healthy" if row.healthy else "NOT answering")
        print(f"{row.name:<7} {row.address:<28} {state:<28} log {row.log}")
    return 0 if healthy else 1


def cmd_fetch(args: argparse.Namespace, settings: Settings) -> int:
    """Fetch the Kafka broker and S3Proxy jars into the cache (once) and print their folders."""
    kafka = devstack.fetch(settings, echo=_progress)
    # S3Proxy is the object store the tests run against; `up` does not need it.
    s3proxy = ensure_jars(devstack.cache_dir(settings), _progress, jars=S3PROXY)
    if args.json:
        return print_json({"kafka": str(kafka), "s3proxy": str(s3proxy)})
    print(kafka)
    print(s3proxy)
    return 0


# (verb, handler, one-line help, description) for `streamvec dev <verb> --help`.
VERBS = (
    (
        "up",
        cmd_up,
        "start the stack, or reuse the servers already running",
        "Start Kafka and Redis on the local ports (fetching the Kafka jars on first use), "
        "wait until both answer, and print their addresses and an export line.",
    ),
    (
        "down",
        cmd_down,
        "stop the stack (its data is kept)",
        "Stop the local Kafka broker and Redis server; topics and keys survive until the "
        "next `up` unless --purge is given.",
    ),
    (
        "status",
        cmd_status,
        "show whether each server runs and answers",
        "Show each server's address, pid, health and log file; exit 0 only when both answer.",
    ),
    (
        "fetch",
        cmd_fetch,
        "download the Kafka broker and S3Proxy jars with Maven (once)",
        "Copy the Kafka broker jars, and the S3Proxy jars (the tests' object store), named by "
        "the poms packaged in streamvec/devstack/resources/, into $STREAMVEC_HOME/cache; later "
        "runs find them there and skip Maven.",
    ),
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `dev` command group and its verbs."""
    verbs = add_group(
        subparsers,
        "dev",
        help="run a local Kafka broker and Redis server for development and tests",
        description="A single-node Kafka (KRaft, jars from Maven, run on Java 17) and a "
        "redis-server on loopback, with data, logs and pid files under $STREAMVEC_HOME/stack.",
    )
    parsers = {}
    for name, handler, help_text, description in VERBS:
        parsers[name] = verbs.add_parser(name, help=help_text, description=description)
        parsers[name].set_defaults(handler=handler)
    output = parsers["up"].add_mutually_exclusive_group()
    output.add_argument(
        "--env",
        action="store_true",
        help='print only the export line, for eval "$(streamvec dev up --env)"',
    )
    add_json(output)
    parsers["down"].add_argument(
        "--purge", action="store_true", help="also delete the stack's data, logs and topics"
    )
    for name in ("down", "status", "fetch"):
        add_json(parsers[name])
