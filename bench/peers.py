"""Peers: streamvec beside Chroma, hnswlib, Qdrant (local mode) and LanceDB, with raw FAISS HNSW32.

Every system gets the same data in the same run on the same machine: sentences of the packaged
corpus (streamvec/corpus.py) embedded offline with the demo's model (384-d, cosine; cached
under bench/out/), with held-out queries whose exact top 10 come from a float64 brute-force
scan. Each system runs as its users would run it: streamvec as the local stack (Kafka, Redis,
an indexer and a searcher process, rows sent with the Producer SDK, queries through
`Client.search` from separate client processes); Chroma as a persistent client, hnswlib,
Qdrant in local mode (path=...), LanceDB and raw FAISS in this process, each with its own
defaults except the search knob. Per system:

- insert rows/s: every row written, batch by batch, until durable and searchable; indexed
  rows/s: until served by the index the QPS figures search (differs where indexing runs after
  the write: streamvec seals segments, LanceDB builds its index on request);
- QPS one query at a time at recall@10 >= 0.95 and >= 0.99: the search knob is swept from
  cheap to dear, and each target takes the first setting that reaches it;
- freshness p50/p99: write one new row, then search for it until its id comes back.

A system whose package is missing, which fails, or whose insert outlasts its budget is
recorded as such, with the reason, in the table; the others still run. Ratios compare
streamvec with the best peer (hnswlib, Chroma, Qdrant, LanceDB) and with raw FAISS.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the repo root must win over bench/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import gc
import inspect
import json
import math
import os
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import numpy as np

from bench import _corpus_vectors as corpus_vectors
from bench._stack import produce, running, scratch_collection, start_role, wait_registered
from bench.common import Result, machine_info, parse_scaled, percentile, print_table
from searcher.client import Client
from streamvec.settings import Settings

DEFAULTS = {
    "small": {"rows": 10_000, "queries": 200, "fresh_samples": 40, "point_seconds": 5.0,
              "fresh_seconds": 10.0, "insert_seconds": 60.0},
    "full": {"rows": 80_000, "queries": 1_000, "fresh_samples": 200, "point_seconds": 8.0,
             "fresh_seconds": 15.0, "insert_seconds": 150.0},
}
K = 10
TARGETS = (0.95, 0.99)
SYSTEMS = ("faiss", "streamvec", "hnswlib", "chroma", "qdrant", "lancedb")
PEERS = ("hnswlib", "chroma", "qdrant", "lancedb")  # the ones "best peer" is chosen among
PACKAGES = ("chromadb", "hnswlib", "qdrant-client", "lancedb")
EF_SWEEP = (10, 16, 32, 64, 128, 256, 512)  # from k: streamvec refuses ef < k
INSERT_BATCH = 10_000
WARM_QUERIES = 10
# A setting is timed over at least this long, repeating the queries: one pass of a fast system
# (200 queries at 20,000 QPS) lasts 10 ms, where any other process's time slice would count.
MIN_POINT_S = 1.0
# A probe no search returns by then counts as missed: at the setting the sweep ended on, a
# graph search can settle in the wrong region and miss the row every time (a real answer
# about that system, not a hang).
PROBE_TIMEOUT_S = 10.0
CLIENT = Path(__file__).resolve().parent / "_peer_client.py"
CLIENT_TIMEOUT_S = 600.0
# streamvec: one partition, so that it too serves one index over every row, like each peer.
STREAMVEC_PARTITIONS = 1
STREAMVEC_SEAL_SECONDS = 10.0

Knob = tuple[str, Any]  # (label shown in the tables, value the system understands)


@dataclass
class Point:
    """One setting of a system's search knob: its QPS and recall@10 over the queries run."""

    knob: str
    qps: float
    recall: float
    queries: int


