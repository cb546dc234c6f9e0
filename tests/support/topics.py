"""Reading a whole topic back, as tests check what a producer published."""

from __future__ import annotations

from confluent_kafka import Consumer, Message, TopicPartition

from streamvec.settings import Settings
from tests.support.polling import wait_until


def read_topic(settings: Settings, topic: str, timeout: float = 60.0) -> list[Message]:
    """Every message of `topic` up to the high watermarks seen at the start, each partition's in
    order."""
    consumer = Consumer(settings.kafka_config(**{"group.id": f"reader-{topic}",
                                                 "enable.auto.commit": False}))
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        highs = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                 for p in parts}
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        seen = {p: 0 for p in parts}
        out: list[Message] = []

        def drained() -> bool:
            for msg in consumer.consume(500, timeout=0.2):
                assert msg.error() is None, msg.error()
                out.append(msg)
                seen[msg.partition()] = msg.offset() + 1
            return all(seen[p] >= high for p, high in highs.items())

        wait_until(drained, timeout=timeout, what=f"every message of {topic}")
        return out
    finally:
        consumer.close()
