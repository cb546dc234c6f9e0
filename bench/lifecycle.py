"""Lifecycle: reindex rows/s beside raw FAISS, and query p99 during generation switches.

Rows are produced and sealed into Flat segments (4 partitions), then the indexer stops, so
nothing else writes. `reindex` rebuilds every segment with --index (HNSW32) into a new
generation, in this process, with no query load: read and verify each folder, build, write with
sha256 and fsync, switch the registry in one script. Its baseline builds the same index
(faiss.index_factory, the same efConstruction, train, add) over the very same per-segment
vectors, already in memory, in this process; the two alternate --repeats times and the best of
each counts. Then a searcher process serves the collection and client threads query it through
Redis without pause: the steady-state p99 with nothing switching; the reindex p99 over the
queries sent while one more reindex runs, until the searcher has swapped the new generation in;
the switch p99 likewise over generation rollbacks, alternating between two generations of the
same index, so that both sides of every switch answer alike and only the switch shows.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the repo root must win over bench/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from bench._stack import Role, rows_and_queries, sealed, start_role
from bench.common import (
    Result,
    machine_info,
    parse_scaled,
    percentile,
    print_table,
    raw_faiss_build,
)
from indexer.registry import Registry
from indexer.store import SegmentStore
from indexer.view import load_registered
from lifecycle import generations
from searcher.client import Client
from streamvec.settings import Settings

DEFAULTS = {
    "small": {"rows": 20_000, "seal_rows": 5_000, "steady_s": 4.0, "switches": 4,
              "repeats": 2},
    "full": {"rows": 100_000, "seal_rows": 25_000, "steady_s": 15.0, "switches": 8,
             "repeats": 2},
}
PARTITIONS = 4
K = 10
SWAPPED = "segments swapped"  # the searcher's log line for each applied registry change
SWAP_TIMEOUT_S = 300.0
PROBE_S = 0.02


def main(argv: list[str] | None = None) -> None:
    """Load a collection, time reindex against raw FAISS, then the query latencies."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, help="rows in the collection")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--index", default="HNSW32", help="index_factory string to reindex to")
    parser.add_argument("--seal-rows", type=int, help="rows per segment")
    parser.add_argument("--clients", type=int, default=8, help="concurrent client threads")
    parser.add_argument("--steady-s", type=float, help="seconds of steady-state queries")
    parser.add_argument("--switches", type=int, help="generation rollbacks timed under load")
    parser.add_argument("--repeats", type=int, help="raw builds and reindexes, best counts")
    args = parse_scaled(parser, DEFAULTS, argv)
    base = Settings()
    result = Result("lifecycle", "Lifecycle: reindex and generation switches", args, base)
    data, queries = rows_and_queries(args.rows, args.dim)
    with sealed(base, "bench-lifecycle", data, partitions=PARTITIONS, index="Flat",
                seal_rows=args.seal_rows, seal_seconds=2.0) as (settings, spec, tmp):
        raw_s, reindex_s, rebuilt = _builds(settings, spec.name, args.index, args.repeats)
        searcher = start_role(settings, "searcher", spec.name, tmp)
        try:
            latencies = _latencies(settings, spec.name, args, queries, searcher)
        finally:
            searcher.stop()
    _record(result, args, rebuilt, reindex_s, raw_s, latencies)
    result.write()
    if latencies.failed:
        raise SystemExit(f"{latencies.failed} queries failed: {latencies.errors[:3]}")


def _builds(settings: Settings, name: str, index: str, repeats: int
            ) -> tuple[float, float, generations.SwitchReport]:
    """Raw FAISS over the segments' vectors and `reindex` of the same segments, in turns.

    Returns the best seconds of each and the last reindex's report.
    """
    segments = load_registered(Registry(settings.redis_client(), name),
                               SegmentStore.from_settings(settings))
    vectors = [np.array(s.vectors, dtype=np.float32) for s in segments if s.manifest.rows]
    del segments
    raw, ours = [], []
    for _ in range(max(1, repeats)):
        started = time.perf_counter()
        for chunk in vectors:
            raw_faiss_build(chunk, index)
        raw.append(time.perf_counter() - started)
        started = time.perf_counter()
        report = generations.reindex(settings, name, index)
        ours.append(time.perf_counter() - started)
    return min(raw), min(ours), report


@dataclass
class Latencies:
    """Query latencies by phase, and the queries that failed."""

    steady: list[float]
    switch: list[float]
    reindex: list[float]
    answered: int
    failed: int
    errors: list[str]
    switch_windows_s: list[float]
    reindex_window_s: float