@dataclass
class Outcome:
    """Everything measured about one system, or why it was not."""

    system: str
    setup: str = ""
    insert_rows_s: float | None = None
    indexed_rows_s: float | None = None
    points: list[Point] = field(default_factory=list)
    fresh_ms: list[float] = field(default_factory=list)
    fresh_missed: int | None = None  # probes no search returned within PROBE_TIMEOUT_S
    status: str = "ok"
    stage: str = "setup"  # what ran last: a failure's message names it

    def at(self, target: float) -> Point | None:
        """The first sweep point (cheapest setting) whose recall reaches `target`."""
        return next((p for p in self.points if p.recall >= target), None)

    @property
    def max_recall(self) -> float | None:
        """The best recall@10 of the sweep."""
        return max((p.recall for p in self.points), default=None)

    def fresh(self, q: float) -> float | None:
        """The q-th percentile of the freshness samples, in ms."""
        return percentile(self.fresh_ms, q) if self.fresh_ms else None

    def row(self) -> dict[str, Any]:
        """The peer table's row for this system."""
        row: dict[str, Any] = {"system": self.system, "insert_rows_s": self.insert_rows_s,
                               "indexed_rows_s": self.indexed_rows_s}
        for target in TARGETS:
            point, tag = self.at(target), f"{round(target * 100)}"
            row[f"qps_at_{tag}"] = point.qps if point else None
            row[f"knob_at_{tag}"] = point.knob if point else (
                "not reached" if self.points else None)
        row.update(max_recall=self.max_recall, fresh_p50_ms=self.fresh(50),
                   fresh_p99_ms=self.fresh(99), fresh_samples=len(self.fresh_ms),
                   fresh_missed=self.fresh_missed,
                   status=self.status)
        return row


class System:
    """One system under test. The harness calls, in order: open, before_insert, insert, index,
    then use + run_queries per knob, freshness, close; insert and index are timed."""

    name = ""
    setup = ""
    fallback: Knob | None = None  # tried only when no knob of the sweep reached every target

    def open(self, folder: Path, dim: int) -> None:
        """Create an empty collection or index under `folder`."""

    def before_insert(self, vectors: np.ndarray) -> None:
        """Untimed preparation for `insert`."""

    def insert(self, vectors: np.ndarray, deadline: float) -> None:
        """Write every row (row i has id i) until durable and searchable.

        Past `deadline` (a perf_counter reading) a batched insert raises OverBudget.
        """
        raise NotImplementedError

    def index(self) -> None:
        """Wait for or build the index the QPS figures search, if insert did not."""

    def knobs(self) -> list[Knob]:
        """The search knob's settings, cheapest first."""
        raise NotImplementedError

    def use(self, knob: Knob) -> None:
        """Apply one knob setting to the searches that follow."""

    def query(self, vector: np.ndarray) -> list[int]:
        """Row numbers of the K nearest rows of one query vector."""
        raise NotImplementedError

    def write_probe(self, key: int, vector: np.ndarray) -> None:
        """Write one new row with id `key`."""
        raise NotImplementedError

    def close(self) -> None:
        """Release everything open."""

    def run_queries(self, queries: np.ndarray, seconds: float) -> tuple[float, list[list[int]]]:
        """QPS one query at a time and the rows found: one pass over the queries, in order,
        cut short after `seconds`; a pass under MIN_POINT_S is timed on over more passes."""
        for vector in queries[:WARM_QUERIES]:
            self.query(vector)
        found = []
        started = time.perf_counter()
        for vector in queries:
            found.append(self.query(vector))
            if time.perf_counter() - started > seconds:
                break
        done = len(found)
        while time.perf_counter() - started < MIN_POINT_S:  # fast systems: a pass is too short
            self.query(queries[done % len(queries)])
            done += 1
        return done / (time.perf_counter() - started), found

    def freshness(self, probes: np.ndarray, first_key: int,
                  seconds: float) -> tuple[list[float], int]:
        """Milliseconds from each probe's write until a search returns it, and how many no
        search returned within PROBE_TIMEOUT_S (the first probe is not kept)."""
        samples, missed = [], 0
        started = time.perf_counter()
        for i, vector in enumerate(probes):
            key = first_key + i
            t0 = time.perf_counter()
            self.write_probe(key, vector)
            while key not in (found := self.query(vector)) and (
                    time.perf_counter() - t0 < PROBE_TIMEOUT_S):
                pass
            if i and key in found:
                samples.append((time.perf_counter() - t0) * 1e3)
            elif i:
                missed += 1
            if time.perf_counter() - started > seconds:
                break
        return samples, missed


class OverBudget(Exception):
    """An insert still running at its deadline: how many rows it had written by then."""

    def __init__(self, rows: int) -> None:
        super().__init__(f"{rows} rows written by the deadline")
        self.rows = rows


def batches(n: int, deadline: float, size: int = INSERT_BATCH) -> Iterator[tuple[int, int]]:
    """[lo, hi) ranges covering n rows, `size` at a time; OverBudget once `deadline` passed."""
    for lo in range(0, n, size):
        if lo and time.perf_counter() > deadline:
            raise OverBudget(lo)
        yield lo, min(lo + size, n)


