"""Capacity: memory per searcher, QPS and the scatter-gather overhead at 1, 2 and 4 shards.

One collection of 8 partitions per index type (Flat, then HNSW32) is sealed, one segment per
partition, and its indexer stopped. The same rows are then served as 1, 2 and 4 shards in
turn: one `streamvec searcher --shard I/N` process per shard (an unsharded searcher for 1),
each measured once it serves every segment of its partitions (and, for HNSW32, once its fold
is built); the shard map is switched with `collection reshard` and the previous layout's
searchers drain and exit.

For each layout: peak and current memory per searcher (VmHWM, VmRSS, RssAnon and RssFile of
/proc/<pid>/status), the searchers' CPU per query, QPS with client processes
(bench/_clients.py), latency with one client, and every held-out query answered once to compare
its ids with the single searcher's (Flat: mismatches, expected 0; HNSW32: recall@10 against an
exact scan, since each shard folds only its own segments). The baseline of the scatter-gather
latency is one shard's searcher asked directly by one client process (bench/_shard_client.py),
in the same layout and run; for QPS and memory it is the single searcher of the same rows.

The same run measures the constants of docs/operations.md, "Sizing": bytes per served row and
the fixed cost of a searcher (a line fitted to memory against rows over every searcher), the
record bytes per row on Kafka, the segment store's bytes per row, Redis bytes per request,
reply, answered-request marker and sealed segment, and CPU per query; then it prints the sizing
plans they give.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the repo root must win over bench/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import math
import os
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from bench import _corpus_vectors as corpus_vectors
from bench._clients import query_load
from bench._load import LoadResult
from bench._shard_client import shard_load
from bench._stack import Role, clustered, sealed
from bench.budgets import KAFKA_BYTES, TAIL_ROW_BYTES, index_row_bytes
from bench.common import Result, machine_info, parse_scaled, percentile, print_table
from indexer.registry import Registry, SegmentRecord
from ingest import record
from ingest.spec import MAX_PARTITIONS, CollectionSpec
from lifecycle.generations import DEFAULT_KEEP
from searcher import protocol
from searcher.client import Client
from searcher.fold import FOLDABLE
from searcher.query import QueryAnswer, QueryRequest
from searcher.search import DEFAULT_EF, SCAN_MAX_VISIBLE
from searcher.shards import block, label
from streamvec.settings import Settings

DEFAULTS = {
    "small": {"rows": 40_000, "hnsw_rows": 40_000, "queries": 200, "clients": 4,
              "seconds": 3.0, "latency_seconds": 3.0},
    # A Flat scan costs every row per query: 200k rows keep the answer passes within minutes.
    "full": {"rows": 200_000, "hnsw_rows": 100_000, "queries": 500, "clients": 8,
             "seconds": 8.0, "latency_seconds": 6.0},
}
K = 10
DIM = corpus_vectors.DIM
PARTITIONS = 8
SHARD_COUNTS = (1, 2, 4)
METRIC = "cosine"
FLAT, HNSW = "Flat", "HNSW32"
# One segment per partition, sealed by age once the indexer has taken in the whole partition:
# each is then above the rows a searcher gathers into one exact scan (SCAN_MAX_VISIBLE), as
# segments of the default seal_rows are, and 4 shards of 2 partitions still fold.
SEAL_AGE_S = 10.0
# Partitions hold about rows / PARTITIONS each; this margin keeps the smallest above the scan.
LEAST_ROWS = math.ceil(PARTITIONS * SCAN_MAX_VISIBLE * 1.2)
ANSWER_BATCH = 64  # held-out queries per request of the answer pass
WARM_S = 1.0
IDLE_S = 2.0  # searchers left idle to measure what serving nothing costs
LATENCY_ROUNDS = 3
RESHARD_WAIT_S = 300.0
DRAIN_TIMEOUT_S = 60.0
MIB = 2**20
GIB = 2**30
CLK_TCK = os.sysconf("SC_CLK_TCK")
MEMORY_KEYS = ("VmHWM", "VmRSS", "RssAnon", "RssFile")

# Planning figures of the sizing tables (docs/operations.md, "Sizing").
PLAN_DIM = 768
PLAN_ROWS = (10_000_000, 100_000_000, 1_000_000_000)
PLAN_QPS = (1_000, 10_000)
SEARCHER_MEMORY = 64 * GIB  # the most one searcher process may use, at its peak
SEARCHER_CORES = 1  # a searcher's FAISS calls run on one thread by default (`--threads 1`)
UTILISATION = 0.6  # share of a replica's cores planned busy: headroom for bursts and folds
MIN_REPLICAS = 2  # per shard: one may be restarted or lost without failing queries
RESHARD_ROOM = 4  # partitions per shard at the start: the shard count can grow 4x later
TAIL_ROWS = Settings.model_fields["searcher_max_tail_rows"].default
SEAL_ROWS = next(f.default for f in fields(CollectionSpec) if f.name == "seal_rows")
KEEP_GENERATIONS = DEFAULT_KEEP  # generations kept for rollback
INGEST_ROWS_S = 1_000  # the ingest rate the Kafka columns assume
RETENTION_S = 24 * 3600  # the topic retention the Kafka columns assume
TIB = 2**40


def main(argv: list[str] | None = None) -> None:
    """Seal each index type's rows once, serve them as 1, 2 and 4 shards, record and plan."""
    args = parse_args(argv)
    base = Settings()
    result = Result("scaling", "Shards: memory per searcher, QPS, scatter-gather latency", args,
                    base)
    data, queries = split_rows(clustered(max(args.rows, args.hnsw_rows) + args.queries, DIM),
                               args.queries)
    runs = []
    for index, rows in ((FLAT, args.rows), (HNSW, args.hnsw_rows)):
        if rows:
            runs.append(run_index(base, index, data[:rows], queries, args))
    record_result(result, runs, args)
    result.write()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The flags, checked."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, help="rows of the Flat collection (0: skip it)")
    parser.add_argument("--hnsw-rows", type=int, dest="hnsw_rows",
                        help="rows of the HNSW32 collection (0: skip it)")
    parser.add_argument("--queries", type=int, help="held-out query vectors")
    parser.add_argument("--clients", type=int, help="query client processes of the QPS runs")
    parser.add_argument("--seconds", type=float, help="length of each QPS run")
    parser.add_argument("--latency-seconds", type=float, dest="latency_seconds",
                        help="length of each one-client latency run")
    args = parse_scaled(parser, DEFAULTS, argv)
    for flag, rows in (("--rows", args.rows), ("--hnsw-rows", args.hnsw_rows)):
        if rows != 0 and rows < LEAST_ROWS:
            parser.error(f"{flag} must be 0 (skip) or at least {LEAST_ROWS}: each of "
                         f"{PARTITIONS} partitions must hold more than the {SCAN_MAX_VISIBLE} "
                         "rows that a searcher gathers into one exact scan")
    if not args.rows and not args.hnsw_rows:
        parser.error("--rows and --hnsw-rows are both 0: nothing to measure")
    if args.queries < 1 or args.clients < 1:
        parser.error("need --queries >= 1 and --clients >= 1")
    if args.seconds <= 0 or args.latency_seconds <= 0:
        parser.error("--seconds and --latency-seconds must be positive")
    return args


