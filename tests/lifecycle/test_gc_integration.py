"""Garbage collection of the segment store, with real Redis and Kafka."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from indexer.registry import GenerationInfo, Registry, SegmentRecord
from indexer.segment import parse_segment_id
from indexer.store import SegmentStore
from ingest import admin, audit, catalog
from ingest.errors import CollectionExists, CollectionNotFound
from ingest.producer import Producer
from ingest.spec import CollectionSpec
from lifecycle import collections, gc, snapshots
from lifecycle.errors import LifecycleBusy, RegistryUnreadable
from lifecycle.lock import LifecycleLock
from searcher.client import Client
from streamvec.commands import main
from streamvec.settings import Settings
from tests.support.cli import argv
from tests.support.segments import write_offsets
from tests.support.stack import SearcherThread, exact_top_k, serving
from tests.support.workers import Workload, wait_fully_indexed

pytestmark = pytest.mark.integration

DIM = 4
OLD = time.time() - 3600  # an hour ago: past the default grace of ten minutes


def cli(settings, *args: str) -> int:
    """Run the `streamvec` command against the test's servers and store."""
    return main(argv(settings, "--actor", "gc-user", *args))


def write(root: Path, name: str, gen: int, start: int, end: int) -> SegmentRecord:
    """A segment folder of partition 0 in generation `gen`, one row per offset."""
    return write_offsets(SegmentStore(root), name, gen, start, end)


def age(path: Path) -> None:
    """Make a folder (and what is inside, one level deep) an hour old."""
    for p in [*(path.iterdir() if path.is_dir() else ()), path]:
        os.utime(p, (OLD, OLD))


