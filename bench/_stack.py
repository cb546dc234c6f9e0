"""Benchmark harness over the running stack: scratch collections, role processes, loading rows."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexer.registry import Registry
from ingest import admin
from ingest.producer import Producer
from ingest.spec import CollectionSpec
from lifecycle import collections
from searcher.client import Client
from streamvec.settings import Settings
from streamvec.synthetic import Clusters

TUNED_SEARCHER = Path(__file__).resolve().parent / "_searcher.py"
# Log lines that say a role is at work: a worker owns a partition, a searcher reads its stream
# (named by collection: the health server logs "serving" too, before any segment is loaded).
INDEXER_READY = "taken over"
SEARCHER_READY = r"collection={}(?: \S+)* serving"  # a pattern: other fields may sit between
START_TIMEOUT_S = 120.0
PRODUCE_STEP = 10_000
QUERY_POOL = 1000
# The seeded clusters every benchmark draws its rows from (`clustered`, the ingest process).
CLUSTERS, CLUSTER_SCALE = 64, 3.0


@dataclass
class Role:
    """One `streamvec indexer|searcher` process started by a benchmark, with its log."""

    proc: subprocess.Popen
    log: Path

    def log_text(self) -> str:
        """The process's output so far."""
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM the process, and SIGKILL it if it is still there after `timeout`."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)


@contextmanager
def scratch_collection(base: Settings, prefix: str, **spec_fields) -> Iterator[
        tuple[Settings, CollectionSpec, Path]]:
    """A new collection with its own segment store, dropped (with its topics) afterwards."""
    with tempfile.TemporaryDirectory(prefix="sv-bench-") as tmp:
        settings = base.model_copy(update={"store": Path(tmp)})
        spec = CollectionSpec(f"{prefix}-{uuid.uuid4().hex[:6]}", **spec_fields)
        admin.create_collection(settings, spec)
        try:
            yield settings, spec, Path(tmp)
        finally:
            collections.drop_collection(settings, spec.name)


def start_role(settings: Settings, role: str, collection: str, log_dir: Path, *,
               search_params: str | None = None) -> Role:
    """Start `streamvec <role>` (or the tuned searcher) and return once its log says it works."""
    if search_params is None:
        argv = [sys.executable, "-m", "streamvec", role]
    elif role == "searcher":
        argv = [sys.executable, str(TUNED_SEARCHER), "--search-params", search_params]
    else:
        raise ValueError(f"search_params apply to the searcher only, not the {role}")
    argv += ["--collection", collection]
    log = log_dir / f"{role}-{uuid.uuid4().hex[:6]}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                env=settings.child_env())
    started = Role(proc, log)
    ready = (re.escape(INDEXER_READY) if role == "indexer"
             else SEARCHER_READY.format(re.escape(collection)))
    deadline = time.monotonic() + START_TIMEOUT_S
    while not re.search(ready, started.log_text()):
        if proc.poll() is not None or time.monotonic() > deadline:
            started.stop(5)
            raise RuntimeError(f"{role} did not start (no {ready!r} in its log within "
                               f"{START_TIMEOUT_S:g}s):\n{started.log_text()[-2000:]}")
        time.sleep(0.02)  # start-up probe
    return started


@contextmanager
def running(settings: Settings, role: str, collection: str, log_dir: Path,
            **kwargs) -> Iterator[Role]:
    """A role process for the duration of a `with` block."""
    started = start_role(settings, role, collection, log_dir, **kwargs)
    try:
        yield started
    finally:
        started.stop()


def clustered(n: int, dim: int) -> np.ndarray:
    """n float32 rows around 64 seeded centres: structure for an index to find."""
    return Clusters(dim, CLUSTERS, seed=0, scale=CLUSTER_SCALE).draw(n)[0]


def rows_and_queries(rows: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """`rows` clustered rows, and QUERY_POOL queries drawn fresh from the same clusters."""
    data = clustered(rows + QUERY_POOL, dim)
    return data[:rows], data[rows:]


def row_ids(lo: int, hi: int, prefix: str = "r") -> list[str]:
    """The ids the benchmarks give rows lo..hi-1."""
    return [f"{prefix}{i}" for i in range(lo, hi)]


def produce(settings: Settings, spec: CollectionSpec, vectors: np.ndarray,
            prefix: str = "r") -> dict[int, int]:
    """Upsert every row as `<prefix><row>`; return the offsets that flush() reports."""
    with Producer(spec.name, settings=settings) as producer:
        for lo in range(0, len(vectors), PRODUCE_STEP):
            hi = min(lo + PRODUCE_STEP, len(vectors))
            producer.upsert(row_ids(lo, hi, prefix), vectors[lo:hi])
        return producer.flush(120)


def wait_registered(settings: Settings, spec: CollectionSpec, offsets: dict[int, int], *,
                    timeout: float = 1200.0, indexer: Role | None = None) -> float:
    """Wait until sealed segments cover every offset given; return the seconds waited."""
    registry = Registry(settings.redis_client(), spec.name)
    started = time.perf_counter()
    while not all(registry.checkpoint(p) > o for p, o in offsets.items()):
        if indexer is not None and indexer.proc.poll() is not None:
            raise RuntimeError(f"the indexer exited early:\n{indexer.log_text()[-2000:]}")
        if time.perf_counter() - started > timeout:
            raise TimeoutError(f"{spec.name}: offsets {offsets} not registered in {timeout:g}s")
        time.sleep(0.05)  # indexing progress probe
    return time.perf_counter() - started


def sealed(base: Settings, prefix: str, data: np.ndarray, **spec_fields) -> AbstractContextManager[
        tuple[Settings, CollectionSpec, Path]]:
    """A scratch collection holding `data` as sealed rows, its indexer stopped once they were."""
    return _loaded(base, prefix, data, spec_fields, serve=False)


def serving(base: Settings, prefix: str, data: np.ndarray, **spec_fields) -> AbstractContextManager[
        tuple[Settings, CollectionSpec, Path]]:
    """A scratch collection holding `data` as sealed rows, with an indexer and a searcher up."""
    return _loaded(base, prefix, data, spec_fields, serve=True)


@contextmanager
def _loaded(base: Settings, prefix: str, data: np.ndarray, spec_fields: dict[str, Any], *,
            serve: bool) -> Iterator[tuple[Settings, CollectionSpec, Path]]:
    """A scratch collection holding `data` as sealed rows; its roles run inside if `serve`."""
    with scratch_collection(base, prefix, dim=data.shape[1], **spec_fields) as (
            settings, spec, tmp), ExitStack() as roles:
        offsets = produce(settings, spec, data)
        indexer = roles.enter_context(running(settings, "indexer", spec.name, tmp))
        wait_registered(settings, spec, offsets, indexer=indexer)
        if serve:
            roles.enter_context(running(settings, "searcher", spec.name, tmp))
            with Client(settings=settings) as client:  # answers once the tail caught up
                client.search(spec.name, data[0], consistency={"session": offsets}, timeout=60)
        else:
            roles.close()  # the rows are sealed: measurements run without an indexer
        yield settings, spec, tmp