def split_rows(vectors: np.ndarray, queries: int) -> tuple[np.ndarray, np.ndarray]:
    """The rows and the held-out queries (the last `queries` vectors)."""
    return vectors[:-queries], vectors[-queries:]


# --- process readings -------------------------------------------------------------------------


def parse_status(text: str) -> dict[str, int]:
    """VmHWM, VmRSS, RssAnon and RssFile in bytes from the text of /proc/<pid>/status."""
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in MEMORY_KEYS:
            out[key] = int(value.split()[0]) * 1024
    missing = [k for k in MEMORY_KEYS if k not in out]
    if missing:
        raise ValueError(f"/proc status without {', '.join(missing)}")
    return out


def parse_cpu(stat: str, ticks_per_s: int = CLK_TCK) -> float:
    """User plus system CPU seconds of every thread, from the text of /proc/<pid>/stat."""
    # The command name may hold spaces and parentheses: the fields start after the last ')'.
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / ticks_per_s  # utime, stime (fields 14, 15)


def memory(pid: int) -> dict[str, int]:
    """A process's memory figures now (bytes)."""
    return parse_status(Path(f"/proc/{pid}/status").read_text())


def cpu_seconds(pid: int) -> float:
    """A process's CPU seconds so far."""
    return parse_cpu(Path(f"/proc/{pid}/stat").read_text())


# --- pure arithmetic of the results -----------------------------------------------------------


