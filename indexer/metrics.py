"""Prometheus metrics of the indexer role: `streamvec_indexer_*`, labelled by collection."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

from streamvec.metrics import CollectionMetrics, factory, full_name, register_build_info

ROLE = "indexer"


class IndexerMetrics(CollectionMetrics):
    """Every indexer metric, registered on one registry; label values fixed per collection."""

    def __init__(self, registry: CollectorRegistry, collection: str) -> None:
        super().__init__(collection)
        make = factory(registry, ROLE)
        register_build_info(registry, ROLE)
        self.consumed_rows = make(Counter, "consumed_rows", "Rows decoded from Kafka.")
        self.consumed_messages = make(Counter, "consumed_messages", "Kafka messages consumed.")
        self.dlq_messages = make(Counter, "dlq_messages", "Messages sent to the dead-letter "
                                 "topic, by reason.", ("reason",))
        self.growing_rows = make(Gauge, "growing_rows", "Rows in growing segments.")
        self.growing_bytes = make(Gauge, "growing_bytes", "Bytes held by growing segments "
                                  "and builds in flight.")
        self.seals = make(Counter, "seals", "Segments sealed, by policy.", ("reason",))
        self.build_seconds = make(Histogram, "build_seconds", "FAISS build plus snapshot write.",
                                  buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        self.snapshot_bytes = make(Counter, "snapshot_bytes",
                                   "Bytes written to the segment store.")
        self.registrations = make(Counter, "registrations", "Segment registrations, by outcome.",
                                  ("status",))
        self.out_of_range = make(Gauge, "checkpoint_out_of_range", "1 when a partition's "
                                 "checkpoint is no longer in the log (retention ran past it).",
                                 ("partition",))
        self.paused = make(Gauge, "paused", "1 while consumption is paused for back-pressure.")
        self.dlq_truncated = make(Counter, "dlq_truncated", "Dead letters whose payload was "
                                  "cut to the copy limit (header sv-truncated).")
        self.unavailable = make(Gauge, "unavailable", "1 while the worker waits for a "
                                "dependency it cannot reach (redis, kafka, dlq, store).",
                                ("dependency",))
        self.retries = make(Counter, "dependency_retries", "Calls to a dependency tried again "
                            "after a connection or timeout error, by dependency.",
                            ("dependency",))
        self.discarded_builds = make(Counter, "discarded_builds", "Builds dropped unregistered "
                                     "because their partition was revoked or reset.")
        self.last_seal = LastSealAge(collection)
        registry.register(self.last_seal)


class LastSealAge:
    """Scrape-time collector: seconds since each partition last sealed a segment."""

    def __init__(self, collection: str) -> None:
        self.collection = collection
        self._last: dict[int, float] = {}

    def mark(self, partition: int, when: float | None = None) -> None:
        """Record a seal of `partition` now (or at `when`, a `time.time()` value)."""
        self._last[partition] = time.time() if when is None else when

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Yield the age gauge, computed at scrape time."""
        family = GaugeMetricFamily(
            full_name(ROLE, "last_seal_age_seconds"),
            "Seconds since the partition last sealed a segment.",
            labels=["collection", "partition"],
        )
        now = time.time()
        for partition, when in sorted(self._last.items()):
            family.add_metric([self.collection, str(partition)], now - when)
        yield family
