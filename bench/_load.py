"""Load for the search benchmarks: what a query load measured, recall, background ingest.

The query clients themselves run in processes of their own (bench/_clients.py).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np

from bench.common import percentile
from ingest.producer import Producer
from streamvec.settings import Settings

INGEST_TICK_S = 0.01


@dataclass
class LoadResult:
    """What a query load measured: throughput, latencies and each answer's ids."""

    qps: float
    latencies_ms: list[float]
    answers: list[tuple[int, list[str]]] = field(repr=False)  # (query number, ids)

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
    """A thread upserting fresh rows at a fixed rate into a collection while others measure."""

    def __init__(self, settings: Settings, collection: str, dim: int, rate: int,
                 seed: int = 1) -> None:
        self.settings, self.collection, self.rate = settings, collection, rate
        rng = np.random.default_rng(seed)
        self._vectors = rng.standard_normal((max(rate, 100), dim)).astype(np.float32) * 5
        self.rows_sent = 0
        self.elapsed_s = 0.0
        self.offsets: dict[int, int] = {}  # the last offset delivered per partition
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._error: BaseException | None = None

    def __enter__(self) -> Ingest:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)
        if self._error is not None:
            raise RuntimeError("the ingest thread failed") from self._error

    @property
    def achieved_rate(self) -> float:
        """Rows per second actually delivered."""
        return self.rows_sent / self.elapsed_s if self.elapsed_s else 0.0

    def _run(self) -> None:
        n = len(self._vectors)
        try:
            with Producer(self.collection, settings=self.settings) as producer:
                started = time.perf_counter()
                while not self._stop.is_set():
                    # Send what keeps the total on rate, so a slow tick is caught up on the next.
                    lo, due = self.rows_sent, round(self.rate * (time.perf_counter() - started))
                    if due > lo:
                        picked = np.arange(lo, due) % n  # the buffer repeats, the ids do not
                        producer.upsert([f"fresh-{i}" for i in range(lo, due)],
                                        self._vectors[picked])
                        self.rows_sent = due
                    time.sleep(INGEST_TICK_S)  # pacing
                self.offsets = producer.flush(60)
                self.elapsed_s = time.perf_counter() - started
        except BaseException as exc:  # re-raised by __exit__ in the measuring thread
            self._error = exc
