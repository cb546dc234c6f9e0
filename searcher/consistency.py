"""Consistency levels (invariant 6): what a level records at arrival, when it is met."""

# Nothing here blocks: the server polls `reached` while a request waits and answers
# consistency_timeout itself when its deadline passes.

from __future__ import annotations

import math

from confluent_kafka import KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from searcher.errors import QueryError
from searcher.query import Consistency
from streamvec.settings import Settings

WATERMARK_TIMEOUT_S = 5.0


class Watermarks:
    """Fetches the current log end of every partition of a topic, uncached."""

    def __init__(self, settings: Settings, topic: str, partitions: list[int]) -> None:
        self.topic = topic
        self.partitions = list(partitions)
        self._admin = AdminClient(settings.kafka_config())

    def fetch(self, timeout: float = WATERMARK_TIMEOUT_S) -> dict[int, int]:
        """{partition: high watermark}, asked of the brokers now; QueryError if they cannot say."""
        wanted = {TopicPartition(self.topic, p): OffsetSpec.latest() for p in self.partitions}
        try:
            futures = self._admin.list_offsets(wanted, request_timeout=timeout)
            return {tp.partition: f.result(timeout).offset for tp, f in futures.items()}
        except (KafkaException, TimeoutError) as exc:
            raise QueryError("internal",
                             f"cannot read the log ends of {self.topic}: {exc}") from None


def reached(consistency: Consistency, arrival: object, positions: dict[int, int],
            caught_up_at: dict[int, float], now: float) -> bool:
    """True once an answer computed now meets the level; `arrival` is what arrival_state gave."""
    level = consistency.level
    if level == "eventual":
        return True
    if level == "session":
        wanted = consistency.offsets or {}
        return all(positions.get(int(p), -1) > int(o) for p, o in wanted.items())
    if level == "strong":
        if not isinstance(arrival, dict):
            return False
        return all(positions.get(p, -1) >= high for p, high in arrival.items())
    if level == "bounded":
        bound_s = max(consistency.bound_ms or 0, 0) / 1000.0
        return all(now - caught_up_at.get(p, -math.inf) <= bound_s for p in positions)
    return False
