"""Snapshots mirrored to a real S3-compatible server (S3Proxy): push, fetch, refuse, serve."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from indexer import segfolder
from indexer.errors import CorruptSegment
from indexer.registry import Registry, SegmentRecord
from indexer.segment import SealedRows
from indexer.store import SegmentStore, is_registered, rel_path
from ingest import admin
from ingest.producer import Producer
from ingest.spec import CollectionSpec
from lifecycle import compaction, generations
from searcher import search, segments
from searcher.engine import Engine
from searcher.metrics import SearcherMetrics
from searcher.query import MAX_K, QueryAnswer, QueryRequest
from streamvec.settings import Settings
from tests.support.oracle import exact_scores
from tests.support.stack import IndexerThread
from tests.support.workers import Workload, assert_state_matches, log_ends, wait_fully_indexed

pytestmark = pytest.mark.integration

DIM = 8
INDEX_TIMEOUT_S = 60.0


@pytest.fixture
def mirrored(settings: Settings, s3_server, collection_name: str) -> Settings:
    """The test's settings with its snapshots mirrored under a prefix of its own in the bucket."""
    return settings.model_copy(update={"store_url": s3_server.url(collection_name),
                                       "store_options": s3_server.storage_options})


def elsewhere(settings: Settings, folder: Path) -> Settings:
    """The same object store seen from another machine: a local segment store of its own."""
    folder.mkdir()
    return settings.model_copy(update={"store": folder})


def small_segment(root: Path, collection: str) -> segfolder.SegmentManifest:
    """One Flat segment of 30 seeded rows in partition 0, written to the local store only."""
    rng = np.random.default_rng(5)
    sealed = SealedRows(
        partition=0, start_offset=0, end_offset=30,
        ids=np.array([f"row-{i}".encode() for i in range(30)]),
        vectors=rng.standard_normal((30, DIM)).astype(np.float32),
        offsets=np.arange(30, dtype=np.int64), event_time_ms=np.arange(30, dtype=np.int64),
        metadata=[b'{"n": 1}'] * 30, deleted_ids=np.array([b"gone"]))
    index = faiss.IndexFlatL2(DIM)
    index.add(sealed.vectors)
    return SegmentStore(root).write(collection, 0, sealed, index, "Flat", "l2", {})


def index_some(settings: Settings, name: str) -> Workload:
    """Create a 2-partition collection, index 3 rounds of upserts and deletes, stop the worker."""
    spec = CollectionSpec(name, dim=DIM, partitions=2, index="Flat", seal_rows=60,
                          seal_seconds=0.2)
    admin.create_collection(settings, spec)
    workload = Workload(DIM, np.random.default_rng(31))
    indexer = IndexerThread(settings, name)
    try:
        with Producer(name, settings=settings) as producer:
            for _ in range(3):
                workload.send_round(producer, 80, id_space=150)
            producer.flush()
        wait_fully_indexed(settings, name, spec.collection.topic, INDEX_TIMEOUT_S)
    finally:
        indexer.stop()  # joined: every marker it wrote is pushed by now
    return workload


def test_push_and_fetch_round_trip_byte_identical(mirrored, tmp_path, collection_name) -> None:
    manifest = small_segment(mirrored.store, collection_name)
    store = SegmentStore.from_settings(mirrored)
    objects = store.remote
    rel = rel_path(manifest)
    local = mirrored.store / rel
    assert store.mirror(rel) is True
    assert store.mirror(rel) is False
    expected = {p.name: p.read_bytes() for p in local.iterdir()}
    assert {n: objects.fs.cat_file(f"{objects.key(rel)}/{n}") for n in expected} == expected
    assert store.list_remote(collection_name, 0) == [rel]
    assert objects.exists(f"{rel}/manifest.json") and not objects.exists(rel + ".registered")

    other = SegmentStore.from_settings(elsewhere(mirrored, tmp_path / "other"))
    fetched = other.fetch(rel)
    assert fetched == other.root / rel
    assert {p.name: p.read_bytes() for p in fetched.iterdir()} == expected
    assert segfolder.verify(fetched) == manifest  # every sha256 checked again
    assert sorted(p.name for p in fetched.parent.iterdir()) == [manifest.segment_id]


