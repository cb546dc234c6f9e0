"""Search via the Redis protocol beside raw in-process FAISS; recall, freshness, ingest impact."""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the repo root must win over bench/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import signal
import statistics
import subprocess
import tempfile
import threading
import time
import uuid

import faiss
import numpy as np
from prometheus_client import CollectorRegistry

from bench.common import machine_info
from indexer.registry import Registry
from indexer.view import load_registered
from indexer.worker import Worker
from ingest import admin
from ingest.producer import Producer
from ingest.spec import CollectionSpec
from searcher.client import Client
from streamvec.settings import Settings


def main() -> None:
    """Load a collection, start one searcher process, and measure."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--index", default="Flat", help="segment index (default Flat)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent client threads")
    parser.add_argument("--queries", type=int, default=4000, help="requests per QPS run")
    parser.add_argument("--ingest-rate", type=int, default=5000, help="rows/s while ingesting")
    parser.add_argument("--freshness-s", type=float, default=15.0)
    args = parser.parse_args()
    base = Settings()
    with tempfile.TemporaryDirectory(prefix="sv-bench-") as tmp:
        settings = base.model_copy(update={"snapshots": Path(tmp)})
        name = f"bench-search-{uuid.uuid4().hex[:6]}"
        spec = CollectionSpec(name, dim=args.dim, partitions=4, index=args.index,
                              seal_rows=max(1000, args.rows // 4), seal_seconds=5.0)
        admin.create_collection(settings, spec)
        try:
            run(settings, spec, args, Path(tmp))
        finally:
            admin.drop_collection(settings, name)


def run(settings: Settings, spec: CollectionSpec, args: argparse.Namespace, tmp: Path) -> None:
    """All measurements over one collection."""
    rng = np.random.default_rng(0)
    data = _clustered(rng, args.rows, args.dim)
    queries = data[rng.integers(0, args.rows, 1000)] + 0.05 * rng.standard_normal(
        (1000, args.dim)).astype(np.float32)
    indexer = _start_indexer(settings, spec)
    with Producer(spec.name, settings=settings) as producer:
        for lo in range(0, args.rows, 10_000):
            producer.upsert([f"r{i}" for i in range(lo, min(lo + 10_000, args.rows))],
                            data[lo:lo + 10_000])
        offsets = producer.flush()
    _wait_registered(settings, spec, offsets)
    proc = _start_searcher(settings, spec, tmp)
    try:
        client = Client(settings=settings)
        client.search(spec.name, queries[0], consistency={"session": offsets}, timeout=60)
        raw_qps, raw_ids = _raw_faiss(settings, spec, queries)
        steady = _qps(settings, spec, queries, args.clients, args.queries)
        recall = _recall(client, spec, data, queries[:200])
        agree = _agreement(client, spec, queries[:200], raw_ids[:200])
        with Ingest(settings, spec, args.ingest_rate, rng) as ingest:
            busy = _qps(settings, spec, queries, args.clients, args.queries)
            fresh = _freshness(client, spec, ingest, args.freshness_s)
        _report(spec, args, raw_qps, steady, busy, recall, agree, fresh)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        indexer[1]()


def _clustered(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    centers = rng.standard_normal((64, dim)).astype(np.float32) * 3
    return (centers[rng.integers(0, 64, n)] + rng.standard_normal((n, dim))).astype(np.float32)


def _start_indexer(settings: Settings, spec: CollectionSpec):
    worker = Worker(settings, spec.name, metrics_registry=CollectorRegistry())
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    return thread, lambda: (worker.stop(), thread.join(60))


def _wait_registered(settings: Settings, spec: CollectionSpec, offsets: dict[int, int]) -> None:
    registry = Registry(settings.redis_client(), spec.name)
    while not all(registry.checkpoint(p) > o for p, o in offsets.items()):
        time.sleep(0.2)  # indexing progress probe


def _start_searcher(settings: Settings, spec: CollectionSpec, tmp: Path) -> subprocess.Popen:
    log = tmp / "searcher.log"
    argv = [sys.executable, "-m", "streamvec", "searcher", "--collection", spec.name]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                env=settings.child_env())
    while "serving" not in log.read_text():
        if proc.poll() is not None:
            raise RuntimeError(log.read_text()[-2000:])
        time.sleep(0.1)  # start-up probe
    return proc


def _raw_faiss(settings: Settings, spec: CollectionSpec, queries: np.ndarray):
    """One query at a time over the same segments' FAISS indexes, merged: the raw baseline."""
    segments = load_registered(Registry(settings.redis_client(), spec.name), settings.snapshots)
    for seg in segments:
        if hasattr(seg.index, "hnsw"):
            seg.index.hnsw.efSearch = 64
    started = time.perf_counter()
    out = []
    for q in queries:
        heads = [(seg, *seg.index.search(q[None, :], 10)) for seg in segments]
        cand = [(float(d), seg.ids[i].decode()) for seg, dd, ii in heads
                for d, i in zip(dd[0], ii[0], strict=True) if i >= 0]
        out.append([i for _, i in sorted(cand)[:10]])
    return len(queries) / (time.perf_counter() - started), out


