"""Search QPS, latency and recall@10 via the Redis protocol, beside raw in-process FAISS.

Rows are loaded and sealed first (4 partitions, one segment each), then the indexer stops, so
both paths search the very same FAISS segments: streamvec through `Client.search` (concurrent
client threads, one searcher process, one FAISS thread) and raw FAISS in this process (the
segments loaded from the segment store, one query at a time, one thread, results merged).
The search-time parameter (HNSW efSearch, IVF nprobe) is swept for the QPS-vs-recall curve;
the searcher's own default (efSearch 64) gives the headline figures.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the repo root must win over bench/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import time

import faiss
import numpy as np

from bench._load import exact_ids, query_load, recall
from bench._searcher import apply_params
from bench._stack import rows_and_queries, sealed, start_role
from bench.common import Result, machine_info, parse_scaled, print_table
from indexer.build import HNSW_EF_SEARCH
from indexer.registry import Registry
from indexer.store import SegmentStore
from indexer.view import load_registered
from streamvec.settings import Settings

DEFAULTS = {
    # Segments must exceed searcher.search.SCAN_MAX_VISIBLE (4096 rows) to be searched by
    # their index rather than gathered into one exact scan: 20k rows make 4 of ~5k.
    "small": {"rows": 20_000, "seconds": 2.0, "raw_queries": 300, "sweep": "16,64,256"},
    "full": {"rows": 200_000, "seconds": 8.0, "raw_queries": 1000,
             "sweep": "8,16,32,64,128,256"},
}
K = 10
WARM_S = 0.5


def main(argv: list[str] | None = None) -> None:
    """Load a collection, then measure both paths at every sweep point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, help="rows in the collection")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--index", default="HNSW32", help="segment index_factory string")
    parser.add_argument("--clients", type=int, default=8, help="concurrent client threads")
    parser.add_argument("--seconds", type=float, help="length of each streamvec QPS run")
    parser.add_argument("--raw-queries", type=int, help="queries per raw FAISS QPS run")
    parser.add_argument("--sweep", help="comma-separated efSearch (HNSW) or nprobe (IVF) values")
    args = parse_scaled(parser, DEFAULTS, argv)
    param = _sweep_param(args.index)
    values = sorted({int(v) for v in args.sweep.split(",")} | {_default_value(param)}) \
        if param else [0]
    base = Settings()
    result = Result("search", "Search via the Redis protocol vs raw in-process FAISS", args, base)
    data, queries = rows_and_queries(args.rows, args.dim)
    with sealed(base, "bench-search", data, partitions=4, index=args.index,
                seal_rows=args.rows, seal_seconds=3.0) as (settings, spec, tmp):
        truth = exact_ids(data, queries, K)
        segments = load_registered(Registry(settings.redis_client(), spec.name),
                                   SegmentStore.from_settings(settings))
        sweep = [_point(settings, spec.name, tmp, segments, queries, truth, param, v, args)
                 for v in values]
    _record(result, sweep, param, len(segments), args)
    result.write()


def _sweep_param(index: str) -> str | None:
    upper = index.upper()
    return "efSearch" if "HNSW" in upper else "nprobe" if "IVF" in upper else None


def _default_value(param: str) -> int:
    return HNSW_EF_SEARCH if param == "efSearch" else 1


def _point(settings, collection, tmp, segments, queries, truth, param, value, args) -> dict:
    """One sweep point: raw FAISS, then a searcher started with the same parameter."""
    params = f"{param}={value}" if param else None
    if params:
        for seg in segments:
            apply_params(seg.index, params)
    raw_qps, raw_answers = _raw(segments, queries[:args.raw_queries])
    searcher = start_role(settings, "searcher", collection, tmp, search_params=params)
    try:
        query_load(settings, collection, queries, clients=args.clients, seconds=WARM_S)
        load = query_load(settings, collection, queries, clients=args.clients,
                          seconds=args.seconds, seed=1)
    finally:
        searcher.stop()
    return {"param": param, "value": value, "streamvec_qps": load.qps,
            "streamvec_recall": recall(load.answers, truth), "streamvec_p50_ms": load.p50_ms,
            "streamvec_p99_ms": load.p99_ms, "raw_qps": raw_qps,
            "raw_recall": recall(raw_answers, truth)}


def _raw(segments, queries: np.ndarray) -> tuple[float, list[tuple[int, list[str]]]]:
    """One query at a time over every segment's FAISS index, merged by distance, one thread."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # as the searcher runs by default
    try:
        answers = []
        started = time.perf_counter()
        for q, vector in enumerate(queries):
            cand = []
            for seg in segments:
                dist, rows = seg.index.search(vector[None, :], K)
                cand += [(float(d), seg.ids[r]) for d, r in zip(dist[0], rows[0], strict=True)
                         if r >= 0]
            answers.append((q, [i.decode() for _, i in sorted(cand)[:K]]))
        elapsed = time.perf_counter() - started
    finally:
        faiss.omp_set_num_threads(threads)
    return len(queries) / elapsed, answers


def _record(result: Result, sweep: list[dict], param: str | None, segments: int,
            args: argparse.Namespace) -> None:
    """Print the sweep table, record the headline comparisons and the sweep samples."""
    head = next(p for p in sweep if not param or p["value"] == _default_value(param))
    label = f"{param} {head['value']}" if param else args.index
    print(f"# search: {args.rows} rows x {args.dim}-d, index {args.index}, 4 partitions "
          f"({segments} segments), {args.clients} client threads, one searcher, k={K}")
    print(f"# machine: {machine_info()}")
    print_table([param or "index", "streamvec QPS", "recall@10", "p50 ms", "p99 ms", "raw QPS",
                 "raw recall@10", "QPS ratio"],
                [[p["value"] if param else args.index, f"{p['streamvec_qps']:,.0f}",
                  f"{p['streamvec_recall']:.4f}", f"{p['streamvec_p50_ms']:.2f}",
                  f"{p['streamvec_p99_ms']:.2f}", f"{p['raw_qps']:,.0f}",
                  f"{p['raw_recall']:.4f}", f"{p['streamvec_qps'] / p['raw_qps']:.2f}x"]
                 for p in sweep])
    result.compare("qps", f"QPS via Redis, {label}, {args.clients} clients",
                   head["streamvec_qps"], head["raw_qps"], "queries/s",
                   "raw FAISS in-process, same segments, one query at a time",
                   goal="ratio >= 0.8", summary=True)
    result.compare("recall_at_10", f"recall@10 vs exact, {label}", head["streamvec_recall"],
                   head["raw_recall"], "", "raw FAISS, same segments", summary=True)
    result.figure("p50_ms", f"latency p50 via Redis, {label}", head["streamvec_p50_ms"], "ms")
    result.figure("p99_ms", f"latency p99 via Redis, {label}", head["streamvec_p99_ms"], "ms")
    result.figure("segments", "sealed segments searched", segments, "segments")
    result.samples["sweep"] = sweep
    result.notes.append("streamvec rescores every candidate exactly and fetches k + 16 rows per "
                        "segment, so at a small efSearch its recall can exceed raw FAISS's.")


if __name__ == "__main__":
    main()
