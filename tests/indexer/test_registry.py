"""The Redis registry on a real server: compare-and-set registration, fencing, events, rebuild."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import faiss
import numpy as np
import pytest
import redis

from indexer.errors import CorruptSegment, RebuildError
from indexer.rebuild import plan_rebuild, rebuild
from indexer.registry import Registry, SegmentRecord
from indexer.segment import SealedRows
from indexer.store import SegmentStore, is_registered
from ingest.errors import InvalidName
from ingest.names import CollectionName
from streamvec import files
from streamvec.commands import registry
from streamvec.settings import Settings

pytestmark = pytest.mark.integration

DIM = 4
MESSAGE_DEADLINE_S = 5.0


def sealed_rows(partition: int, start: int, end: int) -> SealedRows:
    """A small seeded segment of the offset range: one row per offset, at most five."""
    rows = min(end - start, 5)
    rng = np.random.default_rng(start * 31 + partition)
    offsets = np.arange(start, start + rows, dtype=np.int64)
    return SealedRows(partition, start, end, np.array([f"k{o}".encode() for o in offsets]),
                      rng.standard_normal((rows, DIM)).astype(np.float32), offsets,
                      offsets * 1000, [b""] * rows, np.array([], dtype="S1"))


def write(root: Path, name: str, partition: int, start: int, end: int,
          hides: dict | None = None) -> tuple[SegmentRecord, Path]:
    """Write a segment folder and return its registry record and path."""
    sealed = sealed_rows(partition, start, end)
    index = faiss.IndexFlatL2(DIM)
    index.add(sealed.vectors)
    store = SegmentStore(root)
    record = SegmentRecord.from_manifest(store.write(name, 0, sealed, index, "Flat", "l2",
                                                     hides or {}))
    return record, store.path(record.path)


def commit(registry: Registry, root: Path, name: str, partition: int, start: int, end: int,
           epoch: int, hides: dict | None = None) -> Path:
    """What a worker does: write, register (must succeed), mark."""
    record, path = write(root, name, partition, start, end, hides)
    assert registry.register(record, epoch).ok
    SegmentStore(root).mark_registered(record.path)
    return path


def next_message(pubsub: redis.client.PubSub) -> dict:
    deadline = time.monotonic() + MESSAGE_DEADLINE_S
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.1)
        if message is not None:
            return message
    raise AssertionError(f"no message within {MESSAGE_DEADLINE_S}s")


def test_registration_advances_the_checkpoint_in_order(
        redis_client: redis.Redis, settings: Settings, collection_name: str) -> None:
    reg = Registry(redis_client, collection_name)
    assert (reg.checkpoint(0), reg.checkpoints(), reg.segments(), reg.version()) == (0, {}, [], 0)
    epoch = reg.claim(0)
    assert epoch == 1 and reg.epoch(0) == 1
    first, _ = write(settings.store, collection_name, 0, 0, 10)
    second, _ = write(settings.store, collection_name, 0, 10, 25)
    other, _ = write(settings.store, collection_name, 3, 0, 7)
    r1 = reg.register(first, epoch)
    assert (r1.status, r1.checkpoint, r1.version, r1.ok) == ("ok", 10, 1, True)
    r2 = reg.register(second, epoch)
    assert (r2.status, r2.checkpoint, r2.version) == ("ok", 25, 2)
    assert reg.register(other, reg.claim(3)).status == "ok"
    assert reg.checkpoints() == {0: 25, 3: 7}
    assert reg.segments() == [first, second, other]
    assert reg.segments(partition=3) == [other]
    assert first.path == f"{collection_name}/g0000/p0000/p0000-000000000000-000000000010"
    assert redis_client.hget(f"sv:{{{collection_name}}}:ckpt", "0") == b"25"


def test_a_start_other_than_the_checkpoint_is_a_conflict(
        redis_client: redis.Redis, settings: Settings, collection_name: str) -> None:
    reg = Registry(redis_client, collection_name)
    epoch = reg.claim(0)
    late, _ = write(settings.store, collection_name, 0, 10, 20)
    result = reg.register(late, epoch)
    assert (result.status, result.checkpoint, result.version, result.ok) == (
        "conflict", 0, 0, False)
    assert (reg.checkpoints(), reg.segments(), reg.version()) == ({}, [], 0)
    commit(reg, settings.store, collection_name, 0, 0, 10, epoch)
    overlapping, _ = write(settings.store, collection_name, 0, 5, 30)
    assert (reg.register(overlapping, epoch).status, reg.checkpoint(0)) == ("conflict", 10)


def test_the_same_segment_twice_is_already_registered(
        redis_client: redis.Redis, settings: Settings, collection_name: str) -> None:
    reg = Registry(redis_client, collection_name)
    epoch = reg.claim(1)
    record, _ = write(settings.store, collection_name, 1, 0, 10)
    assert reg.register(record, epoch).status == "ok"
    again = reg.register(record, epoch)
    assert (again.status, again.checkpoint, again.version, again.ok) == ("already", 10, 1, True)
    assert reg.segments() == [record]
    misnamed = dataclasses.replace(record, segment_id="p0001-000000000000-000000000011")
    with pytest.raises(ValueError, match="should be 'p0001-000000000000-000000000010'"):
        reg.register(misnamed, epoch)


def test_a_new_claim_fences_the_previous_owner(
        redis_client: redis.Redis, settings: Settings, collection_name: str) -> None:
    old = Registry(redis_client, collection_name)
    new = Registry(redis_client, collection_name)
    old_epoch = old.claim(2)
    new_epoch = new.claim(2)
    assert (old_epoch, new_epoch) == (1, 2)
    record, _ = write(settings.store, collection_name, 2, 0, 10)
    fenced = old.register(record, old_epoch)  # its start offset matches the checkpoint
    assert (fenced.status, fenced.epoch, fenced.checkpoint, fenced.ok) == ("fenced", 2, 0, False)
    assert (new.checkpoints(), new.version()) == ({}, 0)
    assert new.register(record, new_epoch).status == "ok"
    assert new.checkpoint(2) == 10


def test_registrations_and_rebuilds_are_published(
        redis_client: redis.Redis, settings: Settings, collection_name: str) -> None:
    reg = Registry(redis_client, collection_name)
    assert reg.events_channel == f"sv:{{{collection_name}}}:events"
    pubsub = redis_client.pubsub()
    try:
        pubsub.subscribe(reg.events_channel)
        assert next_message(pubsub)["type"] == "subscribe"
        commit(reg, settings.store, collection_name, 0, 0, 10, reg.claim(0))
        assert json.loads(next_message(pubsub)["data"]) == {
            "type": "registered", "segment_id": "p0000-000000000000-000000000010",
            "partition": 0, "start_offset": 0, "end_offset": 10, "version": 1}
        rebuild(redis_client, SegmentStore(settings.store), collection_name)
        assert json.loads(next_message(pubsub)["data"]) == {
            "type": "rebuilt", "segment_id": None, "partition": None, "start_offset": None,
            "end_offset": None, "version": 2}
    finally:
        pubsub.close()


def populate(reg: Registry, root: Path, name: str) -> None:
    """Two partitions of registered segments; a later one hides a row of an earlier one."""
    e0, e1 = reg.claim(0), reg.claim(1)
    commit(reg, root, name, 0, 0, 10, e0)
    commit(reg, root, name, 0, 10, 30, e0, hides={"p0000-000000000000-000000000010": [1]})
    commit(reg, root, name, 0, 30, 31, e0)
    commit(reg, root, name, 1, 0, 4, e1)


def test_rebuild_from_the_store_restores_the_registry_and_nothing_else(
        redis_client: redis.Redis, settings: Settings, collection_name: str) -> None:
    reg = Registry(redis_client, collection_name)
    name = CollectionName.parse(collection_name)
    populate(reg, settings.store, collection_name)
    redis_client.set(name.key("spec"), b'{"kept": true}')
    redis_client.set(name.key("other"), b"kept too")
    before = (reg.checkpoints(), reg.segments(), redis_client.hgetall(reg.segments_key))
    epochs = redis_client.hgetall(reg.epoch_key)
    assert reg.clear() == 3
    assert (reg.checkpoints(), reg.segments(), reg.version()) == ({}, [], 0)

    report = rebuild(redis_client, SegmentStore(settings.store), collection_name)

    assert (reg.checkpoints(), reg.segments(), redis_client.hgetall(reg.segments_key)) == before
    assert [(p.partition, p.segments, p.rows, p.checkpoint) for p in report.partitions] == [
        (0, 3, 11, 31), (1, 1, 4, 4)]
    assert (report.ignored, report.recovered, report.version, reg.version()) == ((), (), 1, 1)
    assert redis_client.get(name.key("spec")) == b'{"kept": true}'
    assert redis_client.get(name.key("other")) == b"kept too"
    assert redis_client.hgetall(reg.epoch_key) == epochs
    assert rebuild(redis_client, SegmentStore(settings.store), collection_name).version == 2
    assert (reg.checkpoints(), reg.segments()) == before[:2]


def test_rebuild_stops_at_a_corrupt_segment_and_writes_nothing(
        redis_client: redis.Redis, settings: Settings, collection_name: str) -> None:
    reg = Registry(redis_client, collection_name)
    populate(reg, settings.store, collection_name)
    bad = SegmentStore(settings.store).segment_path(collection_name, 0, 0,
                                                    "p0000-000000000010-000000000030")
    data = bytearray((bad / "ids.npy").read_bytes())
    data[-1] ^= 0xFF
    (bad / "ids.npy").write_bytes(bytes(data))
    before = (reg.checkpoints(), reg.segments(), reg.version())
    with pytest.raises(CorruptSegment, match="p0000-000000000010-000000000030 is corrupt: "
                                             "ids.npy: sha256 does not match the manifest"):
        rebuild(redis_client, SegmentStore(settings.store), collection_name)
    assert (reg.checkpoints(), reg.segments(), reg.version()) == before


def test_rebuild_ignores_folders_that_were_never_registered(
        redis_client: redis.Redis, settings: Settings, collection_name: str) -> None:
    reg = Registry(redis_client, collection_name)
    populate(reg, settings.store, collection_name)
    before = (reg.checkpoints(), reg.segments())
    write(settings.store, collection_name, 0, 31, 40)  # crashed before registering
    write(settings.store, collection_name, 0, 10, 20)  # a replay that sealed differently
    write(settings.store, collection_name, 2, 0, 9)  # a partition never registered at all
    report = rebuild(redis_client, SegmentStore(settings.store), collection_name)
    assert (reg.checkpoints(), reg.segments()) == before
    assert report.ignored == ("p0000-000000000010-000000000020",
                              "p0000-000000000031-000000000040", "p0002-000000000000-000000000009")
    assert [p.checkpoint for p in report.partitions] == [31, 4, 0]


def test_rebuild_recovers_a_registered_segment_whose_marker_was_lost(
        redis_client: redis.Redis, settings: Settings, collection_name: str) -> None:
    reg = Registry(redis_client, collection_name)
    populate(reg, settings.store, collection_name)
    middle = SegmentStore(settings.store).segment_path(collection_name, 0, 0,
                                                       "p0000-000000000010-000000000030")
    Path(f"{middle}.registered").unlink()  # crashed between registering and marking
    before = (reg.checkpoints(), reg.segments())
    assert plan_rebuild(SegmentStore(settings.store), collection_name).recovered == (middle.name,)
    assert not is_registered(middle)  # a plan writes nothing
    report = rebuild(redis_client, SegmentStore(settings.store), collection_name)
    assert (report.recovered, (reg.checkpoints(), reg.segments())) == ((middle.name,), before)
    assert is_registered(middle)


def test_rebuild_names_a_gap(
        redis_client: redis.Redis, settings: Settings, collection_name: str) -> None:
    reg = Registry(redis_client, collection_name)
    populate(reg, settings.store, collection_name)
    lost = SegmentStore(settings.store).segment_path(collection_name, 0, 0,
                                                     "p0000-000000000000-000000000010")
    files.remove(lost)
    with pytest.raises(RebuildError, match=r"partition 0: gap in the registered segments: "
                                           r"offsets \[0, 10\) are covered by no segment"):
        rebuild(redis_client, SegmentStore(settings.store), collection_name)


def test_replacing_refuses_a_registry_that_moved(
        redis_client: redis.Redis, settings: Settings, collection_name: str) -> None:
    reg = Registry(redis_client, collection_name)
    commit(reg, settings.store, collection_name, 0, 0, 10, reg.claim(0))
    with pytest.raises(RebuildError, match="changed during the rebuild"):
        reg.replace_all([], {}, expected_version=0)
    assert (reg.checkpoints(), reg.version()) == ({0: 10}, 1)


def run_cli(settings: Settings, *argv: str) -> int:
    parser = argparse.ArgumentParser()
    registry.register(parser.add_subparsers())
    args = parser.parse_args(["registry", *argv])
    return args.handler(args, settings)


def test_cli_show_and_rebuild(redis_client: redis.Redis, settings: Settings,
                              collection_name: str, capsys: pytest.CaptureFixture) -> None:
    reg = Registry(redis_client, collection_name)
    populate(reg, settings.store, collection_name)
    assert run_cli(settings, "show", "--collection", collection_name, "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["version"], shown["checkpoints"], shown["epochs"]) == (
        4, {"0": 31, "1": 4}, {"0": 1, "1": 1})
    assert [s["segment_id"] for s in shown["segments"]] == [r.segment_id for r in reg.segments()]
    assert run_cli(settings, "show", "--collection", collection_name) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:4] == [f"collection {collection_name}  registry version 4",
                         "PARTITION   CHECKPOINT  EPOCH SEGMENTS       ROWS",
                         "        0           31      1        3         11",
                         "        1            4      1        1          4"]
    assert run_cli(settings, "rebuild", "--collection", collection_name) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "dry run: nothing written; add --yes to replace the registry")
    assert reg.version() == 4
    assert run_cli(settings, "rebuild", "--collection", collection_name, "--yes") == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"registry of {collection_name} rebuilt: version 5")
    with pytest.raises(InvalidName, match="invalid collection name 'Bad'"):
        run_cli(settings, "show", "--collection", "Bad")
