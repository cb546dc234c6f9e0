"""Search QPS, latency and recall@10 via Redis, beside raw FAISS over the same rows in one index.

What a user gets: rows (the packaged corpus embedded with the demo's sentence model, or seeded
clustered vectors) are sealed into a cosine collection of 4 partitions with index `auto` (HNSW32
per segment from 1,000 rows), then the indexer stops. One `streamvec searcher` serves them as it
ships: its sealed segments folded into one in-memory graph, measured only once the fold is built
(its `streamvec_searcher_folded_segments` gauge says so). Query clients run in processes of their
own and send one-vector `Client.search` calls back to back: once per swept `ef` (per-query HNSW
efSearch) and once with no `ef` at all (the defaults: efSearch 128).

The baseline is raw FAISS in this process over the same rows: one HNSW32 index (efConstruction
80) over all of them, one query at a time, one thread, at the same efSearch. Headline: QPS at the
cheapest swept ef whose recall@10 reaches 0.99, and QPS with the defaults.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the repo root must win over bench/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import re
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import faiss
import numpy as np

from bench import _corpus_vectors as corpus_vectors
from bench._clients import query_load
from bench._load import LoadResult, recall
from bench._stack import Role, clustered, running, sealed
from bench.common import Result, machine_info, parse_scaled, print_table, raw_faiss_build
from indexer import build
from indexer.registry import Registry
from ingest.spec import MAX_EF, CollectionSpec
from searcher.fold import FOLDABLE, MIN_SEGMENTS, fold_group, starts_fold
from searcher.search import DEFAULT_EF
from streamvec.devstack.ports import LOOPBACK, free_port
from streamvec.health import METRICS_PATH, READINESS_PATH
from streamvec.settings import Settings

DEFAULTS = {
    "small": {"rows": 10_000, "queries": 200, "seconds": 2.0, "raw_seconds": 1.0,
              "sweep": "16,32,64,128,256"},
    "full": {"rows": 80_000, "queries": 1_000, "seconds": 8.0, "raw_seconds": 3.0,
             "sweep": "16,32,48,64,96,128,256"},
}
K = 10
TARGET = 0.99
PARTITIONS = 4
METRIC = "cosine"
RAW_FACTORY = "HNSW32"
WARM_S = 1.0
# Start-up plus a fold of 80k rows built on one thread: well under a minute unless loaded.
FOLD_TIMEOUT_S = 600.0
METRICS_PROBE_S = 0.2
FOLDED = "streamvec_searcher_folded_segments"
LOADED = "streamvec_searcher_loaded_segments"
RAW_LABEL = (f"raw FAISS in-process: one {RAW_FACTORY} (efConstruction "
             f"{build.HNSW_EF_CONSTRUCTION}) over all rows, one query at a time, same efSearch")


def main(argv: list[str] | None = None) -> None:
    """Seal the rows, serve them with one searcher, then measure both paths at every ef."""
    args = parse_args(argv)
    base = Settings()
    result = Result("search", "Search via the Redis protocol vs raw in-process FAISS", args, base)
    data, queries, source = load_vectors(args)
    truth = corpus_vectors.exact_top_k(data, queries, K)
    started = time.perf_counter()
    raw = raw_index(data)
    raw_build_s = time.perf_counter() - started
    print(f"# raw {RAW_FACTORY} over {len(data)} rows built in {raw_build_s:.1f} s", flush=True)
    with sealed(base, "bench-search", data, partitions=PARTITIONS, index=args.index,
                metric=METRIC, seal_rows=args.rows, seal_seconds=3.0) as (settings, spec, tmp):
        records = Registry(settings.redis_client(), spec.name).segments()
        searcher, port = start_searcher(settings, spec.name, tmp, searcher_flags(args))
        try:
            folded = expected_folded([(r.factory, r.rows) for r in records], args.fold,
                                     auto=build.is_auto(args.index))
            wait_s = wait_served(searcher, port, spec.name, len(records), folded)
            print(f"# searcher: {len(records)} segments served, {folded} through a fold, "
                  f"ready {wait_s:.1f} s after start", flush=True)
            query_load(settings, spec.name, queries, clients=args.clients, seconds=WARM_S)
            sweep = [measure(settings, spec.name, raw, queries, truth, ef, ef, args, seed)
                     for seed, ef in enumerate(parse_sweep(args.sweep), 1)]
            default = measure(settings, spec.name, raw, queries, truth, None, DEFAULT_EF, args,
                              len(sweep) + 1)
        finally:
            searcher.stop()
    record(result, sweep, default, args, source=source, segments=len(records), folded=folded,
           raw_build_s=raw_build_s)
    result.write()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The flags, checked (--sweep through `parse_sweep`)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, help="rows in the collection")
    parser.add_argument("--queries", type=int, help="held-out query vectors")
    parser.add_argument("--data", choices=("corpus", "clustered"), default="corpus",
                        help="corpus: the packaged sentences embedded (cached in bench/out); "
                        "clustered: seeded vectors around 64 centres (default corpus)")
    parser.add_argument("--seed", type=int, default=0, help="corpus seed (default 0)")
    parser.add_argument("--index", default="auto",
                        help="segment index: auto or an HNSW index_factory string (default auto)")
    parser.add_argument("--clients", type=int, default=8,
                        help="query client processes (default 8)")
    parser.add_argument("--seconds", type=float, help="length of each streamvec QPS run")
    parser.add_argument("--raw-seconds", type=float,
                        help="least length of each raw FAISS QPS run (whole passes over the "
                        "queries)")
    parser.add_argument("--sweep", help=f"comma-separated per-query ef values, {K}..{MAX_EF}")
    parser.add_argument("--search-threads", type=int, default=None,
                        help="the searcher's --search-threads (default: its own)")
    parser.add_argument("--fold", action=argparse.BooleanOptionalAction, default=True,
                        help="the searcher folds its HNSW segments into one graph (default on)")
    args = parse_scaled(parser, DEFAULTS, argv)
    try:
        parse_sweep(args.sweep)
    except ValueError as exc:
        parser.error(f"--sweep: {exc}")
    if not hnsw_index(args.index):
        parser.error(f"--index {args.index!r}: the sweep is over HNSW efSearch, so the index "
                     "must be auto or an HNSW factory such as HNSW32")
    if args.rows < K or args.queries < 1 or args.clients < 1:
        parser.error(f"need --rows >= {K}, --queries >= 1 and --clients >= 1")
    if args.seconds <= 0 or args.raw_seconds <= 0:
        parser.error("--seconds and --raw-seconds must be positive")
    if args.data == "corpus" and args.rows + args.queries > corpus_vectors.available():
        parser.error(f"--rows + --queries: the corpus holds {corpus_vectors.available()} "
                     "distinct sentences")
    return args


def parse_sweep(text: str) -> list[int]:
    """The ef values of a comma-separated list, ascending and distinct, each K..MAX_EF."""
    values = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit() or not K <= int(part) <= MAX_EF:
            raise ValueError(f"{part!r} is not an integer in {K}..{MAX_EF} (ef >= k = {K})")
        values.add(int(part))
    if not values:
        raise ValueError("no ef value given")
    return sorted(values)


def hnsw_index(index: str) -> bool:
    """True for the index specs whose segments are HNSW graphs at the benchmark's sizes."""
    spec = index.strip()
    return spec.lower() == "auto" or FOLDABLE.fullmatch(spec) is not None


