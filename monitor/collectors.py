"""Scrape-time collectors: checkpoint lag, retention headroom and segment counts per collection."""

# Computed when Prometheus scrapes, from the registry in Redis and the topic's watermarks in
# Kafka, so the figures are never older than the scrape and nothing runs between scrapes.

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Protocol

from confluent_kafka import KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec
from prometheus_client.core import GaugeMetricFamily

from indexer.registry import SegmentRecord, note_skipped
from monitor.metrics import ROLE
from streamvec.metrics import full_name
from streamvec.settings import Settings

log = logging.getLogger(__name__)

WATERMARK_TIMEOUT_S = 5.0

Watermarks = dict[int, tuple[int, int]]  # partition -> (log start, log end)


class SegmentSource(Protocol):
    """What the collector reads of a collection's registry (indexer.registry.Registry)."""

    def segments(self, *, skipped: dict[str, str] | None = None) -> list[SegmentRecord]:
        """Registered segments; malformed records are left out and noted in `skipped`."""

    def checkpoints(self) -> dict[int, int]:
        """Checkpoint per partition."""


class KafkaWatermarks:
    """Fetches the log start and log end of every partition of a topic on each call."""

    def __init__(self, settings: Settings, topic: str,
                 timeout: float = WATERMARK_TIMEOUT_S) -> None:
        self.topic = topic
        self.timeout = timeout
        self._admin = AdminClient(settings.kafka_config())

    def __call__(self) -> Watermarks:
        """{partition: (low, high)}; raises KafkaException or TimeoutError if brokers cannot say."""
        meta = self._admin.list_topics(self.topic, timeout=self.timeout).topics.get(self.topic)
        if meta is None or meta.error is not None:
            raise KafkaException(meta.error if meta is not None else "topic missing")
        low = self._offsets(meta.partitions, OffsetSpec.earliest())
        high = self._offsets(meta.partitions, OffsetSpec.latest())
        return {p: (low[p], high[p]) for p in sorted(high)}

    def _offsets(self, partitions, spec: OffsetSpec) -> dict[int, int]:
        wanted = {TopicPartition(self.topic, p): spec for p in partitions}
        futures = self._admin.list_offsets(wanted, request_timeout=self.timeout)
        return {tp.partition: f.result(self.timeout).offset for tp, f in futures.items()}


class CollectionCollector:
    """Per-collection gauges computed at scrape time from the registry and the watermarks."""

    def __init__(self, collection: str, registry: SegmentSource,
                 watermarks: Callable[[], Watermarks],
                 clock: Callable[[], float] = time.time) -> None:
        self.collection = collection
        self.registry = registry
        self.watermarks = watermarks
        self.clock = clock
        # Malformed records already logged (segment id -> why), so each is logged once.
        self._malformed: dict[str, str] = {}

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The families without samples, so registering does not touch Redis or Kafka."""
        yield from self._families().values()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Yield every gauge, computed now."""
        families = self._families()
        name = self.collection
        skipped: dict[str, str] = {}
        segments = self.registry.segments(skipped=skipped)
        self._note_malformed(skipped)
        checkpoints = self.registry.checkpoints()
        families["segments"].add_metric([name], len(segments))
        families["segment_rows"].add_metric([name], sum(s.rows for s in segments))
        if segments:
            oldest = min(s.created_at for s in segments)
            families["oldest_segment_age_seconds"].add_metric([name], self.clock() - oldest)
        try:
            marks = self.watermarks()
        except (KafkaException, TimeoutError) as exc:
            # Segment figures still go out; lag and headroom stay absent rather than guessed.
            log.warning("collection=%s watermarks unavailable at scrape: %s", name, exc)
            marks = {}
        for partition, (low, high) in sorted(marks.items()):
            checkpoint = checkpoints.get(partition, 0)
            families["checkpoint_lag_messages"].add_metric([name, str(partition)],
                                                           high - checkpoint)
            families["retention_headroom_messages"].add_metric([name, str(partition)],
                                                               checkpoint - low)
        yield from families.values()

    def _note_malformed(self, skipped: dict[str, str]) -> None:
        self._malformed = note_skipped(log, self.collection, skipped, self._malformed)

    def _families(self) -> dict[str, GaugeMetricFamily]:
        per_partition = ["collection", "partition"]
        docs = {
            "checkpoint_lag_messages": ("Log end offset minus the registry checkpoint: "
                                        "messages not yet in a registered segment.",
                                        per_partition),
            "retention_headroom_messages": ("Registry checkpoint minus the log start offset: "
                                            "how far retention is from deleting unindexed "
                                            "records (negative: it already did).",
                                            per_partition),
            "segments": ("Registered segments.", ["collection"]),
            "segment_rows": ("Rows in registered segments, hidden ones included.",
                             ["collection"]),
            "oldest_segment_age_seconds": ("Seconds since the oldest registered segment was "
                                           "written.", ["collection"]),
        }
        return {key: GaugeMetricFamily(full_name(ROLE, key), doc, labels=labels)
                for key, (doc, labels) in docs.items()}