def fit_line(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares (intercept, slope) of y over x; ValueError with fewer than two distinct x."""
    xs = [float(x) for x, _ in points]
    if len(set(xs)) < 2:
        raise ValueError("a line needs points at two different x at least")
    mx = sum(xs) / len(xs)
    my = sum(float(y) for _, y in points) / len(points)
    slope = (sum((x - mx) * (float(y) - my) for x, y in points)
             / sum((x - mx) ** 2 for x in xs))
    return my - slope * mx, slope


def mismatches(reference: Mapping[int, Sequence[str]], got: Mapping[int, Sequence[str]]) -> int:
    """How many queries of `reference` got another id list (order included), or none."""
    return sum(1 for q, ids in reference.items() if list(got.get(q, ())) != list(ids))


def recall_of(answers: Mapping[int, Sequence[str]], truth: np.ndarray, prefix: str = "r") -> float:
    """Mean share of each query's exact k nearest rows (row numbers) among the ids it got."""
    if not answers:
        raise ValueError("recall of no answers")
    k = truth.shape[1]
    hits = sum(len({f"{prefix}{r}" for r in truth[q]} & set(list(ids)[:k]))
               for q, ids in answers.items())
    return hits / (k * len(answers))


def shard_partitions(count: int, total: int = PARTITIONS) -> list[tuple[int, ...]]:
    """The partitions of each of `count` shards, as `--shard I/count` serves them."""
    return [block(total, i, count) for i in range(1, count + 1)]


def served(records: Iterable[SegmentRecord], partitions: Iterable[int]) -> list[SegmentRecord]:
    """The registered segments of these partitions that hold rows."""
    own = set(partitions)
    return [r for r in records if r.partition in own and r.rows]


# --- running one layout -----------------------------------------------------------------------


@dataclass
class Searcher:
    """One searcher of a layout: its process, health port, partitions and rows served."""

    role: Role
    port: int
    partitions: tuple[int, ...]
    rows: int
    segments: int
    folded: int

    @property
    def label(self) -> str | None:
        """Its shard's label, None when it serves every partition."""
        return None if len(self.partitions) == PARTITIONS else label(self.partitions)


def start_layout(settings: Settings, name: str, log_dir: Path, records: list[SegmentRecord],
                 count: int) -> list[Searcher]:
    """Start one searcher per shard of `count` and return once each serves (and has folded)."""
    from bench.search import expected_folded, start_searcher, wait_served

    started = []
    for i, partitions in enumerate(shard_partitions(count), 1):
        flags = [] if count == 1 else ["--shard", f"{i}/{count}"]
        role, port = start_searcher(settings, name, log_dir,
                                    [*flags, "--replica", f"s{i}of{count}-{uuid.uuid4().hex[:4]}"])
        own = served(records, partitions)
        started.append(Searcher(role, port, partitions, sum(r.rows for r in own), len(own),
                                expected_folded([(r.factory, r.rows) for r in own], True)))
    try:
        for s in started:
            wait_served(s.role, s.port, name, s.segments, s.folded)
    except BaseException:
        for s in started:
            s.role.stop()
        raise
    return started


def switch_to(settings: Settings, name: str, count: int, previous: list[Searcher]) -> None:
    """Switch the shard map to `count` shards, then wait for the previous searchers to drain."""
    from lifecycle import shards

    if count > 1:
        shards.reshard(settings, name, count, wait_s=RESHARD_WAIT_S)
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    for s in previous:
        while s.role.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)  # the retired searcher answers what its stream holds, then exits
        s.role.stop()


def answer_all(settings: Settings, name: str, queries: np.ndarray) -> dict[int, list[str]]:
    """Every held-out query's ids through `Client.search`, in batches."""
    out: dict[int, list[str]] = {}
    with Client(settings=settings) as client:
        for lo in range(0, len(queries), ANSWER_BATCH):
            got = client.search(name, queries[lo:lo + ANSWER_BATCH], k=K, timeout=60)
            for i, row in enumerate(got.ids.tolist()):
                out[lo + i] = [h for h in row if h is not None]
    return out


