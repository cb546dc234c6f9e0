"""Insert while search: query QPS and p99 via Redis while rows stream in, beside no ingest.

One collection is loaded and sealed, an indexer and a searcher keep running, and the same
query load (clients in processes of their own, bench/_clients.py) runs in turns: without
ingest, while a producer upserts at a fixed rate (the indexer sealing and the searcher tailing
and loading as in production), without ingest again once the indexer has sealed what was
sent and the searcher serves it settled (every segment loaded and, where the index folds,
folded: the state it keeps between bursts), and so on. Ingest grows the collection, so each
ingest run is compared with the mean of the quiet runs just before and after it; the figures
are the medians over the rounds, and the time the searcher took to settle is reported.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the repo root must win over bench/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import statistics
import time

from bench._clients import query_load
from bench._load import Ingest, LoadResult
from bench._stack import rows_and_queries, wait_registered
from bench.common import Result, machine_info, parse_scaled, print_table
from bench.search import settled_serving
from streamvec.settings import Settings

DEFAULTS = {
    "small": {"rows": 20_000, "seconds": 3.0, "rounds": 1, "ingest_rate": 1000},
    "full": {"rows": 100_000, "seconds": 15.0, "rounds": 2, "ingest_rate": 5000},
}
WARM_S = 0.5


def main(argv: list[str] | None = None) -> None:
    """Serve a loaded collection and alternate query runs without and with ingest."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, help="rows loaded and sealed first")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--index", default="auto", help="segment index (default auto)")
    parser.add_argument("--clients", type=int, default=8,
                        help="concurrent query clients, one process each")
    parser.add_argument("--seconds", type=float, help="length of each query run")
    parser.add_argument("--rounds", type=int, help="ingest runs, each between two quiet runs")
    parser.add_argument("--ingest-rate", type=int, help="upserts while searching, rows/s")
    parser.add_argument("--seal-seconds", type=float, default=5.0,
                        help="stale seal policy of the collection (segments sealed during ingest)")
    args = parse_scaled(parser, DEFAULTS, argv)
    base = Settings()
    result = Result("insert_while_search", "Insert while search", args, base)
    data, queries = rows_and_queries(args.rows, args.dim)
    quiet: list[LoadResult] = []
    busy: list[LoadResult] = []
    rates: list[float] = []
    settle_s: list[float] = []
    with settled_serving(base, "bench-insert", data, partitions=4, index=args.index,
                         seal_seconds=args.seal_seconds) as (settings, spec, settle):
        def load(seed: int) -> LoadResult:
            return query_load(settings, spec.name, queries, clients=args.clients,
                              seconds=args.seconds, seed=seed)

        query_load(settings, spec.name, queries, clients=args.clients, seconds=WARM_S)
        quiet.append(load(0))
        for r in range(args.rounds):
            with Ingest(settings, spec.name, args.dim, args.ingest_rate, seed=r) as ingest:
                busy.append(load(2 * r + 1))
            rates.append(ingest.achieved_rate)
            stopped = time.monotonic()
            # Quiet means sealed, loaded and folded, not still at work on the burst.
            wait_registered(settings, spec, ingest.offsets)
            settle()
            settle_s.append(time.monotonic() - stopped)
            quiet.append(load(2 * r + 2))
    _record(result, quiet, busy, rates, settle_s, args)
    result.write()


def _record(result: Result, quiet: list[LoadResult], busy: list[LoadResult],
            rates: list[float], settle_s: list[float], args: argparse.Namespace) -> None:
    """Print every run; record busy medians against the medians of their quiet neighbours."""
    def around(i: int, field: str) -> float:
        return (getattr(quiet[i], field) + getattr(quiet[i + 1], field)) / 2

    medians = {field: (statistics.median(getattr(b, field) for b in busy),
                       statistics.median(around(i, field) for i in range(len(busy))))
               for field in ("qps", "p50_ms", "p99_ms")}
    rate = statistics.median(rates)
    print(f"# insert while search: {args.rows} sealed rows x {args.dim}-d, index {args.index}, "
          f"{args.clients} client processes, runs of {args.seconds:g}s, ingest "
          f"{args.ingest_rate} rows/s asked, {rate:,.0f} achieved (median)")
    print(f"# machine: {machine_info()}")
    runs = [("no ingest", quiet[0])] + [pair for b, q in zip(busy, quiet[1:], strict=True)
                                        for pair in (("ingest", b), ("no ingest", q))]
    print_table(["run", "QPS", "p50 ms", "p99 ms"],
                [[kind, f"{r.qps:,.0f}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}"]
                 for kind, r in runs])
    qps, baseline = medians["qps"]
    print(f"ratio QPS with/without ingest: {qps / baseline:.2f}x (goal >= 0.9x)")
    print("after each burst the searcher settled (sealed, loaded, folded) in "
          + ", ".join(f"{s:.1f}" for s in settle_s) + " s")
    label = f"while ingesting {args.ingest_rate} rows/s"
    quiet_label = "same searcher, no ingest (mean of the runs before and after)"
    result.compare("qps", f"QPS {label}", qps, baseline, "queries/s", quiet_label,
                   goal="ratio >= 0.9", summary=True)
    result.compare("p99_ms", f"latency p99 {label}", *medians["p99_ms"], "ms", quiet_label,
                   summary=True)
    result.compare("p50_ms", f"latency p50 {label}", *medians["p50_ms"], "ms", quiet_label)
    result.figure("ingest_rate", "ingest achieved (median of runs)", rate, "rows/s")
    result.figure("settle_s", "seconds from the end of a burst to a settled searcher (median)",
                  statistics.median(settle_s), "s")
    result.samples["runs"] = [{"run": n + 1, "ingest": kind == "ingest", "qps": r.qps,
                               "p50_ms": r.p50_ms, "p99_ms": r.p99_ms}
                              for n, (kind, r) in enumerate(runs)]


if __name__ == "__main__":
    main()
