"""The dead-letter path: a bad message goes to `<topic>.dlq` with its reason and its origin.

A dead letter is held until the broker acknowledges it. One that fails (the topic missing or
refusing its size, the broker away) is sent again with backoff, and `settled()` stays False
meanwhile, so the worker registers no checkpoint that covers it: a bad message is never both
skipped and undelivered, and the worker never gives up on it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType
from redis.backoff import EqualJitterBackoff

from ingest.errors import RecordError

log = logging.getLogger(__name__)

# What a dead letter copies of a bad payload by default; the rest is cut (`sv-truncated`).
DEFAULT_MAX_COPY_BYTES = 1024 * 1024
# A key is an id or nothing; a longer one is garbage and only its start is worth keeping.
MAX_KEY_COPY_BYTES = 1024
MAX_ERROR_BYTES = 2048
# Room left in the topic's limit for the headers (the error text is capped above) and the
# record batch's own framing, so that a copy cut to the limit still fits.
HEADER_RESERVE_BYTES = 16 * 1024
# Kafka's own default for `max.message.bytes`, used while the topic's value cannot be read.
KAFKA_DEFAULT_LIMIT = 1_048_588
# librdkafka refuses a `message.max.bytes` outside [1000, 1e9].
_PRODUCER_LIMITS = (1000, 1_000_000_000)
# A failed dead letter is sent again after 0.25 s, doubling up to 10 s (with jitter): an outage
# costs a handful of attempts a minute, and a repaired topic is used within seconds.
RETRY_BACKOFF = EqualJitterBackoff(cap=10.0, base=0.25)
DESCRIBE_TIMEOUT_S = 5.0
# Letters produced but not yet acknowledged, in bytes, beyond which the worker stops consuming.
MAX_UNACKED_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Letter:
    """One dead letter as sent: the (possibly cut) payload and key, and its headers."""

    value: bytes | None  # None when the bad message was a tombstone: so is its letter
    key: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    origin: str  # `topic[partition]@offset`, for logs

    @property
    def nbytes(self) -> int:
        """Bytes the letter holds in memory until it is acknowledged."""
        return len(self.value or b"") + len(self.key or b"") + sum(len(v) for _, v in self.headers)


def copy_limit(topic_limit: int, max_copy_bytes: int) -> int:
    """The most payload bytes a dead letter may copy under a topic limit of `topic_limit`."""
    return max(0, min(max_copy_bytes, topic_limit - HEADER_RESERVE_BYTES))


def make_letter(value: bytes | None, key: bytes | None, *, topic: str, partition: int, offset: int,
                error: RecordError, limit: int) -> Letter:
    """The dead letter of one bad message, its payload cut to `limit` bytes if longer."""
    headers = [
        ("sv-reason", error.reason.encode()),
        ("sv-error", error.message.encode("utf-8", "replace")[:MAX_ERROR_BYTES]),
        ("sv-source-topic", topic.encode()),
        ("sv-source-partition", str(partition).encode()),
        ("sv-source-offset", str(offset).encode()),
    ]
    if value is not None and len(value) > limit:
        headers.append(("sv-truncated", str(len(value)).encode()))
        value = value[:limit]
    if key is not None and len(key) > MAX_KEY_COPY_BYTES:
        headers.append(("sv-truncated-key", str(len(key)).encode()))
        key = key[:MAX_KEY_COPY_BYTES]
    return Letter(value, key, tuple(headers), f"{topic}[{partition}]@{offset}")


class DeadLetters:
    """Send bad messages to a collection's dead-letter topic, again and again until acknowledged.

    Usage: `dlq.send(msg, error)` for each bad message; `dlq.settled(timeout)` before
    registering a checkpoint that covers one; `dlq.problem` says why it is waiting, if it is.
    """

    def __init__(self, kafka_config: dict, topic: str, *,
                 max_copy_bytes: int = DEFAULT_MAX_COPY_BYTES,
                 on_truncated: Callable[[], None] | None = None,
                 on_retry: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.topic = topic
        self.max_copy_bytes = max_copy_bytes
        self._kafka_config = kafka_config
        self._on_truncated = on_truncated or (lambda: None)
        self._on_retry = on_retry or (lambda: None)
        self._clock = clock
        self.topic_limit = self._read_topic_limit(KAFKA_DEFAULT_LIMIT)
        self._producer = self._make_producer()
        self._broken = False  # the producer hit a fatal error: make a new one before resending
        self._seq = 0
        self._unacked: dict[int, Letter] = {}
        self._failed: dict[int, Letter] = {}
        self._failures = 0  # consecutive failed rounds, for the backoff
        self._retry_at = 0.0
        self._last_error = ""

    @property
    def problem(self) -> str | None:
        """Why dead letters wait (some failed and are to be sent again), or None."""
        if not self._failed:
            return None
        return (f"dead-letter topic {self.topic} unavailable: {len(self._failed)} dead "
                f"letter(s) waiting to be sent again ({self._last_error})")

    @property
    def blocked(self) -> bool:
        """True while no more bad messages should be taken on: some failed, or too many wait."""
        unacked = sum(letter.nbytes for letter in self._unacked.values())
        return bool(self._failed) or unacked > MAX_UNACKED_BYTES

    def send(self, msg: Message, error: RecordError) -> Letter:
        """Queue the dead letter of `msg`; never raises, a failure is retried by `settled`."""
        value = msg.value()
        # Held cut to the copy limit only; each send cuts it further to what the topic takes
        # then, so a limit lowered for a while does not cost the payload for good.
        letter = make_letter(value, msg.key(), topic=msg.topic() or "",
                             partition=msg.partition(), offset=msg.offset(), error=error,
                             limit=self.max_copy_bytes)
        self._seq += 1
        sent = self._produce(self._seq, letter)
        cut = len(sent.value or b"") < len(value or b"")
        if cut:
            self._on_truncated()
        log.warning('dead letter partition="%s[%d]" offset="%d" reason=%s%s: %s', msg.topic(),
                    msg.partition(), msg.offset(), error.reason,
                    f" (copy cut to {len(sent.value or b'')} of {len(value or b'')} bytes)"
                    if cut else "",
                    error.message)
        return sent

    def settled(self, timeout: float = 30.0) -> bool:
        """True once every dead letter queued so far is acknowledged; waits up to `timeout` s.

        Resends failed letters when their backoff has passed; never raises.
        """
        if self._failed and self._clock() >= self._retry_at:
            self._resend()
        if self._unacked:
            self._producer.flush(timeout)
        else:
            self._producer.poll(0)
        return not self._unacked and not self._failed

    def close(self, timeout: float = 10.0) -> None:
        """Give what is in flight `timeout` s to be delivered, then let the rest go.

        A letter left undelivered is sent again by the partition's next owner, which replays
        the partition from its checkpoint (the letter's offset is not covered yet).
        """

        remaining = self._producer.flush(timeout)
        if remaining or self._failed:
            log.warning("dead-letter topic %s: %d undelivered at close; the partition's next "
                        "owner sends them again", self.topic, remaining + len(self._failed))

    def _produce(self, seq: int, letter: Letter) -> Letter:
        """Send `letter` cut to the topic's limit as last read; return the copy sent."""
        sent = _recut(letter, copy_limit(self.topic_limit, self.max_copy_bytes))
        try:
            self._producer.produce(self.topic, sent.value, key=sent.key,
                                   headers=list(sent.headers),
                                   on_delivery=partial(self._on_delivery, seq))
        except (BufferError, KafkaException) as exc:  # queue full, or refused on the spot
            self._fail(seq, letter, str(exc), fatal=_is_fatal(exc))
        else:
            self._unacked[seq] = letter
        self._producer.poll(0)
        return sent

    def _on_delivery(self, seq: int, err: KafkaError | None, _msg: Message) -> None:
        letter = self._unacked.pop(seq, None)
        if letter is None:
            return
        if err is not None:
            self._fail(seq, letter, err.str(), fatal=err.fatal())
        elif not self._failed:
            self._failures = 0

    def _fail(self, seq: int, letter: Letter, why: str, *, fatal: bool) -> None:
        if not self._failed:
            log.warning("dead letter %s not delivered to %s (%s); sending it again with "
                        "backoff, no checkpoint covers it until then", letter.origin,
                        self.topic, why)
        self._failed[seq] = letter
        self._last_error = why
        self._broken = self._broken or fatal
        self._retry_at = self._clock() + RETRY_BACKOFF.compute(self._failures + 1)

    def _resend(self) -> None:
        """Send the failed letters again, under the topic's limit as it is now."""
        self._failures += 1
        limit = self._read_topic_limit(self.topic_limit)
        if limit != self.topic_limit or self._broken:
            self._producer.flush(0)
            self.topic_limit = limit
            self._producer = self._make_producer()
            self._broken = False
        failed, self._failed = self._failed, {}
        for seq, letter in sorted(failed.items()):
            self._on_retry()
            self._produce(seq, letter)

        self._retry_at = self._clock() + RETRY_BACKOFF.compute(self._failures + 1)

    def _make_producer(self) -> Producer:
        low, high = _PRODUCER_LIMITS
        return Producer({**self._kafka_config, "enable.idempotence": True, "acks": "all",
                         "message.max.bytes": min(high, max(low, self.topic_limit))})

    def _read_topic_limit(self, fallback: int) -> int:
        """The topic's `max.message.bytes`, or `fallback` while it cannot be read."""
        admin = AdminClient(self._kafka_config)
        resource = ConfigResource(ResourceType.TOPIC, self.topic)
        try:
            configs = admin.describe_configs([resource])[resource].result(DESCRIBE_TIMEOUT_S)
            return int(configs["max.message.bytes"].value)
        except Exception as exc:  # noqa: BLE001 - missing topic, broker away: any answer is late
            log.warning("dead-letter topic %s: cannot read max.message.bytes (%s); assuming %d",
                        self.topic, exc, fallback)
            return fallback


def _recut(letter: Letter, limit: int) -> Letter:
    """`letter` with its payload cut to `limit` bytes (what the topic takes now), if longer."""
    if letter.value is None or len(letter.value) <= limit:
        return letter
    headers = letter.headers
    if not any(name == "sv-truncated" for name, _ in headers):
        headers += (("sv-truncated", str(len(letter.value)).encode()),)
    return Letter(letter.value[:limit], letter.key, headers, letter.origin)


def _is_fatal(exc: BaseException) -> bool:
    err = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
    return isinstance(err, KafkaError) and err.fatal()
