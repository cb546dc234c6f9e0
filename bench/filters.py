"""Filtered search on metadata columns with a plan vs a full filtered scan, and raw FAISS.

--segments HNSW32 segment folders holding --rows clustered vectors in all are written as the
indexer writes them (metadata columns included) and served as a searcher serves them. Each
row's metadata is {"shop": "s<i mod groups>", "n": i}; the filter {"shop": "s7"} accepts
--share of the rows (one shop in 1/share). Each query is one request of k = 10, through
searcher/execute.py with one FAISS thread, as a searcher runs it:

- columns + plan: the searcher's path; the filter's mask comes from the columns, and the
  few accepted rows are scanned exactly;
- full filtered scan: the same search with the plan forced to post-filtering: each segment's
  index is searched with a fetch that grows until k accepted rows are among the candidates,
  rejected rows dropped by the same mask (what a search without a plan does);
- row by row: the path before columns, metadata JSON parsed per candidate (fewer queries);
- raw FAISS baselines, given the accepted rows as bitmaps made beforehand: one IndexFlat over
  every row with an IDSelectorBitmap (exact), and each segment's own HNSW32 index with one
  (efSearch 128), merged.

The ratio is the full filtered scan's latency over the plan's (goal: 10x or more); recall@10
is measured against the exact answer over the accepted rows.

Part 2, the plan thresholds: filters {"m": {"lt": M}} on m = i mod 1000 accept each share of
--sweep, spread over the segments, and every plan is forced in turn (an exact scan of the
accepted rows, the index through an IDSelectorBitmap, post-filtering): latency and recall@10
per share, behind execute.FILTER_SCAN_VALUES and execute.FILTER_SELECT_FRACTION.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the repo root must win over bench/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import faiss
import numpy as np

from bench.common import Result, machine_info, measure_all, parse_scaled, print_table
from indexer import columns, publish
from indexer.segfolder import load_segment
from indexer.segment import SealedRows
from indexer.store import SegmentStore
from searcher import execute, filters, search
from searcher.budgets import Budgets
from searcher.query import Filter, QueryRequest
from searcher.segments import SegmentSet
from streamvec.synthetic import Clusters

DEFAULTS = {
    "small": {"rows": 20_000, "queries": 50, "old_queries": 5},
    "full": {"rows": 200_000, "queries": 100, "old_queries": 5},
}
K = 10
GOAL = 10.0


def main(argv: list[str] | None = None) -> None:
    """Measure every path on the same segments and queries, and record the comparisons."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, help="rows in all segments")
    parser.add_argument("--segments", type=int, default=4, help="segments (default 4)")
    parser.add_argument("--dim", type=int, default=384, help="vector dim (default 384)")
    parser.add_argument("--share", type=float, default=0.001,
                        help="share of the rows the filter accepts (default 0.001)")
    parser.add_argument("--factory", default="HNSW32", help="segment index (default HNSW32)")
    parser.add_argument("--queries", type=int, help="queries timed per path")
    parser.add_argument("--old-queries", type=int, dest="old_queries",
                        help="queries timed on the row-by-row path")
    parser.add_argument("--sweep", default="0.001,0.005,0.02,0.05,0.1,0.3",
                        help="shares of part 2, comma-separated ('' skips it)")
    args = parse_scaled(parser, DEFAULTS, argv)
    faiss.omp_set_num_threads(1)  # a searcher searches with one FAISS thread per call
    result = Result("filters", "Filtered search: columns and a plan vs a full filtered scan",
                    args)
    print(f"# machine: {machine_info()}")
    groups = max(1, round(1 / args.share))
    points = Clusters(args.dim, 64, seed=0, scale=3.0)
    data = points.draw(args.rows)[0]
    queries = points.draw(args.queries)[0]
    raws = [json.dumps({"shop": f"s{i % groups}", "n": i, "m": i % 1000}).encode()
            for i in range(args.rows)]
    flt = Filter({"shop": "s7"})
    accepted = np.array([i % groups == 7 for i in range(args.rows)])
    truth = _truth(data, accepted, queries)
    with tempfile.TemporaryDirectory(prefix="sv-bench-filters-") as tmp:
        started = time.perf_counter()
        items, bounds = _served(Path(tmp), data, raws, args)
        print(f"# {args.segments} {args.factory} segments of {args.rows // args.segments:,} "
              f"rows x {args.dim}-d written and loaded in {time.perf_counter() - started:.1f} s; "
              f"{int(accepted.sum())} rows accepted")
        per_query = _latencies(items, bounds, data, accepted, queries, flt, args)
        recall = {name: _recall(found, truth) for name, found in
                  _answers(items, bounds, data, accepted, queries, flt).items()}
        build_ms = _column_build_ms(raws[: args.rows // args.segments])
        _record(result, per_query, recall, build_ms, int(accepted.sum()), args)
        shares = [float(v) for v in args.sweep.split(",") if v.strip()]
        if shares:
            _record_sweep(result, _sweep(items, data, queries, shares), args)
    result.write()


def _served(root: Path, data: np.ndarray, raws: list[bytes], args: argparse.Namespace
            ) -> tuple[list[execute.Searchable], list[int]]:
    """Write the segment folders and serve them: searchables with their columns, and the first
    global row of each."""
    store = SegmentStore(root)
    per = args.rows // args.segments
    loaded, bounds = [], []
    for p in range(args.segments):
        lo, hi = p * per, (p + 1) * per if p < args.segments - 1 else args.rows
        rows = hi - lo
        sealed = SealedRows(p, 0, rows, np.array([f"r{i}".encode() for i in range(lo, hi)]),
                            data[lo:hi], np.arange(rows, dtype=np.int64),
                            np.zeros(rows, np.int64), raws[lo:hi], np.array([], dtype="S1"))
        written = publish.write(store, "bench-filters", 0, sealed, metric="l2",
                                index=args.factory)
        loaded.append(load_segment(store.folder(written.record.path)))
        bounds.append(lo)
    served = SegmentSet()
    served.replace(set(), loaded)
    items = []
    for entry in sorted(served.entries(), key=lambda e: e.segment.manifest.partition):
        ids = entry.segment.ids
        items.append(execute.Searchable(entry.source(), lambda row, ids=ids: ids[row].decode(),
                                        entry.segment.metadata,
                                        filters.segment_accepts(entry.segment)))
    return items, bounds


# The thresholds that force each plan.
FORCED = {"scan": {"FILTER_SCAN_FRACTION": 1.1},
          "select": {"FILTER_SCAN_VALUES": 0, "FILTER_SCAN_FRACTION": 0.0,
                     "FILTER_SELECT_FRACTION": 1.1},
          "post": {"FILTER_SCAN_VALUES": 0, "FILTER_SCAN_FRACTION": 0.0,
                   "FILTER_SELECT_FRACTION": 0.0}}


@contextmanager
def _forced(plan: str = "post") -> Iterator[None]:
    """Searches in the block use `plan` wherever a source has an index."""
    saved = {name: getattr(execute, name) for name in FORCED[plan]}
    for name, value in FORCED[plan].items():
        setattr(execute, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(execute, name, value)


def _paths(items: list[execute.Searchable], bounds: list[int], data: np.ndarray,
           accepted: np.ndarray, flt: Filter) -> dict[str, Callable[[np.ndarray], list]]:
    """Each way to answer one query: returns the ids found (global rows), best first."""
    without = [execute.Searchable(i.source, i.id_of, i.metadata_of) for i in items]
    unbounded = Budgets(filter_rows=10**12)
    flat = faiss.IndexFlatL2(data.shape[1])
    flat.add(data)
    bits = np.packbits(accepted, bitorder="little")  # read by the selector: kept below
    flat_sel = faiss.IDSelectorBitmap(len(data), faiss.swig_ptr(bits))
    flat_params = faiss.SearchParameters(sel=flat_sel)
    graphs = []
    for item, lo in zip(items, bounds, strict=True):
        mask = np.packbits(accepted[lo:lo + item.source.rows], bitorder="little")
        sel = faiss.IDSelectorBitmap(item.source.rows, faiss.swig_ptr(mask))
        params = search.faiss_params(item.source.index, search.SearchParams(), sel)
        graphs.append((item.source.index, params, lo, mask, sel))

    def ours(q: np.ndarray, sources=items, budgets=None) -> list:
        request = QueryRequest("q", "bench", q[None], K, flt)
        (answer,) = execute.execute([request], [q[None]], sources, "l2", {}, budgets)
        return [int(i[1:]) for i in answer.ids[0]]

    def post(q: np.ndarray) -> list:
        with _forced("post"):
            return ours(q)

    def raw_flat(q: np.ndarray, _held=(bits, flat_sel)) -> list:
        _, rows = flat.search(q[None], K, params=flat_params)
        return rows[0].tolist()

    def raw_graphs(q: np.ndarray) -> list:
        found = []
        for index, params, lo, _, _ in graphs:
            dist, rows = index.search(q[None], K, params=params)
            found += [(d, r + lo) for d, r in zip(dist[0], rows[0], strict=True) if r >= 0]
        return [r for _, r in sorted(found)[:K]]

    return {"plan": ours, "post": post, "rows": lambda q: ours(q, without, unbounded),
            "raw_flat": raw_flat, "raw_hnsw": raw_graphs}


def _latencies(items, bounds, data, accepted, queries, flt, args) -> dict[str, float]:
    """Milliseconds per query of each path (the row-by-row one on fewer queries)."""
    paths = _paths(items, bounds, data, accepted, flt)
    timed = {name: (queries[: args.old_queries] if name == "rows" else queries)
             for name in paths}
    timings = measure_all([(lambda fn=fn, qs=timed[name]: [fn(q) for q in qs])
                           for name, fn in paths.items()], min_time=0.05, repeats=5)
    return {name: t.best / len(timed[name]) * 1e3
            for name, t in zip(paths, timings, strict=True)}


def _answers(items, bounds, data, accepted, queries, flt) -> dict[str, np.ndarray]:
    """Each path's top k global rows per query (-1 padded)."""
    out = {}
    for name, fn in _paths(items, bounds, data, accepted, flt).items():
        chosen = queries if name != "rows" else queries[:5]
        found = np.full((len(queries), K), -1, dtype=np.int64)
        for i, q in enumerate(chosen):
            rows = fn(q)[:K]
            found[i, :len(rows)] = rows
        out[name] = found[:len(chosen)]
    return out


def _truth(data: np.ndarray, accepted: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """The exact k nearest accepted rows of each query (global rows)."""
    rows = np.flatnonzero(accepted)
    best = search.search(search.Source(data[rows]), queries, K, "l2")[1]
    return rows[best]


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each query's true k nearest accepted rows among the rows found."""
    hits = sum(len(set(f[f >= 0].tolist()) & set(t.tolist()))
               for f, t in zip(found, truth, strict=False))
    return hits / (len(found) * truth.shape[1])


def _column_build_ms(raws: list[bytes]) -> float:
    """Milliseconds per 1000 rows to build one segment's columns, as a seal does."""
    (timing,) = measure_all([lambda: columns.build(raws)], min_time=0.2, repeats=3)
    return timing.best / len(raws) * 1e6


def _sweep(items: list[execute.Searchable], data: np.ndarray, queries: np.ndarray,
           shares: list[float]) -> list[dict]:
    """Latency and recall@10 of each forced plan at each share of accepted rows."""
    m = np.arange(len(data)) % 1000
    timed = queries[:20]
    points = []
    for share in shares:
        bound = max(1, round(share * 1000))
        flt = Filter({"m": {"lt": bound}})
        truth = _truth(data, m < bound, timed)
        point: dict = {"share": bound / 1000}
        for plan in FORCED:
            def run(plan=plan, flt=flt) -> list:
                with _forced(plan):
                    out = []
                    for q in timed:
                        request = QueryRequest("q", "bench", q[None], K, flt)
                        (answer,) = execute.execute([request], [q[None]], items, "l2", {})
                        out.append([int(i[1:]) for i in answer.ids[0]])
                    return out
            (timing,) = measure_all([run], min_time=0.05, repeats=3)
            found = np.full((len(timed), K), -1, dtype=np.int64)
            for i, rows in enumerate(run()):
                found[i, :len(rows)] = rows
            point[f"{plan}_ms"] = timing.best / len(timed) * 1e3
            point[f"{plan}_recall"] = _recall(found, truth)
        points.append(point)
        print(f"# share {point['share']:.3f}: " + ", ".join(
            f"{p} {point[p + '_ms']:.3f} ms (recall {point[p + '_recall']:.3f})"
            for p in FORCED), flush=True)
    return points


def _record_sweep(result: Result, points: list[dict], args: argparse.Namespace) -> None:
    rows_each = args.rows // args.segments
    print(f"\n# plans by share of accepted rows: {args.segments} {args.factory} segments of "
          f"{rows_each:,} rows x {args.dim}-d; ms per query and recall@10")
    print_table(["share", "accepted per segment", "scan", "select", "post", "scan recall",
                 "select recall", "post recall"],
                [[f"{p['share']:.3f}", f"{p['share'] * rows_each:,.0f}", f"{p['scan_ms']:.3f}",
                  f"{p['select_ms']:.3f}", f"{p['post_ms']:.3f}", f"{p['scan_recall']:.3f}",
                  f"{p['select_recall']:.3f}", f"{p['post_recall']:.3f}"] for p in points])
    result.samples["plan_sweep"] = points


def _record(result: Result, ms: dict[str, float], recall: dict[str, float], build_ms: float,
            accepted: int, args: argparse.Namespace) -> None:
    labels = {"plan": "columns + plan (scan of the accepted rows)",
              "post": "full filtered scan (plan forced to post-filtering)",
              "rows": "row by row (metadata JSON per candidate)",
              "raw_flat": "raw FAISS IndexFlat + IDSelectorBitmap",
              "raw_hnsw": f"raw FAISS {args.factory} per segment + IDSelectorBitmap"}
    print(f"\n# filter accepting {accepted:,} of {args.rows:,} rows ({args.share:.2%}), k={K}, "
          f"{args.dim}-d, {args.segments} segments; ms per query, one query per request")
    print_table(["path", "ms/query", "recall@10", "vs plan"],
                [[labels[n], f"{ms[n]:.3f}", f"{recall[n]:.4f}", f"{ms[n] / ms['plan']:.1f}x"]
                 for n in labels])
    speedup = ms["post"] / ms["plan"]
    verdict = "meets" if speedup >= GOAL else "misses"
    print(f"# columns + plan: {speedup:.1f}x faster than the full filtered scan "
          f"({ms['plan']:.3f} vs {ms['post']:.3f} ms; goal {GOAL:.0f}x: {verdict} it), "
          f"{ms['rows'] / ms['plan']:.0f}x faster than row by row; column build "
          f"{build_ms:.1f} ms per 1000 rows at seal")
    result.compare("plan_vs_post", f"filtered search latency, {args.share:.2%} accepted, "
                   f"{args.rows} rows", ms["plan"], ms["post"], "ms",
                   labels["post"], goal=f"<= {1 / GOAL:.2f}", summary=True)
    result.compare("plan_vs_raw_flat", "filtered search latency vs raw FAISS", ms["plan"],
                   ms["raw_flat"], "ms", labels["raw_flat"])
    result.compare("plan_vs_raw_hnsw", "filtered search latency vs raw FAISS graphs",
                   ms["plan"], ms["raw_hnsw"], "ms", labels["raw_hnsw"])
    result.compare("plan_vs_rows", "filtered search latency vs row by row", ms["plan"],
                   ms["rows"], "ms", labels["rows"])
    for name in labels:
        result.figure(f"recall_{name}", f"recall@10, {labels[name]}", recall[name], "")
    result.figure("column_build_ms_per_1k_rows", "column build at seal, per 1000 rows",
                  build_ms, "ms")
    result.samples["ms_per_query"] = ms


if __name__ == "__main__":
    main()
