"""The producer SDK: upserts and deletes of one collection, partitioned by id, offsets back."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
from confluent_kafka import KafkaError, Message
from confluent_kafka import Producer as KafkaProducer
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from ingest import catalog, jsonrecord, record
from ingest.errors import (
    DeliveryError,
    ReadOnlyCollection,
    RecordError,
    SpecError,
    SpecUnavailable,
)
from ingest.partition import partitions_for
from ingest.spec import CollectionSpec
from streamvec import redisconn
from streamvec.settings import Settings

log = logging.getLogger(__name__)

# Kafka's own default record cap is 1 MB; staying just under it keeps messages acceptable
# to a broker whose topic config was not raised, while still holding ~600 rows at 384-d.
DEFAULT_MAX_MESSAGE_BYTES = 1_000_000 - 16 * 1024
# Reading the collection's spec at start-up gives up after this many seconds (each connect
# and reply, retries included), so a frozen Redis fails the constructor instead of hanging it.
DEFAULT_SPEC_TIMEOUT_S = 10.0
# A spec file bigger than this is not a spec.
MAX_SPEC_FILE_BYTES = 64 * 1024
FORMATS = ("binary", "json")


class Producer:
    """Publish rows of one collection to its topic; `flush()` returns the offsets delivered.

    Example::

        with Producer("products") as p:
            p.upsert(["a", "b"], vectors)
            offsets = p.flush()   # {partition: last offset}, for a `session` query

    The spec comes from Redis, or from `spec`: a CollectionSpec or the path of a JSON file
    holding one (what `streamvec collection describe NAME --json` prints will do), in which
    case the producer needs Kafka only. Rows go to partitions by the spec's partitioner.
    `format="binary"` sends batches of rows (ingest/record.py); `format="json"` sends one
    keyed JSON record per row (ingest/jsonrecord.py), as any Kafka producer could.
    """

    def __init__(
        self,
        collection: str | None = None,
        *,
        spec: CollectionSpec | str | os.PathLike[str] | None = None,
        format: Literal["binary", "json"] = "binary",  # noqa: A002 - the name users expect
        settings: Settings | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        linger_ms: int = 5,
        spec_timeout: float = DEFAULT_SPEC_TIMEOUT_S,
        **overrides: Any,
    ) -> None:
        if format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {format!r}")
        self.format = format
        self.settings = settings or Settings(**overrides)
        self.spec: CollectionSpec = _given_spec(spec, collection) if spec is not None else \
            _load_spec(self.settings, _named(collection), spec_timeout)
        if self.spec.read_only:
            raise ReadOnlyCollection(
                f"collection {self.spec.name} is read-only: it was restored from a snapshot of "
                f"{self.spec.restored_from} and nothing indexes what is written to it; write "
                f"to {self.spec.restored_from} or to a new collection")
        self.topic = self.spec.collection.topic
        self.max_message_bytes = max_message_bytes
        self._lock = threading.Lock()
        self._last: dict[int, int] = {}
        self._errors: list[str] = []
        request_bytes = max(max_message_bytes + 64 * 1024, 1_000_000)
        #: The librdkafka config in use (public so benchmarks can build an identical raw client).
        self.kafka_config = self.settings.kafka_config(
            **{
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": linger_ms,
                "message.max.bytes": request_bytes,
                "batch.size": request_bytes,
                "queue.buffering.max.kbytes": 1024 * 1024,
            }
        )
        self._kafka = KafkaProducer(self.kafka_config)

    def upsert(
        self,
        ids: Sequence[str] | np.ndarray,
        vectors: np.ndarray | Sequence[Sequence[float]],
        metadata: Sequence[dict | None] | None = None,
        event_time_ms: int | np.ndarray | None = None,
    ) -> int:
        """Queue upserts of `ids` with `vectors` (n x dim); return the number of messages queued."""
        vecs = np.asarray(vectors, dtype=np.float32)
        if vecs.ndim != 2 or vecs.shape[1] != self.spec.dim:
            raise RecordError(
                "wrong_dim",
                f"vectors have shape {vecs.shape}, collection {self.spec.name} "
                f"expects (n, {self.spec.dim})",
            )
        n = len(ids)
        if vecs.shape[0] != n or (metadata is not None and len(metadata) != n):
            raise RecordError("bad_header", f"got {n} ids, {vecs.shape[0]} vectors and "
                              f"{'no' if metadata is None else len(metadata)} metadata rows")
        if self.format == "json":
            return self._send_json(ids, vecs, metadata, event_time_ms)
        # Serialized once: the same bytes size the messages and go into them.
        blobs = record.metadata_bytes(metadata, n) or None
        payloads = [
            (p, rows[0], record.encode(
                [ids[i] for i in rows] if not isinstance(ids, np.ndarray) else ids[rows],
                vecs[rows],
                metadata=None if blobs is None else [blobs[i] for i in rows],
                model_version=self.spec.model_version,
                event_time_ms=_pick(event_time_ms, rows),
            ))
            for p, rows in self._chunks(ids, blobs)
        ]
        return self._send(payloads, ids)

    def delete(self, ids: Sequence[str] | np.ndarray, event_time_ms: int | None = None) -> int:
        """Queue deletes of `ids`; return the number of messages queued."""
        if self.format == "json":
            return self._send_json(ids, None, None, event_time_ms)
        payloads = [
            (p, rows[0], record.encode_deletes(
                [ids[i] for i in rows] if not isinstance(ids, np.ndarray) else ids[rows],
                dim=self.spec.dim,
                model_version=self.spec.model_version,
                event_time_ms=event_time_ms,
            ))
            for p, rows in self._chunks(ids, None)
        ]
        return self._send(payloads, ids)

    def flush(self, timeout: float = 30.0) -> dict[int, int]:
        """Wait for delivery; return {partition: last delivered offset} over this producer's life.

        Raises DeliveryError if a message failed or is still undelivered at the deadline.
        """
        remaining = self._kafka.flush(timeout)
        if remaining:
            raise DeliveryError(
                f"{remaining} message(s) to {self.topic} still undelivered after {timeout:g}s"
            )
        with self._lock:
            errors, self._errors = self._errors, []
            offsets = dict(sorted(self._last.items()))
        if errors:
            raise DeliveryError(
                f"{len(errors)} message(s) to {self.topic} failed; first: {errors[0]}"
            )
        return offsets

    def close(self, timeout: float = 30.0) -> dict[int, int]:
        """Flush what is queued; the producer should not be used afterwards."""
        return self.flush(timeout)

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._kafka.flush(5.0)  # best effort; the original exception wins

    def _chunks(
        self, ids: Sequence[str] | np.ndarray, metadata: list[bytes] | None
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (partition, row indices) groups, in input order, each fitting one message."""
        if len(ids) == 0:
            raise RecordError("empty", "no ids given")
        parts = partitions_for(ids, self.spec.partitions, self.spec.partitioner)
        width = _id_width(ids)
        row_bytes = record.row_nbytes(self.spec.dim, width)
        extra = None if metadata is None else np.fromiter(
            (len(m) + 4 for m in metadata), dtype=np.int64, count=len(metadata))
        for p in np.unique(parts):
            rows = np.flatnonzero(parts == p)  # stable: keeps each id's ops in call order
            for chunk in _split(rows, row_bytes, extra, self.max_message_bytes):
                yield int(p), chunk

    def _send(self, payloads: list[tuple[int, int, bytes]], ids: Sequence[str] | np.ndarray) -> int:
        for partition, first_row, payload in payloads:
            self._produce(partition, _key(ids[first_row]), payload)
        return len(payloads)

    def _send_json(self, ids: Sequence[str] | np.ndarray, vecs: np.ndarray | None,
                   metadata: Sequence[dict | None] | None,
                   event_time_ms: int | np.ndarray | None) -> int:
        """Queue one keyed JSON record per row (deletes when `vecs` is None), checked first."""
        if len(ids) == 0:
            raise RecordError("empty", "no ids given")
        if isinstance(ids, str | bytes):
            raise RecordError("bad_id", "ids must be a sequence of ids, not one id")
        now = time.time_ns() // 1_000_000
        times = np.asarray(now if event_time_ms is None else event_time_ms)
        if times.shape not in ((), (len(ids),)) or not np.can_cast(times.dtype, np.int64):
            raise RecordError("bad_header", f"event_time_ms: 1 or {len(ids)} ints wanted, not "
                                            f"{times.dtype}{times.shape}")
        times = np.broadcast_to(times, (len(ids),))
        records = []
        for row, id_ in enumerate(ids.tolist() if isinstance(ids, np.ndarray) else ids):
            key = jsonrecord.check_key(_key(id_))
            value = jsonrecord.encode(
                vector=None if vecs is None else vecs[row],
                op="delete" if vecs is None else "upsert",
                metadata=None if metadata is None else metadata[row],
                model_version=self.spec.model_version, event_time_ms=int(times[row]))
            # The worker's own check, so that nothing it would dead-letter is sent.
            jsonrecord.decode_valid(key, value, dim=self.spec.dim,
                                    model_version=self.spec.model_version)
            records.append((key, value))
        parts = partitions_for([k for k, _ in records], self.spec.partitions,
                               self.spec.partitioner)
        for partition, (key, value) in zip(parts.tolist(), records, strict=True):
            self._produce(partition, key, value)
        return len(records)

    def _produce(self, partition: int, key: bytes, value: bytes) -> None:
        while True:
            try:
                self._kafka.produce(self.topic, value, key=key, partition=partition,
                                    on_delivery=self._on_delivery)
                break
            except BufferError:
                self._kafka.poll(0.05)  # local queue full: let deliveries drain, then retry
        self._kafka.poll(0)

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        with self._lock:
            if err is not None:
                self._errors.append(f"partition {msg.partition()}: {err.str()}")
                return
            p, offset = msg.partition(), msg.offset()
            if offset is None or offset < 0:
                # Delivered, but the broker named no offset (seen rarely under load): the
                # session position keeps the last offset known rather than guessing one.
                log.warning("partition %s: delivery reported without an offset", p)
                return
            self._last[p] = max(self._last.get(p, -1), offset)


