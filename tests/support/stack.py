"""Helpers that run the indexer and the searcher of a collection on threads inside a test."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import numpy as np
from prometheus_client import CollectorRegistry

from indexer.worker import Worker
from ingest import admin
from ingest.spec import CollectionSpec
from searcher.engine import Engine
from searcher.metrics import SearcherMetrics
from searcher.server import Server


class Running:
    """Run `target` on a daemon thread; `stop()` calls `halt`, joins and re-raises its error."""

    def __init__(self, target, halt, name: str, *, stop_timeout: float = 60.0) -> None:
        self.halt = halt
        self.stop_timeout = stop_timeout
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(target,), name=name, daemon=True)
        self.thread.start()

    def _run(self, target) -> None:
        try:
            target()
        except BaseException as exc:  # handed to the test thread
            self.error = exc

    def stop(self) -> None:
        self.halt()
        self.thread.join(self.stop_timeout)
        assert not self.thread.is_alive(), (
            f"{self.thread.name} did not stop within {self.stop_timeout:g} s")
        if self.error is not None:
            raise self.error


class IndexerThread(Running):
    """An indexer Worker of a collection on a thread."""

    def __init__(self, settings, name: str) -> None:
        self.metrics = CollectorRegistry()
        self.worker = Worker(settings, name, metrics_registry=self.metrics)
        super().__init__(self.worker.run, self.worker.stop, f"indexer-{name}")

    def sample(self, name: str, **labels: str) -> float | None:
        """Read one sample of the worker's metrics."""
        return self.metrics.get_sample_value(name, labels)


class SearcherThread(Running):
    """A searcher (engine + Redis server loop) of a collection on a thread."""

    def __init__(self, settings, name: str, *, replica: str = "r1") -> None:
        self.registry = CollectorRegistry()
        self.metrics = SearcherMetrics(self.registry, name)
        self.engine = Engine(settings, name, metrics=self.metrics)
        self.engine.start()
        self.server = Server(settings, name, self.engine, consumer=replica, metrics=self.metrics)
        super().__init__(self.server.run, self._halt, f"searcher-{name}-{replica}")

    def _halt(self) -> None:
        self.server.stop()
        self.engine.stop()


def exact_top_k(live: dict[str, np.ndarray], queries: np.ndarray, k: int
                ) -> tuple[list[list[str]], np.ndarray]:
    """Exact l2 top-k over the expected live rows: ids best first and squared distances."""
    ids = sorted(live)
    matrix = np.stack([live[i] for i in ids]).astype(np.float32)
    d2 = ((queries[:, None, :] - matrix[None, :, :]) ** 2).sum(axis=2)
    order = np.argsort(d2, axis=1, kind="stable")[:, :k]
    return [[ids[j] for j in row] for row in order], np.take_along_axis(d2, order, axis=1)


@dataclass
class Served:
    """A collection's indexer and searcher replicas, running on threads."""

    indexer: IndexerThread
    searchers: list[SearcherThread]


@contextmanager
def served(settings, spec: CollectionSpec, searchers: int = 1) -> Iterator[Served]:
    """Create a collection and run its indexer and `searchers` replicas for the block."""
    admin.create_collection(settings, spec)
    with ExitStack() as stack:
        running = Served(IndexerThread(settings, spec.name), [])
        stack.callback(running.indexer.stop)
        for r in range(searchers):
            running.searchers.append(SearcherThread(settings, spec.name, replica=f"r{r + 1}"))
            stack.callback(running.searchers[-1].stop)
        yield running


@contextmanager
def serving(settings, name: str, **spec: object) -> Iterator[CollectionSpec]:
    """Create a Flat collection and run its indexer and searcher for the block's duration."""
    created = CollectionSpec(name, **{"index": "Flat", **spec})
    with served(settings, created):
        yield created