def load_vectors(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, str]:
    """The rows, the held-out queries, and a line saying where they came from."""
    n = args.rows + args.queries
    started = time.perf_counter()
    if args.data == "clustered":
        vectors, how = clustered(n, corpus_vectors.DIM), "seeded clustered vectors"
    else:
        from streamvec.errors import EmbedderUnavailable

        try:
            vectors, where = corpus_vectors.embedded(n, args.seed)
        except EmbedderUnavailable as exc:
            raise SystemExit(f"search: the corpus cannot be embedded ({exc}); "
                             "run with --data clustered") from None
        how = f"corpus sentence embeddings (from the {where})"
    print(f"# data: {n} rows of {how} in {time.perf_counter() - started:.1f} s", flush=True)
    return vectors[:args.rows], vectors[args.rows:], how


def raw_index(data: np.ndarray) -> faiss.Index:
    """The baseline: one HNSW32 over every row, as the indexer builds one segment."""
    return raw_faiss_build(build.prepare(data, METRIC), RAW_FACTORY, METRIC)


def raw_run(index: faiss.Index, queries: np.ndarray, ef: int,
            seconds: float) -> tuple[float, list[tuple[int, list[str]]]]:
    """QPS one query at a time on one thread over whole passes lasting `seconds` at least, and
    the first pass's answers as (query, ids)."""
    prepared = build.prepare(queries, METRIC)
    params = faiss.SearchParametersHNSW(efSearch=ef)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # as the searcher's FAISS calls run
    try:
        answers: list[tuple[int, list[str]]] = []
        done = 0
        started = time.perf_counter()
        while not answers or time.perf_counter() - started < seconds:
            for q in range(len(prepared)):
                _, rows = index.search(prepared[q:q + 1], K, params=params)
                if len(answers) < len(prepared):
                    answers.append((q, [f"r{r}" for r in rows[0] if r >= 0]))
            done += len(prepared)
        elapsed = time.perf_counter() - started
    finally:
        faiss.omp_set_num_threads(threads)
    return done / elapsed, answers


