"""The indexer worker in-process: poison records, hides, retention, clean shutdown."""

from __future__ import annotations

import numpy as np
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka import Producer as KafkaProducer
from confluent_kafka.admin import AdminClient
from prometheus_client import CollectorRegistry

from indexer.errors import CheckpointOutOfRange
from indexer.registry import Registry
from indexer.worker import Worker
from ingest import admin, message, record
from ingest.producer import Producer
from ingest.spec import CollectionSpec
from tests.support.polling import wait_until
from tests.support.stack import IndexerThread, Running
from tests.support.workers import Workload, assert_state_matches, log_ends, wait_fully_indexed

pytestmark = pytest.mark.integration

DIM = 8


@pytest.fixture
def spec(settings, collection_name) -> CollectionSpec:
    spec = CollectionSpec(collection_name, dim=DIM, partitions=3, seal_rows=5000,
                          seal_seconds=0.3, model_version="m1")
    admin.create_collection(settings, spec)
    return spec


def bad_payloads(rng: np.random.Generator) -> list[tuple[str | None, bytes]]:
    """10k bad messages: 1800 of each deterministic kind plus 1000 random byte strings."""
    marker = np.float32(1.2345e-3)
    good = record.encode(["x"], np.full((1, DIM), marker), model_version="m1")
    nan = good.replace(marker.tobytes(), np.float32(np.nan).tobytes())
    kinds = {
        "wrong_dim": record.encode(["x"], np.ones((1, DIM + 1)), model_version="m1"),
        "non_finite": nan,
        "model_version": record.encode(["x"], np.ones((1, DIM)), model_version="m2"),
        "unknown_version": good[:3] + b"\x09" + good[4:],
        "truncated": good[:-5],
    }
    out = [(reason, payload) for reason, payload in kinds.items() for _ in range(1800)]
    out += [(None, rng.bytes(int(rng.integers(0, 200)))) for _ in range(1000)]
    rng.shuffle(out)
    return out


def test_poison_goes_to_the_dlq_with_its_reason_and_good_rows_all_land(settings, spec):
    rng = np.random.default_rng(1)
    raw = KafkaProducer(settings.kafka_config())
    sent_bad: dict[tuple[int, int], str | None] = {}

    def remember(reason):
        return lambda err, msg: sent_bad.__setitem__((msg.partition(), msg.offset()), reason)

    workload = Workload(DIM, rng)
    running = IndexerThread(settings, spec.name)
    bad = bad_payloads(rng)
    with Producer(spec.name, settings=settings) as producer:
        for chunk in range(10):
            ids = [f"good-{chunk}-{i}" for i in range(5000)]
            vectors = rng.standard_normal((5000, DIM)).astype(np.float32)
            for lo in range(0, 5000, 100):
                producer.upsert(ids[lo:lo + 100], vectors[lo:lo + 100])
            workload.expected.update(zip(ids, vectors, strict=True))
            for reason, payload in bad[chunk * 1000:(chunk + 1) * 1000]:
                raw.produce(spec.collection.topic, payload, partition=int(rng.integers(0, 3)),
                            on_delivery=remember(reason))
            raw.poll(0)
    assert raw.flush(30) == 0
    wait_fully_indexed(settings, spec.name, spec.collection.topic, timeout=120)
    running.stop()

    assert_state_matches(settings, spec.name, workload)
    dead = read_dlq(settings, spec.collection.dlq_topic, expect=10_000)
    assert set(dead) == set(sent_bad)
    for position, reason in sent_bad.items():
        if reason is not None:
            assert dead[position] == reason, position
    reasons = {r for r in dead.values()}
    assert reasons <= message.REASONS, reasons - message.REASONS
    for reason in reasons:
        counted = running.sample("streamvec_indexer_dlq_messages_total",
                                 collection=spec.name, reason=reason)
        assert counted == sum(1 for r in dead.values() if r == reason), reason


@pytest.mark.redis_cluster
def test_poison_and_good_rows_on_a_redis_cluster(settings, spec):
    """The same ingest with the registry on a three-master Redis Cluster."""
    assert settings.redis_url.startswith("redis+cluster://")
    test_poison_goes_to_the_dlq_with_its_reason_and_good_rows_all_land(settings, spec)


def read_dlq(settings, topic: str, expect: int) -> dict[tuple[int, int], str]:
    """Read the dead-letter topic: (source partition, source offset) -> reason header."""
    consumer = Consumer(settings.kafka_config(**{"group.id": "dlq-reader",
                                                 "enable.auto.commit": False}))
    consumer.assign([TopicPartition(topic, 0, 0)])
    out: dict[tuple[int, int], str] = {}

    def drain() -> bool:
        for msg in consumer.consume(1000, timeout=0.2):
            headers = dict(msg.headers() or [])
            key = (int(headers["sv-source-partition"]), int(headers["sv-source-offset"]))
            assert key not in out, f"{key} dead-lettered twice"
            out[key] = headers["sv-reason"].decode()
        return len(out) >= expect

    try:
        wait_until(drain, timeout=60, what=f"{expect} dead letters")
    finally:
        consumer.close()
    return out


def test_deletes_and_upserts_hide_older_rows_across_segments(settings, spec):
    workload = Workload(DIM, np.random.default_rng(2))
    running = IndexerThread(settings, spec.name)
    with Producer(spec.name, settings=settings) as producer:
        for _ in range(4):
            workload.send_round(producer, 3000, id_space=2000)
            producer.flush()
            # Every partition seals this round before the next begins: one segment each.
            wait_fully_indexed(settings, spec.name, spec.collection.topic, timeout=60)
    running.stop()
    assert len(Registry(settings.redis_client(), spec.name).segments()) >= 4 * 3
    assert_state_matches(settings, spec.name, workload)


def test_checkpoint_behind_the_log_start_stops_the_worker(settings, spec):
    with Producer(spec.name, settings=settings) as producer:
        producer.upsert([f"r{i}" for i in range(300)], np.ones((300, DIM), dtype=np.float32))
    ends = log_ends(settings, spec.collection.topic)
    gone = [TopicPartition(spec.collection.topic, p, end) for p, end in ends.items() if end]
    kafka_admin = AdminClient(settings.kafka_config())  # must outlive its futures
    for future in kafka_admin.delete_records(gone).values():
        future.result(30)
    worker = Worker(settings, spec.name, metrics_registry=CollectorRegistry())
    with pytest.raises(CheckpointOutOfRange, match=r"checkpoint 0 is below the log start"):
        worker.run(max_seconds=30)


def test_memory_cap_seals_early_and_loses_nothing(settings, collection_name):
    spec = CollectionSpec(collection_name, dim=64, partitions=2, seal_rows=1_000_000,
                          seal_seconds=1.0)
    admin.create_collection(settings, spec)
    metrics = CollectorRegistry()
    worker = Worker(settings, spec.name, metrics_registry=metrics, max_held_bytes=1_000_000)
    running = Running(worker.run, worker.stop, "capped-indexer")
    workload = Workload(64, np.random.default_rng(4))
    with Producer(spec.name, settings=settings) as producer:
        for _ in range(5):
            workload.send_round(producer, 4000, id_space=10_000)
    wait_fully_indexed(settings, spec.name, spec.collection.topic, timeout=120)
    running.stop()
    memory_seals = metrics.get_sample_value("streamvec_indexer_seals_total",
                                            {"collection": spec.name, "reason": "memory"})
    assert memory_seals and memory_seals >= 5, memory_seals
    assert_state_matches(settings, spec.name, workload)
