"""The segment watcher against a real Redis: corruption versus trouble, retries, bad records."""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from indexer import publish, segfolder
from indexer.errors import CorruptSegment
from indexer.registry import Registry, SegmentRecord
from indexer.segment import GrowingSegment
from indexer.store import SegmentStore
from ingest import catalog, record
from ingest.spec import CollectionSpec
from monitor import status
from searcher import segments
from searcher.metrics import SearcherMetrics
from searcher.segments import SegmentIdentity
from searcher.state import ServingState
from searcher.tail import TailMessage
from searcher.watcher import SegmentWatcher, read_unloaded
from streamvec.redisconn import is_cluster_client
from streamvec.settings import Settings
from tests.support.polling import wait_until

pytestmark = pytest.mark.integration

DIM = 4
ROWS_PER_SEGMENT = 5


class Log:
    """One partition's messages, sealed into segments of ROWS_PER_SEGMENT one-row messages."""

    def __init__(self, store: SegmentStore, collection: str, partition: int = 0) -> None:
        self.store, self.collection, self.partition = store, collection, partition
        self.messages: list[TailMessage] = []
        self.rng = np.random.default_rng(partition)

    def segment(self, *, collection: str | None = None, generation: int = 0,
                deletes: tuple[str, ...] = ()) -> SegmentRecord:
        """Append ROWS_PER_SEGMENT messages (then `deletes`) and seal them into a folder."""
        start = len(self.messages)
        growing = GrowingSegment(self.partition, start, DIM, 0.0)
        for i in range(ROWS_PER_SEGMENT):
            key = f"r{start + i}"
            vector = self.rng.standard_normal((1, DIM)).astype(np.float32)
            self._add(growing, record.decode(record.encode([key], vector)))
        for key in deletes:
            self._add(growing, record.decode(record.encode_deletes([key], dim=DIM)))
        return publish.write(self.store, collection or self.collection, generation,
                             growing.seal(), metric="l2", index="Flat").record

    def _add(self, growing: GrowingSegment, batch) -> None:
        msg = TailMessage(self.partition, len(self.messages), batch)
        self.messages.append(msg)
        growing.append(batch, msg.offset)


class Setup:
    """A registry, a serving state and a watcher over one store, with metrics to read."""

    def __init__(self, client, name: str, root: Path) -> None:
        self.registry = Registry(client, name)
        self.store = SegmentStore(root)
        self.metrics = CollectorRegistry()
        metrics = SearcherMetrics(self.metrics, name)
        self.state = ServingState(DIM, [0], metrics)
        self.state.reassigned(self.state.start_offsets()[1])
        spec = CollectionSpec(name, dim=DIM, partitions=1)
        catalog.claim_spec(client, spec)
        self.watcher = SegmentWatcher(self.registry, self.store, self.state, 1.0,
                                      identity=SegmentIdentity.of(spec), metrics=metrics,
                                      retry_max_s=0.0)
        self.log = Log(self.store, name)
        self.epoch = self.registry.claim(0)

    def register(self, rec: SegmentRecord) -> SegmentRecord:
        assert self.registry.register(rec, self.epoch).ok
        return rec

    def sample(self, name: str, **labels: str) -> float | None:
        return self.metrics.get_sample_value(f"streamvec_searcher_{name}",
                                             {"collection": str(self.registry.collection),
                                              **labels})

    def visible(self) -> list[str]:
        out = []
        with self.state.lock:
            for item in self.state.searchables():
                hidden = item.source.hidden
                out += [item.id_of(r) for r in range(item.source.rows)
                        if hidden is None or not hidden[r]]
        return sorted(out)

    def read_tail(self) -> None:
        """What the tail reader does: read every message from where the state asks."""
        offsets, generation = self.state.start_offsets()
        self.state.reassigned(generation)
        self.state.apply([m for m in self.log.messages if m.offset >= offsets[0]])


@pytest.fixture
def setup(redis_client, collection_name, tmp_path) -> Setup:
    return Setup(redis_client, collection_name, tmp_path / "store")


def corrupt(store: SegmentStore, rec: SegmentRecord) -> bytes:
    """Flip a bit of the segment's vectors; return the good bytes."""
    file = store.path(rec.path) / "vectors.npy"
    good = file.read_bytes()
    file.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    return good