def searcher_flags(args: argparse.Namespace) -> list[str]:
    """The `streamvec searcher` flags the benchmark's own flags ask for."""
    flags = ["--fold" if args.fold else "--no-fold"]
    if args.search_threads is not None:
        flags += ["--search-threads", str(args.search_threads)]
    return flags


def start_searcher(settings: Settings, collection: str, log_dir: Path,
                   flags: list[str]) -> tuple[Role, int]:
    """Start a `streamvec searcher` with its health and /metrics on a free loopback port;
    `wait_served` says when it serves."""
    port = free_port()
    env = {**settings.child_env(), "STREAMVEC_METRICS_HOST": LOOPBACK}
    log = log_dir / f"searcher-{uuid.uuid4().hex[:6]}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "streamvec", "searcher", "--collection",
                                 collection, "--metrics-port", str(port), *flags],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    return Role(proc, log), port


def expected_folded(segments: Iterable[tuple[str, int]], fold: bool, *, auto: bool = False,
                    min_segments: int = MIN_SEGMENTS) -> int:
    """How many of these segments, given as (factory, rows), a searcher serves through folds
    (in an "auto" collection when `auto`)."""
    if not fold:
        return 0
    groups: dict[str, list[tuple[str, int]]] = {}
    for factory, rows in segments:
        group = fold_group(factory, rows, auto=auto)
        if group is not None:
            groups.setdefault(group, []).append((factory, rows))
    return sum(len(members) for members in groups.values()
               if starts_fold(members, min_segments))


def wait_settled(settings: Settings, collection: str, searcher: Role, port: int,
                 index: str) -> float:
    """Wait until the searcher serves every registered segment of the collection as it will
    keep serving them (loaded and, where they fold, folded); return the seconds waited."""
    records = Registry(settings.redis_client(), collection).segments()
    folded = expected_folded([(r.factory, r.rows) for r in records], True,
                             auto=build.is_auto(index))
    return wait_served(searcher, port, collection, len(records), folded)


@contextmanager
def settled_serving(base: Settings, prefix: str, data: np.ndarray, **spec_fields: Any
                    ) -> Iterator[tuple[Settings, CollectionSpec, Callable[[], float]]]:
    """A collection loaded with `data`, an indexer and a searcher running, entered once the
    searcher serves the loaded rows settled; yields the settings, the spec and `settle`,
    which waits for that again (after more rows came) and returns the seconds it waited."""
    with sealed(base, prefix, data, **spec_fields) as (settings, spec, tmp), \
            running(settings, "indexer", spec.name, tmp):
        searcher, port = start_searcher(settings, spec.name, tmp, [])
        try:
            def settle() -> float:
                return wait_settled(settings, spec.name, searcher, port, spec.index)

            settle()
            yield settings, spec, settle
        finally:
            searcher.stop()


