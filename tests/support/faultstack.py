"""The fault suite's stack: its own Redis and broker, role processes, faults and the checks after.

Unlike the session fixtures, these servers belong to one test module, so the test may SIGKILL,
SIGSTOP and restart them (same ports, same data folders) without disturbing other tests.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from indexer.registry import Registry
from ingest.spec import CollectionSpec
from searcher.client import Client
from streamvec.devstack import cache_dir
from streamvec.devstack.kafka import KafkaServer, ensure_jars
from streamvec.devstack.ports import free_port, free_ports
from streamvec.devstack.process import ServerProcess
from streamvec.devstack.redis import RedisServer
from streamvec.settings import Settings
from tests.support.faultload import Snapshot
from tests.support.polling import wait_until
from tests.support.roles import RoleProcess
from tests.support.workers import FAST_GROUP, assert_registered_rows, log_ends

SCALE_ENV = "STREAMVEC_FAULTS_SCALE"
FIGURES_ENV = "STREAMVEC_FAULTS_FIGURES"
KAFKA_START_TIMEOUT_S = 180.0
REDIS_START_TIMEOUT_S = 30.0
# Role processes import numpy and FAISS and join groups on a busy two-core machine.
READY_TIMEOUT_S = 120.0
# A search's reply is awaited this long while the checks wait for a session position.
CHECK_QUERY_TIMEOUT_S = 20.0
CHECK_BATCH = 512


@dataclass(frozen=True)
class Scale:
    """How hard the suite pushes: outage length, poison and hostile counts, recovery deadline."""

    name: str
    outage_s: float
    poison: int
    oversize: int
    hostile: int
    recover_s: float
    disk_mb: int


SCALES = {
    # Outages outlast the query timeout with its margin and the workers' 6 s group session.
    "small": Scale("small", outage_s=8.0, poison=60, oversize=2, hostile=96, recover_s=180.0,
                   disk_mb=96),
    "full": Scale("full", outage_s=65.0, poison=10_000, oversize=20, hostile=10_000,
                  recover_s=300.0, disk_mb=256),
}


def scale() -> Scale:
    """The scale named by STREAMVEC_FAULTS_SCALE (default small)."""
    name = os.environ.get(SCALE_ENV, "small").strip() or "small"
    if name not in SCALES:
        raise ValueError(f"{SCALE_ENV} must be one of {', '.join(SCALES)}, not {name!r}")
    return SCALES[name]


def _signal_group(server: ServerProcess, sig: int) -> None:
    pid = server.pid
    assert pid is not None, f"{server.name} is not running"
    os.killpg(pid, sig)


@dataclass
class Stack:
    """Own Redis and broker, one indexer and one searcher process of one collection."""

    root: Path
    spec: CollectionSpec
    scale: Scale
    redis: RedisServer = field(init=False)
    kafka: KafkaServer = field(init=False)
    settings: Settings = field(init=False)
    indexer: RoleProcess | None = None
    searcher: RoleProcess | None = None
    restarts: int = 0
    figures: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        libs = ensure_jars(cache_dir(Settings()))
        self.redis = RedisServer(self.root / "redis", free_port())
        self.kafka = KafkaServer(self.root / "kafka", *free_ports(2), libs)
        self.store = self.root / "store"
        self.settings = Settings(kafka=self.kafka.bootstrap, redis=self.redis.url,
                                 store=self.store, kafka_options={}, home=self.root / "home")
        self.logs = self.root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    # servers ----------------------------------------------------------------------------------

    def start_servers(self) -> None:
        """Start Redis and the broker and wait until both answer."""
        self.redis.start(die_with_parent=True)
        self.kafka.start(die_with_parent=True)
        self.redis.wait_healthy(REDIS_START_TIMEOUT_S)
        self.kafka.wait_healthy(KAFKA_START_TIMEOUT_S)

    def stop_servers(self) -> None:
        """Stop both servers, resuming them first if a failed test left them stopped."""
        for server in (self.redis, self.kafka):
            if server.pid is not None:
                os.killpg(server.pid, signal.SIGCONT)
            server.stop()

    def kill_and_restart(self, server: ServerProcess, down_s: float = 0.0) -> dict[str, set[int]]:
        """SIGKILL a server, leave it down `down_s` seconds, start it again on its ports.

        Returns the /readyz statuses each role answered while the server was down.
        """
        _signal_group(server, signal.SIGKILL)
        wait_until(lambda: not server.running(), timeout=30, what=f"{server.name} to die")
        seen = self.watch(down_s)
        server.start(die_with_parent=True)
        timeout = KAFKA_START_TIMEOUT_S if server is self.kafka else REDIS_START_TIMEOUT_S
        server.wait_healthy(timeout)
        return seen

    def freeze(self, server: ServerProcess, seconds: float) -> dict[str, set[int]]:
        """SIGSTOP a server for `seconds`, then SIGCONT it; the /readyz statuses seen meanwhile."""
        _signal_group(server, signal.SIGSTOP)
        try:
            return self.watch(seconds)
        finally:
            _signal_group(server, signal.SIGCONT)

    def watch(self, seconds: float) -> dict[str, set[int]]:
        """Probe every role's /readyz for `seconds`; the statuses each answered (0: no answer)."""
        seen: dict[str, set[int]] = {r.role: set() for r in self.roles()}
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for role in self.roles():
                got = role.readiness()
                seen[role.role].add(0 if got is None else got[0])
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        return seen

    # roles ------------------------------------------------------------------------------------

    def start_indexer(self) -> RoleProcess:
        """Start the collection's indexer with short group timeouts and compaction off."""
        fast = self.settings.model_copy(update={"kafka_options": dict(FAST_GROUP)})
        self.restarts += 1
        self.indexer = RoleProcess(fast, "indexer", self.spec.name, self.logs,
                                   str(self.restarts), "--compact-interval", "0")
        return self.indexer

    def start_searcher(self) -> RoleProcess:
        """Start a searcher of the collection."""
        self.restarts += 1
        self.searcher = RoleProcess(self.settings, "searcher", self.spec.name, self.logs,
                                    str(self.restarts))
        return self.searcher

    def roles(self) -> list[RoleProcess]:
        """The role processes started and not replaced."""
        return [r for r in (self.indexer, self.searcher) if r is not None]

    def revive(self) -> list[str]:
        """Start again any role that exited (a previous scenario failed); name those restarted."""
        dead = [r for r in self.roles() if not r.alive()]
        for role in dead:
            (self.start_indexer if role.role == "indexer" else self.start_searcher)()
        for role in self.roles():
            role.wait_ready()
        return [f"{r.role} (exit {r.proc.poll()})" for r in dead]

    def stop_roles(self) -> dict[str, int]:
        """SIGTERM every role; their exit statuses."""
        return {r.role: r.stop() for r in self.roles()}

    def assert_roles_alive(self) -> None:
        """No role process exited."""
        for role in self.roles():
            assert role.alive(), (f"the {role.role} exited with status {role.proc.poll()}; "
                                  f"log tail:\n{role.tail()}")

    def wait_ready(self) -> float:
        """Wait until every role's /readyz is 200; seconds waited."""
        started = time.monotonic()
        for role in self.roles():
            role.wait_ready(self.scale.recover_s)
        return time.monotonic() - started

    def record(self, key: str, value: float) -> None:
        """Keep a figure for bench/faults.py (written when STREAMVEC_FAULTS_FIGURES is set)."""
        self.figures[key] = round(float(value), 3)
        path = os.environ.get(FIGURES_ENV)
        if path:
            Path(path).write_text(json.dumps(self.figures, indent=1, sort_keys=True) + "\n")