def test_a_tampered_remote_object_is_refused_and_nothing_is_installed(
        mirrored, tmp_path, collection_name) -> None:
    manifest = small_segment(mirrored.store, collection_name)
    rel = rel_path(manifest)
    objects = SegmentStore.from_settings(mirrored).remote
    assert SegmentStore(mirrored.store, objects).mirror(rel)
    key = f"{objects.key(rel)}/vectors.npy"
    data = bytearray(objects.fs.cat_file(key))
    data[-1] ^= 0x01  # one bit of the last vector: same size, different sha256
    objects.fs.pipe_file(key, bytes(data))

    reader = SegmentStore.from_settings(elsewhere(mirrored, tmp_path / "reader"))
    with pytest.raises(CorruptSegment) as refused:
        reader.fetch(rel)
    assert (refused.value.file, refused.value.reason) == (
        "vectors.npy", "sha256 does not match the manifest")
    assert str(refused.value).startswith(f"segment {mirrored.store_url}/{rel} is corrupt")
    record = SegmentRecord.from_manifest(manifest)
    with pytest.raises(CorruptSegment):  # a searcher refuses it too
        segments.load(reader, record)
    partition = reader.root / rel.rsplit("/", 1)[0]
    assert [p.name for p in partition.iterdir()] == []  # no folder and no temp left behind

    objects.fs.rm_file(f"{objects.key(rel)}/manifest.json")
    with pytest.raises(CorruptSegment, match="manifest.json: missing .an incomplete upload"):
        reader.fetch(rel)
    assert [p.name for p in partition.iterdir()] == []


def test_an_indexer_pushes_every_segment_and_its_marker(mirrored, collection_name) -> None:
    index_some(mirrored, collection_name)
    records = Registry(mirrored.redis_client(), collection_name).segments()
    assert len(records) >= 4
    store = SegmentStore.from_settings(mirrored)
    objects = store.remote
    assert store.list_remote(collection_name, 0) == [r.path for r in records]
    assert all(objects.exists(r.path + ".registered") for r in records)
    for rec in records:  # the local folder stays the working copy, identical to the remote one
        local = (mirrored.store / rec.path / "manifest.json").read_bytes()
        assert objects.fs.cat_file(f"{objects.key(rec.path)}/manifest.json") == local
        assert is_registered(mirrored.store / rec.path)


def test_a_searcher_with_an_empty_local_folder_serves_from_the_object_store(
        mirrored, tmp_path, collection_name) -> None:
    workload = index_some(mirrored, collection_name)
    records = Registry(mirrored.redis_client(), collection_name).segments()
    searcher = elsewhere(mirrored, tmp_path / "searcher")
    engine = Engine(searcher, collection_name,
                    metrics=SearcherMetrics(CollectorRegistry(), collection_name))
    engine.start()
    try:
        ends = log_ends(mirrored, f"sv.{collection_name}")
        with engine.state.lock:  # everything is sealed, so segments alone answer
            assert {p: engine.state.segments.coverage(p) for p in ends} == ends
        live = workload.live()
        (everything,) = engine.search_batch([QueryRequest(
            "all", collection_name, np.zeros((1, DIM), np.float32), MAX_K)])
        assert isinstance(everything, QueryAnswer), everything
        assert sorted(everything.ids[0]) == sorted(live)
        queries = np.random.default_rng(7).standard_normal((5, DIM)).astype(np.float32)
        (answer,) = engine.search_batch([QueryRequest("top", collection_name, queries, 10)])
        assert isinstance(answer, QueryAnswer), answer
        ids = sorted(live)
        scores = exact_scores(np.stack([live[i] for i in ids]), queries, "l2")
        order = np.argsort(search.cost(scores, "l2"), axis=1, kind="stable")[:, :10]
        assert answer.ids == [[ids[j] for j in row] for row in order]
    finally:
        engine.stop()
    fetched = SegmentStore(searcher.store).list_segments(collection_name, 0)
    assert [p.name for p in fetched] == [r.segment_id for r in records]


