"""The lifecycle lock on a real Redis: a lease lost mid-action fences every write of the action."""

from __future__ import annotations

from pathlib import Path

import pytest

from indexer.registry import Registry, SegmentRecord
from indexer.store import SegmentStore
from ingest import catalog
from ingest.spec import CollectionSpec
from lifecycle import compaction, gc
from lifecycle.compaction import CompactionPolicy
from lifecycle.errors import LifecycleBusy
from lifecycle.lock import LifecycleLock
from streamvec.settings import Settings
from tests.support.segments import write_offsets

pytestmark = pytest.mark.integration

DIM = 4


@pytest.fixture
def redis_only(redis_server, tmp_path) -> Settings:
    """Settings that reach the session's Redis and a store of the test's own; no Kafka."""
    return Settings(redis=redis_server.url, kafka="127.0.0.1:9", store=tmp_path / "store")


def write(store: SegmentStore, name: str, start: int, end: int) -> SegmentRecord:
    """A segment folder of partition 0 in generation 0, one row per offset."""
    return write_offsets(store, name, 0, start, end)


def registered(settings: Settings, name: str, ends: list[int]) -> list[SegmentRecord]:
    """A collection whose partition 0 holds one registered segment per range."""
    client = settings.redis_client()
    catalog.claim_spec(client, CollectionSpec(name, dim=DIM, partitions=1, index="Flat"))
    registry = Registry(client, name)
    epoch = registry.claim(0)
    store = SegmentStore(settings.store)
    starts = [0, *ends[:-1]]
    records = [write(store, name, s, e) for s, e in zip(starts, ends, strict=True)]
    for record in records:
        assert registry.register(record, epoch).ok
    return records


def take_over(lock: LifecycleLock) -> None:
    """What happens when a lease runs out: the key expires and another action takes it."""
    lock.client.set(lock.key, "gc:someone-else")


def test_a_lock_whose_lease_ran_out_refuses_checks_and_fenced_swaps(redis_only,
                                                                   collection_name) -> None:
    first, second = registered(redis_only, collection_name, [3, 6])
    registry = Registry(redis_only.redis_client(), collection_name)
    merged = write(SegmentStore(redis_only.store), collection_name, 0, 6)
    version = registry.version()
    with LifecycleLock(registry.client, collection_name, "compact") as lock:
        lock.check()  # held: nothing raised
        take_over(lock)
        with pytest.raises(LifecycleBusy, match="the compact lost its lease on the lifecycle "
                                                "lock"):
            lock.check()
        with pytest.raises(LifecycleBusy, match="lost its lease"):
            registry.swap([first, second], [merged], kind="compacted", fence=lock)
    assert registry.segments() == [first, second] and registry.version() == version
    assert registry.client.get(lock.key) == b"gc:someone-else"  # not released by the loser
    assert registry.released() == {}


def test_a_compaction_that_lost_its_lease_stops_before_writing(redis_only, collection_name,
                                                              monkeypatch) -> None:
    records = registered(redis_only, collection_name, [2, 4, 6, 8])
    registry = Registry(redis_only.redis_client(), collection_name)
    store = SegmentStore(redis_only.store)
    folders = sorted(p.name for p in store.list_segments(collection_name))
    plain = compaction.rewrite.rows_of

    def lease_runs_out(*args, **kwargs):
        take_over(LifecycleLock(registry.client, collection_name, "compact"))
        return plain(*args, **kwargs)

    monkeypatch.setattr(compaction.rewrite, "rows_of", lease_runs_out)
    with pytest.raises(LifecycleBusy, match="lost its lease"):
        compaction.compact(redis_only, collection_name, CompactionPolicy(max_rows=100,
                                                                         max_segments=1))
    assert registry.segments() == records
    assert sorted(p.name for p in store.list_segments(collection_name)) == folders


def test_gc_that_lost_its_lease_removes_nothing(redis_only, collection_name,
                                                monkeypatch) -> None:
    first, second = registered(redis_only, collection_name, [3, 6])
    registry = Registry(redis_only.redis_client(), collection_name)
    merged = write(SegmentStore(redis_only.store), collection_name, 0, 6)
    registry.swap([first, second], [merged], kind="compacted")
    root = Path(redis_only.store)
    plain = gc.scan

    def lease_runs_out(store, name, now):
        take_over(LifecycleLock(registry.client, collection_name, "gc"))
        return plain(store, name, now)

    monkeypatch.setattr(gc, "scan", lease_runs_out)
    with pytest.raises(LifecycleBusy, match="the gc lost its lease"):
        gc.collect(redis_only, collection_name, grace_s=0)
    assert (root / first.path).is_dir() and (root / second.path).is_dir()