class Faiss(System):
    """Raw FAISS HNSW32 in this process: the baseline streamvec's segments are built with."""

    name = "faiss"

    def open(self, folder: Path, dim: int) -> None:
        import faiss

        from indexer import build

        self.faiss, self.build, self.folder = faiss, build, folder
        self.threads = faiss.omp_get_max_threads()
        self.index_ = faiss.index_factory(dim, "HNSW32", faiss.METRIC_INNER_PRODUCT)
        self.index_.hnsw.efConstruction = build.HNSW_EF_CONSTRUCTION
        self.setup = (f"HNSW32, efConstruction {build.HNSW_EF_CONSTRUCTION}, inner product "
                      "over unit vectors, saved with write_index; knob efSearch")

    def insert(self, vectors: np.ndarray, deadline: float) -> None:
        for lo, hi in batches(len(vectors), deadline):
            self.index_.add(self.build.prepare(vectors[lo:hi], "cosine"))
        self.faiss.write_index(self.index_, str(self.folder / "hnsw32.faiss"))

    def knobs(self) -> list[Knob]:
        return [(f"efSearch {ef}", ef) for ef in EF_SWEEP]

    def use(self, knob: Knob) -> None:
        self.index_.hnsw.efSearch = knob[1]
        self.faiss.omp_set_num_threads(1)  # one query at a time, as a searcher runs it

    def query(self, vector: np.ndarray) -> list[int]:
        return self.index_.search(self.build.prepare(vector[None, :], "cosine"), K)[1][0].tolist()

    def write_probe(self, key: int, vector: np.ndarray) -> None:
        self.index_.add(self.build.prepare(vector[None, :], "cosine"))

    def close(self) -> None:
        if hasattr(self, "faiss"):
            self.faiss.omp_set_num_threads(self.threads)


class Hnswlib(System):
    """hnswlib with its defaults (M 16, ef_construction 200), saved with save_index."""

    name = "hnswlib"
    setup = "space cosine, M 16, ef_construction 200 (defaults), saved with save_index; knob ef"

    def open(self, folder: Path, dim: int) -> None:
        import hnswlib

        self.folder, self.dim = folder, dim
        self.index_ = hnswlib.Index(space="cosine", dim=dim)

    def before_insert(self, vectors: np.ndarray) -> None:
        # Room for the freshness probes too: hnswlib's capacity is fixed at init.
        self.index_.init_index(max_elements=len(vectors) + 10_000)

    def insert(self, vectors: np.ndarray, deadline: float) -> None:
        for lo, hi in batches(len(vectors), deadline):
            self.index_.add_items(vectors[lo:hi], np.arange(lo, hi))
        self.index_.save_index(str(self.folder / "hnswlib.bin"))

    def knobs(self) -> list[Knob]:
        return [(f"ef {ef}", ef) for ef in EF_SWEEP]

    def use(self, knob: Knob) -> None:
        self.index_.set_ef(knob[1])

    def query(self, vector: np.ndarray) -> list[int]:
        return self.index_.knn_query(vector, k=K)[0][0].tolist()

    def write_probe(self, key: int, vector: np.ndarray) -> None:
        self.index_.add_items(vector[None, :], [key])


class Chroma(System):
    """Chroma's persistent client in process, with its HNSW defaults (M 16, ef_construction 100)."""

    name = "chroma"
    setup = ("PersistentClient, hnsw space cosine, max_neighbors 16, ef_construction 100 "
             "(defaults); knob ef_search, set with collection.modify and applied by opening "
             "the collection afresh")

    def open(self, folder: Path, dim: int) -> None:
        self.path = folder / "chroma"
        self._connect()
        self.collection = self.client.create_collection(
            "peers", metadata={"hnsw:space": "cosine"}, embedding_function=None)
        self.batch = min(INSERT_BATCH, self.client.get_max_batch_size())

    def _connect(self) -> None:
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        self.client = chromadb.PersistentClient(
            path=str(self.path), settings=ChromaSettings(anonymized_telemetry=False))

    def insert(self, vectors: np.ndarray, deadline: float) -> None:
        for lo, hi in batches(len(vectors), deadline, self.batch):
            self.collection.add(ids=[str(i) for i in range(lo, hi)], embeddings=vectors[lo:hi])

    def knobs(self) -> list[Knob]:
        return [(f"ef_search {ef}", ef) for ef in EF_SWEEP]

    def use(self, knob: Knob) -> None:
        from chromadb.api.client import SharedSystemClient

        self.collection.modify(configuration={"hnsw": {"ef_search": knob[1]}})
        # An open collection keeps searching with the ef_search it was loaded with; the new
        # one applies once the collection is opened afresh, as a restarted server would.
        SharedSystemClient.clear_system_cache()
        self._connect()
        self.collection = self.client.get_collection("peers", embedding_function=None)

    def query(self, vector: np.ndarray) -> list[int]:
        got = self.collection.query(query_embeddings=vector[None, :], n_results=K, include=[])
        return [int(i) for i in got["ids"][0]]

    def write_probe(self, key: int, vector: np.ndarray) -> None:
        self.collection.add(ids=[str(key)], embeddings=vector[None, :])

    def close(self) -> None:
        from chromadb.api.client import SharedSystemClient

        self.collection = self.client = None  # type: ignore[assignment]
        SharedSystemClient.clear_system_cache()