def _named(collection: str | None) -> str:
    if collection is None:
        raise SpecError("a Producer needs a collection name or its spec")
    return collection


def _given_spec(spec: CollectionSpec | str | os.PathLike[str],
                collection: str | None) -> CollectionSpec:
    """The spec passed in, or read from a JSON file; it must name `collection`, if given."""
    if not isinstance(spec, CollectionSpec):
        spec = _spec_file(os.fspath(spec))
    if collection is not None and collection != spec.name:
        raise SpecError(f"the spec given is collection {spec.name!r}'s, not {collection!r}'s")
    return spec


def _spec_file(path: str) -> CollectionSpec:
    """A spec read from a JSON file: the spec itself, or an object with it under "spec"."""
    try:
        with open(path, "rb") as f:
            text = f.read(MAX_SPEC_FILE_BYTES + 1)
    except OSError as exc:
        raise SpecError(f"cannot read the spec file {path}: {exc}") from None
    if len(text) > MAX_SPEC_FILE_BYTES:
        raise SpecError(f"spec file {path} is over {MAX_SPEC_FILE_BYTES} bytes: not a spec")
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise SpecError(f"spec file {path} is not JSON: {exc}") from None
    if isinstance(raw, dict) and isinstance(raw.get("spec"), dict):
        raw = raw["spec"]  # the output of `streamvec collection describe NAME --json`
    if not isinstance(raw, dict) or "partitioner" not in raw:
        # Stored specs without one predate the choice; a file without one is just incomplete.
        raise SpecError(f"spec file {path} names no partitioner: write it with "
                        "`streamvec collection describe NAME --json`")
    return CollectionSpec.from_json(json.dumps(raw))