def measure_layout(settings: Settings, name: str, searchers: list[Searcher],
                   queries: np.ndarray, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """Answers, idle CPU, QPS and CPU per query, one-client latency beside the direct-shard
    baseline (in alternating rounds), and memory."""
    settled = [memory(s.role.proc.pid) for s in searchers]
    answers = answer_all(settings, name, queries)
    pids = [s.role.proc.pid for s in searchers]
    idle = cpu_rate(pids, IDLE_S)
    query_load(settings, name, queries, clients=args.clients, seconds=WARM_S, k=K, seed=seed)
    cpu_before, started = sum(cpu_seconds(pid) for pid in pids), time.perf_counter()
    loaded: LoadResult = query_load(settings, name, queries, clients=args.clients,
                                    seconds=args.seconds, k=K, seed=seed + 1)
    cpu_used = sum(cpu_seconds(pid) for pid in pids) - cpu_before
    # The clients start and stop outside the run's length, while the searchers idle (polling,
    # adverts): that CPU is no cost of the queries. Within the run all of it counts.
    outside = max(0.0, time.perf_counter() - started - args.seconds)
    cpu_net = max(0.0, cpu_used - idle * outside)
    answered = max(1, len(loaded.latencies_ms))
    gathered: list[float] = []
    direct: list[float] = []
    # Rounds taken in turn spread a burst of other load over both paths alike.
    for r in range(LATENCY_ROUNDS):
        part = args.latency_seconds / LATENCY_ROUNDS
        gathered += query_load(settings, name, queries, clients=1, seconds=part, k=K,
                               seed=seed + 2 + 2 * r).latencies_ms
        if len(searchers) > 1:
            direct += shard_load(settings, name, searchers[0].label, queries, clients=1,
                                 seconds=part, k=K, seed=seed + 3 + 2 * r).latencies_ms
    after = [memory(pid) for pid in pids]
    return {
        "shards": len(searchers),
        "searchers": [{"partitions": label(s.partitions), "rows": s.rows,
                       "segments": s.segments, "folded": s.folded,
                       "settled": m0, "after": m1}
                      for s, m0, m1 in zip(searchers, settled, after, strict=True)],
        "answers": answers,
        "idle_cpu_share": idle / len(searchers),
        "qps": loaded.qps, "queries": len(loaded.latencies_ms),
        "p50_ms": loaded.p50_ms, "p99_ms": loaded.p99_ms,
        "cpu_ms_per_query": 1000 * cpu_net / answered,
        "cpu_ms_per_query_with_idle": 1000 * cpu_used / answered,
        "one_client_queries": len(gathered),
        "one_client_p50_ms": percentile(gathered, 50),
        "one_client_p99_ms": percentile(gathered, 99),
        "direct_p50_ms": percentile(direct, 50) if direct else None,
        "direct_p99_ms": percentile(direct, 99) if direct else None,
        "direct_shard": searchers[0].label if direct else None,
    }


def cpu_rate(pids: Sequence[int], seconds: float) -> float:
    """Cores the processes keep busy together over `seconds` (here: serving nothing)."""
    before, started = sum(cpu_seconds(pid) for pid in pids), time.perf_counter()
    time.sleep(seconds)  # the measured interval
    return (sum(cpu_seconds(pid) for pid in pids) - before) / (time.perf_counter() - started)


def run_index(base: Settings, index: str, data: np.ndarray, queries: np.ndarray,
              args: argparse.Namespace) -> dict[str, Any]:
    """Seal `data` with this index type, then measure every layout and the stored bytes."""
    print(f"# {index}: sealing {len(data)} rows x {DIM}-d into {PARTITIONS} partitions",
          flush=True)
    with sealed(base, "bench-scaling", data, partitions=PARTITIONS, index=index, metric=METRIC,
                seal_rows=len(data), seal_seconds=SEAL_AGE_S) as (settings, spec, tmp):
        records = Registry(settings.redis_client(), spec.name).segments()
        small = [r.rows for r in records if 0 < r.rows <= SCAN_MAX_VISIBLE]
        if small:
            print(f"# {index}: {len(small)} segment(s) of at most {SCAN_MAX_VISIBLE} rows are "
                  "scanned exactly, not searched through their index", flush=True)
        stored = stored_bytes(tmp)
        redis_figures = registry_figures(settings, spec.name, len(records))
        layouts: list[dict[str, Any]] = []
        previous: list[Searcher] = []
        alive: list[Searcher] = []  # every searcher started and not yet stopped
        try:
            for n, count in enumerate(SHARD_COUNTS):
                started = time.perf_counter()
                searchers = start_layout(settings, spec.name, tmp, records, count)
                alive = [*previous, *searchers]
                switch_to(settings, spec.name, count, previous)
                alive, previous = list(searchers), searchers
                print(f"#   {count} shard(s): serving {time.perf_counter() - started:.1f} s "
                      "after start", flush=True)
                layout = measure_layout(settings, spec.name, searchers, queries, args,
                                        seed=10 * n)
                layouts.append(layout)
                print(f"#   {count} shard(s): {layout['qps']:,.0f} QPS, p99 "
                      f"{layout['one_client_p99_ms']:.2f} ms (one client), peak RSS "
                      f"{max(s['after']['VmHWM'] for s in layout['searchers']) / MIB:,.0f} "
                      "MiB per searcher", flush=True)
            markers = marker_figures(settings, spec.name)
        finally:
            for s in alive:
                s.role.stop()
    truth = corpus_vectors.exact_top_k(data, queries, K) if index == HNSW else None
    reference = layouts[0]["answers"]
    for layout in layouts:
        layout["mismatches"] = mismatches(reference, layout["answers"])
        layout["recall"] = None if truth is None else recall_of(layout["answers"], truth)
        del layout["answers"]
    return {"index": index, "rows": len(data), "segments": len(records),
            "small_segments": len(small), "store_bytes": stored, "layouts": layouts,
            "wire": wire_figures(data, spec.model_version), **redis_figures, **markers}


def stored_bytes(store: Path) -> int:
    """Bytes of the segment folders under a store (role logs left out)."""
    return sum(p.stat().st_size for p in store.rglob("*") if p.is_file() and p.suffix != ".log")


def registry_figures(settings: Settings, name: str, segments: int) -> dict[str, Any]:
    """The collection's Redis keys and their bytes (MEMORY USAGE), sealed and idle."""
    with settings.redis_client() as client:
        keys = list(client.scan_iter(match=f"sv:{{{name}}}:*", count=1000))
        used = sum(int(client.memory_usage(key) or 0) for key in keys)
    return {"redis_keys": len(keys), "redis_bytes": used,
            "redis_bytes_per_segment": used / max(1, segments)}


def marker_figures(settings: Settings, name: str, sample: int = 500) -> dict[str, Any]:
    """The answered-request markers (`done:<id>`, one per request and shard, kept for
    DONE_TTL_S): how many the run left, and their mean bytes over a sample."""
    with settings.redis_client() as client:
        keys = [key for pattern in (f"sv:{{{name}}}:done:*", f"sv:{{{name}~*}}:done:*")
                for key in client.scan_iter(match=pattern, count=1000)]
        sizes = [int(client.memory_usage(key) or 0) for key in keys[:sample]]
    return {"done_markers": len(keys),
            "done_marker_bytes": sum(sizes) / len(sizes) if sizes else 0.0}


def wire_figures(data: np.ndarray, model_version: str) -> dict[str, float]:
    """Bytes per row of a record batch on Kafka, and of one query request and its reply."""
    n = min(len(data), 1000)
    ids = [f"r{i}" for i in range(n)]
    payload = record.encode(ids, data[:n], model_version=model_version)
    request = QueryRequest(uuid.uuid4().hex, "collection", data[:1], K)
    request_bytes = sum(len(k) + len(v) for k, v in protocol.encode_request(request).items())
    answer = QueryAnswer([[f"r{10_000 + i}" for i in range(K)]], [[i / K for i in range(K)]],
                         None, {p: 100_000 for p in range(PARTITIONS)}, {"search": 1.0})
    reply_bytes = len(protocol.encode_reply(request.request_id, answer))
    return {"record_bytes_per_row": len(payload) / n, "request_bytes": request_bytes,
            "reply_bytes": reply_bytes}


# --- sizing -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Costs:
    """The sizing constants of one index type, as this benchmark measured them at one dim."""

    index: str
    dim: int
    fixed_bytes: float  # a searcher serving no rows: Python, FAISS, librdkafka, redis-py
    row_bytes: float  # memory per served row, settled (VmRSS, mapped segment files included)
    cpu_ms: float  # searcher CPU per query of one shard searcher, the highest of the run
    cpu_rows: int  # rows per searcher where cpu_ms was measured
    record_bytes: float  # per row on Kafka
    store_bytes: float  # per row in the segment store, one generation
    request_bytes: float  # one one-vector request on a query stream
    reply_bytes: float  # one reply of k hits
    redis_bytes_per_segment: float  # the collection's Redis keys over its sealed segments
    done_marker_bytes: float  # one answered-request marker, kept DONE_TTL_S per request and shard


def per_row_at(value: float, measured_dim: int, dim: int, copies: int | None = None) -> float:
    """A per-row byte figure measured at `measured_dim`, moved to `dim`.

    With `copies`, the figure holds that many float32 vectors and the rest does not grow with
    the dim (record and store formats); without, it all grows with the dim, an upper bound
    for memory, whose ids, maps and graph links do not.
    """
    if copies is None:
        return value * dim / measured_dim
    return value + copies * 4 * (dim - measured_dim)


def store_copies(index: str) -> int:
    """Vectors a segment folder stores per row: its raw vectors, and a graph's own copy."""
    return 1 if index.upper() == FLAT.upper() else 2


def searcher_bytes(costs: Costs, rows: float, dim: int, *, peak: bool = False,
                   tail_rows: int = TAIL_ROWS) -> float:
    """Memory of one searcher serving `rows` rows of `dim`: settled, or at its peak.

    The peak adds a fold being extended (a copy of the fold beside it: the index's bytes per
    row again, for a foldable index), a live tail at its bound (`tail_rows`) and librdkafka's
    fetch queue.
    """
    settled = costs.fixed_bytes + rows * per_row_at(costs.row_bytes, costs.dim, dim)
    if not peak:
        return settled
    fold = rows * index_row_bytes(costs.index, dim) if FOLDABLE.fullmatch(costs.index) else 0
    return settled + fold + tail_rows * (8 * dim + TAIL_ROW_BYTES) + KAFKA_BYTES


def cpu_ms_at(costs: Costs, rows: float, dim: int) -> float:
    """Searcher CPU per query over `rows` rows of `dim`: a graph walk grows with log(rows), a
    Flat scan with rows; both with the dim (the fixed part of a request too: an upper bound)."""
    if FOLDABLE.fullmatch(costs.index):
        grow = math.log2(max(rows, 2)) / math.log2(max(costs.cpu_rows, 2))
    else:
        grow = rows / costs.cpu_rows
    return costs.cpu_ms * grow * dim / costs.dim


@dataclass(frozen=True)
class Plan:
    """How to serve `rows` vectors of `dim` at `qps`, and what Kafka, Redis and the store carry."""

    rows: int
    dim: int
    qps: int
    partitions: int
    shards: int
    rows_per_shard: float
    searcher_gib: float  # one searcher, settled
    searcher_peak_gib: float  # one searcher at its peak
    cpu_ms: float  # per query, per shard
    cores_per_shard: float  # busy at UTILISATION to answer `qps`
    replicas: int  # per shard
    searchers: int
    memory_tib: float  # every searcher at its peak, together
    kafka_mb_s: float  # at INGEST_ROWS_S
    kafka_retention_gib: float  # RETENTION_S of that ingest
    kafka_load_gib: float  # every row once: an initial load or a republish
    redis_mb_s: float  # requests and replies on the query streams at `qps`
    redis_registry_mib: float
    redis_markers_gib: float  # answered-request markers alive at `qps`
    store_tib: float  # one generation
    store_kept_tib: float  # KEEP_GENERATIONS generations


def plan(costs: Costs, rows: int, dim: int, qps: int, *, memory: float = SEARCHER_MEMORY,
         cores: int = SEARCHER_CORES) -> Plan:
    """The fewest shards whose searchers' peak fits `memory`; replicas so that every shard
    answers all `qps` (each query goes to every shard) with `cores` per replica at
    UTILISATION; partitions RESHARD_ROOM times the shards."""
    if rows < 1 or qps < 1:
        raise ValueError("a plan needs rows >= 1 and qps >= 1")
    room = memory - searcher_bytes(costs, 0, dim, peak=True)
    per_row = searcher_bytes(costs, 1, dim, peak=True, tail_rows=0) - searcher_bytes(
        costs, 0, dim, peak=True, tail_rows=0)
    if room < per_row:
        raise ValueError(f"a searcher of {memory / GIB:g} GiB cannot hold a row beside its "
                         "fixed cost and tail bound")
    shards = math.ceil(rows * per_row / room)
    partitions = 2 ** math.ceil(math.log2(max(8, RESHARD_ROOM * shards)))
    if partitions > MAX_PARTITIONS:
        raise ValueError(f"{shards} shards with room to reshard need {partitions} partitions, "
                         f"over the limit of {MAX_PARTITIONS}")
    per_shard = rows / shards
    cpu = cpu_ms_at(costs, per_shard, dim)
    busy = qps * cpu / 1000 / UTILISATION
    replicas = max(MIN_REPLICAS, math.ceil(busy / cores))
    peak = searcher_bytes(costs, per_shard, dim, peak=True)
    record_bytes = per_row_at(costs.record_bytes, costs.dim, dim, copies=1)
    query_bytes = per_row_at(costs.request_bytes, costs.dim, dim, copies=1) + costs.reply_bytes
    store = rows * per_row_at(costs.store_bytes, costs.dim, dim, copies=store_copies(costs.index))
    return Plan(rows, dim, qps, partitions, shards, per_shard,
                searcher_bytes(costs, per_shard, dim) / GIB, peak / GIB, cpu, busy, replicas,
                shards * replicas, shards * replicas * peak / TIB,
                INGEST_ROWS_S * record_bytes / 1e6,
                INGEST_ROWS_S * RETENTION_S * record_bytes / GIB, rows * record_bytes / GIB,
                qps * shards * query_bytes / 1e6,
                math.ceil(rows / SEAL_ROWS) * costs.redis_bytes_per_segment / MIB,
                qps * shards * protocol.DONE_TTL_S * costs.done_marker_bytes / GIB, store / TIB,
                KEEP_GENERATIONS * store / TIB)


# --- results ----------------------------------------------------------------------------------


def costs_of(run: Mapping[str, Any]) -> Costs:
    """The sizing constants of one index type's run."""
    points = [(s["rows"], s["after"]["VmRSS"]) for layout in run["layouts"]
              for s in layout["searchers"]]
    fixed, slope = fit_line(points)
    # CPU per query of one shard's searcher: the layout where it was highest.
    worst = max(run["layouts"], key=lambda layout: layout["cpu_ms_per_query"] / layout["shards"])
    wire = run["wire"]
    return Costs(run["index"], DIM, max(fixed, 0.0), slope,
                 worst["cpu_ms_per_query"] / worst["shards"], run["rows"] // worst["shards"],
                 wire["record_bytes_per_row"], run["store_bytes"] / run["rows"],
                 wire["request_bytes"], wire["reply_bytes"], run["redis_bytes_per_segment"],
                 run["done_marker_bytes"])


def record_result(result: Result, runs: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """Print the tables and the ratios; record comparisons, figures, samples and notes."""
    print(f"# scaling: {PARTITIONS} partitions, {DIM}-d clustered rows, {METRIC}, k={K}, "
          f"{args.queries} held-out queries, {args.clients} client processes for QPS")
    print(f"# machine: {machine_info()}")
    plans: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        record_run(result, run, args)
        costs = costs_of(run)
        record_costs(result, run, costs)
        if FOLDABLE.fullmatch(run["index"]):  # a Flat scan of millions of rows per query: no plan
            plans[run["index"]] = [asdict(plan(costs, n, PLAN_DIM, q))
                                   for n in PLAN_ROWS for q in PLAN_QPS]
            print_plans(run["index"], plans[run["index"]])
    result.samples["runs"] = runs
    result.samples["plans"] = plans
    result.notes += [
        f"One machine of {os.cpu_count()} cores runs every searcher, the client processes, "
        "Kafka and Redis, shared with other work. A searcher searches on one thread, so shards "
        "add CPU only up to the machine's cores (a Flat scan over fewer rows per shard gains "
        "from that); beyond them shards add none, and each query runs on every shard. What "
        "shards are for is the memory per searcher; the latency and CPU that the "
        "scatter-gather adds are their cost.",
        "Memory: VmHWM is the peak since the searcher started (its fold build and the answer "
        "pass included), VmRSS the resident set after the runs, RssFile its part that is "
        "memory-mapped segment files. Bytes per row and the fixed cost are a least-squares "
        "line of VmRSS against rows served, over every searcher of the run.",
        f"Latency: one client process, one-vector searches back to back through Client.search "
        f"over every shard, against the same client protocol sent straight to the first "
        f"shard's stream (bench/_shard_client.py), in {LATENCY_ROUNDS} alternating rounds.",
        "Answers: every held-out query asked once per layout, ids compared in order with the "
        "single searcher's. HNSW32 shards fold their own segments, so their graphs differ from "
        "the single searcher's; recall@10 is against an exact float64 scan.",
        f"CPU per query: user+system seconds of the layout's searchers from the start of the "
        f"QPS run's clients to their end, less the idle rate (measured over {IDLE_S:g} s "
        f"before) while the clients started and stopped, divided by the queries answered "
        f"(engine default efSearch {DEFAULT_EF} for HNSW32).",
        f"Plans ({PLAN_DIM}-d): searcher peak (a fold being extended, a full tail of "
        f"{TAIL_ROWS:,} rows, librdkafka's queue) within {SEARCHER_MEMORY / GIB:g} GiB; "
        f"{SEARCHER_CORES} core(s) per replica at {UTILISATION:.0%} busy, the highest "
        f"per-shard CPU per query of the run scaled by the dim and log(rows); at least "
        f"{MIN_REPLICAS} replicas per shard; partitions {RESHARD_ROOM}x the shards (a power "
        "of two); memory per row scaled with the dim as a whole (an upper bound).",
    ]


def record_run(result: Result, run: dict[str, Any], args: argparse.Namespace) -> None:
    """One index type's table, comparisons and figures."""
    index = run["index"]
    key = index.lower()
    print(f"## {index}: {run['rows']} rows, {run['segments']} segments")
    rows = []
    for layout in run["layouts"]:
        rows.append([layout["shards"], f"{_largest(layout, 'VmHWM') / MIB:,.0f}",
                     f"{_largest(layout, 'VmRSS') / MIB:,.0f}",
                     f"{_largest(layout, 'RssAnon') / MIB:,.0f}", f"{layout['qps']:,.0f}",
                     f"{layout['cpu_ms_per_query']:.2f}", f"{layout['one_client_p50_ms']:.2f}",
                     f"{layout['one_client_p99_ms']:.2f}", _ms(layout["direct_p50_ms"]),
                     _ms(layout["direct_p99_ms"]), layout["mismatches"],
                     "-" if layout["recall"] is None else f"{layout['recall']:.4f}"])
    print_table(["shards", "peak RSS MiB", "RSS MiB", "anon MiB", "QPS", "CPU ms/q",
                 "p50 ms", "p99 ms", "direct p50", "direct p99", "mismatches", "recall@10"],
                rows)
    single = run["layouts"][0]
    last = SHARD_COUNTS[-1]
    for layout in run["layouts"][1:]:
        n = layout["shards"]
        result.compare(f"{key}_peak_rss_{n}", f"{index}: peak RSS of the largest of {n} shard "
                       "searchers", _largest(layout, "VmHWM") / MIB,
                       _largest(single, "VmHWM") / MIB, "MiB",
                       "one searcher of every partition", summary=n == last)
        for q in ("p50", "p99"):
            result.compare(f"{key}_{q}_gather_{n}", f"{index}: {q} of a search over {n} "
                           "shards, one client", layout[f"one_client_{q}_ms"],
                           layout[f"direct_{q}_ms"], "ms",
                           f"shard {layout['direct_shard']} asked directly",
                           summary=n == last and q == "p50")
        result.compare(f"{key}_qps_{n}", f"{index}: QPS over {n} shards, {args.clients} clients",
                       layout["qps"], single["qps"], "queries/s", "one searcher of every "
                       "partition")
        result.compare(f"{key}_cpu_{n}", f"{index}: searcher CPU per query over {n} shards",
                       layout["cpu_ms_per_query"], single["cpu_ms_per_query"], "ms",
                       "one searcher of every partition")
        result.figure(f"{key}_mismatches_{n}", f"{index}: queries whose ids differ from one "
                      f"searcher's, {n} shards", layout["mismatches"], "queries")
        if layout["recall"] is not None:
            result.compare(f"{key}_recall_{n}", f"{index}: recall@10 over {n} shards",
                           layout["recall"], single["recall"], "",
                           "one searcher of every partition")
    result.figure(f"{key}_p99_single_ms", f"{index}: p99 of one searcher of every partition, "
                  "one client", single["one_client_p99_ms"], "ms")
    result.figure(f"{key}_idle_cpu", f"{index}: CPU of an idle searcher",
                  max(layout["idle_cpu_share"] for layout in run["layouts"]), "cores")


def _largest(layout: Mapping[str, Any], key: str) -> int:
    """The largest figure `key` (VmHWM, VmRSS, ...) among a layout's searchers after the runs."""
    return max(s["after"][key] for s in layout["searchers"])


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def record_costs(result: Result, run: dict[str, Any], costs: Costs) -> None:
    """The sizing constants as figures, and printed."""
    key = run["index"].lower()
    for name, what, value, unit in (
            ("row_bytes", "searcher memory per served row (VmRSS fit)", costs.row_bytes, "B"),
            ("fixed_mib", "searcher fixed memory (VmRSS fit at 0 rows)",
             costs.fixed_bytes / MIB, "MiB"),
            ("cpu_ms", f"searcher CPU per query, one shard of {costs.cpu_rows} rows",
             costs.cpu_ms, "ms"),
            ("record_bytes", "Kafka record bytes per row", costs.record_bytes, "B"),
            ("store_bytes", "segment store bytes per row", costs.store_bytes, "B"),
            ("request_bytes", "query request bytes (one vector)", costs.request_bytes, "B"),
            ("reply_bytes", f"reply bytes ({K} hits)", costs.reply_bytes, "B"),
            ("redis_segment_bytes", "Redis bytes per sealed segment",
             costs.redis_bytes_per_segment, "B"),
            ("done_marker_bytes", "Redis bytes per answered-request marker",
             costs.done_marker_bytes, "B")):
        result.figure(f"{key}_{name}", f"{run['index']}: {what}", value, unit)
    print(f"# {run['index']} constants at {costs.dim}-d: {costs.row_bytes:,.0f} B/row + "
          f"{costs.fixed_bytes / MIB:,.0f} MiB per searcher; {costs.cpu_ms:.2f} ms CPU/query "
          f"per shard of {costs.cpu_rows:,} rows; Kafka {costs.record_bytes:,.0f} B/row; store "
          f"{costs.store_bytes:,.0f} B/row; request {costs.request_bytes:,.0f} B, reply "
          f"{costs.reply_bytes:,.0f} B; Redis {costs.redis_bytes_per_segment:,.0f} B/segment "
          f"({run['redis_keys']} keys), {costs.done_marker_bytes:,.0f} B per answered-request "
          f"marker ({run['done_markers']:,} left by the run)")


def print_plans(index: str, plans: list[dict[str, Any]]) -> None:
    """One table per collection size: what each QPS needs, from one index type's constants."""
    for rows in PLAN_ROWS:
        chosen = [p for p in plans if p["rows"] == rows]
        print(f"## {rows:,} x {PLAN_DIM}-d {index}: plan from the measured constants")
        lines = [
            ("partitions", lambda p: f"{p['partitions']:,}"),
            ("shards", lambda p: f"{p['shards']:,}"),
            ("rows per shard", lambda p: f"{p['rows_per_shard']:,.0f}"),
            ("searcher GiB settled / peak",
             lambda p: f"{p['searcher_gib']:.1f} / {p['searcher_peak_gib']:.1f}"),
            ("CPU ms per query per shard", lambda p: f"{p['cpu_ms']:.2f}"),
            ("cores per shard", lambda p: f"{p['cores_per_shard']:,.1f}"),
            (f"replicas per shard ({SEARCHER_CORES} core each)", lambda p: f"{p['replicas']:,}"),
            ("searchers", lambda p: f"{p['searchers']:,}"),
            ("searcher memory TiB (peaks)", lambda p: f"{p['memory_tib']:,.1f}"),
            (f"Kafka MB/s at {INGEST_ROWS_S:,} rows/s",
             lambda p: f"{p['kafka_mb_s']:.1f}"),
            (f"Kafka retention GiB ({RETENTION_S // 3600} h)",
             lambda p: f"{p['kafka_retention_gib']:,.0f}"),
            ("Kafka GiB, every row once", lambda p: f"{p['kafka_load_gib']:,.0f}"),
            ("Redis MB/s of queries and replies", lambda p: f"{p['redis_mb_s']:,.0f}"),
            ("Redis MiB of registry", lambda p: f"{p['redis_registry_mib']:,.2f}"),
            ("Redis GiB of answered-request markers",
             lambda p: f"{p['redis_markers_gib']:,.1f}"),
            (f"store TiB, 1 / {KEEP_GENERATIONS} generations",
             lambda p: f"{p['store_tib']:.2f} / {p['store_kept_tib']:.2f}"),
        ]
        print_table(["", *(f"{p['qps']:,} QPS" for p in chosen)],
                    [[name, *(show(p) for p in chosen)] for name, show in lines])


if __name__ == "__main__":
    main()