class Qdrant(System):
    """Qdrant's local mode (QdrantClient(path=...)): in process, persisted, exact search."""

    name = "qdrant"
    setup = ("QdrantClient(path=...) local mode, distance cosine; local mode searches "
             "exactly (brute force), so there is no knob to sweep")

    def open(self, folder: Path, dim: int) -> None:
        from qdrant_client import QdrantClient, models

        # Local mode warns on every search past 20,000 points that it is meant for small
        # collections: that is what this row measures, not news on every query.
        warnings.filterwarnings("ignore", message="Local mode", category=UserWarning)
        self.models = models
        self.client = QdrantClient(path=str(folder / "qdrant"))
        self.client.create_collection("peers", vectors_config=models.VectorParams(
            size=dim, distance=models.Distance.COSINE))

    def insert(self, vectors: np.ndarray, deadline: float) -> None:
        for lo, hi in batches(len(vectors), deadline, 1000):
            self.client.upsert("peers", points=self.models.Batch(
                ids=list(range(lo, hi)), vectors=vectors[lo:hi]), wait=True)

    def knobs(self) -> list[Knob]:
        return [("exact (local mode)", None)]

    def query(self, vector: np.ndarray) -> list[int]:
        got = self.client.query_points("peers", query=vector, limit=K)
        return [int(p.id) for p in got.points]

    def write_probe(self, key: int, vector: np.ndarray) -> None:
        self.client.upsert("peers", points=self.models.Batch(ids=[key], vectors=vector[None, :]),
                           wait=True)

    def close(self) -> None:
        if getattr(self, "client", None) is not None:
            self.client.close()


class Lance(System):
    """LanceDB in process: rows added as Arrow batches, then its default IVF_PQ index."""

    name = "lancedb"
    setup = ("connect(path), IVF_PQ index with its defaults, distance cosine, built after "
             "the rows; knob nprobes / refine_factor, flat scan if the ANN falls short")
    fallback = ("flat scan", {"flat": True})

    def open(self, folder: Path, dim: int) -> None:
        import lancedb
        import pyarrow as pa

        self.pa, self.dim = pa, dim
        self.db = lancedb.connect(str(folder / "lance"))
        self.table = None
        self.knob: dict[str, Any] = {}

    def _batch(self, ids: np.ndarray, vectors: np.ndarray) -> Any:
        flat = self.pa.array(np.ascontiguousarray(vectors, dtype=np.float32).ravel())
        return self.pa.table({"id": self.pa.array(ids, type=self.pa.int64()),
                              "vector": self.pa.FixedSizeListArray.from_arrays(flat, self.dim)})

    def insert(self, vectors: np.ndarray, deadline: float) -> None:
        for lo, hi in batches(len(vectors), deadline):
            batch = self._batch(np.arange(lo, hi), vectors[lo:hi])
            if self.table is None:
                self.table = self.db.create_table("peers", data=batch)
            else:
                self.table.add(batch)

    def index(self) -> None:
        from lancedb.index import IvfPq

        self.table.create_index("vector", config=IvfPq(distance_type="cosine"))

    def knobs(self) -> list[Knob]:
        settings = [(20, None), (20, 2), (20, 5), (20, 10), (50, 10), (100, 20)]
        return [(f"nprobes {n}" + (f", refine {r}" if r else ""),
                 {"nprobes": n, "refine": r}) for n, r in settings]

    def use(self, knob: Knob) -> None:
        self.knob = knob[1]

    def query(self, vector: np.ndarray) -> list[int]:
        search = self.table.search(vector).distance_type("cosine")
        if self.knob.get("flat"):
            search = search.bypass_vector_index()
        else:
            search = search.nprobes(self.knob["nprobes"])
            if self.knob.get("refine"):
                search = search.refine_factor(self.knob["refine"])
        # Naming _distance keeps LanceDB from warning that it adds the column unasked.
        return search.limit(K).select(["id", "_distance"]).to_arrow()["id"].to_pylist()

    def write_probe(self, key: int, vector: np.ndarray) -> None:
        self.table.add(self._batch(np.array([key]), vector[None, :]))


