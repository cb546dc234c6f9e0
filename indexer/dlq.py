"""The dead-letter path: a bad message goes to `<topic>.dlq` with its reason and its origin."""

from __future__ import annotations

import logging

from confluent_kafka import Message, Producer

from ingest.errors import RecordError

log = logging.getLogger(__name__)


class DeadLetters:
    """Send bad messages to a collection's dead-letter topic and confirm them before commits."""

    def __init__(self, kafka_config: dict, topic: str) -> None:
        self.topic = topic
        self._producer = Producer({**kafka_config, "enable.idempotence": True, "acks": "all"})
        self._failed: list[str] = []

    def send(self, msg: Message, error: RecordError) -> None:
        """Queue the original payload with headers naming the reason and the source position."""
        headers = [
            ("sv-reason", error.reason.encode()),
            ("sv-error", error.message.encode("utf-8", "replace")[:2048]),
            ("sv-source-topic", (msg.topic() or "").encode()),
            ("sv-source-partition", str(msg.partition()).encode()),
            ("sv-source-offset", str(msg.offset()).encode()),
        ]
        log.warning('dead letter partition="%s[%d]" offset="%d" reason=%s: %s',
                    msg.topic(), msg.partition(), msg.offset(), error.reason, error.message)
        self._producer.produce(self.topic, msg.value() or b"", key=msg.key(), headers=headers,
                               on_delivery=self._on_delivery)
        self._producer.poll(0)

    def confirm(self, timeout: float = 30.0) -> None:
        """Block until every queued dead letter is acknowledged; raise if any is not.

        Called before a checkpoint that covers those messages is registered, so that a
        crash can never leave a bad record both skipped and undelivered.
        """
        remaining = self._producer.flush(timeout)
        if remaining or self._failed:
            failed, self._failed = self._failed, []
            raise RuntimeError(
                f"dead-letter topic {self.topic}: {remaining} undelivered, "
                f"{len(failed)} failed ({failed[:1]})"
            )

    def _on_delivery(self, err, msg) -> None:
        if err is not None:
            self._failed.append(err.str())
