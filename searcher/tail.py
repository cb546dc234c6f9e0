"""The live tail: rows read from Kafka past the checkpoints, latest op per id, trimmed on swaps."""

# The reader is one consumer over every partition, assigned by hand, on its own thread. It has
# no consumer group and makes no commits: a searcher is a reader of the log, and where it starts
# is decided by the registry checkpoints (through the sink), never by committed offsets.
#
# Per partition the buffer keeps every row in offset order (numpy arrays grown by doubling) and
# the row of each id's latest op. A row is alive when it is an upsert and its id's latest op;
# deletes stay as rows so that they keep hiding older sealed rows until a segment covers them.

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from indexer.columns import TailColumns
from ingest import message
from ingest.errors import RecordError
from ingest.record import OP_UPSERT, Batch
from ingest.spec import CollectionSpec
from searcher import filters
from searcher.search import Source, squared_norms
from streamvec.settings import Settings

log = logging.getLogger(__name__)

_MIN_CAPACITY = 64
POLL_TIMEOUT_S = 0.1
POLL_MESSAGES = 1000
CONSUMER_CONFIG = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    # A checkpoint below the log start means lost records: say so instead of jumping ahead.
    "auto.offset.reset": "error",
    # Fetch responses carry the high watermarks that `bounded` reads; answer idle fetches often.
    # It adds nothing to freshness: a fetch returns as soon as one byte is there (the default
    # fetch.min.bytes of 1), so the wait only bounds fetches of partitions with nothing new.
    "fetch.wait.max.ms": 100,
    "max.partition.fetch.bytes": 16 * 2**20,
    "fetch.max.bytes": 64 * 2**20,
}
# Cached watermarks read as this until the first fetch response arrives.
_UNKNOWN = -1001


@dataclass(frozen=True, slots=True)
class TailRows:
    """A partition's tail as a search source, with what turns a row back into an answer."""

    partition: int
    source: Source
    ids: list[bytes]
    meta: list[bytes]
    base: int = 0  # the list index of the source's row 0
    columns: TailColumns | None = None  # over `meta`, for filters

    def accepts(self, expr: filters.Expr) -> np.ndarray:
        """Which rows a filter accepts, from columns built over the tail's metadata."""
        table = self.columns if self.columns is not None else TailColumns(self.meta)
        rows = self.source.rows
        return filters.evaluate_pieces(expr, table.pieces(self.base, self.base + rows), rows)

    def id_of(self, row: int) -> str:
        """The id of a row."""
        return self.ids[self.base + row].decode("utf-8")

    def metadata(self, row: int) -> dict | None:
        """The metadata of a row, parsed now; None when it has none."""
        raw = self.meta[self.base + row]
        return json.loads(raw) if raw else None