class Streamvec(System):
    """streamvec on the local stack: Producer SDK in, indexer and searcher processes,
    queries through Client.search from client processes of their own."""

    name = "streamvec"
    PREFIX = "bench-peers"

    def __init__(self, base: Settings, partitions: int) -> None:
        self.base, self.partitions = base, partitions
        self.per_query_ef = "ef" in inspect.signature(Client.search).parameters
        how = ("per-query Client.search(ef=)" if self.per_query_ef
               else "efSearch set in a searcher restarted per setting")
        self.setup = (f"{partitions} partition(s), index HNSW32 (efConstruction 80), metric "
                      f"cosine, one indexer and one searcher process; knob efSearch, {how}")
        self._stack = ExitStack()
        self._searcher: Any = None
        self._ef: int | None = None

    def before_insert(self, vectors: np.ndarray) -> None:
        # Sealing by rows: each partition's rows make one segment as soon as they have all
        # arrived; the time bound seals what an uneven split leaves over.
        seal_rows = math.ceil(len(vectors) / self.partitions)
        self.settings, self.spec, self.tmp = self._stack.enter_context(scratch_collection(
            self.base, self.PREFIX, dim=vectors.shape[1], metric="cosine",
            partitions=self.partitions, index="HNSW32", seal_rows=seal_rows,
            seal_seconds=STREAMVEC_SEAL_SECONDS))
        self._indexer = self._stack.enter_context(
            running(self.settings, "indexer", self.spec.name, self.tmp))
        self._searcher = start_role(self.settings, "searcher", self.spec.name, self.tmp)
        probe = self.tmp / "session-probe.npy"
        np.save(probe, vectors[:1], allow_pickle=False)
        # Started and connected before the clock: it says when the rows became searchable.
        self._session = subprocess.Popen(
            [sys.executable, str(CLIENT), "session", "--collection", self.spec.name,
             "--probe", str(probe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env=self.settings.child_env())
        self._stack.callback(_reap, self._session)
        _read_json_line(self._session, "ready")

    def insert(self, vectors: np.ndarray, deadline: float) -> None:
        self.offsets = produce(self.settings, self.spec, vectors)
        self._session.stdin.write(json.dumps({str(p): o for p, o in self.offsets.items()})
                                  + "\n")
        self._session.stdin.flush()
        _read_json_line(self._session, "searchable")

    def index(self) -> None:
        wait_registered(self.settings, self.spec, self.offsets, timeout=CLIENT_TIMEOUT_S,
                        indexer=self._indexer)
        # The searcher that saw the writes arrive serves them from its tail until it loads the
        # sealed segments; the one `use` starts serves the segments alone from its first query.
        self._searcher.stop()
        self._searcher = None

    def knobs(self) -> list[Knob]:
        return [(f"efSearch {ef}", ef) for ef in EF_SWEEP]

    def use(self, knob: Knob) -> None:
        if self.per_query_ef:
            self._ef = knob[1]
            if self._searcher is None:
                self._start(None)
        else:
            self._start(f"efSearch={knob[1]}")

    def _start(self, params: str | None) -> None:
        """A searcher of its own (plain, or with FAISS search parameters), replacing any."""
        if self._searcher is not None:
            self._searcher.stop()
            self._searcher = None
        self._searcher = start_role(self.settings, "searcher", self.spec.name, self.tmp,
                                    search_params=params)

    def run_queries(self, queries: np.ndarray, seconds: float) -> tuple[float, list[list[int]]]:
        path = self.tmp / "queries.npy"
        if not path.exists():
            np.save(path, queries, allow_pickle=False)
        argv = ["search", "--queries", str(path), "--k", str(K), "--seconds", str(seconds),
                "--min-seconds", str(MIN_POINT_S)]
        if self._ef is not None:
            argv += ["--ef", str(self._ef)]
        got = self._client(argv)
        return got["done"] / got["elapsed_s"], got["rows"]

    def freshness(self, probes: np.ndarray, first_key: int,
                  seconds: float) -> tuple[list[float], int]:
        path = self.tmp / "probes.npy"
        np.save(path, probes, allow_pickle=False)
        got = self._client(["fresh", "--probes", str(path), "--k", str(K), "--seconds",
                            str(seconds), "--probe-timeout", str(PROBE_TIMEOUT_S)])
        return got["ms"], got["missed"]

    def _client(self, argv: list[str]) -> dict[str, Any]:
        """Run one client process and return the JSON it printed."""
        done = subprocess.run([sys.executable, str(CLIENT), argv[0], "--collection",
                               self.spec.name, *argv[1:]], capture_output=True, text=True,
                              env=self.settings.child_env(), timeout=CLIENT_TIMEOUT_S,
                              check=False)
        if done.returncode != 0:
            raise RuntimeError(f"the client process failed ({done.returncode}): "
                               f"{done.stderr.strip()[-1500:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    def close(self) -> None:
        try:
            if self._searcher is not None:
                self._searcher.stop()
        finally:
            self._stack.close()


def _read_json_line(proc: subprocess.Popen, key: str) -> dict[str, Any]:
    line = proc.stdout.readline()
    try:
        got = json.loads(line)
    except ValueError:
        got = None
    if not isinstance(got, dict) or not got.get(key):
        proc.kill()
        raise RuntimeError(f"the session client did not report {key!r} (got {line!r})")
    return got


def _reap(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(30)


def make(name: str, base: Settings, args: argparse.Namespace) -> System:
    """The system called `name`."""
    if name == "streamvec":
        return Streamvec(base, args.partitions)
    return {"faiss": Faiss, "hnswlib": Hnswlib, "chroma": Chroma, "qdrant": Qdrant,
            "lancedb": Lance}[name]()


def measure(system: System, data: np.ndarray, queries: np.ndarray, truth: np.ndarray,
            probes: np.ndarray, args: argparse.Namespace) -> Outcome:
    """Run one system through insert, the knob sweep and freshness; a failure ends it early."""
    outcome = Outcome(system.name)
    try:
        with tempfile.TemporaryDirectory(prefix=f"sv-peers-{system.name}-") as folder:
            try:
                system.open(Path(folder), data.shape[1])
                _stages(system, outcome, data, queries, truth, probes, args)
            finally:
                system.close()
    except ImportError as exc:
        outcome.status = f"skipped: {exc.name or exc} is not installed"
    except Exception as exc:  # a system that fails must not end the benchmark
        text = " ".join(str(exc).split())[:300]
        outcome.status = f"failed at {outcome.stage}: {type(exc).__name__}: {text}"
    outcome.setup = outcome.setup or system.setup
    print(f"# {system.name}: {outcome.status}", flush=True)
    gc.collect()
    return outcome


def _stages(system: System, outcome: Outcome, data: np.ndarray, queries: np.ndarray,
            truth: np.ndarray, probes: np.ndarray, args: argparse.Namespace) -> None:
    """Insert (timed), index (timed), the knob sweep, freshness."""
    system.before_insert(data)
    outcome.setup = system.setup
    outcome.stage = "insert"
    started = time.perf_counter()
    try:
        system.insert(data, started + args.insert_seconds)
    except OverBudget as over:
        # What it did write gives its rate; its recall would not be comparable.
        outcome.insert_rows_s = over.rows / (time.perf_counter() - started)
        outcome.status = (f"stopped: insert passed its {num_s(args.insert_seconds)} s budget "
                          f"after {over.rows} of {len(data)} rows")
        return
    outcome.insert_rows_s = len(data) / (time.perf_counter() - started)
    outcome.stage = "index"
    system.index()
    outcome.indexed_rows_s = len(data) / (time.perf_counter() - started)
    outcome.stage = "search"
    _sweep(system, outcome, queries, truth, args.point_seconds)
    outcome.stage = "freshness"
    outcome.fresh_ms, outcome.fresh_missed = system.freshness(probes, len(data),
                                                              args.fresh_seconds)


def _sweep(system: System, outcome: Outcome, queries: np.ndarray, truth: np.ndarray,
           seconds: float) -> None:
    """Measure knob settings cheapest first, until one reaches the highest target."""
    knobs = system.knobs()
    for knob in [*knobs, system.fallback]:
        if knob is None or (knob is system.fallback and outcome.at(max(TARGETS))):
            continue
        system.use(knob)
        qps, found = system.run_queries(queries, seconds)
        point = Point(knob[0], qps, corpus_vectors.recall_at_k(found, truth), len(found))
        outcome.points.append(point)
        print(f"#   {system.name} {knob[0]}: {qps:,.0f} QPS, recall@10 {point.recall:.4f} "
              f"({point.queries} queries)", flush=True)
        if point.recall >= max(TARGETS):
            break


def probe_rows(queries: np.ndarray, n: int) -> np.ndarray:
    """n new rows for the freshness probes: the held-out queries, repeated if too few.

    They are real sentences that no system holds yet. A random vector would not do: it lies
    far from every row, and an HNSW graph may never reach a node linked only from there.
    """
    return np.resize(queries, (n, queries.shape[1]))


# (outcome field or table key, label, unit, True when higher is better)
MEASURES = (("insert_rows_s", "insert to durable + searchable", "rows/s", True),
            ("qps_at_95", "QPS one query at a time at recall@10 >= 0.95", "queries/s", True),
            ("qps_at_99", "QPS one query at a time at recall@10 >= 0.99", "queries/s", True),
            ("fresh_p50_ms", "write one row to found by a search, p50", "ms", False),
            ("fresh_p99_ms", "write one row to found by a search, p99", "ms", False))
SUMMARY = ("insert_rows_s_vs_best_peer", "qps_at_95_vs_best_peer", "qps_at_95_vs_faiss",
           "fresh_p99_ms_vs_best_peer")


def best_peer(rows: Sequence[dict[str, Any]], key: str,
              higher: bool) -> tuple[str, float] | None:
    """The peer with the best value of `key` among rows that have one: (system, value)."""
    values = [(r[key], r["system"]) for r in rows if r["system"] in PEERS
              and r.get(key) is not None]
    if not values:
        return None
    value, system = (max if higher else min)(values)
    return system, value


def record(result: Result, outcomes: Sequence[Outcome], args: argparse.Namespace,
           source: str) -> None:
    """Print the peer table and the sweep; record figures, ratios and samples."""
    rows = [o.row() for o in outcomes]
    print(f"# peers: {args.rows} rows x {corpus_vectors.DIM}-d corpus embeddings ({source}), "
          f"{args.queries} held-out queries, k={K}, cosine, one query at a time")
    print(f"# machine: {machine_info()}")
    print_table(["system", "insert rows/s", "indexed rows/s", "QPS@0.95", "QPS@0.99",
                 "max recall", "fresh p50 ms", "fresh p99 ms", "missed", "status"],
                [[r["system"], _n(r["insert_rows_s"]), _n(r["indexed_rows_s"]),
                  _n(r["qps_at_95"]) + _k(r["knob_at_95"]), _n(r["qps_at_99"])
                  + _k(r["knob_at_99"]), _n(r["max_recall"], ".4f"),
                  _n(r["fresh_p50_ms"], ".2f"), _n(r["fresh_p99_ms"], ".2f"),
                  _n(r["fresh_missed"], "d"), r["status"]]
                 for r in rows])
    ours = next((r for r in rows if r["system"] == "streamvec"), None)
    faiss = next((r for r in rows if r["system"] == "faiss"), None)
    # Every system's absolute figures are the peer table (samples "peers"); the comparisons
    # hold streamvec's beside the best peer's and raw FAISS's.
    for key, label, unit, higher in MEASURES:
        if ours is None or ours.get(key) is None:
            continue
        best = best_peer(rows, key, higher)
        if best is not None:
            ratio = result.compare(f"{key}_vs_best_peer", f"{label}, vs the best peer",
                                   ours[key], best[1], unit, f"best peer: {best[0]}",
                                   summary=f"{key}_vs_best_peer" in SUMMARY)
            print(f"# streamvec vs best peer ({best[0]}), {label}: {ours[key]:,.4g} vs "
                  f"{best[1]:,.4g} {unit} = {ratio}x")
        if faiss is not None and faiss.get(key) is not None:
            ratio = result.compare(f"{key}_vs_faiss", f"{label}, vs raw FAISS", ours[key],
                                   faiss[key], unit, "raw FAISS HNSW32 in-process",
                                   summary=f"{key}_vs_faiss" in SUMMARY)
            print(f"# streamvec vs raw FAISS, {label}: {ours[key]:,.4g} vs "
                  f"{faiss[key]:,.4g} {unit} = {ratio}x")
    result.samples["peers"] = rows
    result.samples["sweep"] = [{"system": o.system, "knob": p.knob, "qps": p.qps,
                                "recall_at_10": p.recall, "queries": p.queries}
                               for o in outcomes for p in o.points]
    result.notes += [f"{o.system}: {o.setup}" for o in outcomes if o.setup]
    result.notes.append("peer versions: " + ", ".join(f"{p} {_version(p)}" for p in PACKAGES))
    result.notes += [
        "Insert is timed from the first write until every row is durable and searchable: "
        "for streamvec, Producer SDK flush then a session-consistency search answered from a "
        "client process; for hnswlib and FAISS, add then save to disk; for Chroma, Qdrant and "
        "LanceDB, their add/upsert calls. Indexed adds streamvec's sealed segments registered "
        "and LanceDB's index build.",
        "QPS: each setting runs the held-out queries in order, one at a time, after "
        f"{WARM_QUERIES} unrecorded ones, for at most {num_s(args.point_seconds)} s (recall@10 "
        f"is over the queries run), then repeats them until {num_s(MIN_POINT_S)} s have passed "
        "for the rate. Each target takes the first (cheapest) setting that reaches it; the "
        "sweep stops there.",
        f"Freshness: held-out sentences' rows, written one at a time (streamvec: upsert + "
        f"flush) and searched for until found, for at most {num_s(args.fresh_seconds)} s or "
        f"{args.fresh_samples} probes; a probe no search returned within "
        f"{num_s(PROBE_TIMEOUT_S)} s counts as missed, outside the percentiles.",
        "The best peer is the best of hnswlib, Chroma, Qdrant and LanceDB on each measure; "
        "raw FAISS is the in-process library streamvec's segments are made of.",
        "In-process systems search in the measuring process; streamvec answers over Redis from "
        "its searcher process, to a client in another process: its figures include that hop."]


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def num_s(value: float) -> str:
    """Seconds without a needless '.0'."""
    return f"{value:g}"


def _n(value: Any, fmt: str = ",.0f") -> str:
    return "n/a" if value is None else format(value, fmt)


def _k(knob: str | None) -> str:
    return f" ({knob})" if knob and knob != "not reached" else ""


def main(argv: list[str] | None = None) -> None:
    """Embed (or load) the corpus, then run every system on it in turn."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, help="corpus rows inserted into every system")
    parser.add_argument("--queries", type=int, help="held-out corpus rows used as queries")
    parser.add_argument("--fresh-samples", type=int, help="freshness probes per system")
    parser.add_argument("--point-seconds", type=float,
                        help="most seconds of queries per knob setting")
    parser.add_argument("--fresh-seconds", type=float,
                        help="most seconds of freshness probes per system")
    parser.add_argument("--insert-seconds", type=float,
                        help="budget of one system's insert: a slower one is stopped and "
                        "reported with the rate it reached")
    parser.add_argument("--systems", default=",".join(SYSTEMS),
                        help=f"comma-separated subset of {', '.join(SYSTEMS)}")
    parser.add_argument("--partitions", type=int, default=STREAMVEC_PARTITIONS,
                        help="partitions of the streamvec collection (one segment each)")
    parser.add_argument("--seed", type=int, default=0, help="corpus seed")
    args = parse_scaled(parser, DEFAULTS, argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = sorted(set(systems) - set(SYSTEMS))
    if unknown or not systems:
        parser.error(f"--systems: unknown {', '.join(unknown) or '(none given)'}; "
                     f"choose from {', '.join(SYSTEMS)}")
    if args.rows < K or args.queries < 1 or args.partitions < 1 or args.fresh_samples < 1:
        parser.error(f"need --rows >= {K}, and --queries, --partitions, --fresh-samples >= 1")
    if args.rows + args.queries > corpus_vectors.available():
        parser.error(f"--rows + --queries: the corpus holds {corpus_vectors.available()} "
                     "distinct sentences")
    base = Settings()
    load = os.getloadavg()[0]
    result = Result("peers", "streamvec beside Chroma, hnswlib, Qdrant local and LanceDB, "
                    "with raw FAISS", args, base)
    from streamvec.errors import EmbedderUnavailable

    started = time.perf_counter()
    try:
        vectors, source = corpus_vectors.embedded(args.rows + args.queries, args.seed)
    except EmbedderUnavailable as exc:
        raise SystemExit(f"peers: the corpus cannot be embedded: {exc}") from None
    print(f"# corpus: {len(vectors)} rows from the {source} in "
          f"{time.perf_counter() - started:.1f} s", flush=True)
    data, queries = vectors[:args.rows], vectors[args.rows:]
    truth = corpus_vectors.exact_top_k(data, queries, K)
    probes = probe_rows(queries, args.fresh_samples + 1)
    outcomes = [measure(make(name, base, args), data, queries, truth, probes, args)
                for name in systems]
    result.figure("rows", "corpus rows inserted", args.rows, "rows")
    result.figure("queries", "held-out queries", args.queries, "queries")
    end_load = os.getloadavg()[0]
    result.notes.append(f"1-minute load average: {load:.1f} at the start, {end_load:.1f} at the "
                        f"end, on {os.cpu_count()} cores")
    record(result, outcomes, args, source)
    result.write()


if __name__ == "__main__":
    main()