def _qps(settings: Settings, spec: CollectionSpec, queries: np.ndarray, clients: int,
         total: int) -> dict[str, float]:
    latencies: list[float] = []
    per_client = total // clients

    def loop(seed: int) -> None:
        client = Client(settings=settings)
        rng = np.random.default_rng(seed)
        for _ in range(per_client):
            q = queries[int(rng.integers(0, len(queries)))]
            t0 = time.perf_counter()
            client.search(spec.name, q, k=10, timeout=30)
            latencies.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=loop, args=(s,)) for s in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    lat = sorted(latencies)
    return {"qps": len(lat) / elapsed, "p50": lat[len(lat) // 2] * 1e3,
            "p99": lat[int(len(lat) * 0.99)] * 1e3}


def _recall(client: Client, spec: CollectionSpec, data: np.ndarray, queries: np.ndarray) -> float:
    exact = faiss.IndexFlatL2(spec.dim)
    exact.add(data)
    _, truth = exact.search(queries, 10)
    got = client.search(spec.name, queries, k=10, timeout=30)
    hits = sum(len({f"r{i}" for i in t} & set(g)) for t, g in zip(truth, got.ids, strict=True))
    return hits / truth.size


def _agreement(client: Client, spec: CollectionSpec, queries: np.ndarray, raw: list) -> float:
    got = client.search(spec.name, queries, k=10, timeout=30)
    return sum(len(set(g) & set(r)) for g, r in zip(got.ids, raw, strict=True)) / (10 * len(raw))


class Ingest:
    """A producer thread upserting fresh rows at a fixed rate; records when each batch was sent."""

    def __init__(self, settings, spec, rate: int, rng) -> None:
        self.settings, self.spec, self.rate = settings, spec, rate
        self.vectors = rng.standard_normal((rate * 10, spec.dim)).astype(np.float32) * 5
        self.sent: list[tuple[int, float]] = []  # (row number, time it was flushed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Ingest:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)

    def vector(self, row: int) -> np.ndarray:
        """The vector sent as row `row` (the buffer is reused cyclically, ids stay unique)."""
        return self.vectors[row % len(self.vectors)]

    def _run(self) -> None:
        step, row = max(1, self.rate // 100), 0
        with Producer(self.spec.name, settings=self.settings) as producer:
            while not self._stop.is_set():
                tick = time.perf_counter()
                rows = range(row, row + step)
                producer.upsert([f"fresh-{i}" for i in rows],
                                np.stack([self.vector(i) for i in rows]))
                producer.flush()
                self.sent.append((row, time.perf_counter()))
                row += step
                time.sleep(max(0.0, 0.01 - (time.perf_counter() - tick)))  # pace to the rate


def _freshness(client: Client, spec: CollectionSpec, ingest: Ingest, seconds: float) -> list:
    """Produce -> visible: poll an eventual query for freshly sent rows until they show."""
    samples = []
    last = -1
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        if not ingest.sent or ingest.sent[-1][0] <= last:
            time.sleep(0.002)  # wait for a batch not measured yet
            continue
        row, sent_at = ingest.sent[-1]
        last = row
        while True:
            got = client.search(spec.name, ingest.vector(row), k=1, timeout=10)
            if got.ids[0][0] == f"fresh-{row}":
                samples.append(time.perf_counter() - sent_at)
                break
    return sorted(samples)


def _report(spec, args, raw_qps, steady, busy, recall, agree, fresh) -> None:
    print(f"# search: {args.rows} rows x {spec.dim}-d, index {spec.index}, 4 partitions, "
          f"{args.clients} client threads, one searcher process, k=10")
    print(f"# machine: {machine_info()}")
    print(f"{'path':<44} {'QPS':>8} {'p50 ms':>8} {'p99 ms':>8}")
    print(f"{'raw FAISS in-process (one query at a time)':<44} {raw_qps:>8,.0f} {'':>8} {'':>8}")
    for label, r in (("streamvec via Redis, no ingest", steady),
                     (f"streamvec via Redis, ingest {args.ingest_rate} rows/s", busy)):
        print(f"{label:<44} {r['qps']:>8,.0f} {r['p50']:>8.2f} {r['p99']:>8.2f}")
    print(f"ratio streamvec/raw QPS: {steady['qps'] / raw_qps:.2f}x (goal >= 0.8x)")
    print(f"ratio QPS with/without ingest: {busy['qps'] / steady['qps']:.2f}x (goal >= 0.9x)")
    print(f"recall@10 vs exact: {recall:.4f}; overlap@10 with raw FAISS: {agree:.4f}")
    if fresh:
        p50 = statistics.median(fresh) * 1e3
        p99 = fresh[min(len(fresh) - 1, int(len(fresh) * 0.99))] * 1e3
        print(f"freshness produce->visible (eventual), {len(fresh)} samples: p50 {p50:.1f} ms, "
              f"p99 {p99:.1f} ms (goal p99 <= 100 ms)")


if __name__ == "__main__":
    main()