class PartitionTail:
    """The tail rows of one partition.

    Rows live in arrays at [lo, n): a trim moves `lo` up instead of copying what is left, and
    growth copies only the held rows to the front of larger arrays. Rows below `n` are never
    written again except their `alive` flag, and the arrays and lists a source was cut from
    are replaced, never shrunk: a source handed to a search stays valid while the tail goes on.
    """

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.lo = 0
        self.n = 0
        self.ids: list[bytes] = []  # list index = array row
        self.meta: list[bytes] = []
        self.columns = TailColumns(self.meta)  # replaced with `meta`
        self.vectors = np.zeros((0, dim), np.float32)
        self.sqnorms = np.zeros(0, np.float32)  # of `vectors`' rows, for exact scans
        self.offsets = np.zeros(0, np.int64)
        self.alive = np.zeros(0, bool)
        self.latest: dict[bytes, int] = {}  # id -> array row of its latest op
        self._rows: TailRows | None = None  # the search source, until the next change

    @property
    def held(self) -> int:
        """Rows held, deletes and superseded rows included."""
        return self.n - self.lo

    def append(self, offset: int, batch: Batch) -> list[bytes]:
        """Add the rows of the message at `offset`; return the ids the tail did not hold yet."""
        n = len(batch)
        self._reserve(n)
        rows = slice(self.n, self.n + n)
        self.vectors[rows] = batch.vectors
        self.sqnorms[rows] = squared_norms(self.vectors[rows])
        self.offsets[rows] = offset
        upserts = (batch.ops == OP_UPSERT).tolist()
        self.alive[rows] = upserts
        fresh: list[bytes] = []
        for row, key in enumerate(batch.ids.tolist(), start=self.n):
            previous = self.latest.get(key)
            if previous is None:
                fresh.append(key)
            else:
                self.alive[previous] = False
            self.latest[key] = row
            self.ids.append(key)
        self.meta.extend(_raw_metadata(batch))
        self.n += n
        self._rows = None
        return fresh

    def trim(self, below: int) -> None:
        """Drop the rows at offsets below `below`: O(rows dropped), nothing copied."""
        cut = int(np.searchsorted(self.offsets[self.lo: self.n], below, side="left"))
        if cut == 0:
            return
        lo = self.lo + cut
        # Dropped rows are older than every kept one: an id keeps its entry if a kept row has it.
        for key in self.ids[self.lo: lo]:
            if self.latest.get(key, lo) < lo:
                del self.latest[key]
        self.lo = lo
        self._rows = None

    def rows(self, partition: int) -> TailRows:
        """The partition's held rows as a search source, made once per change."""
        if self._rows is None:
            live = slice(self.lo, self.n)
            source = Source(self.vectors[live], ~self.alive[live], sqnorms=self.sqnorms[live])
            self._rows = TailRows(partition, source, self.ids, self.meta, self.lo, self.columns)
        return self._rows

    def _reserve(self, n: int) -> None:
        """Room for n more rows; full arrays are replaced by ones holding only the kept rows."""
        if self.n + n <= len(self.offsets):
            return
        held = self.n - self.lo
        capacity = max(2 * (held + n), _MIN_CAPACITY)
        for name in ("vectors", "sqnorms", "offsets", "alive"):
            old = getattr(self, name)
            new = np.zeros((capacity, *old.shape[1:]), old.dtype)
            new[:held] = old[self.lo: self.n]
            setattr(self, name, new)
        self.ids = self.ids[self.lo: self.n]
        self.meta = self.meta[self.lo: self.n]
        self.columns = TailColumns(self.meta)
        shift = self.lo
        if shift:
            self.latest = {key: row - shift for key, row in self.latest.items()}
        self.lo, self.n = 0, held
        self._rows = None


class TailBuffer:
    """The tail of every partition of a collection."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._parts: dict[int, PartitionTail] = {}

    def append(self, partition: int, offset: int, batch: Batch) -> list[bytes]:
        """Add a decoded message; return the ids new to the partition's tail."""
        part = self._parts.get(partition)
        if part is None:
            part = self._parts[partition] = PartitionTail(self.dim)
        return part.append(offset, batch)

    def trim(self, partition: int, below: int) -> None:
        """Drop the partition's rows at offsets below `below` (a segment covers them now)."""
        if (part := self._parts.get(partition)) is not None:
            part.trim(below)

    def clear(self, partition: int) -> None:
        """Drop every row of a partition."""
        self._parts.pop(partition, None)

    def ids(self, partition: int) -> list[bytes]:
        """The ids with an op in the partition's tail."""
        part = self._parts.get(partition)
        return [] if part is None else list(part.latest)

    def latest(self, partition: int, key: bytes) -> tuple[int, bool] | None:
        """(offset, is an upsert) of the latest tail op on `key`, None if the tail has none."""
        part = self._parts.get(partition)
        row = None if part is None else part.latest.get(key)
        if row is None:
            return None
        return int(part.offsets[row]), bool(part.alive[row])

    def find(self, keys: set[bytes]) -> dict[bytes, tuple[int, int, np.ndarray, bytes]]:
        """Each of `keys` whose latest tail op is an upsert: (partition, offset, vector copy,
        metadata JSON or b""); under the lock. An id in two partitions keeps the lower one."""
        found: dict[bytes, tuple[int, int, np.ndarray, bytes]] = {}
        for partition in sorted(self._parts):
            part = self._parts[partition]
            for key in part.latest.keys() & keys:  # iterates the smaller side, in C
                row = part.latest[key]
                if key not in found and part.alive[row]:
                    found[key] = (partition, int(part.offsets[row]),
                                  np.array(part.vectors[row], dtype=np.float32), part.meta[row])
        return found

    def row_count(self) -> int:
        """Rows held, every partition, deletes and superseded rows included."""
        # A copy of the values: readiness probes call this without the serving lock.
        return sum(p.held for p in list(self._parts.values()))

    def sources(self) -> Iterator[TailRows]:
        """Every non-empty partition's rows as a search source."""
        for partition in sorted(self._parts):
            if self._parts[partition].held:
                yield self._parts[partition].rows(partition)


