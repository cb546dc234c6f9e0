"""Point-in-time snapshots on real Kafka and Redis: take one, keep writing, restore, search."""

from __future__ import annotations

import json

import numpy as np
import pytest

from indexer.registry import Registry
from indexer.worker import Worker
from ingest import admin, audit, catalog
from ingest.errors import CollectionNotFound, ReadOnlyCollection
from ingest.producer import Producer
from ingest.spec import CollectionSpec
from lifecycle import snapshots
from lifecycle.errors import LifecycleBusy
from lifecycle.lock import LifecycleLock
from lifecycle.snapshots import (
    PointInTimeError,
    RestoreTargetExists,
    SnapshotExists,
    SnapshotNotFound,
)
from searcher.client import Client
from streamvec.commands import main
from tests.support.cli import argv
from tests.support.stack import SearcherThread, exact_top_k, serving
from tests.support.workers import Workload, log_ends, wait_fully_indexed

pytestmark = pytest.mark.integration

DIM = 8


def cli(settings, *args: str) -> int:
    """Run the `streamvec` command against the test's servers and store."""
    return main(argv(settings, "--actor", "cli-user", *args))


def all_ids(client: Client, name: str, query: np.ndarray, **kwargs) -> set[str]:
    """Every visible id of a small collection: one query with k above its row count."""
    found = client.search(name, query, k=1000, **kwargs)
    return {hit for hit in found.ids[0] if hit is not None}


def test_restored_snapshot_answers_as_of_the_snapshot(settings, collection_name):
    client = Client(settings=settings)
    workload = Workload(DIM, np.random.default_rng(41))
    queries = np.random.default_rng(42).standard_normal((12, DIM)).astype(np.float32)
    restored = f"{collection_name}-r"
    alice = settings.model_copy(update={"actor": "alice"})
    with serving(settings, collection_name, dim=DIM, partitions=2, seal_rows=150,
                 seal_seconds=0.2) as spec:
        with Producer(spec.name, settings=settings) as producer:
            workload.send_round(producer, 500, id_space=300)
            producer.flush()
        wait_fully_indexed(settings, spec.name, spec.collection.topic, timeout=30)
        then = workload.live()
        registry = Registry(settings.redis_client(), spec.name)
        pit = snapshots.create(alice, spec.name, label="before")
        assert pit.checkpoints == log_ends(settings, spec.collection.topic)
        assert list(pit.records) == registry.segments()
        assert pit.rows == sum(r.rows for r in registry.segments()) >= len(then)

        with Producer(spec.name, settings=settings) as producer:
            workload.send_round(producer, 500, id_space=300)
            offsets = producer.flush()
        now = workload.live()
        assert set(now) != set(then)

        done = snapshots.restore(alice, spec.name, restored)
        assert done.to_json() == {"collection": restored, "source": spec.name,
                                  "snapshot": "before", "segments": pit.segments,
                                  "rows": pit.rows, "generation": 0, "version": 1}
        copy = Registry(settings.redis_client(), restored)
        assert copy.segments() == list(pit.records)
        assert copy.checkpoints() == pit.checkpoints and copy.active_generation() == 0
        assert catalog.load_spec(settings.redis_client(), restored) == CollectionSpec(
            restored, dim=DIM, partitions=2, index="Flat", seal_rows=150, seal_seconds=0.2,
            restored_from=spec.name)
        # Read-only: a write would never be indexed, so the producer and the indexer refuse.
        with pytest.raises(ReadOnlyCollection, match=(
                f"collection {restored} is read-only: it was restored from a snapshot of "
                f"{spec.name} and nothing indexes what is written to it")):
            Producer(restored, settings=settings)
        with pytest.raises(ReadOnlyCollection, match=f"collection {restored} is read-only"):
            Worker(settings, restored)

        searcher = SearcherThread(settings, restored)
        try:
            got = client.search(restored, queries, k=10)
            want_ids, want_scores = exact_top_k(then, queries, 10)
            assert [list(row) for row in got.ids] == want_ids
            np.testing.assert_allclose(got.scores, want_scores, rtol=1e-5, atol=1e-5)
            assert all_ids(client, restored, queries[0]) == set(then)
        finally:
            searcher.stop()

        got = client.search(spec.name, queries, k=10, consistency={"session": offsets})
        assert [list(row) for row in got.ids] == exact_top_k(now, queries, 10)[0]
        assert all_ids(client, spec.name, queries[0], consistency={"session": offsets}) \
            == set(now)

    client.close()
    redis_client = settings.redis_client()
    details = {"snapshot": "before", "segments": pit.segments, "rows": pit.rows,
               "version": pit.version, "generation": 0}
    assert [(e.action, e.actor, e.details) for e in audit.read(redis_client, 1,
                                                               collection=spec.name)] == [
        ("snapshot.create", "alice", details)]
    assert [(e.action, e.actor) for e in audit.read(redis_client, 2, collection=restored)] == [
        ("collection.create", "alice"), ("snapshot.restore", "alice")]
    assert audit.read(redis_client, 1, collection=restored)[0].details == {
        "source": spec.name, "snapshot": "before", "segments": pit.segments,
        "rows": pit.rows, "generation": 0}