def test_a_corrupt_segment_is_not_covered_the_tail_serves_it_and_a_good_copy_heals(
        setup, redis_server) -> None:
    first = setup.register(setup.log.segment())
    bad = setup.register(setup.log.segment(deletes=("r0",)))
    after = setup.register(setup.log.segment())
    good = corrupt(setup.store, bad)
    setup.watcher.reconcile()
    # Served up to where the corrupt segment starts; the one after it waits.
    assert setup.state.served() == {first.segment_id: first.path}
    assert setup.state.positions() == {0: bad.start_offset}
    setup.read_tail()
    # Its rows and its delete of r0 come from the tail: nothing vanishes, nothing comes back.
    expected = sorted(f"r{i}" for i in [*range(1, 10), *range(11, 16)])
    assert setup.visible() == expected
    assert setup.sample("unloaded_segments", reason="corrupt") == 1
    assert setup.sample("refused_segments_total") == 1
    report = read_unloaded(setup.registry)
    assert list(report) == [bad.segment_id] and report[bad.segment_id]["corrupt"] is True
    assert "sha256 does not match" in report[bad.segment_id]["reason"]
    settings = Settings(redis=redis_server.url, kafka="127.0.0.1:9", store=setup.store.root)
    (row,) = status.collect(settings, [str(setup.registry.collection)])
    assert list(row.unserved) == [bad.segment_id]
    assert row.unserved[bad.segment_id].startswith("corrupt since ")

    setup.watcher.reconcile()  # still corrupt: tried again, counted once
    assert setup.sample("refused_segments_total") == 1
    assert setup.watcher.unloaded()[bad.segment_id].attempts == 2

    (setup.store.path(bad.path) / "vectors.npy").write_bytes(good)
    setup.watcher.reconcile()
    assert setup.state.served() == {r.segment_id: r.path for r in (first, bad, after)}
    assert setup.state.positions() == {0: after.end_offset}
    assert setup.state.tail.row_count() == 0
    assert setup.visible() == expected
    assert setup.sample("unloaded_segments", reason="corrupt") == 0
    assert read_unloaded(setup.registry) == {}
    assert status.collect(settings, [str(setup.registry.collection)])[0].unserved == {}


def test_segments_are_verified_in_parallel_and_a_corrupt_one_is_still_refused(
        setup, monkeypatch) -> None:
    recs = [setup.register(setup.log.segment()) for _ in range(4)]
    good = corrupt(setup.store, recs[1])
    loads: list[tuple[str, str]] = []
    plain = segments.load

    def noted(store, record, identity=None):
        loads.append((record.segment_id, threading.current_thread().name))
        return plain(store, record, identity)

    monkeypatch.setattr(segments, "load", noted)
    setup.watcher.reconcile()
    assert sorted(sid for sid, _ in loads) == sorted(r.segment_id for r in recs)
    assert all(thread.startswith("sv-load") for _, thread in loads)
    # Served up to the corrupt one; those behind it wait, verified already.
    assert setup.state.served() == {recs[0].segment_id: recs[0].path}
    unloaded = setup.watcher.unloaded()
    assert list(unloaded) == [recs[1].segment_id] and unloaded[recs[1].segment_id].corrupt
    assert "vectors.npy: sha256 does not match" in unloaded[recs[1].segment_id].reason

    (setup.store.path(recs[1].path) / "vectors.npy").write_bytes(good)
    loads.clear()
    setup.watcher.reconcile()
    assert setup.state.served() == {r.segment_id: r.path for r in recs}
    assert [sid for sid, _ in loads] == [recs[1].segment_id]  # the others were not read again
    setup.read_tail()
    assert setup.visible() == sorted(f"r{i}" for i in range(20))


def test_an_io_error_is_trouble_retried_and_never_covered(setup, monkeypatch) -> None:
    rec = setup.register(setup.log.segment())
    plain = segfolder.mmap_module.mmap

    def failing(*args, **kwargs):
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(segfolder.mmap_module, "mmap", failing)
    setup.watcher.reconcile()
    assert setup.state.served() == {}
    assert setup.state.positions() == {0: 0}
    unloaded = setup.watcher.unloaded()[rec.segment_id]
    assert not unloaded.corrupt and "Too many open files" in unloaded.reason
    assert setup.sample("unloaded_segments", reason="unavailable") == 1
    assert setup.sample("refused_segments_total") is None  # nothing refused as corrupt
    setup.read_tail()
    assert setup.visible() == [f"r{i}" for i in range(5)]

    monkeypatch.setattr(segfolder.mmap_module, "mmap", plain)
    setup.watcher.reconcile()
    assert setup.state.served() == {rec.segment_id: rec.path}
    assert setup.visible() == [f"r{i}" for i in range(5)]
    assert setup.sample("unloaded_segments", reason="unavailable") == 0


def test_a_folder_not_there_yet_is_retried_until_it_appears(setup, tmp_path) -> None:
    rec = setup.register(setup.log.segment())
    folder = setup.store.path(rec.path)
    aside = tmp_path / "aside"
    shutil.move(folder, aside)
    setup.watcher.reconcile()
    assert setup.state.served() == {} and not setup.watcher.unloaded()[rec.segment_id].corrupt
    shutil.move(aside, folder)
    setup.watcher.reconcile()
    assert setup.state.served() == {rec.segment_id: rec.path}