def gauge(text: str, name: str, collection: str) -> float | None:
    """The value of gauge `name` labelled with `collection` in a Prometheus exposition."""
    label = re.escape(f'collection="{collection}"')
    match = re.search(rf"^{re.escape(name)}\{{[^}}]*{label}[^}}]*\}} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


def wait_served(searcher: Role, port: int, collection: str, segments: int, folded: int,
                timeout: float = FOLD_TIMEOUT_S) -> float:
    """Wait until the searcher is ready and serves every segment, `folded` of them through a
    fold; return the seconds waited."""
    started = time.monotonic()
    while True:
        if searcher.proc.poll() is not None:
            raise RuntimeError(f"the searcher exited:\n{searcher.log_text()[-2000:]}")
        ready, text = _get(port, READINESS_PATH), _get(port, METRICS_PATH)
        if (ready is not None and text is not None
                and gauge(text, LOADED, collection) == segments
                and (gauge(text, FOLDED, collection) or 0) >= folded):
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{collection}: {segments} segments ({folded} folded) not served "
                               f"within {timeout:g}s:\n{searcher.log_text()[-2000:]}")
        time.sleep(METRICS_PROBE_S)  # start-up and fold build progress probe


def _get(port: int, path: str) -> str | None:
    """The body of a 200 answer from the searcher's health server, else None."""
    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{port}{path}",  # noqa: S310 - loopback
                                    timeout=5) as reply:
            return reply.read().decode()
    except OSError:  # not listening yet, or 503 while it is not ready
        return None


def measure(settings: Settings, collection: str, raw: faiss.Index, queries: np.ndarray,
            truth: np.ndarray, ef: int | None, raw_ef: int, args: argparse.Namespace,
            seed: int) -> dict[str, Any]:
    """One point: raw FAISS at `raw_ef`, then the client processes asking for `ef`."""
    raw_qps, raw_answers = raw_run(raw, queries, raw_ef, args.raw_seconds)
    load: LoadResult = query_load(settings, collection, queries, clients=args.clients,
                                  seconds=args.seconds, k=K, seed=seed, ef=ef)
    point = {"param": "ef", "value": raw_ef if ef is None else ef, "default": ef is None,
             "streamvec_qps": load.qps, "streamvec_recall": recall(load.answers, truth),
             "streamvec_p50_ms": load.p50_ms, "streamvec_p99_ms": load.p99_ms,
             "streamvec_queries": len(load.latencies_ms),
             "streamvec_client_cpu_us": load.client_cpu_us, "raw_qps": raw_qps,
             "raw_recall": recall(raw_answers, truth)}
    print(f"#   {'default' if ef is None else f'ef {ef}'}: streamvec {load.qps:,.0f} QPS, recall "
          f"{point['streamvec_recall']:.4f}; raw {raw_qps:,.0f} QPS, recall "
          f"{point['raw_recall']:.4f}", flush=True)
    return point


def cheapest(points: Sequence[dict[str, Any]], who: str,
             target: float = TARGET) -> dict[str, Any] | None:
    """The point of lowest ef where `who` ("streamvec" or "raw") reaches recall `target`."""
    reached = [p for p in points if p[f"{who}_recall"] >= target]
    return min(reached, key=lambda p: p["value"]) if reached else None