def tree_bytes(path: Path) -> int:
    """Bytes of a file, or of every file below a folder."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() \
        else path.stat().st_size


def test_gc_removes_only_what_nothing_protects(settings, collection_name, redis_client):
    name = collection_name
    root = settings.store
    admin.create_collection(settings, CollectionSpec(name, dim=DIM, partitions=1))
    registry = Registry(redis_client, name)
    epoch = registry.claim(0)
    a, b = write(root, name, 0, 0, 10), write(root, name, 0, 10, 20)
    for rec in (a, b):
        assert registry.register(rec, epoch).ok
        SegmentStore(root).mark_registered(rec.path)
    snapshots.create(settings, name, label="s1")
    merged = write(root, name, 0, 0, 20)
    registry.swap([a, b], [merged], kind="compacted")  # a and b now live only in s1
    # Released an hour ago: past the grace, which counts from the release.
    redis_client.hset(registry.released_key, mapping={a.path: OLD, b.path: OLD})
    SegmentStore(root).mark_registered(merged.path)
    stale, young = write(root, name, 0, 0, 5), write(root, name, 0, 5, 10)
    pending = write(root, name, 0, 20, 30)
    for gen in (1, 2, 3, 4):
        registry.record_generation(GenerationInfo(gen, "Flat", time.time()))
    retired, kept_gen = write(root, name, 1, 0, 20), write(root, name, 3, 0, 20)
    part = root / name / "g0000" / "p0000"
    (part / ".tmp-old").mkdir()
    (part / ".tmp-old" / "index.faiss").write_bytes(b"x" * 100)
    (part / ".tmp-new").mkdir()
    orphan = part / "p0000-000000000030-000000000040.registered"
    orphan.write_text("{}")
    (root / name / "notes.txt").write_text("kept: not ours to judge")
    for rec in (a, b, merged, stale, pending, retired, kept_gen):
        age(root / rec.path)
    for path in (part / ".tmp-old", orphan, root / name / "notes.txt"):
        age(path)

    gone = {stale.path, retired.path, f"{name}/g0000/p0000/.tmp-old", _rel(root, orphan)}
    freed = sum(tree_bytes(root / p) for p in gone)
    dry = gc.collect(settings, name, dry_run=True)
    assert set(dry.removed) == gone and dry.bytes_freed == freed
    assert all((root / p).exists() for p in gone)
    counts = {"referenced": 3, "young": 2, "pending": 1, "generation": 1, "unknown": 1}
    assert dict(dry.kept) == counts
    assert audit.read(redis_client, 1, collection=name)[0].action == "snapshot.create"

    report = gc.collect(settings.model_copy(update={"actor": "gina"}), name)
    assert set(report.removed) == gone and report.bytes_freed == freed
    assert not any((root / p).exists() for p in gone)
    assert dict(report.kept) == counts
    for rec in (a, b, merged, young, pending, kept_gen):
        assert (root / rec.path).is_dir(), rec.path
    entry = audit.read(redis_client, 1, collection=name)[0]
    assert (entry.action, entry.actor, entry.details) == ("gc.run", "gina", {
        "collections": 1, "removed": 4, "bytes_freed": freed, "dry_run": False,
        "kept": counts, "removed_by": {"orphan-marker": 1, "temp": 1, "unreferenced": 2},
        "skipped": []})

    snapshots.delete(settings, name, "s1")  # now nothing references a and b
    markers = [Path(str(root / rec.path) + ".registered") for rec in (a, b)]
    assert all(m.is_file() for m in markers)
    freed = sum(tree_bytes(root / rec.path) for rec in (a, b, kept_gen)) + sum(
        m.stat().st_size for m in markers)
    report = gc.collect(settings, name, keep_generations=0)
    assert set(report.removed) == {a.path, b.path, kept_gen.path}
    assert report.bytes_freed == freed
    assert not any(m.exists() for m in markers)
    assert dict(report.kept) == {"referenced": 1, "young": 2, "pending": 1, "unknown": 1}
    assert sorted(p.name for p in part.iterdir()) == [
        ".tmp-new", merged.segment_id, merged.segment_id + ".registered", young.segment_id,
        pending.segment_id]


def test_drop_keeps_what_a_restored_collection_references(settings, collection_name):
    client = Client(settings=settings)
    workload = Workload(8, np.random.default_rng(51))
    queries = np.random.default_rng(52).standard_normal((6, 8)).astype(np.float32)
    restored = f"{collection_name}-r"
    root = settings.store
    with serving(settings, collection_name, dim=8, partitions=2, seal_rows=120,
                 seal_seconds=0.2) as spec:
        with Producer(spec.name, settings=settings) as producer:
            workload.send_round(producer, 300, id_space=200)
        wait_fully_indexed(settings, spec.name, spec.collection.topic, timeout=30)
        then = workload.live()
        snapshots.create(settings, spec.name)
        snapshots.restore(settings, spec.name, restored)
        with Producer(spec.name, settings=settings) as producer:
            workload.send_round(producer, 300, id_space=200)
        wait_fully_indexed(settings, spec.name, spec.collection.topic, timeout=30)
    kept = {r.path for r in Registry(settings.redis_client(), restored).segments()}
    later = {r.path for r in Registry(settings.redis_client(), spec.name).segments()} - kept
    assert kept and later

    collections.drop_collection(settings.model_copy(update={"actor": "dave"}), spec.name)
    left = {_rel(root, p) for p in (root / spec.name).rglob("*")}
    folders = {p for p in left if is_segment_folder(p) and not p.endswith(".registered")}
    assert folders == kept
    assert {p for p in left if p.endswith(".registered")} == {p + ".registered" for p in kept}
    assert not any((root / p).exists() for p in later)

    searcher = SearcherThread(settings, restored)
    try:
        got = client.search(restored, queries, k=10)
        assert [list(row) for row in got.ids] == exact_top_k(then, queries, 10)[0]
        found = client.search(restored, queries[0], k=1000)
        assert {h for h in found.ids[0] if h is not None} == set(then)
    finally:
        searcher.stop()
        client.close()
    entries = audit.read(settings.redis_client(), 1, collection=spec.name)
    assert [(e.action, e.actor, e.details) for e in entries] == [
        ("collection.drop", "dave", {"topics": [spec.collection.topic,
                                                spec.collection.dlq_topic]})]
    # A new collection of the dropped name would take the kept folders for its own offsets.
    with pytest.raises(CollectionExists, match=f"still holds {len(kept)} segment folder"):
        collections.create_collection(settings, spec)
    assert collections.create_collection(settings, spec, adopt_store=True)


def test_dropped_folders_go_and_busy_collections_are_skipped(settings, collection_name,
                                                             redis_client, capsys):
    root = settings.store
    gone = f"{collection_name}-gone"
    old = write(root, gone, 0, 0, 10)
    SegmentStore(root).mark_registered(old.path)
    age(root / old.path)
    admin.create_collection(settings, CollectionSpec(collection_name, dim=DIM, partitions=1))
    busy = write(root, collection_name, 1, 0, 10)  # a generation nothing records
    age(root / busy.path)

    with LifecycleLock(redis_client, collection_name, "compact"):
        with pytest.raises(LifecycleBusy, match="held by a running compact"):
            gc.collect(settings, collection_name)
        assert cli(settings, "gc", "--collection", collection_name) == 4  # the lock is held
        assert "held by a running compact" in capsys.readouterr().err
        assert cli(settings, "gc", "--dry-run", "--json", "--no-progress") == 0
        dry = json.loads(capsys.readouterr().out)
        assert (dry["paths"], dry["removed_by"], dry["skipped"], dry["collections"]) == (
            [old.path], {"dropped": 1}, [collection_name], [gone])
        assert (root / old.path).is_dir()
        report = gc.collect(settings)
    assert report.removed == [old.path] and report.skipped == [collection_name]
    assert not (root / gone).exists()  # emptied folders of a dropped collection go too
    assert (root / busy.path).is_dir()

    assert cli(settings, "gc", "--collection", collection_name, "--grace", "0",
               "--no-progress") == 0
    out = capsys.readouterr().out
    assert out.startswith("removed 1 entries") and not (root / busy.path).exists()
    with pytest.raises(CollectionNotFound, match="has no folder in the segment store"):
        gc.collect(settings, f"{collection_name}-nope")
    assert cli(settings, "gc", "--collection", f"{collection_name}-nope") == 3  # not found
    assert f"collection '{collection_name}-nope' does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli(settings, "gc", "--grace", "-1")
    assert "must be >= 0, got -1" in capsys.readouterr().err
    entry = audit.read(redis_client, 1, collection=collection_name)[0]
    assert (entry.action, entry.actor, entry.details["removed_by"]) == (
        "gc.run", "gc-user", {"unreferenced": 1})


def is_segment_folder(rel: str) -> bool:
    """Whether a store-relative path ends in a segment id (a folder, not its marker)."""
    try:
        parse_segment_id(rel.rsplit("/", 1)[-1])
    except ValueError:
        return False
    return True


def _rel(root: Path, path: Path) -> str:
    """A path relative to the store root, as the registry writes it."""
    return path.relative_to(root).as_posix()


def test_grace_counts_from_when_a_swap_released_a_folder_not_from_its_mtime(
        redis_server, collection_name, tmp_path) -> None:
    settings = Settings(redis=redis_server.url, kafka="127.0.0.1:9", store=tmp_path / "store")
    client = settings.redis_client()
    catalog.claim_spec(client, CollectionSpec(collection_name, dim=DIM, partitions=1))
    registry = Registry(client, collection_name)
    root = Path(settings.store)
    old = write(root, collection_name, 0, 0, 4)
    assert registry.register(old, registry.claim(0)).ok
    age(root / old.path)  # written an hour ago, served until now
    merged = SegmentRecord(old.segment_id, 0, 0, 4, 4, 0, f"{old.path}-merged", "Flat", 1.0)
    (root / merged.path).mkdir()
    registry.swap([old], [merged], kind="compacted")
    released = registry.released()
    assert list(released) == [old.path] and time.time() - released[old.path] < 60

    report = gc.collect(settings, collection_name)
    assert report.removed == [] and report.kept["young"] == 1
    assert (root / old.path).is_dir()

    client.hset(registry.released_key, old.path, time.time() - 3600)  # released an hour ago
    report = gc.collect(settings, collection_name)
    assert report.removed == [old.path] and not (root / old.path).exists()
    assert registry.released() == {}


def test_a_malformed_record_protects_its_path_and_blocks_only_its_own_collection(
        redis_server, collection_name, tmp_path) -> None:
    settings = Settings(redis=redis_server.url, kafka="127.0.0.1:9", store=tmp_path / "store")
    client = settings.redis_client()
    other = f"{collection_name}-other"
    for name in (collection_name, other):
        catalog.claim_spec(client, CollectionSpec(name, dim=DIM, partitions=1))
    root = Path(settings.store)
    named, lost = write(root, collection_name, 0, 0, 4), write(root, collection_name, 0, 4, 8)
    for rec in (named, lost):
        age(root / rec.path)
    own, theirs = Registry(client, collection_name), Registry(client, other)
    bad_path = json.dumps({**json.loads(named.to_json()), "rows": "four"})
    client.hset(own.segments_key, named.segment_id, bad_path)
    client.hset(own.ckpt_key, "0", 8)  # both ranges were registered once
    client.hset(theirs.segments_key, "p0000-000000000000-000000000001", "{not json")
    try:
        report = gc.collect(settings, collection_name)  # the other's bad record is no obstacle
        assert report.removed == [lost.path] and report.kept["referenced"] == 1
        assert (root / named.path).is_dir()
        client.hset(own.segments_key, "p0000-000000000009-000000000010", "{not json")
        with pytest.raises(RegistryUnreadable, match="registry record "
                           "'p0000-000000000009-000000000010' of .* names no readable path"):
            gc.collect(settings, collection_name)
    finally:
        client.delete(own.segments_key, theirs.segments_key)
        for name in (collection_name, other):
            catalog.forget(client, name)