@dataclass
class Load:
    """Client threads querying through Redis without pause; each query's send time, latency."""

    settings: Settings
    name: str
    queries: np.ndarray
    clients: int
    samples: list[tuple[float, float]] = field(default_factory=list)  # (sent, ms)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        """Start the client threads."""
        self._threads = [threading.Thread(target=self._run, args=(c,), daemon=True)
                         for c in range(self.clients)]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop the client threads once their current query is answered."""
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def between(self, start: float, end: float) -> list[float]:
        """Latencies (ms) of the queries sent in [start, end]."""
        return [ms for sent, ms in list(self.samples) if start <= sent <= end]

    def _run(self, number: int) -> None:
        rng = np.random.default_rng(number)
        with Client(settings=self.settings) as client:
            while not self._stop.is_set():
                vector = self.queries[int(rng.integers(0, len(self.queries)))]
                sent = time.perf_counter()
                try:
                    client.search(self.name, vector, k=K, timeout=30)
                except Exception as exc:  # noqa: BLE001 - every failure is counted and shown
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                self.samples.append((sent, (time.perf_counter() - sent) * 1e3))


def _latencies(settings: Settings, name: str, args: argparse.Namespace, queries: np.ndarray,
               searcher: Role) -> Latencies:
    """Steady-state queries, then a reindex, then rollbacks, all under the same load."""
    load = Load(settings, name, queries, args.clients)
    load.start()
    try:
        _wait(lambda: len(load.samples) >= 10 * args.clients, "the first answers")
        started = time.perf_counter()
        _wait(lambda: time.perf_counter() - started >= args.steady_s, "the steady run")
        steady = load.between(started, time.perf_counter())
        # A second generation of the same index, so every switch below serves alike.
        built_at, swapped_at, again = _switch(
            load, searcher, lambda: generations.reindex(settings, name, args.index))
        switch, windows = [], []
        for turn in range(args.switches):
            target = again.previous if turn % 2 == 0 else again.generation
            start, end, _ = _switch(load, searcher,
                                    lambda t=target: generations.rollback(settings, name, to=t))
            windows.append(end - start)
            switch += load.between(start, end)
    finally:
        load.stop()
    return Latencies(steady, switch, load.between(built_at, swapped_at), len(load.samples),
                     len(load.errors), load.errors, windows, swapped_at - built_at)


def _switch(load: Load, searcher: Role, action: Callable[[], object]
            ) -> tuple[float, float, object]:
    """Run a switch under load; its window ends when the searcher has swapped the new set in."""
    before = _swaps(searcher)
    start = time.perf_counter()
    outcome = action()
    _wait(lambda: _swaps(searcher) > before, "the searcher to swap the new generation in")
    return start, time.perf_counter(), outcome


def _swaps(searcher: Role) -> int:
    """How many registry changes the searcher has applied so far, by its log."""
    return searcher.log_text().count(SWAPPED)


def _wait(check: Callable[[], bool], what: str) -> None:
    """Probe `check` until it holds; TimeoutError after SWAP_TIMEOUT_S."""
    deadline = time.monotonic() + SWAP_TIMEOUT_S
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what} after {SWAP_TIMEOUT_S:g}s")
        time.sleep(PROBE_S)  # progress probe


def _record(result: Result, args: argparse.Namespace, rebuilt: generations.SwitchReport,
            reindex_s: float, raw_s: float, lat: Latencies) -> None:
    """Print the table and record the comparisons."""
    rate, raw_rate = rebuilt.rows / reindex_s, rebuilt.rows / raw_s
    steady99, switch99, reindex99 = (percentile(x, 99) for x in (lat.steady, lat.switch,
                                                                 lat.reindex))
    print(f"# lifecycle: {args.rows} rows x {args.dim}-d, {PARTITIONS} partitions, "
          f"{rebuilt.built} segments, Flat -> {args.index} (best of {args.repeats}); "
          f"{args.clients} client threads, "
          "one searcher process")
    print(f"# machine: {machine_info()}")
    print_table(["measure", "streamvec", "raw baseline", "ratio"], [
        [f"reindex rows/s ({args.index})", f"{rate:,.0f}", f"{raw_rate:,.0f}",
         f"{rate / raw_rate:.2f}x"],
        ["query p99 ms, generation switch", f"{switch99:.2f}", f"{steady99:.2f}",
         f"{switch99 / steady99:.2f}x"],
        ["query p99 ms, during a reindex", f"{reindex99:.2f}", f"{steady99:.2f}",
         f"{reindex99 / steady99:.2f}x"]])
    print(f"queries: {lat.answered} answered, {lat.failed} failed; steady {len(lat.steady)}, "
          f"during {args.switches} switches {len(lat.switch)} (windows "
          f"{', '.join(f'{w:.2f}' for w in lat.switch_windows_s)} s), during the reindex "
          f"{len(lat.reindex)} ({lat.reindex_window_s:.2f} s)")
    result.compare("reindex", f"reindex rows/s to {args.index}, {args.rows} rows", rate,
                   raw_rate, "rows/s", "raw FAISS index_factory + add, same segment vectors",
                   summary=True)
    result.compare("switch_p99", "query p99 during generation switches", switch99, steady99,
                   "ms", "steady state, same load", summary=True)
    result.compare("reindex_p99", "query p99 during a reindex under load", reindex99, steady99,
                   "ms", "steady state, same load")
    result.figure("failed_queries", "failed queries (all phases)", lat.failed, "queries")
    result.figure("steady_p50_ms", "query p50, steady state", percentile(lat.steady, 50), "ms")
    result.figure("switch_p50_ms", "query p50 during switches", percentile(lat.switch, 50), "ms")
    result.figure("reindex_seconds", "reindex wall time", reindex_s, "s")
    result.figure("reindex_build_seconds", "reindex build + write time", rebuilt.build_seconds,
                  "s")
    result.samples["switch_windows_s"] = lat.switch_windows_s
    result.samples["queries"] = {"steady": len(lat.steady), "switch": len(lat.switch),
                                 "reindex": len(lat.reindex), "answered": lat.answered}


if __name__ == "__main__":
    main()
