"""Drift windows: the last M rows read from a collection's topic, and the first N rows seen.

The reader consumes the topic in its own consumer group, `<topic>.monitor` (`sv.NAME.monitor`),
so it never moves the indexer's or the searchers' positions. On assignment each partition starts
at most M messages before its log end (each message holds at least one row), or at the group's
committed offset when that is later, so a fresh or restarted monitor fills its window at once
without reading the whole log. Only upserts count; deletes carry no vector, and canary rows
(ids starting with `__sv_canary__`) are the monitor's own. Records that fail to decode or
validate are skipped and counted (the indexer sends them to the dead-letter topic).
"""

from __future__ import annotations

import logging
import threading

import numpy as np
from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from ingest import message
from ingest.errors import RecordError
from ingest.record import Batch
from ingest.spec import CollectionSpec
from monitor.metrics import MonitorMetrics
from searcher.execute import CANARY_PREFIX
from streamvec.settings import Settings

log = logging.getLogger(__name__)

POLL_TIMEOUT_S = 0.2
POLL_MESSAGES = 500
WATERMARK_TIMEOUT_S = 10.0
_CANARY_BYTES = CANARY_PREFIX.encode()


class SlidingWindow:
    """The last `capacity` rows appended (a ring buffer); reads return them oldest first."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.seen = 0  # rows ever appended
        self._lock = threading.Lock()
        self._buf: np.ndarray | None = None
        self._next = 0
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def extend(self, rows: np.ndarray) -> None:
        """Append rows (n, dim); the oldest rows fall out once the window is full."""
        rows = _as_rows(rows)
        if not len(rows):
            return
        with self._lock:
            if self._buf is None or self._buf.shape[1] != rows.shape[1]:
                self._buf = np.zeros((self.capacity, rows.shape[1]), dtype=np.float32)
                self._next = self._count = 0
            self.seen += len(rows)
            rows = rows[-self.capacity:]
            n, cap = len(rows), self.capacity
            first = min(n, cap - self._next)
            self._buf[self._next:self._next + first] = rows[:first]
            self._buf[:n - first] = rows[first:]
            self._next = (self._next + n) % cap
            self._count = min(cap, self._count + n)

    def snapshot(self) -> np.ndarray:
        """A copy of the rows held, oldest first; (0, 0) before anything was appended."""
        with self._lock:
            if self._buf is None:
                return np.zeros((0, 0), dtype=np.float32)
            if self._count < self.capacity:
                return self._buf[:self._count].copy()
            return np.concatenate([self._buf[self._next:], self._buf[:self._next]])


class FirstRows:
    """The first `capacity` rows appended; later rows are ignored (the implicit reference)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._lock = threading.Lock()
        self._parts: list[np.ndarray] = []
        self._count = 0

    def __len__(self) -> int:
        return self._count

    @property
    def full(self) -> bool:
        """True once `capacity` rows are held."""
        return self._count >= self.capacity

    def extend(self, rows: np.ndarray) -> None:
        """Keep as many of `rows` as still fit."""
        rows = _as_rows(rows)
        with self._lock:
            take = rows[:self.capacity - self._count]
            if len(take):
                self._parts.append(take.copy())
                self._count += len(take)

    def snapshot(self) -> np.ndarray:
        """The rows held, in arrival order."""
        with self._lock:
            if not self._parts:
                return np.zeros((0, 0), dtype=np.float32)
            return np.concatenate(self._parts)


def window_mask(batch: Batch) -> np.ndarray:
    """Which rows of a batch a window takes: upserts that are not canary rows."""
    return batch.upserts_mask & ~np.char.startswith(batch.ids, _CANARY_BYTES)


def window_rows(batch: Batch) -> np.ndarray:
    """The vectors of the rows a window takes, as a float32 copy."""
    return np.array(batch.vectors[window_mask(batch)], dtype=np.float32)


def start_offset(low: int, high: int, committed: int, span: int) -> int:
    """Where a partition's reading starts: the later of the committed offset and `span`
    messages before the log end, never outside [low, high]; `committed` < 0 means none."""
    start = max(low, high - span, committed)
    return min(start, high)


class WindowReader:
    """Reads a collection's topic into a current window and a first-rows window, on a thread."""

    def __init__(self, settings: Settings, spec: CollectionSpec, current: SlidingWindow,
                 first: FirstRows, metrics: MonitorMetrics | None = None) -> None:
        self.spec = spec
        self.topic = spec.collection.topic
        self.group_id = f"{self.topic}.monitor"
        self.current = current
        self.first = first
        self.metrics = metrics
        self._stop = threading.Event()
        self._consumer = Consumer(settings.kafka_config(**{
            "group.id": self.group_id,
            # Committed offsets only make the group's lag visible in Kafka tooling; the window
            # itself is rebuilt from the log end on every start.
            "enable.auto.commit": True,
            "auto.offset.reset": "latest",
        }))

    def stop(self) -> None:
        """Ask `run` to return."""
        self._stop.set()

    def run(self) -> None:
        """Consume until `stop()`, then leave the group."""
        self.subscribe()
        try:
            while not self._stop.is_set():
                self.poll_once()
        finally:
            self.close()

    def subscribe(self) -> None:
        """Join the group; partitions arrive (and get their start) during `poll_once`."""
        self._consumer.subscribe([self.topic], on_assign=self._on_assign)

    def close(self) -> None:
        """Leave the group and close the consumer."""
        self._consumer.close()

    def poll_once(self, timeout: float = POLL_TIMEOUT_S) -> int:
        """Read one batch of messages into the windows; return the rows taken."""
        taken = 0
        for msg in self._consumer.consume(num_messages=POLL_MESSAGES, timeout=timeout):
            taken += self._take(msg)
        self._report()
        return taken

    def _take(self, msg: Message) -> int:
        err = msg.error()
        if err is not None:
            if err.code() != KafkaError._PARTITION_EOF:
                log.warning("topic=%s kafka error: %s", self.topic, err.str())
            return 0
        try:
            batch = message.decode_kafka(msg, self.spec)
        except RecordError as exc:
            log.debug('partition="%s[%d]" offset="%d" skipped: %s', self.topic,
                      msg.partition(), msg.offset(), exc.reason)
            if self.metrics is not None:
                self.metrics.labels(self.metrics.skipped_records).inc()
            return 0
        rows = window_rows(batch)
        self.current.extend(rows)
        self.first.extend(rows)
        return len(rows)

    def _report(self) -> None:
        if self.metrics is not None:
            self.metrics.labels(self.metrics.window_rows, "current").set(len(self.current))

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        try:
            committed = {tp.partition: tp.offset for tp in
                         consumer.committed(partitions, timeout=WATERMARK_TIMEOUT_S)}
            for tp in partitions:
                low, high = consumer.get_watermark_offsets(tp, timeout=WATERMARK_TIMEOUT_S)
                tp.offset = start_offset(low, high, committed.get(tp.partition, -1),
                                         self.current.capacity)
        except Exception as exc:  # the callback must assign; the reset policy then decides
            log.warning("topic=%s cannot place the window's start (%s): using the group "
                        "offsets", self.topic, exc)
        consumer.assign(partitions)
        log.info("topic=%s window reader assigned %s", self.topic,
                 {tp.partition: tp.offset for tp in partitions})


def _as_rows(rows: np.ndarray) -> np.ndarray:
    arr = np.asarray(rows, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"rows must be 2-D (n, dim), got shape {arr.shape}")
    return arr
