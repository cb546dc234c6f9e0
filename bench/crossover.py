"""Exact scan vs HNSW32 by segment size (the crossover behind `auto`), and folded segments.

Part 1, the crossover: for each row count and dim, the latency per query of the searcher's
exact float32 scan (one BLAS pass over the raw vectors, a source without an index) against
HNSW32 (efConstruction as the indexer builds it) at the smallest efSearch whose recall@10 is
at least the target, both through `searcher.search` with one FAISS thread, as a searcher runs
them: one query per call, and a batch of queries per call (where a scan shares its pass).
The graph grows by adding rows, so one build serves every row count of a dim. The crossover
is where HNSW gets faster than the scan, interpolated between measured sizes; the raw
baseline beside the scan is FAISS's own IndexFlat over the same rows.

Part 2, the fold: --segments HNSW32 segment folders of --fold-rows rows each (one per
partition) searched one by one, as a searcher without a fold does, against one fold over all
of them (searcher/fold.py), both through `execute.fan_out` at the searcher's default
efSearch, one query per call; with recall@10 of each, the time to build the fold from the
segments and the memory it takes.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the repo root must win over bench/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import ctypes
import gc
import math
import tempfile
import threading
import time

import faiss
import numpy as np
import psutil

from bench.common import Result, machine_info, measure_all, parse_scaled, print_table
from indexer import build, publish
from indexer.segfolder import load_segment
from indexer.segment import SealedRows
from indexer.store import SegmentStore
from searcher import execute, search
from searcher.fold import FoldConfig, Folds
from searcher.segments import SegmentSet
from streamvec.synthetic import Clusters

DEFAULTS = {
    "small": {"rows": "500,1000,2000,5000,10000,20000", "queries": 100, "fold_rows": 5_000},
    "full": {"rows": "500,1000,2000,5000,10000,20000,50000,100000,200000", "queries": 300,
             "fold_rows": 20_000},
}
K = 10
# Rows a searcher asks each source for: k plus the room it keeps for canary rows.
FETCH = K + execute.CANARY_SLACK
TARGET_RECALL = 0.99
EF_LADDER = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
TIMED_QUERIES = 20  # queries per timed call: each call cycles through the same few
RSS_PROBE_S = 0.02


def main(argv: list[str] | None = None) -> None:
    """Measure the crossover for every dim, then the fold, and record both."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", help="comma-separated row counts of the crossover sweep")
    parser.add_argument("--dims", default="384,128",
                        help="comma-separated dims of the crossover (default 384,128; '' skips it)")
    parser.add_argument("--queries", type=int, help="queries for recall@10")
    parser.add_argument("--batch", type=int, default=64,
                        help="queries searched together in the batch columns (default 64)")
    parser.add_argument("--metric", default="l2", choices=("l2", "ip", "cosine"))
    parser.add_argument("--target-recall", type=float, default=TARGET_RECALL,
                        help=f"recall@10 HNSW must reach (default {TARGET_RECALL})")
    parser.add_argument("--segments", type=int, default=4, help="segments folded (default 4)")
    parser.add_argument("--fold-rows", type=int, help="rows per folded segment")
    parser.add_argument("--fold-dim", type=int, default=384, help="dim of the fold part")
    args = parse_scaled(parser, DEFAULTS, argv)
    faiss.omp_set_num_threads(1)  # a searcher searches with one FAISS thread per call
    result = Result("crossover", "Exact scan vs HNSW32 by segment size; folded segments", args)
    print(f"# machine: {machine_info()}")
    sizes = sorted({int(v) for v in args.rows.split(",")})
    for dim in (int(v) for v in args.dims.split(",") if v.strip()):
        points = _sweep(dim, sizes, args)
        _record_sweep(result, dim, points, args)
    if args.fold_rows > 0 and args.segments > 0:
        _record_fold(result, _fold(args), args)
    result.write()