# checks ---------------------------------------------------------------------------------------


def wait_fresh(client: Client, name: str, snap: Snapshot, timeout: float) -> None:
    """Wait until a searcher answers a session query at every acknowledged offset."""
    probe = next(iter(snap.live().values()))

    def answered() -> bool:
        try:
            client.search(name, probe, k=1, consistency={"session": snap.offsets},
                          timeout=min(CHECK_QUERY_TIMEOUT_S, timeout))
        except Exception:  # noqa: BLE001 - not yet: the searcher or Redis is still coming back
            return False
        return True

    wait_until(answered, timeout=timeout, what=f"a session answer at offsets {snap.offsets}",
               interval=0.2)


def _search(client: Client, name: str, snap: Snapshot, ids: list[str],
            vectors: dict[str, np.ndarray], k: int) -> list[list[tuple[str | None, float]]]:
    rows: list[list[tuple[str | None, float]]] = []
    for at in range(0, len(ids), CHECK_BATCH):
        chunk = ids[at:at + CHECK_BATCH]
        got = client.search(name, np.stack([vectors[i] for i in chunk]), k=k,
                            consistency={"session": snap.offsets},
                            timeout=CHECK_QUERY_TIMEOUT_S)
        rows += [list(zip(got.ids[r].tolist(), got.scores[r].tolist(), strict=True))
                 for r in range(len(chunk))]
    return rows


def search_problems(client: Client, name: str, snap: Snapshot) -> tuple[int, int, list[str]]:
    """Find every live row by its vector (once, first); no deleted or superseded row may return.

    Returns (live rows checked, live rows not found, every problem seen).
    """
    live, deleted, overwritten = snap.live(), snap.deleted(), snap.overwritten()
    problems: list[str] = []
    lost = 0
    ids = sorted(live)
    for key, row in zip(ids, _search(client, name, snap, ids, live, 3), strict=True):
        hits = [h for h, _ in row]
        lost += key not in hits
        if not hits or hits[0] != key or row[0][1] > 1e-3 or hits.count(key) != 1:
            problems.append(f"live {key}: got {row}")
    gone = sorted(deleted)
    for key, row in zip(gone, _search(client, name, snap, gone, deleted, 3), strict=True):
        if key in [h for h, _ in row]:
            problems.append(f"deleted {key} returned: {row}")
    old = sorted(overwritten)
    for key, row in zip(old, _search(client, name, snap, old, overwritten, 3), strict=True):
        if any(h == key and score <= 1e-3 for h, score in row):
            problems.append(f"superseded vector of {key} returned: {row}")
    return len(ids), lost, problems


def assert_registered(settings: Settings, spec: CollectionSpec, snap: Snapshot,
                      timeout: float) -> None:
    """Checkpoints reach the log end; segments cover [0, C[p]) once; they hold the live rows."""
    registry = Registry(settings.redis_client(), spec.name)
    ends = log_ends(settings, spec.collection.topic)
    wait_until(lambda: all(registry.checkpoint(p) == end for p, end in ends.items()),
               timeout=timeout, what=f"checkpoints to reach the log ends {ends}")
    for p in range(spec.partitions):
        spans = sorted((r.start_offset, r.end_offset) for r in registry.segments(p))
        edges = [0] + [end for _, end in spans]
        starts = [start for start, _ in spans] + [registry.checkpoint(p)]
        assert edges == starts, f"partition {p}: segments {spans} do not tile [0, C[p])"
    assert_registered_rows(registry, settings, snap.live(), frozenset(snap.uncertain))
