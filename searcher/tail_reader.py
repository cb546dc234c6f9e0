"""The tail's Kafka side: one consumer over every partition, assigned by hand, on a thread."""

# No consumer group and no commits: a searcher is a reader of the log, and where it starts is
# decided by the registry checkpoints (through the sink), never by committed offsets.

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Protocol

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from ingest import record
from ingest.errors import RecordError
from ingest.record import Batch
from ingest.spec import CollectionSpec
from streamvec.settings import Settings

log = logging.getLogger(__name__)

POLL_TIMEOUT_S = 0.1
POLL_MESSAGES = 1000
CONSUMER_CONFIG = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    # A checkpoint below the log start means lost records: say so instead of jumping ahead.
    "auto.offset.reset": "error",
    # Fetch responses carry the high watermarks that `bounded` reads; answer idle fetches often.
    "fetch.wait.max.ms": 100,
    "max.partition.fetch.bytes": 16 * 2**20,
    "fetch.max.bytes": 64 * 2**20,
}
# Cached watermarks read as this until the first fetch response arrives.
_UNKNOWN = -1001


@dataclass(frozen=True, slots=True)
class TailMessage:
    """One message read: its position and its rows, or None for a record that failed to decode."""

    partition: int
    offset: int
    batch: Batch | None


class TailSink(Protocol):
    """What the reader feeds: the engine, which applies messages under its lock."""

    def start_offsets(self) -> tuple[dict[int, int], int]:
        """Where each partition must be read from, and the rewind generation they reflect."""

    def reassigned(self, generation: int) -> None:
        """The consumer now reads from the offsets of that generation."""

    def apply(self, messages: list[TailMessage]) -> None:
        """Take a batch of messages, in order per partition."""

    def observe(self, highs: dict[int, int], now: float) -> None:
        """The log ends last seen in fetch responses, per partition."""


class TailReader:
    """Reads every partition of a collection's topic into a sink, on its own thread."""

    def __init__(self, settings: Settings, spec: CollectionSpec, partitions: list[int],
                 sink: TailSink) -> None:
        self.spec = spec
        self.topic = spec.collection.topic
        self.partitions = list(partitions)
        self.sink = sink
        self._consumer = Consumer(settings.kafka_config(
            **{"group.id": f"{self.topic}.searcher", **CONSUMER_CONFIG}))
        self._stop = threading.Event()
        self._reassign = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sv-tail-{spec.name}",
                                        daemon=True)

    def start(self) -> None:
        """Assign the partitions at the sink's start offsets and start reading."""
        self._assign()
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop reading and close the consumer."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._consumer.close()

    def request_reassign(self) -> None:
        """Re-read the sink's start offsets and seek there, from the reader thread."""
        self._reassign.set()

    def _assign(self) -> None:
        offsets, generation = self.sink.start_offsets()
        self._consumer.assign([TopicPartition(self.topic, p, offsets.get(p, 0))
                               for p in self.partitions])
        self.sink.reassigned(generation)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception:  # keep tailing: a failed turn is retried by the next one
                log.exception("topic=%s tail turn failed", self.topic)
                self._stop.wait(1.0)

    def _step(self) -> None:
        if self._reassign.is_set():
            self._reassign.clear()
            self._assign()
        decoded = []
        for msg in self._poll():
            if msg.error() is not None:
                self._report(msg)
            else:
                decoded.append(self._decode(msg))
        if decoded:
            self.sink.apply(decoded)
        self.sink.observe(self._highs(), time.monotonic())

    def _poll(self) -> list[Message]:
        """Wait for one message, then take what else is already fetched without waiting."""
        # consume(n, timeout) alone holds a lone message until n arrive or the timeout passes,
        # which would add the whole timeout to read-your-writes latency whenever ingest is quiet.
        first = self._consumer.poll(POLL_TIMEOUT_S)
        if first is None:
            return []
        return [first, *self._consumer.consume(POLL_MESSAGES - 1, timeout=0)]

    def _decode(self, msg: Message) -> TailMessage:
        try:
            batch = record.decode_valid(msg.value() or b"", dim=self.spec.dim,
                                        model_version=self.spec.model_version)
        except RecordError:
            batch = None  # the indexer dead-letters it; here it only advances the position
        return TailMessage(msg.partition(), msg.offset(), batch)

    def _highs(self) -> dict[int, int]:
        highs = {}
        for p in self.partitions:
            _, high = self._consumer.get_watermark_offsets(TopicPartition(self.topic, p),
                                                          cached=True)
            if high != _UNKNOWN and high >= 0:
                highs[p] = high
        return highs

    def _report(self, msg: Message) -> None:
        err = msg.error()
        if err.code() == KafkaError._PARTITION_EOF:
            return
        level = logging.ERROR if err.fatal() or err.code() in (
            KafkaError.OFFSET_OUT_OF_RANGE, KafkaError._AUTO_OFFSET_RESET) else logging.WARNING
        log.log(level, 'partition="%s[%s]" tail error: %s', self.topic, msg.partition(),
                err.str())
