"""The pinned drift reference: the latest N rows of a collection, stored in Redis.

`sv:{NAME}:drift:ref` is a hash: `vectors` (rows x dim float32, little-endian, row-major, raw
bytes), `dim`, `rows`, `pinned_at` (unix seconds) and `source` (`segments` or `topic`).
Nothing is pickled. When no reference is pinned the monitor compares against the first rows
it reads after starting, which a restart forgets; pinning makes the reference explicit.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import redis
from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from indexer.registry import Registry
from indexer.store import SegmentStore
from ingest import audit, catalog, message
from ingest.errors import RecordError
from ingest.names import CollectionName
from ingest.spec import CollectionSpec
from monitor import drift
from monitor.errors import PinError
from monitor.sealed import SealedView, latest_rows
from monitor.windows import window_mask
from streamvec.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_ROWS = 1000
SOURCES = ("auto", "segments", "topic")
# Messages read back from a partition's end in the first round; each round reads 4x more.
FIRST_SPAN = 64
READ_TIMEOUT_S = 30.0
_DTYPE = np.dtype("<f4")


@dataclass(frozen=True, slots=True)
class Reference:
    """A pinned reference window and where it came from."""

    vectors: np.ndarray
    pinned_at: float
    source: str


def ref_key(collection: str) -> str:
    """The Redis key of a collection's pinned reference."""
    return CollectionName.parse(collection).key("drift:ref")


def store(client: redis.Redis, collection: str, vectors: np.ndarray, source: str) -> Reference:
    """Replace the pinned reference of `collection` with `vectors` (rows, dim)."""
    arr = np.ascontiguousarray(vectors, dtype=_DTYPE)
    if arr.ndim != 2 or not arr.size or not np.isfinite(arr).all():
        raise PinError(f"a reference needs finite (rows, dim) vectors, got {arr.shape}")
    ref = Reference(arr, round(time.time(), 3), source)
    with client.pipeline(transaction=True) as pipe:
        pipe.delete(ref_key(collection))
        pipe.hset(ref_key(collection), mapping={
            "vectors": arr.tobytes(), "dim": arr.shape[1], "rows": arr.shape[0],
            "pinned_at": f"{ref.pinned_at:.3f}", "source": source})
        pipe.execute()
    return ref


def pinned_at(client: redis.Redis, collection: str) -> float | None:
    """When the current reference was pinned, or None if none is."""
    raw = client.hget(ref_key(collection), "pinned_at")
    return None if raw is None else float(raw)


def load(client: redis.Redis, collection: str) -> Reference | None:
    """The pinned reference, or None; PinError if the stored hash is inconsistent."""
    fields = client.hgetall(ref_key(collection))
    if not fields:
        return None
    try:
        dim, rows = int(fields[b"dim"]), int(fields[b"rows"])
        blob = fields[b"vectors"]
        if dim < 1 or rows < 1 or len(blob) != rows * dim * _DTYPE.itemsize:
            raise ValueError(f"{len(blob)} bytes for {rows} x {dim} float32")
        vectors = np.frombuffer(blob, dtype=_DTYPE).reshape(rows, dim).astype(np.float32)
        return Reference(vectors, float(fields[b"pinned_at"]),
                         fields.get(b"source", b"").decode())
    except (KeyError, ValueError) as exc:
        raise PinError(f"{ref_key(collection)} is damaged: {exc}") from None