def test_a_swap_whose_new_segment_fails_keeps_the_old_ones_served(setup) -> None:
    old = [setup.register(setup.log.segment()) for _ in range(2)]
    setup.watcher.reconcile()
    setup.read_tail()
    # A new generation over the same offsets, its second folder corrupt.
    moved = [dataclasses.replace(old[0], generation=1, path=old[0].path.replace("g0000", "g0001")),
             dataclasses.replace(old[1], generation=1, path=old[1].path.replace("g0000", "g0001"))]
    for src, dst in zip(old, moved, strict=True):
        shutil.copytree(setup.store.path(src.path), setup.store.path(dst.path))
    corrupt(setup.store, moved[1])
    setup.registry.swap(old, moved, kind="reindex", generation=1)
    setup.watcher.reconcile()
    assert setup.state.served() == {r.segment_id: r.path for r in old}
    assert setup.state.positions() == {0: 10}
    assert setup.visible() == sorted(f"r{i}" for i in range(10))
    assert setup.watcher.unloaded()[moved[1].segment_id].corrupt


def test_a_segment_of_another_collection_dim_or_metric_is_refused_as_corrupt(
        setup, redis_client, tmp_path) -> None:
    other = setup.register(setup.log.segment(collection="someone-else"))
    setup.watcher.reconcile()
    assert setup.state.served() == {}
    unloaded = setup.watcher.unloaded()[other.segment_id]
    assert unloaded.corrupt and "belongs to collection 'someone-else'" in unloaded.reason

    spec = CollectionSpec("someone-else", dim=DIM + 1)
    with pytest.raises(CorruptSegment, match="has dim 4, the collection 5"):
        SegmentIdentity.of(spec).check(segfolder.load_segment(setup.store.path(other.path)))


def test_a_malformed_registry_record_is_skipped_and_the_rest_served(setup) -> None:
    rec = setup.register(setup.log.segment())
    body = json.loads(rec.to_json())
    bad = {
        "p0001-000000000000-000000000005": "{not json",
        "p0002-000000000000-000000000005": json.dumps({**body, "partition": 2,
                                                       "path": "/etc"}),
        "p0003-000000000000-000000000005": json.dumps({**body, "partition": 3,
                                                       "path": "../../elsewhere"}),
        "p0004-000000000000-000000000009": json.dumps({**body, "partition": 4}),
        "p0005-000000000000-000000000005": json.dumps({**body, "partition": 5,
                                                       "rows": "five"}),
    }
    setup.registry.client.hset(setup.registry.segments_key, mapping=bad)
    try:
        setup.watcher.reconcile()
        assert setup.state.served() == {rec.segment_id: rec.path}
        assert setup.sample("malformed_records") == len(bad)
        skipped: dict[str, str] = {}
        assert setup.registry.segments(skipped=skipped) == [rec]
        assert sorted(skipped) == sorted(bad)
        assert "not a path relative to the segment store root" in skipped[
            "p0002-000000000000-000000000005"]
        with pytest.raises(ValueError, match="registry record 'p000"):
            setup.registry.segments()
    finally:  # the session's Redis is shared: leave no bad record for other tests to meet
        setup.registry.client.hdel(setup.registry.segments_key, *bad)


@pytest.mark.parametrize("redis_kind", ["server", pytest.param(
    "cluster", marks=pytest.mark.redis_cluster)])
def test_events_load_segments_and_a_broken_subscription_is_renewed(
        setup, redis_client, redis_kind, caplog) -> None:
    caplog.set_level(logging.INFO, logger="searcher.watcher")
    assert is_cluster_client(redis_client) == (redis_kind == "cluster")
    spec = CollectionSpec(str(setup.registry.collection), dim=DIM, partitions=1)
    # No timer to speak of: only an event can make a new segment served within the test.
    watcher = SegmentWatcher(setup.registry, setup.store, setup.state, 3600.0,
                             identity=SegmentIdentity.of(spec), retry_max_s=0.0)
    watcher.subscribe()
    watcher.reconcile()
    watcher.start()
    try:
        first = setup.register(setup.log.segment())
        wait_until(lambda: setup.state.served() == {first.segment_id: first.path}, timeout=30,
                   what="the registered segment served on its event")
        # Every subscriber's connection dropped, as a restart or a failover would.
        if is_cluster_client(redis_client):
            redis_client.client_kill_filter(_type="pubsub", target_nodes="all")
        else:
            redis_client.client_kill_filter(_type="pubsub")
        wait_until(lambda: "registry events received again" in caplog.text, timeout=30,
                   what="the watcher to subscribe again")
        assert "registry events lost" in caplog.text
        second = setup.register(setup.log.segment())
        wait_until(lambda: set(setup.state.served()) == {first.segment_id, second.segment_id},
                   timeout=30, what="a segment registered later served on its event")
    finally:
        watcher.stop()
