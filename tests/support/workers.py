"""Helpers for indexer integration tests: worker processes, workloads and the expected state."""

from __future__ import annotations

import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from indexer.registry import Registry
from indexer.segfolder import LoadedSegment
from indexer.store import SegmentStore
from indexer.view import hidden_rows, load_registered
from ingest import admin
from ingest.producer import Producer
from streamvec.settings import Settings
from tests.support.polling import wait_until

# Short group timeouts so a killed worker's partitions move on in seconds, not 45 s.
FAST_GROUP = {"session.timeout.ms": "6000", "heartbeat.interval.ms": "1000"}


@dataclass
class WorkerProcess:
    """One `streamvec indexer` process with its log file."""

    proc: subprocess.Popen
    log: Path

    def kill(self) -> None:
        """SIGKILL the worker and reap it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM the worker and return its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc.poll() is None


def spawn_worker(settings: Settings, collection: str, log_dir: Path, *, tag: str,
                 crash_at: str | None = None, extra_args: tuple[str, ...] = ()) -> WorkerProcess:
    """Start an indexer worker process; `crash_at` arms a SIGKILL at a named point."""
    fast = settings.model_copy(update={"kafka_options": {**settings.kafka_options, **FAST_GROUP}})
    env = fast.child_env()
    if crash_at:
        env["STREAMVEC_CRASH_AT"] = crash_at
    # Compaction off: these tests compare the registry with one rebuilt from the store, and a
    # merge killed between its swap and its marker rebuilds to the inputs (same rows, other ids).
    argv = [sys.executable, "-m", "streamvec", "indexer", "--collection", collection,
            "--compact-interval", "0", *extra_args]

    log = log_dir / f"worker-{tag}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    return WorkerProcess(proc, log)


@dataclass
class Workload:
    """Ops sent to a collection and the latest state per id they imply."""

    dim: int
    rng: np.random.Generator
    expected: dict[str, np.ndarray | None] = field(default_factory=dict)

    def send_round(self, producer: Producer, n: int, id_space: int) -> None:
        """Upsert n rows over ids drawn from `id_space`, then delete and re-upsert some."""
        ids = [f"id-{i}" for i in self.rng.integers(0, id_space, n)]
        vectors = self.rng.standard_normal((n, self.dim)).astype(np.float32)
        producer.upsert(ids, vectors)
        for i, v in zip(ids, vectors, strict=True):
            self.expected[i] = v
        gone = sorted(set(ids[:: 7]))
        producer.delete(gone)
        for i in gone:
            self.expected[i] = None
        back = gone[::3]
        again = self.rng.standard_normal((len(back), self.dim)).astype(np.float32)
        if back:
            producer.upsert(back, again)
            for i, v in zip(back, again, strict=True):
                self.expected[i] = v

    def live(self) -> dict[str, np.ndarray]:
        """The ids that must be visible, with their latest vector."""
        return {k: v for k, v in self.expected.items() if v is not None}


def log_ends(settings: Settings, topic: str) -> dict[int, int]:
    """High watermark of every partition of `topic`."""
    return {p.partition: p.high for p in admin.partition_offsets(settings, topic)}


def wait_fully_indexed(settings: Settings, collection: str, topic: str, timeout: float) -> None:
    """Poll until every partition's registry checkpoint reaches the log end."""
    registry = Registry(settings.redis_client(), collection)
    ends = log_ends(settings, topic)
    wait_until(lambda: all(registry.checkpoint(p) == end for p, end in ends.items()),
               timeout=timeout, what=f"checkpoints to reach {ends}")


@dataclass(frozen=True, slots=True)
class LiveRow:
    """One visible row of the registered segments: where it lives and what it holds."""

    segment_id: str
    row: int
    offset: int
    vector: np.ndarray


def live_rows(segments: list[LoadedSegment]) -> dict[str, LiveRow]:
    """Id -> its visible row; fails if an id is visible twice (a coverage bug)."""
    hidden = hidden_rows(segments)
    live: dict[str, LiveRow] = {}
    for seg in segments:
        seg_id = seg.manifest.segment_id
        gone = hidden.get(seg_id, set())
        for row, raw in enumerate(seg.ids.tolist()):
            if row in gone:
                continue
            key = raw.decode()
            assert key not in live, f"id {key!r} is visible in {live[key].segment_id} and {seg_id}"
            live[key] = LiveRow(seg_id, row, int(seg.offsets[row]), np.asarray(seg.vectors[row]))
    return live


def assert_state_matches(settings: Settings, collection: str, workload: Workload) -> None:
    """Registered segments with hides applied hold exactly the expected latest state."""
    assert_registered_rows(Registry(settings.redis_client(), collection), settings,
                           workload.live())


def assert_registered_rows(registry: Registry, settings: Settings,
                           expected: dict[str, np.ndarray], uncertain: frozenset[str] = frozenset(),
                           ) -> None:
    """The registered rows are exactly `expected`, bit for bit; `uncertain` ids may be either."""
    live = live_rows(load_registered(registry, SegmentStore.from_settings(settings)))
    known = {k: v for k, v in live.items() if k not in uncertain}
    missing = sorted(set(expected) - set(known))[:5]
    extra = sorted(set(known) - set(expected))[:5]
    assert not missing and not extra, f"registry: missing {missing}, unexpected {extra}"
    stale = [k for k, v in expected.items()
             if not np.array_equal(known[k].vector.view(np.uint32), v.view(np.uint32))]
    assert not stale, f"registry: {len(stale)} ids hold an older version, e.g. {stale[:5]}"
