"""The audit trail and the pinned drift reference against real Kafka and Redis."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ingest import admin, audit
from ingest.producer import Producer
from ingest.spec import CollectionSpec
from lifecycle import collections
from monitor import reference
from streamvec.commands import main
from tests.support.cli import argv as cli
from tests.support.stack import IndexerThread
from tests.support.workers import wait_fully_indexed

pytestmark = pytest.mark.integration

DIM = 4
ROWS = 120
PINNED = 50


def sorted_rows(x: np.ndarray) -> np.ndarray:
    return x[np.lexsort(x.T[::-1])]


def pin_from_segments(settings, spec: CollectionSpec, latest: np.ndarray) -> None:
    """Index the collection, then pin from its segments: the same latest rows."""
    indexer = IndexerThread(settings, spec.name)
    try:
        wait_fully_indexed(settings, spec.name, spec.collection.topic, timeout=60)
    finally:
        indexer.stop()
    pinned = reference.pin_latest(settings, spec.name, rows=PINNED, source="segments")
    assert pinned.source == "segments"
    assert np.array_equal(sorted_rows(pinned.vectors), latest)
    stored = reference.load(settings.redis_client(), spec.name)
    assert np.array_equal(stored.vectors, pinned.vectors)


def test_create_pin_and_drop_are_audited_with_their_actor(settings, collection_name,
                                                           redis_client):
    spec = CollectionSpec(collection_name, dim=DIM, partitions=2, index="Flat", seal_rows=30,
                          seal_seconds=0.2)
    assert admin.create_collection(settings.model_copy(update={"actor": "alice"}), spec)
    assert not admin.create_collection(settings.model_copy(update={"actor": "mallory"}), spec)
    vectors = np.random.default_rng(61).standard_normal((ROWS, DIM)).astype(np.float32)
    with Producer(spec.name, settings=settings) as producer:
        producer.upsert([f"r-{i}" for i in range(ROWS)], vectors,
                        event_time_ms=np.arange(1_000, 1_000 + ROWS, dtype=np.int64))
    latest = sorted_rows(vectors[-PINNED:])

    args = cli(settings, "--actor", "bob", "drift", "pin-reference", "--collection", spec.name,
               "--rows", str(PINNED), "--source", "topic")
    assert main(args) == 0
    pinned = reference.load(redis_client, spec.name)
    assert pinned.source == "topic" and pinned.vectors.shape == (PINNED, DIM)
    assert np.array_equal(sorted_rows(pinned.vectors), latest)

    pin_from_segments(settings.model_copy(update={"actor": "carol"}), spec, latest)

    collections.drop_collection(settings.model_copy(update={"actor": "dave"}), spec.name)
    assert reference.load(redis_client, spec.name) is None

    entries = audit.read(redis_client, 10, collection=spec.name)
    assert [(e.action, e.actor, e.target) for e in entries] == [
        ("collection.create", "alice", spec.name), ("drift.pin_reference", "bob", spec.name),
        ("drift.pin_reference", "carol", spec.name), ("collection.drop", "dave", spec.name)]
    assert entries[0].details["dim"] == DIM and entries[0].details["partitions"] == 2
    assert entries[1].details == {"rows": PINNED, "dim": DIM, "source": "topic",
                                  "requested_rows": PINNED}
    assert entries[3].details == {"topics": [spec.collection.topic, spec.collection.dlq_topic]}
    assert entries[0].time <= entries[1].time <= entries[2].time <= entries[3].time



def test_audit_command_lists_a_collections_latest_entries(settings, collection_name, capsys):
    spec = CollectionSpec(collection_name, dim=DIM, partitions=1)
    admin.create_collection(settings.model_copy(update={"actor": "alice"}), spec)
    collections.drop_collection(settings.model_copy(update={"actor": "dave"}), spec.name)
    admin.create_collection(settings.model_copy(update={"actor": "erin"}), spec)
    capsys.readouterr()
    assert main(cli(settings, "audit", "--collection", spec.name, "--limit", "2",
                    "--json")) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(e["action"], e["actor"], e["target"]) for e in listed] == [
        ("collection.drop", "dave", spec.name), ("collection.create", "erin", spec.name)]
    assert main(cli(settings, "audit", "--collection", spec.name)) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["TIME", "(UTC)", "ACTOR", "ACTION"]
    assert [line.split()[2:5] for line in table[1:]] == [
        ["alice", "collection.create", spec.name], ["dave", "collection.drop", spec.name],
        ["erin", "collection.create", spec.name]]


def test_audit_read_pages_past_other_collections(redis_client, collection_name):
    for i in range(2500):  # more than one page of entries about other collections
        audit.record(redis_client, "test.noise", f"other-{i % 7}", {"i": i}, "noise")
    audit.record(redis_client, "test.mine", collection_name, {"n": 1}, "erin")
    for i in range(1500):
        audit.record(redis_client, "test.noise", "other", {"i": i}, "noise")
    mine = audit.read(redis_client, 5, collection=collection_name)
    assert [(e.action, e.actor, e.details) for e in mine] == [("test.mine", "erin", {"n": 1})]
    assert [e.details["i"] for e in audit.read(redis_client, 3)] == [1497, 1498, 1499]


def test_pinning_from_the_topic_reads_back_in_growing_spans(settings, collection_name):
    spec = CollectionSpec(collection_name, dim=DIM, partitions=1)
    admin.create_collection(settings, spec)
    vectors = np.random.default_rng(71).standard_normal((300, DIM)).astype(np.float32)
    with Producer(spec.name, settings=settings) as producer:
        for i in range(300):  # one message per row: the read-back needs several spans
            producer.upsert([f"m-{i}"], vectors[i:i + 1], event_time_ms=5_000 + i)
        producer.delete(["m-299"])  # a delete at the very end carries no vector
    assert reference.FIRST_SPAN < 200
    pinned = reference.pin_latest(settings, spec.name, rows=200, source="topic")
    assert pinned.source == "topic"
    assert np.array_equal(sorted_rows(pinned.vectors), sorted_rows(vectors[100:]))
