"""The indexer never stops: a huge poison message, a dead-letter topic that refuses, a Redis
restart under load and a rebalance in the middle of a build."""

from __future__ import annotations

import errno
import json
import os
import signal
import threading
import urllib.error
import urllib.request
from contextlib import ExitStack

import numpy as np
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka import Producer as KafkaProducer
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from indexer.dlq import DEFAULT_MAX_COPY_BYTES
from indexer.registry import Registry
from indexer.worker import Worker
from ingest import admin
from ingest.admin import TOPIC_MAX_MESSAGE_BYTES
from ingest.producer import Producer
from ingest.spec import CollectionSpec
from streamvec.devstack.ports import LOOPBACK, free_port
from streamvec.devstack.redis import RedisServer
from tests.support.polling import wait_until
from tests.support.stack import IndexerThread, Running
from tests.support.workers import (
    Workload,
    assert_state_matches,
    spawn_worker,
    wait_fully_indexed,
)

pytestmark = pytest.mark.integration

DIM = 8


def make_collection(settings, name: str, partitions: int) -> CollectionSpec:
    """Create a small collection that seals every 1000 rows or 0.3 s."""
    spec = CollectionSpec(name, dim=DIM, partitions=partitions, seal_rows=1000,
                          seal_seconds=0.3)
    admin.create_collection(settings, spec)
    return spec


def produce_raw(settings, topic: str, payload: bytes, partition: int = 0) -> int:
    """Write one message as any Kafka client could; return its offset."""
    raw = KafkaProducer(settings.kafka_config(**{"message.max.bytes": TOPIC_MAX_MESSAGE_BYTES}))
    offsets: list[int] = []
    raw.produce(topic, payload, partition=partition,
                on_delivery=lambda err, msg: offsets.append(-1 if err else msg.offset()))
    assert raw.flush(30) == 0
    assert offsets and offsets[0] >= 0, offsets
    return offsets[0]


def send_rows(producer: Producer, workload: Workload, prefix: str, n: int) -> None:
    """Upsert `n` new rows through the SDK and expect them."""
    ids = [f"{prefix}-{i}" for i in range(n)]

    vectors = workload.rng.standard_normal((n, DIM)).astype(np.float32)
    producer.upsert(ids, vectors)
    producer.flush()
    workload.expected.update(zip(ids, vectors, strict=True))


def read_dead_letters(settings, topic: str, expect: int):
    """Every message of the dead-letter topic (value, headers), once `expect` are there."""
    consumer = Consumer(settings.kafka_config(**{
        "group.id": "dlq-reader", "enable.auto.commit": False,
        "fetch.max.bytes": 64 * 2**20, "max.partition.fetch.bytes": 16 * 2**20}))
    consumer.assign([TopicPartition(topic, 0, 0)])
    found: list[tuple[bytes, dict[str, bytes]]] = []

    def drain() -> bool:
        for msg in consumer.consume(100, timeout=0.2):
            assert msg.error() is None, msg.error()
            found.append((msg.value(), dict(msg.headers() or [])))
        return len(found) >= expect

    try:
        wait_until(drain, timeout=60, what=f"{expect} dead letter(s)")
        consumer.consume(100, timeout=0.5)  # none beyond them
    finally:
        consumer.close()
    return found


def set_topic_limit(settings, topic: str, limit: int) -> None:
    """Change a topic's `max.message.bytes` on the broker."""
    client = AdminClient(settings.kafka_config())
    resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
        ConfigEntry("max.message.bytes", str(limit),
                    incremental_operation=AlterConfigOpType.SET)])
    for future in client.incremental_alter_configs([resource]).values():
        future.result(30)


def test_a_2mb_garbage_message_is_dead_lettered_cut_and_the_rows_behind_it_land(
        settings, collection_name):
    spec = make_collection(settings, collection_name, partitions=1)
    garbage = np.random.default_rng(5).bytes(2 * 2**20)
    bad_offset = produce_raw(settings, spec.collection.topic, garbage)
    workload = Workload(DIM, np.random.default_rng(6))
    with Producer(spec.name, settings=settings) as producer:
        send_rows(producer, workload, "after", 500)
    running = IndexerThread(settings, spec.name)
    wait_fully_indexed(settings, spec.name, spec.collection.topic, timeout=60)
    assert running.thread.is_alive() and running.error is None, running.error
    running.stop()

    assert_state_matches(settings, spec.name, workload)
    registry = Registry(settings.redis_client(), spec.name)
    assert sum(r.rows for r in registry.segments()) == 500
    [(value, headers)] = read_dead_letters(settings, spec.collection.dlq_topic, expect=1)
    assert value == garbage[:DEFAULT_MAX_COPY_BYTES]
    assert headers["sv-truncated"] == str(len(garbage)).encode()
    assert headers["sv-reason"] == b"bad_magic"
    assert headers["sv-source-topic"] == spec.collection.topic.encode()
    assert headers["sv-source-partition"] == b"0"
    assert headers["sv-source-offset"] == str(bad_offset).encode()
    assert running.sample("streamvec_indexer_dlq_truncated_total", collection=spec.name) == 1