def pin_latest(settings: Settings, collection: str, rows: int = DEFAULT_ROWS,
               source: str = "auto") -> Reference:
    """Pin the latest `rows` rows as the reference and record it in the audit trail.

    `segments` reads the registered segments, `topic` the end of the topic; `auto` takes the
    segments when they hold enough rows, else whichever of the two yields more.
    """
    if source not in SOURCES:
        raise PinError(f"source must be one of {SOURCES}, got {source!r}")
    if rows < drift.MIN_ROWS:
        raise PinError(f"a reference needs at least {drift.MIN_ROWS} rows, got {rows}")
    client = settings.redis_client()
    spec = catalog.load_spec(client, collection)
    picked, used = np.zeros((0, spec.dim), dtype=np.float32), source
    if source in ("auto", "segments"):
        # Pinning from segments may fetch them from the object store.
        view = SealedView(Registry(client, spec.name), SegmentStore.from_settings(settings))
        picked, used = latest_rows(view.parts(), rows), "segments"
    if source == "topic" or (source == "auto" and len(picked) < rows):
        from_topic = latest_from_topic(settings, spec, rows)
        if len(from_topic) > len(picked):
            picked, used = from_topic, "topic"
    if len(picked) < drift.MIN_ROWS:
        raise PinError(f"collection {spec.name} has {len(picked)} rows to pin from "
                       f"({used}); a reference needs at least {drift.MIN_ROWS}")
    ref = store(client, spec.name, picked, used)
    audit.record(client, "drift.pin_reference", spec.name,
                 {"rows": int(len(picked)), "dim": int(picked.shape[1]), "source": used,
                  "requested_rows": rows}, settings.actor)
    log.info("collection=%s drift reference pinned: %d rows from %s", spec.name, len(picked),
             used)
    return ref


def latest_from_topic(settings: Settings, spec: CollectionSpec, rows: int,
                      timeout: float = READ_TIMEOUT_S) -> np.ndarray:
    """The `rows` upserts with the latest event times, read back from the topic's end."""
    consumer = Consumer(settings.kafka_config(**{
        "group.id": f"{spec.collection.topic}.monitor", "enable.auto.commit": False,
        "enable.partition.eof": True}))
    try:
        meta = consumer.list_topics(spec.collection.topic, timeout=timeout)
        topic = meta.topics.get(spec.collection.topic)
        if topic is None or topic.error is not None:
            raise PinError(f"topic {spec.collection.topic} cannot be read: "
                           f"{None if topic is None else topic.error}")
        found = [_partition_tail(consumer, spec, p, rows, timeout)
                 for p in sorted(topic.partitions)]
    finally:
        consumer.close()
    times = np.concatenate([t for t, _ in found]) if found else np.zeros(0, np.int64)
    if not len(times):
        return np.zeros((0, spec.dim), dtype=np.float32)
    vectors = np.concatenate([v for _, v in found])
    newest = np.argsort(-times, kind="stable")[:rows]
    return vectors[np.sort(newest)]


def _partition_tail(consumer: Consumer, spec: CollectionSpec, partition: int, rows: int,
                    timeout: float) -> tuple[np.ndarray, np.ndarray]:
    """Up to about `rows` of the partition's last upserts: (event times, vectors)."""
    tp = TopicPartition(spec.collection.topic, partition)
    low, end = consumer.get_watermark_offsets(tp, timeout=timeout)
    times: list[np.ndarray] = []
    vectors: list[np.ndarray] = []
    held, span = 0, FIRST_SPAN
    while held < rows and end > low:
        start = max(low, end - span)
        for msg in _read_range(consumer, tp, start, end, timeout):
            try:
                batch = message.decode_kafka(msg, spec)
            except RecordError:
                continue  # the indexer dead-letters these; a reference only needs good rows
            keep = window_mask(batch)
            times.append(np.asarray(batch.event_time_ms[keep]))
            vectors.append(np.array(batch.vectors[keep], dtype=np.float32))
            held += int(np.count_nonzero(keep))
        end, span = start, span * 4
    if not times:
        return np.zeros(0, np.int64), np.zeros((0, spec.dim), np.float32)
    return np.concatenate(times), np.concatenate(vectors)


def _read_range(consumer: Consumer, tp: TopicPartition, start: int, end: int,
                timeout: float) -> list[Message]:
    """The messages of one partition at offsets [start, end)."""
    consumer.assign([TopicPartition(tp.topic, tp.partition, start)])
    deadline = time.monotonic() + timeout
    out: list[Message] = []
    while time.monotonic() < deadline:
        for msg in consumer.consume(num_messages=500, timeout=0.5):
            # Messages fetched before the re-assignment can still arrive: keep to the range.
            if msg.partition() != tp.partition:
                continue
            err, offset = msg.error(), msg.offset()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF and offset >= end:
                    return out
                continue
            if start <= offset < end:
                out.append(msg)
            if offset == end - 1:
                return out
    raise PinError(f"reading {tp.topic}[{tp.partition}] offsets [{start}, {end}) took "
                   f"longer than {timeout:g}s")
