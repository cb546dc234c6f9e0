"""Nothing lost, nothing twice: indexer workers killed at every step, and a rebalance."""

from __future__ import annotations

import numpy as np
import pytest

from indexer.rebuild import rebuild
from indexer.registry import Registry
from indexer.store import SegmentStore
from ingest import admin
from ingest.producer import Producer
from ingest.spec import CollectionSpec
from tests.support.polling import wait_until
from tests.support.workers import (
    Workload,
    assert_state_matches,
    log_ends,
    spawn_worker,
    wait_fully_indexed,
)

pytestmark = pytest.mark.integration

ROUNDS = 10
ROWS_PER_ROUND = 20_000  # 200k upserts in all, plus deletes and re-upserts


@pytest.fixture
def collection(settings, collection_name) -> CollectionSpec:
    spec = CollectionSpec(collection_name, dim=8, partitions=4, seal_rows=6000, seal_seconds=0.5)
    admin.create_collection(settings, spec)
    return spec


def registry_version(settings, name: str) -> int:
    return Registry(settings.redis_client(), name).version()


def test_kill_9_at_every_step_loses_nothing_and_duplicates_nothing(settings, collection,
                                                                    tmp_path):
    name = collection.name
    # Each armed point kills a worker once it is reached: during a build, between snapshot
    # and registration, between registration and the offset commit, and after the commit.
    armed = iter(["build:2", "after_snapshot:2", "after_register:1", "after_commit:2",
                  "after_snapshot:1"])
    fleet = Fleet(settings, name, tmp_path, armed)
    workload = Workload(collection.dim, np.random.default_rng(11))
    with Producer(name, settings=settings) as producer:
        for round_no in range(ROUNDS):
            workload.send_round(producer, ROWS_PER_ROUND, id_space=60_000)
            producer.flush()
            before = registry_version(settings, name)
            wait_until(lambda b=before: fleet.restart_dead()
                       or registry_version(settings, name) > b, timeout=120,
                       what=f"a registration after round {round_no}")
            if round_no % 3 == 1:  # plus plain SIGKILLs at whatever moment this is
                fleet.workers[round_no % 2].kill()
    ends = log_ends(settings, collection.collection.topic)
    registry = Registry(settings.redis_client(), name)
    wait_until(lambda: fleet.restart_dead() or all(registry.checkpoint(p) == e
                                                  for p, e in ends.items()),
               timeout=240, what=f"checkpoints to reach {ends}")
    fleet.stop_all()
    assert fleet.deaths >= 5, f"only {fleet.deaths} workers died"
    assert_state_matches(settings, name, workload)

    # The registry rebuilt from the segment store alone equals the one the workers wrote.
    before = (registry.checkpoints(), registry.segments())
    rebuild(settings.redis_client(), SegmentStore(settings.store), name)
    assert (registry.checkpoints(), registry.segments()) == before


@pytest.mark.redis_cluster
def test_kill_9_on_a_redis_cluster(settings, collection, tmp_path):
    """The same kills with every worker on a three-master Redis Cluster."""
    assert settings.redis_url.startswith("redis+cluster://")
    test_kill_9_at_every_step_loses_nothing_and_duplicates_nothing(settings, collection, tmp_path)


def test_rebalance_with_a_third_worker_joining_and_leaving(settings, collection, tmp_path):
    name = collection.name
    workers = [spawn_worker(settings, name, tmp_path, tag=str(i)) for i in range(2)]
    workload = Workload(collection.dim, np.random.default_rng(12))
    third = None
    with Producer(name, settings=settings) as producer:
        for round_no in range(ROUNDS):
            workload.send_round(producer, ROWS_PER_ROUND, id_space=60_000)
            producer.flush()
            before = registry_version(settings, name)
            wait_until(lambda b=before: registry_version(settings, name) > b, timeout=120,
                       what=f"a registration after round {round_no}")
            if round_no == 2:
                third = spawn_worker(settings, name, tmp_path, tag="third")
                wait_until(lambda w=third: "taken over" in w.log.read_text(), timeout=60,
                           what="the third worker to own a partition")
            if round_no == 6:
                assert third.terminate() == 0, third.log.read_text()[-3000:]
    wait_fully_indexed(settings, name, collection.collection.topic, timeout=240)
    for w in workers:
        assert w.terminate() == 0, w.log.read_text()[-3000:]
    assert_state_matches(settings, name, workload)


class Fleet:
    """Two worker processes kept alive: a dead one is counted and replaced."""

    def __init__(self, settings, name, log_dir, armed) -> None:
        self.settings, self.name, self.log_dir, self.armed = settings, name, log_dir, armed
        self.deaths = 0
        self.workers = [self._spawn(i) for i in range(2)]

    def _spawn(self, i: int):
        crash_at = next(self.armed, None)
        tag = f"{i}-{self.deaths}-{crash_at or 'plain'}".replace(":", "_")
        return spawn_worker(self.settings, self.name, self.log_dir, tag=tag, crash_at=crash_at)

    def restart_dead(self) -> bool:
        """Replace dead workers; always False so it can prefix a polled condition."""
        for i, w in enumerate(self.workers):
            if not w.alive():
                self.deaths += 1
                self.workers[i] = self._spawn(i)
        return False

    def stop_all(self) -> None:
        """SIGTERM every worker and require a clean exit."""
        for w in self.workers:
            assert w.terminate() == 0, w.log.read_text()[-3000:]