def _raw_metadata(batch: Batch) -> list[bytes]:
    """Each row's metadata JSON as sent (b"" for none), without parsing it."""
    if batch.meta is None:
        return [b""] * len(batch)
    offsets, blob = batch.meta
    bounds = offsets.tolist()
    return [bytes(blob[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


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
                 sink: TailSink, *, max_rows: int | None = None,
                 held_rows: Callable[[], int] | None = None, full_gauge: Any = None,
                 on_brokers_down: Callable[[str], None] | None = None) -> None:
        self.spec = spec
        # Told when librdkafka finds every broker down (it reconnects by itself meanwhile).
        self._on_brokers_down = on_brokers_down
        # The tail's bound: at `max_rows` held rows reading stops (the searcher lags, and
        # `bounded`/`session` requests wait) until a sealed segment lets the tail drop rows.
        self.max_rows, self._held_rows, self._full_gauge = max_rows, held_rows, full_gauge
        self.full = False
        self.topic = spec.collection.topic
        self.partitions = list(partitions)
        self.sink = sink
        self._consumer = Consumer(settings.kafka_config(
            **{"group.id": f"{self.topic}.searcher", "error_cb": self._on_kafka_error,
               **CONSUMER_CONFIG}))
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
        room = self._room()
        if room <= 0:
            self.sink.observe(self._highs(), time.monotonic())
            self._stop.wait(POLL_TIMEOUT_S)
            return
        decoded = []
        for msg in self._poll(room):
            if msg.error() is not None:
                self._report(msg)
            else:
                decoded.append(self._decode(msg))
        if decoded:
            self.sink.apply(decoded)
        self.sink.observe(self._highs(), time.monotonic())

    def _room(self) -> int:
        """Messages this turn may read: POLL_MESSAGES, fewer near the row bound, 0 at it."""
        if self.max_rows is None or self._held_rows is None:
            return POLL_MESSAGES
        room = self.max_rows - self._held_rows()
        full = room <= 0
        if full != self.full:
            self.full = full
            if self._full_gauge is not None:
                self._full_gauge.set(int(full))
            if full:
                log.warning("topic=%s live tail holds %d rows, its bound: reading stops until "
                            "segments cover them (STREAMVEC_SEARCHER_MAX_TAIL_ROWS)",
                            self.topic, self.max_rows)
            else:
                log.info("topic=%s live tail below its bound again: reading", self.topic)
        return max(0, min(POLL_MESSAGES, room))

    def _poll(self, most: int = POLL_MESSAGES) -> list[Message]:
        """Wait for one message, then take what else is already fetched without waiting."""
        # consume(n, timeout) alone holds a lone message until n arrive or the timeout passes,
        # which would add the whole timeout to read-your-writes latency whenever ingest is quiet.
        first = self._consumer.poll(POLL_TIMEOUT_S)
        if first is None:
            return []
        if most <= 1:
            return [first]
        return [first, *self._consumer.consume(most - 1, timeout=0)]

    def _decode(self, msg: Message) -> TailMessage:
        try:
            batch = message.decode_kafka(msg, self.spec)
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

    def _on_kafka_error(self, err: KafkaError) -> None:
        """librdkafka's error callback: passes "all brokers down" on, logs the rest."""
        if err.code() == KafkaError._ALL_BROKERS_DOWN and self._on_brokers_down is not None:
            self._on_brokers_down(err.str())
        else:
            log.debug("topic=%s kafka: %s", self.topic, err.str())

    def _report(self, msg: Message) -> None:
        err = msg.error()
        if err.code() == KafkaError._PARTITION_EOF:
            return
        level = logging.ERROR if err.fatal() or err.code() in (
            KafkaError.OFFSET_OUT_OF_RANGE, KafkaError._AUTO_OFFSET_RESET) else logging.WARNING
        log.log(level, 'partition="%s[%s]" tail error: %s', self.topic, msg.partition(),
                err.str())
