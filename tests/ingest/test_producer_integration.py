"""The producer SDK against the real broker: round trips, partition stability, flushed offsets."""

from __future__ import annotations

import numpy as np
import pytest
from confluent_kafka.admin import AdminClient

from ingest import admin, record
from ingest.errors import DeliveryError, RecordError
from ingest.partition import partitions_for
from ingest.producer import Producer
from ingest.spec import CollectionSpec
from tests.support.polling import wait_until
from tests.support.topics import read_topic

pytestmark = pytest.mark.integration


@pytest.fixture
def spec(settings, collection_name) -> CollectionSpec:
    spec = CollectionSpec(collection_name, dim=64, partitions=4)
    admin.create_collection(settings, spec)
    return spec


def test_100k_rows_round_trip_bit_identical(settings, spec):
    rng = np.random.default_rng(7)
    n = 100_000
    ids = [f"doc-{i}-é" if i % 97 == 0 else f"doc-{i}" for i in range(n)]
    vectors = rng.standard_normal((n, spec.dim)).astype(np.float32)
    metadata = [{"i": i} if i % 10 == 0 else None for i in range(n)]
    with Producer(spec.name, settings=settings) as producer:
        for lo in range(0, n, 5000):
            producer.upsert(ids[lo:lo + 5000], vectors[lo:lo + 5000], metadata[lo:lo + 5000])
        producer.flush()

    got_vectors = {}
    got_meta = {}
    for msg in read_topic(settings, spec.collection.topic):
        batch = record.decode_valid(msg.value(), dim=spec.dim, model_version="")
        for i, id_ in enumerate(raw.decode() for raw in batch.ids.tolist()):
            assert id_ not in got_vectors, f"{id_} arrived twice"
            got_vectors[id_] = batch.vectors[i]
            got_meta[id_] = batch.metadata(i)
    assert set(got_vectors) == set(ids)
    position = {id_: i for i, id_ in enumerate(ids)}
    got = np.stack([got_vectors[id_] for id_ in ids])
    assert np.array_equal(got.view(np.uint32), vectors.view(np.uint32))
    assert all(got_meta[id_] == metadata[position[id_]] for id_ in ids)


@pytest.mark.parametrize("partitioner", ["kafka", "streamvec"])
def test_every_op_on_an_id_lands_in_one_partition(settings, collection_name, partitioner):
    spec = CollectionSpec(collection_name, dim=64, partitions=4, partitioner=partitioner)
    admin.create_collection(settings, spec)
    rng = np.random.default_rng(3)
    ids = [f"user:{i}" for i in range(2000)]
    with Producer(spec.name, settings=settings) as producer:
        producer.upsert(ids, rng.standard_normal((2000, spec.dim)))
        producer.delete(ids[::3])
        producer.upsert(ids[::5], rng.standard_normal((400, spec.dim)))
    seen: dict[str, set[int]] = {}
    for msg in read_topic(settings, spec.collection.topic):
        for raw in record.decode(msg.value()).ids.tolist():
            id_ = raw.decode()
            seen.setdefault(id_, set()).add(msg.partition())
    expected = dict(zip(ids, partitions_for(ids, spec.partitions, spec.partitioner).tolist(),
                        strict=True))
    assert set(seen) == set(ids)
    assert {id_: parts for id_, parts in seen.items()} == {i: {p} for i, p in expected.items()}


def test_flush_offsets_are_what_a_consumer_reads(settings, spec):
    rng = np.random.default_rng(5)
    with Producer(spec.name, settings=settings, max_message_bytes=20_000) as producer:
        producer.upsert([f"k{i}" for i in range(3000)], rng.standard_normal((3000, spec.dim)))
        offsets = producer.flush()
        producer.delete(["k1", "k2"])
        later = producer.flush()
    last_read: dict[int, int] = {}
    for msg in read_topic(settings, spec.collection.topic):
        last_read[msg.partition()] = max(last_read.get(msg.partition(), -1), msg.offset())
    assert later == last_read
    assert all(later[p] >= offsets[p] for p in offsets)
    assert sum(1 for p in later if later[p] > offsets.get(p, -1)) == len(
        set(partitions_for(["k1", "k2"], spec.partitions, spec.partitioner).tolist())
    )


def test_wrong_dim_is_refused_before_sending(settings, spec):
    producer = Producer(spec.name, settings=settings)
    with pytest.raises(RecordError) as err:
        producer.upsert(["a"], np.zeros((1, spec.dim + 1), dtype=np.float32))
    assert err.value.reason == "wrong_dim"
    assert f"expects (n, {spec.dim})" in str(err.value)
    with pytest.raises(RecordError) as err:
        producer.upsert(["a", "b"], np.array([[np.nan] * spec.dim, [0.0] * spec.dim]))
    assert err.value.reason == "non_finite"
    assert producer.flush() == {}
    assert all(p.high == 0 for p in admin.partition_offsets(settings, spec.collection.topic))


def test_delivery_failure_is_a_clear_error(settings, spec):
    producer = Producer(spec.name, settings=settings)
    kafka_admin = AdminClient(settings.kafka_config())  # must outlive its futures
    kafka_admin.delete_topics([spec.collection.topic])[spec.collection.topic].result(30)
    # The deletion is accepted before the broker applies it; a write in between would land.
    wait_until(lambda: spec.collection.topic not in kafka_admin.list_topics(timeout=10).topics,
               timeout=30, what=f"{spec.collection.topic} to be gone from the broker")
    producer.upsert(["x"], np.ones((1, spec.dim), dtype=np.float32))
    with pytest.raises(DeliveryError, match=r"undelivered after 2s|failed"):
        producer.flush(timeout=2)