def _data(rows: int, queries: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded clustered rows and queries from the same clusters (as bench/_stack.py draws)."""
    points = Clusters(dim, 64, seed=0, scale=3.0)
    return points.draw(rows)[0], points.draw(queries)[0]


def _sweep(dim: int, sizes: list[int], args: argparse.Namespace) -> list[dict]:
    """Scan and HNSW latency, and HNSW's efSearch for the target recall, at every size."""
    data, queries = _data(sizes[-1], args.queries, dim)
    graph = build.make_index(dim, build.AUTO_GRAPH_FACTORY, args.metric)
    flat = faiss.index_factory(dim, "Flat", build.faiss_metric(args.metric))
    prepared = build.prepare(data, args.metric)
    points = []
    for rows in sizes:
        started = time.perf_counter()
        graph.add(prepared[graph.ntotal:rows])
        flat.add(prepared[flat.ntotal:rows])
        grow_s = time.perf_counter() - started
        scan_src = search.Source(data[:rows])
        graph_src = search.Source(data[:rows], index=graph)
        truth = search.search(scan_src, queries, K, args.metric)[1]
        ef, got = _ef_for(graph_src, queries, truth, args)
        point = {"dim": dim, "rows": rows, "ef": ef, "recall": got,
                 "hnsw_add_ms_per_row": grow_s * 1e3 / max(rows - (points[-1]["rows"] if points
                                                                  else 0), 1),
                 **_latencies(scan_src, graph_src, flat, queries, ef, args)}
        points.append(point)
        print(f"# dim {dim} rows {rows}: scan {point['scan_ms']:.3f} ms, HNSW32 efSearch {ef} "
              f"{point['hnsw_ms']:.3f} ms (recall@10 {got:.4f})", flush=True)
    return points


def _latencies(scan_src: search.Source, graph_src: search.Source, flat: faiss.Index,
               queries: np.ndarray, ef: int, args: argparse.Namespace) -> dict[str, float]:
    """Milliseconds per query: one query per call, and queries of a batch searched together."""
    params = search.SearchParams(ef=ef)
    timed = queries[:TIMED_QUERIES]
    raw = build.prepare(timed, args.metric)
    batch = queries[:args.batch]
    single = measure_all([
        lambda: [search.search(scan_src, q[None], FETCH, args.metric) for q in timed],
        lambda: [search.search(graph_src, q[None], FETCH, args.metric, params) for q in timed],
        lambda: [flat.search(q[None], FETCH) for q in raw],
    ], min_time=0.02, repeats=5)
    together = measure_all([
        lambda: search.search(scan_src, batch, FETCH, args.metric),
        lambda: search.search(graph_src, batch, FETCH, args.metric, params),
    ], min_time=0.02, repeats=5)
    scan_t, graph_t, raw_t = (t.best / len(timed) * 1e3 for t in single)
    batch_scan_t, batch_graph_t = (t.best / len(batch) * 1e3 for t in together)
    return {"scan_ms": scan_t, "hnsw_ms": graph_t, "raw_flat_ms": raw_t,
            "batch_scan_ms": batch_scan_t, "batch_hnsw_ms": batch_graph_t}


def _ef_for(src: search.Source, queries: np.ndarray, truth: np.ndarray,
            args: argparse.Namespace) -> tuple[int, float]:
    """The smallest efSearch of the ladder that reaches the target recall (else the largest)."""
    got = 0.0
    for ef in EF_LADDER:
        found = search.search(src, queries, FETCH, args.metric, search.SearchParams(ef=ef))[1]
        got = _recall(found[:, :K], truth)
        if got >= args.target_recall:
            return ef, got
    return EF_LADDER[-1], got


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each query's true k nearest rows among the rows found."""
    hits = sum(len(set(f[f >= 0].tolist()) & set(t.tolist())) for f, t in zip(found, truth,
                                                                              strict=True))
    return hits / truth.size


def crossover(points: list[dict], graph: str = "hnsw_ms", scan: str = "scan_ms") -> float | None:
    """Rows where HNSW's latency meets the scan's: log-log interpolation; None if never."""
    previous = None
    for point in points:
        ratio = point[graph] / point[scan]
        if ratio < 1:
            if previous is None:
                return float(point["rows"])
            lo, hi = math.log(previous[0]), math.log(point["rows"])
            r_lo, r_hi = math.log(previous[1]), math.log(ratio)
            return math.exp(lo + (hi - lo) * r_lo / (r_lo - r_hi))
        previous = (point["rows"], ratio)
    return None


def _record_sweep(result: Result, dim: int, points: list[dict],
                  args: argparse.Namespace) -> None:
    print(f"\n# crossover, dim {dim}, {args.metric}: exact scan vs HNSW32 at the smallest "
          f"efSearch with recall@10 >= {args.target_recall}, one thread; ms per query, one "
          f"query per call and {args.batch} per call")
    print_table(["rows", "scan", "raw IndexFlat", "HNSW32", "efSearch", "recall@10",
                 "HNSW / scan", f"scan, {args.batch}", f"HNSW32, {args.batch}",
                 "HNSW add ms/row"],
                [[f"{p['rows']:,}", f"{p['scan_ms']:.3f}", f"{p['raw_flat_ms']:.3f}",
                  f"{p['hnsw_ms']:.3f}", p["ef"], f"{p['recall']:.4f}",
                  f"{p['hnsw_ms'] / p['scan_ms']:.2f}x", f"{p['batch_scan_ms']:.3f}",
                  f"{p['batch_hnsw_ms']:.3f}", f"{p['hnsw_add_ms_per_row']:.3f}"]
                 for p in points])
    for key, graph, scan, what in (("", "hnsw_ms", "scan_ms", "one query per call"),
                                   ("batch_", "batch_hnsw_ms", "batch_scan_ms",
                                    f"{args.batch} queries per call")):
        rows = crossover(points, graph, scan)
        if rows is None:
            print(f"# dim {dim}, {what}: the scan stays faster up to {points[-1]['rows']:,} rows")
            result.notes.append(f"dim {dim}, {what}: the exact scan was faster at every size")
            continue
        below = " (HNSW faster at every size measured)" if rows == points[0]["rows"] else ""
        print(f"# dim {dim}, {what}: crossover at about {rows:,.0f} rows "
              f"({rows * dim / 1e6:.2f} M scanned values){below}")
        result.figure(f"{key}crossover_rows_{dim}", f"crossover rows, dim {dim}, {what}", rows,
                      "rows")
    for p in points:
        result.compare(f"hnsw_vs_scan_{dim}_{p['rows']}",
                       f"HNSW32 latency, {p['rows']} rows x {dim}-d, efSearch {p['ef']}",
                       p["hnsw_ms"], p["scan_ms"], "ms", "exact float32 scan, same rows")
        result.compare(f"scan_vs_raw_{dim}_{p['rows']}",
                       f"exact scan latency, {p['rows']} rows x {dim}-d", p["scan_ms"],
                       p["raw_flat_ms"], "ms", "raw FAISS IndexFlat, same rows")
    result.samples[f"sweep_{dim}"] = points


def _segment_folders(root: Path, data: np.ndarray, segments: int, rows: int,
                     metric: str) -> list[Path]:
    """Write one HNSW32 segment folder per partition, built as the indexer builds them."""
    store = SegmentStore(root)
    folders = []
    for p in range(segments):
        sealed = SealedRows(p, 0, rows, np.array([f"r{p * rows + i}".encode()
                                                  for i in range(rows)]),
                            data[p * rows:(p + 1) * rows], np.arange(rows, dtype=np.int64),
                            np.zeros(rows, np.int64), [b""] * rows, np.array([], dtype="S1"))
        written = publish.write(store, "bench-fold", 0, sealed, metric=metric,
                                index=build.AUTO_GRAPH_FACTORY)
        folders.append(store.folder(written.record.path))
    return folders


def _fold(args: argparse.Namespace) -> dict:
    """Per-segment search vs one fold over the same segments: latency, recall, build, memory."""
    dim, n = args.fold_dim, args.fold_rows
    data, queries = _data(args.segments * n, args.queries, dim)
    truth = search.search(search.Source(data), queries, K, args.metric)[1]
    with tempfile.TemporaryDirectory(prefix="sv-bench-fold-") as tmp:
        folders = _segment_folders(Path(tmp), data, args.segments, n, args.metric)
        # The same folders loaded twice: one set searched segment by segment, one folded.
        own = [_searchable(e) for e in _served([load_segment(f) for f in folders]).entries()]
        folded_set = _served([load_segment(f) for f in folders])
        # Serializing reads every page of the indexes to be folded: resident, as when served.
        index_bytes = sum(len(faiss.serialize_index(e.segment.index))
                          for e in folded_set.entries())
        gc.collect()
        _trim()
        folds = Folds(FoldConfig(args.metric, background=False), threading.Lock(),
                      folded_set.entries)
        started = time.perf_counter()
        with _PeakRss() as rss:
            folds.settle()
        build_s = time.perf_counter() - started
        folded, rest = folds.split(folded_set.entries())
        assert not rest and len(folded) == 1, "every segment goes into one fold"
        gc.collect()  # the folded segments' own indexes are gone
        _trim()
        settled = _rss() - rss.before
        fold_bytes = len(faiss.serialize_index(folded[0].source.index))
        timed = queries[:TIMED_QUERIES]
        per_t, fold_t = measure_all([
            lambda: [execute.fan_out(own, q[None], FETCH, args.metric) for q in timed],
            lambda: [execute.fan_out(folded, q[None], FETCH, args.metric) for q in timed],
        ], min_time=0.05, repeats=7)
        out = {"segments": args.segments, "rows": n, "dim": dim,
               "per_segment_ms": per_t.best / len(timed) * 1e3,
               "fold_ms": fold_t.best / len(timed) * 1e3,
               "per_segment_recall": _fan_out_recall(own, queries, truth, args.metric),
               "fold_recall": _fan_out_recall(folded, queries, truth, args.metric),
               "build_s": build_s, "rss_peak_mib": (rss.peak - rss.before) / 2**20,
               "rss_settled_mib": settled / 2**20, "segment_indexes_mib": index_bytes / 2**20,
               "fold_index_mib": fold_bytes / 2**20}
        folds.close()
    return out


def _served(loaded: list) -> SegmentSet:
    """A segment set serving `loaded`, as a searcher's state holds it."""
    served = SegmentSet()
    served.replace(set(), loaded)
    return served


def _rss() -> int:
    return psutil.Process().memory_info().rss


def _trim() -> None:
    """Hand memory freed by dropped indexes back to the OS (glibc keeps it otherwise), so the
    RSS shows what is held rather than what was once used."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: RSS keeps the freed memory
        pass


class _PeakRss:
    """The highest RSS seen while the block runs, sampled on a thread."""

    def __enter__(self) -> _PeakRss:
        self.before = self.peak = _rss()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())

    def _sample(self) -> None:
        while not self._done.wait(RSS_PROBE_S):
            self.peak = max(self.peak, _rss())


def _searchable(entry) -> execute.Searchable:
    """A served segment searched with its own index, as a searcher without a fold does."""
    ids = entry.segment.ids
    return execute.Searchable(entry.source(), lambda row: ids[row].decode(),
                              entry.segment.metadata)


def _fan_out_recall(items: list[execute.Searchable], queries: np.ndarray, truth: np.ndarray,
                    metric: str) -> float:
    """recall@10 of the searcher's fan-out over `items`, keys mapped back to global rows."""
    _, keys = execute.fan_out(items, queries, FETCH, metric)
    ends = np.cumsum([item.source.rows for item in items])
    found = np.full((len(queries), K), -1, dtype=np.int64)
    for q in range(len(queries)):
        row = [k for k in keys[q] if k >= 0][:K]
        which = np.searchsorted(ends, row, side="right")
        local = np.asarray(row) - np.concatenate([[0], ends])[which]
        found[q, :len(row)] = [int(items[w].id_of(int(r))[1:]) for w, r in zip(which, local,
                                                                                strict=True)]
    return _recall(found, truth)


def _record_fold(result: Result, fold: dict, args: argparse.Namespace) -> None:
    print(f"\n# fold: {fold['segments']} HNSW32 segments of {fold['rows']:,} rows x "
          f"{fold['dim']}-d, searcher default efSearch, one query, one thread")
    print_table(["path", "latency ms", "recall@10"],
                [["segment by segment", f"{fold['per_segment_ms']:.3f}",
                  f"{fold['per_segment_recall']:.4f}"],
                 ["one fold", f"{fold['fold_ms']:.3f}", f"{fold['fold_recall']:.4f}"]])
    print(f"# fold built in {fold['build_s']:.1f} s (a copy of the largest segment's graph, the "
          f"others' rows added); indexes: {fold['segment_indexes_mib']:.0f} MiB in the "
          f"segments, {fold['fold_index_mib']:.0f} MiB in the fold that replaces them; RSS "
          f"+{fold['rss_peak_mib']:.0f} MiB at the peak of the build, "
          f"{fold['rss_settled_mib']:+.0f} MiB once the segments' own indexes are dropped")
    label = f"{fold['segments']} x {fold['rows']} rows x {fold['dim']}-d HNSW32"
    result.compare("fold_latency", f"query latency through one fold, {label}",
                   fold["fold_ms"], fold["per_segment_ms"], "ms",
                   "the same segments searched one by one", summary=True)
    result.compare("fold_recall", f"recall@10 through one fold, {label}", fold["fold_recall"],
                   fold["per_segment_recall"], "", "the same segments searched one by one")
    result.figure("fold_build_s", f"fold build, {label}", fold["build_s"], "s")
    result.figure("fold_rss_peak_mib", f"RSS added at the peak of the fold build, {label}",
                  fold["rss_peak_mib"], "MiB")
    result.figure("fold_rss_settled_mib", f"RSS added once the fold replaces the segments' "
                  f"indexes, {label}", fold["rss_settled_mib"], "MiB")
    result.samples["fold"] = fold


if __name__ == "__main__":
    main()
