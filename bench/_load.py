"""Load for the search benchmarks: what a query load measured, recall, background ingest.

The query clients (bench/_clients.py) and the ingest run in processes of their own.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the repo root must win over bench/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import json
import subprocess
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from bench._stack import CLUSTER_SCALE, CLUSTERS
from bench.common import percentile
from ingest.producer import Producer
from streamvec.settings import Settings
from streamvec.synthetic import Clusters

INGEST_TICK_S = 0.01
START_TIMEOUT_S = 60.0
FLUSH_TIMEOUT_S = 90.0
READY = "ready"  # what a benchmark's child process prints once it can start
STOP = "stop"


@dataclass
class LoadResult:
    """What a query load measured: throughput, latencies and each answer's ids."""

    qps: float
    latencies_ms: list[float]
    answers: list[tuple[int, list[str]]] = field(repr=False)  # (query number, ids)
    client_cpu_s: float = 0.0  # CPU time the client processes spent while they searched

    @property
    def client_cpu_us(self) -> float:
        """Client CPU per answered query, microseconds (0 when not measured)."""
        return self.client_cpu_s / len(self.latencies_ms) * 1e6 if self.latencies_ms else 0.0

    @property
    def p50_ms(self) -> float:
        """Median latency."""
        return percentile(self.latencies_ms, 50)

    @property
    def p99_ms(self) -> float:
        """99th percentile latency."""
        return percentile(self.latencies_ms, 99)


def recall(answers: list[tuple[int, list[str]]], truth: np.ndarray, prefix: str = "r") -> float:
    """Mean share of each query's exact k nearest ids among the ids it got back."""
    if not answers:
        raise ValueError("recall of no answers")
    k = truth.shape[1]
    hits = sum(len({f"{prefix}{i}" for i in truth[q]} & set(ids[:k])) for q, ids in answers)
    return hits / (k * len(answers))


class Ingest:
    """Fresh rows upserted at a fixed rate by a process of its own while the benchmark measures.

    The child (`python bench/_load.py`) gets the collection's settings in its environment,
    says `ready` once its producer is up, sends until it reads `stop` on stdin, flushes, and
    prints one JSON line: rows sent, seconds it sent for, and the last offset per partition.
    """

    def __init__(self, settings: Settings, collection: str, dim: int, rate: int,
                 seed: int = 1) -> None:
        self.settings, self.collection, self.dim, self.rate, self.seed = (
            settings, collection, dim, rate, seed)
        self.rows_sent = 0
        self.elapsed_s = 0.0
        self.offsets: dict[int, int] = {}  # the last offset delivered per partition
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> Ingest:
        self._proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--collection", self.collection,
             "--dim", str(self.dim), "--rate", str(self.rate), "--seed", str(self.seed)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env=self.settings.child_env())
        line = child_line(self._proc, START_TIMEOUT_S, "the ingest process")
        if line != READY:
            self._proc.kill()
            raise RuntimeError(f"the ingest process did not start: {line!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        proc = self._proc
        try:
            proc.stdin.write(STOP + "\n")
            proc.stdin.flush()
            report = json.loads(child_line(proc, FLUSH_TIMEOUT_S, "the ingest process"))
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(30)
        if report.get("error"):
            raise RuntimeError(f"the ingest process failed: {report['error']}")
        self.rows_sent, self.elapsed_s = report["rows_sent"], report["elapsed_s"]
        self.offsets = {int(p): o for p, o in report["offsets"].items()}

    @property
    def achieved_rate(self) -> float:
        """Rows per second actually delivered."""
        return self.rows_sent / self.elapsed_s if self.elapsed_s else 0.0



def child_line(proc: subprocess.Popen, timeout: float, what: str) -> str:
    """A benchmark child's next stdout line, or an error saying `what` ended without one."""
    deadline = time.monotonic() + timeout
    while True:
        line = proc.stdout.readline()
        if line:
            return line.strip()
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} exited with status {proc.poll()} before reporting")


def _send(collection: str, dim: int, rate: int, seed: int) -> dict:
    """The ingest process's run: upsert `rate` rows/s until `stop` arrives on stdin.

    Every row is new: drawn around the clusters of the benchmarks' loaded rows
    (bench/_stack.py `clustered`), as a model's embeddings of new items are. A buffer sent over
    and over would fill the collection with exact duplicates, which no real stream does and
    which make a graph slow to build and to search.
    """
    rng = np.random.default_rng(seed)
    centres = Clusters(dim, CLUSTERS, seed=0, scale=CLUSTER_SCALE).centres
    stop = threading.Event()
    sent = 0
    try:
        with Producer(collection, settings=Settings()) as producer:
            print(READY, flush=True)
            threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()),
                             daemon=True).start()
            started = time.perf_counter()
            while not stop.is_set():
                # Send what keeps the total on rate, so a slow tick is caught up on the next.
                due = round(rate * (time.perf_counter() - started))
                if due > sent:
                    n = due - sent
                    rows = centres[rng.integers(0, len(centres), n)] + rng.standard_normal(
                        (n, dim))
                    producer.upsert([f"fresh-{i}" for i in range(sent, due)],
                                    rows.astype(np.float32))
                    sent = due
                stop.wait(INGEST_TICK_S)  # pacing
            offsets = producer.flush(60)
            elapsed = time.perf_counter() - started
    except Exception as exc:  # reported to the benchmark, which fails the run
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"rows_sent": sent, "elapsed_s": elapsed,
            "offsets": {str(p): o for p, o in offsets.items()}}


def main(argv: list[str] | None = None) -> None:
    """The ingest process (started by Ingest)."""
    parser = argparse.ArgumentParser(description="Background ingest for a benchmark.")
    parser.add_argument("--collection", required=True)
    parser.add_argument("--dim", type=int, required=True)
    parser.add_argument("--rate", type=int, required=True, help="rows/s")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    print(json.dumps(_send(args.collection, args.dim, args.rate, args.seed)), flush=True)


if __name__ == "__main__":
    main()