def test_snapshot_errors_latest_and_delete(settings, collection_name, redis_client):
    spec = CollectionSpec(collection_name, dim=4, partitions=1)
    admin.create_collection(settings, spec)
    name = spec.name
    with pytest.raises(CollectionNotFound, match="does not exist"):
        snapshots.create(settings, f"{name}-missing")
    with pytest.raises(PointInTimeError, match=r"invalid snapshot label 'latest'"):
        snapshots.create(settings, name, label="latest")
    with pytest.raises(SnapshotNotFound, match=f"{name} has no snapshots"):
        snapshots.restore(settings, name, f"{name}-r")
    first = snapshots.create(settings, name, label="one")
    second = snapshots.create(settings, name)
    assert (first.segments, first.rows, first.checkpoints, first.version) == (0, 0, {}, 0)
    with pytest.raises(SnapshotExists, match=f"{name} already has a snapshot 'one'"):
        snapshots.create(settings, name, label="one")
    assert [p.snapshot_id for p in snapshots.list_snapshots(settings, name)] == [
        "one", second.snapshot_id]
    assert snapshots.get(settings, name).snapshot_id == second.snapshot_id
    with pytest.raises(SnapshotNotFound, match=rf"{name} has no snapshot 'two'; it has "
                                               rf"{second.snapshot_id}, one"):
        snapshots.get(settings, name, "two")

    with LifecycleLock(redis_client, name, "compact"):
        with pytest.raises(LifecycleBusy, match="held by a running compact"):
            snapshots.create(settings, name)
        with pytest.raises(LifecycleBusy, match="held by a running compact"):
            snapshots.restore(settings, name, f"{name}-r")
    snapshots.restore(settings, name, f"{name}-r", "one")
    with pytest.raises(RestoreTargetExists, match=f"collection {name}-r already exists"):
        snapshots.restore(settings, name, f"{name}-r")
    with pytest.raises(RestoreTargetExists, match="onto itself"):
        snapshots.restore(settings, name, name)
    redis_client.set(f"sv:{{{name}-left}}:version", 3)
    with pytest.raises(RestoreTargetExists, match=r"registry keys remain \(version 3\)"):
        snapshots.restore(settings, name, f"{name}-left")
    redis_client.delete(f"sv:{{{name}-left}}:version")

    deleted = snapshots.delete(settings.model_copy(update={"actor": "erin"}), name, "one")
    assert deleted.snapshot_id == "one"
    with pytest.raises(SnapshotNotFound, match="no snapshot 'one'"):
        snapshots.delete(settings, name, "one")
    assert [p.snapshot_id for p in snapshots.list_snapshots(settings, name)] == [
        second.snapshot_id]
    entries = audit.read(redis_client, 10, collection=name)
    assert [(e.action, e.details.get("snapshot")) for e in entries] == [
        ("collection.create", None), ("snapshot.create", "one"),
        ("snapshot.create", second.snapshot_id), ("snapshot.delete", "one")]
    assert entries[-1].actor == "erin" and entries[-1].details == {
        "snapshot": "one", "segments": 0, "rows": 0, "version": 0, "generation": 0}


def test_versioned_targets_must_agree_with_the_model_version(settings, collection_name):
    source = CollectionSpec(f"{collection_name}@v3", dim=4, partitions=1)
    admin.create_collection(settings, source)
    snapshots.create(settings, source.name, label="s")
    with pytest.raises(PointInTimeError, match=rf"cannot restore as {collection_name}-x@v4: the "
                                               r"snapshot's vectors come from model version "
                                               r"'v3', not 'v4'"):
        snapshots.restore(settings, source.name, f"{collection_name}-x@v4")
    snapshots.restore(settings, source.name, f"{collection_name}-x@v3")
    snapshots.restore(settings, source.name, f"{collection_name}-plain")
    client = settings.redis_client()
    assert catalog.load_spec(client, f"{collection_name}-x@v3").model_version == "v3"
    assert catalog.load_spec(client, f"{collection_name}-plain").model_version == "v3"


def test_snapshot_cli(settings, collection_name, redis_client, capsys):
    name = collection_name
    admin.create_collection(settings, CollectionSpec(name, dim=4, partitions=1))
    assert cli(settings, "snapshot", "create", name, "--label", "a", "--json") == 0
    made = json.loads(capsys.readouterr().out)
    assert (made["id"], made["segments"], made["rows"], made["actor"]) == ("a", 0, 0, "cli-user")
    assert cli(settings, "snapshot", "create", name, "--label", "a") == 4  # conflict
    assert f"{name} already has a snapshot 'a'" in capsys.readouterr().err
    assert cli(settings, "snapshot", "list", name, "--json") == 0
    assert [s["id"] for s in json.loads(capsys.readouterr().out)] == ["a"]
    assert cli(settings, "snapshot", "list", name) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[0] == "a"
    assert cli(settings, "snapshot", "restore", name, "--as", f"{name}-r") == 0
    assert f"restored snapshot a of {name} as {name}-r" in capsys.readouterr().out
    assert cli(settings, "snapshot", "restore", name, "--as", f"{name}-r") == 4
    assert f"collection {name}-r already exists" in capsys.readouterr().err
    assert cli(settings, "snapshot", "restore", name, "--as", f"{name}-s", "--snapshot",
               "zz") == 3  # not found
    assert f"{name} has no snapshot 'zz'" in capsys.readouterr().err
    assert cli(settings, "snapshot", "list", f"{name}-nope") == 3
    assert f"collection '{name}-nope' does not exist" in capsys.readouterr().err
    with LifecycleLock(redis_client, name, "reindex"):
        assert cli(settings, "snapshot", "create", name) == 4  # the lock is held
    assert "held by a running reindex" in capsys.readouterr().err
    assert cli(settings, "snapshot", "delete", name, "--snapshot", "a") == 0
    assert f"snapshot a of {name} deleted" in capsys.readouterr().out
    assert cli(settings, "snapshot", "list", name) == 0
    assert capsys.readouterr().out == f"{name}: no snapshots\n"