def test_an_unavailable_dead_letter_topic_holds_the_checkpoint_until_it_is_back(
        settings, collection_name):
    spec = make_collection(settings, collection_name, partitions=1)
    dlq = spec.collection.dlq_topic
    set_topic_limit(settings, dlq, 1)  # no record fits: every dead letter is refused
    workload = Workload(DIM, np.random.default_rng(7))
    with Producer(spec.name, settings=settings) as producer:
        send_rows(producer, workload, "before", 100)
        bad_offset = produce_raw(settings, spec.collection.topic, b"not a record" * 100)
        send_rows(producer, workload, "after", 100)
    running = IndexerThread(settings, spec.name)
    registry = Registry(settings.redis_client(), spec.name)

    def retries() -> float:
        return running.sample("streamvec_indexer_dependency_retries_total",
                              collection=spec.name, dependency="dlq") or 0.0

    wait_until(lambda: retries() >= 2, timeout=60, what="the dead letter to be sent again")
    assert registry.checkpoint(0) <= bad_offset
    assert running.thread.is_alive() and running.error is None, running.error
    assert "dead-letter topic" in (running.worker.problem() or "")
    assert running.sample("streamvec_indexer_unavailable", collection=spec.name,
                          dependency="dlq") == 1

    set_topic_limit(settings, dlq, TOPIC_MAX_MESSAGE_BYTES)
    wait_fully_indexed(settings, spec.name, spec.collection.topic, timeout=60)
    wait_until(lambda: running.worker.problem() is None, timeout=30, what="the worker ready")
    running.stop()
    [(value, headers)] = read_dead_letters(settings, dlq, expect=1)
    assert value == b"not a record" * 100
    assert headers["sv-source-offset"] == str(bad_offset).encode()
    assert headers["sv-reason"] == b"bad_magic"
    assert_state_matches(settings, spec.name, workload)


class GatedWorker(Worker):
    """A worker whose builds wait for a gate: a build that runs as long as the test likes."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()
        self.building = threading.Event()

    def _build(self, *args, **kwargs):
        self.building.set()
        self.gate.wait(120)
        return super()._build(*args, **kwargs)


def test_a_rebalance_during_a_long_build_drops_it_and_the_worker_goes_on(
        settings, collection_name):
    spec = make_collection(settings, collection_name, partitions=2)
    workload = Workload(DIM, np.random.default_rng(8))
    slow = GatedWorker(settings, spec.name, metrics_registry=CollectorRegistry())
    with ExitStack() as stack:
        first = Running(slow.run, slow.stop, "gated-indexer")
        stack.callback(first.stop)
        stack.callback(slow.gate.set)  # runs first: never leave a build waiting
        producer = stack.enter_context(Producer(spec.name, settings=settings))
        workload.send_round(producer, 3000, id_space=2000)
        producer.flush()
        wait_until(slow.building.is_set, timeout=60, what="a build to start")
        second = IndexerThread(settings, spec.name)
        stack.callback(second.stop)
        # The revoke must not wait for the gated build: the group settles while it runs.
        wait_until(lambda: second.worker.parts, timeout=45,
                   what="the second worker to own a partition")
        assert first.thread.is_alive() and first.error is None, first.error
        slow.gate.set()
        workload.send_round(producer, 3000, id_space=2000)
        producer.flush()
        wait_fully_indexed(settings, spec.name, spec.collection.topic, timeout=120)
        assert first.thread.is_alive() and second.thread.is_alive()
    assert_state_matches(settings, spec.name, workload)


def readiness(port: int) -> tuple[int, str]:
    """The worker's /readyz answer: HTTP status and reason."""
    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/readyz", timeout=2) as reply:
            return reply.status, json.loads(reply.read())["reason"]
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())["reason"]
    except OSError as exc:  # not serving yet
        return 0, str(exc)


