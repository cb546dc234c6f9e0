"""The test harness itself: the session's Kafka and Redis are real, reachable and isolated."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from ingest.names import CollectionName
from streamvec.devstack.process import pid_alive
from streamvec.settings import LOCAL_KAFKA_CONTROLLER_PORT, LOCAL_KAFKA_PORT, LOCAL_REDIS_PORT

pytestmark = pytest.mark.integration


def _create_topic(admin: AdminClient, topic: str, partitions: int) -> None:
    futures = admin.create_topics([NewTopic(topic, num_partitions=partitions)], request_timeout=30)
    futures[topic].result(timeout=30)


def _consume_one(settings, topic: str, partition: int, deadline_s: float = 30.0):
    consumer = Consumer(
        settings.kafka_config(
            **{
                "group.id": f"g-{topic}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
    )
    try:
        consumer.assign([TopicPartition(topic, partition, 0)])
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                return msg
            if msg is not None and msg.error().code() != KafkaError._PARTITION_EOF:
                raise AssertionError(f"consumer error: {msg.error()}")
        raise AssertionError(f"no message on {topic}[{partition}] within {deadline_s} s")
    finally:
        consumer.close()


def test_topic_with_three_partitions_round_trips_a_message(settings, collection_name):
    topic = CollectionName.parse(collection_name).topic
    admin = AdminClient(settings.kafka_config())
    _create_topic(admin, topic, partitions=3)
    assert len(admin.list_topics(topic, timeout=10).topics[topic].partitions) == 3

    producer = Producer(settings.kafka_config())
    producer.produce(topic, key=b"id-1", value=b"hello", partition=2)
    assert producer.flush(30) == 0

    msg = _consume_one(settings, topic, partition=2)
    assert (msg.key(), msg.value(), msg.partition(), msg.offset()) == (b"id-1", b"hello", 2, 0)


def test_broker_does_not_create_topics_on_use(settings, collection_name):
    admin = AdminClient(settings.kafka_config())
    topic = f"sv.{collection_name}.never-created"
    producer = Producer(settings.kafka_config(**{"message.timeout.ms": 3000}))
    producer.produce(topic, b"x")
    producer.flush(10)
    assert topic not in admin.list_topics(timeout=10).topics


def test_redis_set_get_and_aof(redis_client, redis_server, collection_name):
    key = CollectionName.parse(collection_name).key("probe")
    redis_client.set(key, b"value")
    assert redis_client.get(key) == b"value"
    assert redis_client.config_get("appendonly") == {"appendonly": "yes"}
    assert redis_client.config_get("bind")["bind"] == "127.0.0.1"
    assert str(redis_server.data_dir) == redis_client.config_get("dir")["dir"]


def test_settings_point_at_the_session_servers(settings, kafka_server, redis_server, tmp_path):
    assert settings.kafka == kafka_server.bootstrap
    assert settings.redis_url == redis_server.url
    assert settings.store == tmp_path / "snapshots"
    assert settings.redis_client().ping() is True
    # The servers are this session's own children, on ports of their own.
    for server in (kafka_server, redis_server):
        assert server.pid is not None and pid_alive(server.pid)
    assert kafka_server.port not in (LOCAL_KAFKA_PORT, LOCAL_KAFKA_CONTROLLER_PORT)
    assert redis_server.port != LOCAL_REDIS_PORT