def record(result: Result, sweep: list[dict[str, Any]], default: dict[str, Any],
           args: argparse.Namespace, *, source: str, segments: int, folded: int,
           raw_build_s: float) -> None:
    """Print the sweep table and the ratios; record the comparisons, figures and samples."""
    fold = f"{folded} of them folded into one graph" if folded else "no fold"
    print(f"# search: {args.rows} rows x {corpus_vectors.DIM}-d {source}, {METRIC}, index "
          f"{args.index}, {PARTITIONS} partitions ({segments} segments, {fold}), one searcher, "
          f"{args.clients} client processes, k={K}, {args.queries} held-out queries")
    print(f"# machine: {machine_info()}")
    rows = [*sweep, default]
    print_table(["ef", "streamvec QPS", "recall@10", "p50 ms", "p99 ms", "raw QPS",
                 "raw recall@10", "QPS ratio"],
                [[f"default ({p['value']})" if p["default"] else p["value"],
                  f"{p['streamvec_qps']:,.0f}", f"{p['streamvec_recall']:.4f}",
                  f"{p['streamvec_p50_ms']:.2f}", f"{p['streamvec_p99_ms']:.2f}",
                  f"{p['raw_qps']:,.0f}", f"{p['raw_recall']:.4f}",
                  _ratio(round(p["streamvec_qps"] / p["raw_qps"], 3))] for p in rows])
    head = cheapest(sweep, "streamvec")
    if head is None:
        head = max(sweep, key=lambda p: (p["streamvec_recall"], p["value"]))
        label = (f"recall@10 {TARGET} not reached in the sweep: best at ef {head['value']}, "
                 f"{args.clients} clients")
    else:
        label = f"at recall@10 >= {TARGET} (ef {head['value']}), {args.clients} clients"
    ratio = result.compare("qps", f"QPS via Redis {label}", head["streamvec_qps"],
                           head["raw_qps"], "queries/s", RAW_LABEL, goal="ratio >= 0.8",
                           summary=True)
    result.compare("recall_at_10", f"recall@10 vs exact, ef {head['value']}",
                   head["streamvec_recall"], head["raw_recall"], "", RAW_LABEL, summary=True)
    defaults = f"defaults (no ef: efSearch {DEFAULT_EF}; index {args.index})"
    default_ratio = result.compare("qps_default", f"QPS via Redis, {defaults}, {args.clients} "
                                   "clients", default["streamvec_qps"], default["raw_qps"],
                                   "queries/s", RAW_LABEL, goal="ratio >= 0.8", summary=True)
    result.compare("recall_default", f"recall@10 vs exact, {defaults}",
                   default["streamvec_recall"], default["raw_recall"], "", RAW_LABEL)
    own = cheapest(sweep, "raw")
    if own is not None and cheapest(sweep, "streamvec") is not None:
        result.compare("qps_equal_recall", f"QPS at recall@10 >= {TARGET}, each at its own "
                       f"cheapest ef (streamvec {head['value']}, raw {own['value']})",
                       head["streamvec_qps"], own["raw_qps"], "queries/s",
                       f"raw FAISS at ef {own['value']}")
    for key, point, what in (("", head, f"ef {head['value']}"), ("_default", default, "defaults")):
        result.figure(f"p50_ms{key}", f"latency p50 via Redis, {what}", point["streamvec_p50_ms"],
                      "ms")
        result.figure(f"p99_ms{key}", f"latency p99 via Redis, {what}", point["streamvec_p99_ms"],
                      "ms")
    result.figure("client_cpu_us", f"client CPU per query, {args.clients} client processes, "
                  "defaults", default["streamvec_client_cpu_us"], "us")
    result.figure("segments", "sealed segments served", segments, "segments")
    result.figure("folded_segments", "segments searched through a fold", folded, "segments")
    result.figure("raw_build_s", f"raw {RAW_FACTORY} build over all rows", raw_build_s, "s")
    result.samples["sweep"] = sweep
    result.samples["default"] = [default]
    print(f"# QPS {label}: streamvec {head['streamvec_qps']:,.0f} vs raw {head['raw_qps']:,.0f}"
          f" = {_ratio(ratio)} (goal >= 0.8)")
    print(f"# QPS with {defaults}: streamvec {default['streamvec_qps']:,.0f} vs raw (ef "
          f"{DEFAULT_EF}) {default['raw_qps']:,.0f} = {_ratio(default_ratio)} (goal >= 0.8)")
    print(f"# client CPU per query (all {args.clients} client processes, defaults): "
          f"{default['streamvec_client_cpu_us']:,.0f} us")
    result.notes += [
        f"streamvec: {args.clients} client processes send one-vector Client.search calls back "
        "to back through Redis to one searcher process; QPS sums each client's rate, latency "
        "is per call as the client sees it. Each swept point passes ef per query; the default "
        f"point passes none (the engine's efSearch {DEFAULT_EF}).",
        "The searcher is measured once it serves every segment and, with folds on, once its "
        "fold over them is built.",
        f"raw FAISS: one query at a time on one thread over whole passes of the held-out "
        f"queries for at least {args.raw_seconds:g} s; recall@10 from the first pass.",
        "recall@10 is against an exact float64 cosine scan of the same rows."]


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}x"


if __name__ == "__main__":
    main()