def test_a_redis_restart_under_load_is_ridden_out_with_every_row_registered_once(
        settings, collection_name, tmp_path):
    server = RedisServer(tmp_path / "redis", free_port())
    server.start(die_with_parent=True)
    try:
        server.wait_healthy(30)
        own = settings.model_copy(update={"redis": SecretStr(server.url)})
        spec = make_collection(own, collection_name, partitions=2)
        port = free_port()
        worker = spawn_worker(own, spec.name, tmp_path, tag="redis-restart",
                              extra_args=("--metrics-port", str(port)))
        workload = Workload(DIM, np.random.default_rng(9))
        with Producer(spec.name, settings=own) as producer:
            wait_until(lambda: readiness(port)[0] == 200, timeout=60, what="the worker ready")
            workload.send_round(producer, 3000, id_space=5000)
            producer.flush()
            wait_fully_indexed(own, spec.name, spec.collection.topic, timeout=60)

            os.kill(server.pid, signal.SIGKILL)
            wait_until(lambda: not server.running(), timeout=10, what="Redis gone")
            workload.send_round(producer, 3000, id_space=5000)  # Kafka only: no Redis needed
            producer.flush()
            # Sealing round 2 reads the build target from Redis: the loop meets the outage.
            wait_until(lambda: not worker.alive()
                       or "Redis unreachable while" in worker.log.read_text(),
                       timeout=30, what="the worker to meet the outage")
            assert worker.alive(), worker.log.read_text()[-3000:]

            status, reason = wait_until(lambda: (s := readiness(port))[0] == 503 and s,
                                        timeout=30, what="the worker not ready")
            assert "Redis" in reason, reason
            assert worker.alive(), worker.log.read_text()[-3000:]

            server.start(die_with_parent=True)
            server.wait_healthy(30)
            workload.send_round(producer, 3000, id_space=5000)
            producer.flush()
            wait_fully_indexed(own, spec.name, spec.collection.topic, timeout=120)
        wait_until(lambda: readiness(port)[0] == 200, timeout=30, what="the worker ready again")
        assert worker.alive(), worker.log.read_text()[-3000:]
        assert worker.terminate() == 0, worker.log.read_text()[-3000:]
        assert_state_matches(own, spec.name, workload)
    finally:
        server.stop()


class FailingStoreWorker(Worker):
    """A worker whose builds raise `failure` while `failing` is set, as a full disk makes them."""

    def __init__(self, *args, failure: Exception, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.failure = failure
        self.failing = threading.Event()
        self.failing.set()

    def _build(self, *args, **kwargs):
        if self.failing.is_set():
            raise self.failure
        return super()._build(*args, **kwargs)


def test_a_full_disk_holds_the_checkpoint_and_the_build_is_retried_until_space_is_back(
        settings, collection_name):
    spec = make_collection(settings, collection_name, partitions=1)
    workload = Workload(DIM, np.random.default_rng(10))
    metrics = CollectorRegistry()
    worker = FailingStoreWorker(settings, spec.name, metrics_registry=metrics,
                                failure=OSError(errno.ENOSPC, "No space left on device"))
    running = Running(worker.run, worker.stop, "full-disk-indexer")
    try:
        with Producer(spec.name, settings=settings) as producer:
            send_rows(producer, workload, "full", 300)

        def retries() -> float:
            return metrics.get_sample_value("streamvec_indexer_dependency_retries_total",
                                            {"collection": spec.name,
                                             "dependency": "store"}) or 0.0

        wait_until(lambda: retries() >= 2, timeout=60, what="the build to be tried again")
        assert running.thread.is_alive() and running.error is None, running.error
        assert Registry(settings.redis_client(), spec.name).checkpoint(0) == 0
        assert (worker.problem() or "").startswith("segment store unavailable: writing segment "
                                                   "p0000-000000000000-")
        assert "No space left on device" in worker.problem()
        assert metrics.get_sample_value("streamvec_indexer_unavailable",
                                        {"collection": spec.name, "dependency": "store"}) == 1

        worker.failing.clear()  # space is back
        wait_fully_indexed(settings, spec.name, spec.collection.topic, timeout=60)
        wait_until(lambda: worker.problem() is None, timeout=30, what="the worker ready")
        assert metrics.get_sample_value("streamvec_indexer_unavailable",
                                        {"collection": spec.name, "dependency": "store"}) == 0
    finally:
        worker.failing.clear()
        running.stop()
    assert_state_matches(settings, spec.name, workload)


def test_a_build_that_fails_on_a_bug_stops_the_worker(settings, collection_name):
    spec = make_collection(settings, collection_name, partitions=1)
    worker = FailingStoreWorker(settings, spec.name, metrics_registry=CollectorRegistry(),
                                failure=ValueError("a bug in the build"))
    running = Running(worker.run, worker.stop, "buggy-indexer")
    with Producer(spec.name, settings=settings) as producer:
        send_rows(producer, Workload(DIM, np.random.default_rng(11)), "bug", 10)
    wait_until(lambda: not running.thread.is_alive(), timeout=60, what="the worker to stop")
    assert isinstance(running.error, ValueError) and str(running.error) == "a bug in the build"
