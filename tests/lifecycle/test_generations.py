"""Compaction, reindex and generation rollback against a real indexer, registry and store."""

from __future__ import annotations

import numpy as np
import pytest

from indexer.rebuild import plan_rebuild
from indexer.registry import Registry
from indexer.segfolder import load_segment
from indexer.store import SegmentStore
from ingest import admin, audit
from ingest.producer import Producer
from ingest.spec import CollectionSpec
from lifecycle import compaction, generations
from lifecycle.errors import LifecycleBusy
from lifecycle.lock import LifecycleLock
from tests.support.stack import IndexerThread
from tests.support.workers import Workload, assert_state_matches, wait_fully_indexed

DIM = 8
TIMEOUT_S = 60.0

pytestmark = pytest.mark.integration


@pytest.fixture
def indexed(settings, collection_name):
    """A 2-partition Flat collection with many small segments, deletes and overwrites."""
    spec = CollectionSpec(collection_name, dim=DIM, partitions=2, index="Flat", seal_rows=40,
                          seal_seconds=0.2)
    admin.create_collection(settings, spec)
    workload = Workload(DIM, np.random.default_rng(11))
    indexer = IndexerThread(settings, spec.name)
    try:
        with Producer(spec.name, settings=settings) as producer:
            for _ in range(6):
                workload.send_round(producer, 120, id_space=300)
                producer.flush()
        wait_fully_indexed(settings, spec.name, spec.collection.topic, TIMEOUT_S)
    finally:
        indexer.stop()
    yield spec, workload


def _registered_state(settings, name: str) -> tuple[int, dict[int, int]]:
    registry = Registry(settings.redis_client(), name)
    records = registry.segments()
    counts: dict[int, int] = {}
    for rec in records:
        counts[rec.partition] = counts.get(rec.partition, 0) + 1
    return sum(r.rows for r in records), counts


def test_compaction_reaches_the_policy_target_and_keeps_the_state(settings, indexed) -> None:
    spec, workload = indexed
    registry = Registry(settings.redis_client(), spec.name)
    before = registry.segments()
    checkpoints = registry.checkpoints()
    policy = compaction.CompactionPolicy(max_rows=200, max_segments=2)
    target = policy.target(before)
    assert any(n > target[p] for p, n in _registered_state(settings, spec.name)[1].items())

    report = compaction.compact(settings, spec.name, policy)

    assert _registered_state(settings, spec.name)[1] == target
    assert report.segments_before == len(before)
    assert report.segments_after == sum(target.values())
    assert report.rows_out < report.rows_in  # overwritten and deleted rows were purged
    assert registry.checkpoints() == checkpoints
    assert_state_matches(settings, spec.name, workload)
    # Each merged folder holds no hidden row: its rows are all visible.
    for rec in registry.segments():
        if rec.segment_id in report.written:
            seg = load_segment(settings.store / rec.path)
            assert len(set(seg.ids.tolist())) == seg.manifest.rows
    # The store alone still yields the same coverage: merged inputs are superseded, not gaps.
    plan = plan_rebuild(SegmentStore(settings.store), spec.name, registry.active_generation())
    assert plan.checkpoints == checkpoints
    assert {r.segment_id for r in plan.records} == {r.segment_id for r in registry.segments()}
    entry = audit.read(settings.redis_client(), 1, collection=spec.name)[-1]
    assert (entry.action, entry.details["written"]) == ("compaction.run", list(report.written))


def test_reindex_switches_generation_and_rollback_reuses_the_old_folders(settings,
                                                                          indexed) -> None:
    spec, workload = indexed
    registry = Registry(settings.redis_client(), spec.name)
    before = {r.segment_id: r for r in registry.segments()}

    report = generations.reindex(settings, spec.name, "HNSW8")

    after = {r.segment_id: r for r in registry.segments()}
    assert set(after) == set(before)
    assert {r.generation for r in after.values()} == {1}
    assert {r.factory for r in after.values() if r.rows} == {"HNSW8"}
    assert (report.generation, report.previous, report.built, report.reused) == (
        1, 0, len(before), 0)
    assert registry.active_generation() == 1
    assert_state_matches(settings, spec.name, workload)
    gens = registry.generations()
    assert {g: (i.index, i.state) for g, i in gens.items()} == {
        0: ("Flat", "retired"), 1: ("HNSW8", "active")}

    back = generations.rollback(settings, spec.name)

    assert (back.generation, back.built, back.reused) == (0, 0, len(before))
    assert {r.segment_id: r.path for r in registry.segments()} == {
        sid: r.path for sid, r in before.items()}
    assert registry.active_generation() == 0
    actions = [e.action for e in audit.read(settings.redis_client(), 2, collection=spec.name)]
    assert actions == ["generation.reindex", "generation.rollback"]


def test_new_segments_after_a_switch_go_into_the_new_generation(settings, indexed) -> None:
    spec, workload = indexed
    generations.reindex(settings, spec.name, "HNSW8")
    indexer = IndexerThread(settings, spec.name)
    try:
        with Producer(spec.name, settings=settings) as producer:
            workload.send_round(producer, 100, id_space=300)
            producer.flush()
        wait_fully_indexed(settings, spec.name, spec.collection.topic, TIMEOUT_S)
    finally:
        indexer.stop()
    records = Registry(settings.redis_client(), spec.name).segments()
    assert {r.generation for r in records} == {1}
    assert {r.factory for r in records if r.rows} == {"HNSW8"}  # no rows: always Flat
    assert_state_matches(settings, spec.name, workload)


def test_lifecycle_actions_exclude_each_other_and_bad_specs_are_refused(settings,
                                                                        indexed) -> None:
    spec, _ = indexed
    with LifecycleLock(settings.redis_client(), spec.name, "reindex"):
        with pytest.raises(LifecycleBusy, match="held by a running reindex"):
            compaction.compact(settings, spec.name, compaction.CompactionPolicy(100, 1))
    with pytest.raises(generations.GenerationError, match="cannot be made"):
        generations.reindex(settings, spec.name, "NoSuchIndex17")
    with pytest.raises(generations.GenerationError, match="no generation before 0"):
        generations.rollback(settings, spec.name)
