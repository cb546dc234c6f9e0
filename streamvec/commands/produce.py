"""`streamvec produce synthetic`: publish a steady stream of seeded, clustered vectors."""

from __future__ import annotations

import argparse
import logging
import math
import signal
import threading
import time
from typing import TYPE_CHECKING

from streamvec.commands.common import add_group, add_json, print_json
from streamvec.commands.errors import UsageError
from streamvec.settings import Settings

if TYPE_CHECKING:
    from ingest.producer import Producer
    from streamvec.synthetic import Clusters

log = logging.getLogger(__name__)

REPORT_EVERY_S = 10.0
# Noise around each centre, scaled by 1/sqrt(dim) so clusters stay apart at any dimension.
SPREAD = 0.6


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `produce` command group to the top-level parser."""
    sources = add_group(sub, "produce", help="publish rows to a collection",
                        description="Publish rows to a collection's topic.", title="sources",
                        metavar="SOURCE")
    syn = sources.add_parser(
        "synthetic", help="publish seeded, clustered vectors at a steady rate",
        description="Publish seeded, clustered, unit-norm vectors of the collection's dimension "
        "at --rate rows per second, until --count rows are sent or SIGTERM. Ids cycle through "
        "syn-0 .. syn-(ID_SPACE - 1), so past the first lap every row updates an existing id. "
        'Each row carries {"cluster": C} as metadata, for filtered queries.')
    syn.add_argument("--collection", required=True, help="collection to publish to")
    syn.add_argument("--rate", type=float, default=100.0,
                     help="rows per second, 0 = as fast as possible (default 100)")
    syn.add_argument("--count", type=int, default=0,
                     help="rows to publish, 0 = until stopped (default 0)")
    syn.add_argument("--batch", type=int, default=100, help="rows per upsert (default 100)")
    syn.add_argument("--id-space", type=int, default=100_000,
                     help="distinct ids before they repeat (default 100000)")
    syn.add_argument("--clusters", type=int, default=16, help="cluster centres (default 16)")
    syn.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    add_json(syn, "print the final summary as JSON (progress still goes to the log)")
    syn.add_argument("--format", choices=("binary", "json"), default="binary",
                     help="binary batches of rows (default), or one keyed JSON record per row "
                          "as any Kafka producer could send (docs/protocol.md)")
    syn.set_defaults(handler=_synthetic)


def _check(args: argparse.Namespace) -> None:
    problems = [f"--{flag} must be {rule}" for flag, ok, rule in (
        ("rate", math.isfinite(args.rate) and args.rate >= 0, "a number >= 0"),
        ("count", args.count >= 0, ">= 0"),
        ("batch", args.batch >= 1, ">= 1"),
        ("id-space", args.id_space >= 1, ">= 1"),
        ("clusters", args.clusters >= 1, ">= 1"),
    ) if not ok]
    if problems:
        raise UsageError("; ".join(problems))


def _synthetic(args: argparse.Namespace, settings: Settings) -> int:
    from ingest.producer import Producer
    from streamvec.synthetic import Clusters

    _check(args)
    producer = Producer(args.collection, settings=settings, format=args.format)
    stop = threading.Event()

    def _stop(signum, _frame):
        log.info("signal %s: flushing, then exiting", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    dim = producer.spec.dim
    stream = Clusters(dim, args.clusters, args.seed, spread=SPREAD / math.sqrt(dim), unit=True)
    log.info("publishing to %s: dim %d, %s rows/s, %s rows", producer.topic, stream.dim,
             f"{args.rate:g}" if args.rate else "max", args.count or "unlimited")
    started = time.monotonic()
    sent = _publish(producer, stream, args, stop, started)
    offsets = producer.close()
    elapsed = max(time.monotonic() - started, 1e-9)
    if args.json:
        return print_json({"collection": args.collection, "topic": producer.topic,
                           "rows": sent, "seconds": round(elapsed, 3),
                           "offsets": {str(p): o for p, o in sorted(offsets.items())}})
    print(f"published {sent} rows to {producer.topic} in {elapsed:.1f}s "
          f"({sent / elapsed:,.0f} rows/s); last offsets {offsets}")
    return 0


def _publish(producer: Producer, stream: Clusters, args: argparse.Namespace,
             stop: threading.Event, started: float) -> int:
    """Send batches at the paced rate until the count is reached or `stop` is set."""
    sent, next_report = 0, started + REPORT_EVERY_S
    while not stop.is_set() and (args.count == 0 or sent < args.count):
        n = args.batch if args.count == 0 else min(args.batch, args.count - sent)
        vectors, labels = stream.draw(n)
        ids = [f"syn-{(sent + i) % args.id_space}" for i in range(n)]
        producer.upsert(ids, vectors, metadata=[{"cluster": int(c)} for c in labels])
        sent += n
        now = time.monotonic()
        if now >= next_report:  # flushing here surfaces delivery errors while running
            log.info("sent %d rows (%.0f rows/s); last offsets %s", sent,
                     sent / (now - started), producer.flush())
            next_report = now + REPORT_EVERY_S
        if args.rate > 0:
            stop.wait(max(0.0, started + sent / args.rate - time.monotonic()))
    return sent