def test_registry_rebuild_from_remote_reproduces_the_registry(mirrored, tmp_path,
                                                              collection_name) -> None:
    index_some(mirrored, collection_name)
    registry = Registry(mirrored.redis_client(), collection_name)
    before = (registry.segments(), registry.checkpoints())
    registry.clear()
    fresh = elsewhere(mirrored, tmp_path / "fresh")
    argv = [sys.executable, "-m", "streamvec", "registry", "rebuild", "--collection",
            collection_name, "--from-remote", "--yes"]
    done = subprocess.run(argv, env=fresh.child_env(), capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    n = len(before[0])
    assert (f"from {mirrored.store_url}: {n} folders fetched, 0 already here, "
            f"{n} markers copied") in done.stdout
    assert f"registry of {collection_name} rebuilt: version 1" in done.stdout
    assert (registry.segments(), registry.checkpoints()) == before
    local = SegmentStore(fresh.store).list_segments(collection_name, 0)
    assert [p.name for p in local] == [r.segment_id for r in before[0]]
    assert all(is_registered(p) for p in local)

    plain = elsewhere(mirrored.model_copy(update={"store_url": None}), tmp_path / "plain")
    refused = subprocess.run(argv, env=plain.child_env(), capture_output=True, text=True,
                             timeout=120, check=False)
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        "streamvec: error: --from-remote needs an object store: set STREAMVEC_STORE_URL "
        "(and STREAMVEC_STORE_OPTIONS)")


def test_a_worker_on_another_machine_takes_over_through_the_object_store(
        mirrored, tmp_path, collection_name) -> None:
    workload = index_some(mirrored, collection_name)
    with Producer(collection_name, settings=mirrored) as producer:
        workload.send_round(producer, 40, id_space=150)  # overwrites and deletes sealed rows
        producer.flush()
    # Its hides need the ids of the segments sealed before, which only the object store has.
    second = IndexerThread(elsewhere(mirrored, tmp_path / "second"), collection_name)
    try:
        wait_fully_indexed(mirrored, collection_name, f"sv.{collection_name}", INDEX_TIMEOUT_S)
    finally:
        second.stop()
    records = Registry(mirrored.redis_client(), collection_name).segments()
    reader = elsewhere(mirrored, tmp_path / "reader")
    fetched = SegmentStore.from_settings(reader).fetch_collection(collection_name, 0)
    assert (fetched.fetched, fetched.refused) == ([r.path for r in records], {})
    assert fetched.markers == len(records)
    assert_state_matches(reader, collection_name, workload)


def test_compaction_and_reindex_upload_what_they_register(mirrored, tmp_path,
                                                           collection_name) -> None:
    workload = index_some(mirrored, collection_name)
    compaction.compact(mirrored, collection_name, compaction.CompactionPolicy(max_rows=10_000,
                                                                        max_segments=1))
    generations.reindex(mirrored, collection_name, "HNSW8")
    records = Registry(mirrored.redis_client(), collection_name).segments()
    assert {r.generation for r in records} == {1}
    store = SegmentStore.from_settings(mirrored)
    assert store.list_remote(collection_name, 1) == [r.path for r in records]
    assert all(store.remote.exists(r.path + ".registered") for r in records)
    # Another machine with an empty folder reads exactly the registered state back.
    reader = elsewhere(mirrored, tmp_path / "reader")
    assert_state_matches(reader, collection_name, workload)