def _key(id_: str | bytes) -> bytes:
    if isinstance(id_, str):
        return id_.encode("utf-8", "surrogatepass")  # a lone surrogate: refused as not UTF-8
    if isinstance(id_, bytes):
        return id_
    raise RecordError("bad_id", f"ids must be str or bytes, not {type(id_).__name__}")


def _load_spec(settings: Settings, collection: str, timeout: float) -> CollectionSpec:
    """The collection's spec, read within `timeout` seconds; SpecUnavailable if Redis is not up."""
    client = redisconn.connect(
        settings.redis_url, timeout=timeout, retry_timeouts=False,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)))
    started = time.monotonic()
    try:
        return catalog.load_spec(client, collection)
    except (RedisConnectionError, RedisTimeoutError) as exc:
        raise SpecUnavailable(
            f"cannot read the spec of collection {collection!r} from Redis within "
            f"{timeout:g}s ({time.monotonic() - started:.1f}s spent): {exc}") from exc
    finally:
        client.close()


def _id_width(ids: Sequence[str] | np.ndarray) -> int:
    if isinstance(ids, np.ndarray) and ids.dtype.kind == "S":
        return max(1, ids.dtype.itemsize)
    return max(1, max(len(i.encode() if isinstance(i, str) else i) for i in ids))


def _split(
    rows: np.ndarray, row_bytes: int, extra: np.ndarray | None, limit: int
) -> Iterator[np.ndarray]:
    """Cut `rows` into runs whose encoded size stays under `limit` (always at least one row)."""
    sizes = np.full(len(rows), row_bytes, dtype=np.int64)
    if extra is not None:
        sizes += extra[rows]
    start = 0
    budget = max(limit - 4096, row_bytes)  # header and metadata offsets
    cumulative = np.cumsum(sizes)
    while start < len(rows):
        base = cumulative[start - 1] if start else 0
        end = int(np.searchsorted(cumulative, base + budget, side="right"))
        end = max(end, start + 1)
        yield rows[start:end]
        start = end


def _pick(value: int | np.ndarray | None, rows: np.ndarray) -> int | np.ndarray | None:
    if isinstance(value, np.ndarray):
        return value[rows]
    return value
