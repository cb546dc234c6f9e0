"""Scrape-time collectors: checkpoint lag, retention headroom, segment counts, query backlog."""

# Computed when Prometheus scrapes, from the registry in Redis and the topic's watermarks in
# Kafka, so the figures are never older than the scrape and nothing runs between scrapes.

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from confluent_kafka import KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec
from prometheus_client.core import GaugeMetricFamily
from redis import Redis
from redis.exceptions import RedisError, ResponseError

from indexer.registry import SegmentRecord, note_skipped
from monitor.metrics import ROLE
from searcher import protocol, shards
from searcher.errors import ShardMapError
from searcher.server import GROUP
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


@dataclass(frozen=True, slots=True)
class StreamBacklog:
    """Requests on a query stream not answered yet, as Redis counts them."""

    undelivered: int  # on the stream, not handed to any searcher yet
    pending: int  # handed to a searcher of the group, not answered (acknowledged) yet

    @property
    def total(self) -> int:
        """Every request still waiting for its answer."""
        return self.undelivered + self.pending


def read_backlog(client: Redis, stream: str, group: str = GROUP) -> StreamBacklog:
    """The backlog of `stream` for the consumer `group`, from XLEN and XINFO GROUPS at once.

    Redis 7 says how many entries the group has not read yet (`lag`); where it cannot (an older
    Redis, or deletions it cannot count past) the stream's length less the pending entries
    stands in: a searcher deletes each request in the step that acknowledges it, so the stream
    holds only undelivered and pending requests. A stream without the group (no searcher ever
    started) is undelivered as a whole; a missing stream has no backlog.
    """
    pipe = client.pipeline(transaction=True)
    pipe.xlen(stream)
    pipe.xinfo_groups(stream)
    length, groups = pipe.execute(raise_on_error=False)
    if isinstance(length, Exception):
        raise length
    if isinstance(groups, ResponseError) and "no such key" in str(groups).lower():
        groups = []
    elif isinstance(groups, Exception):
        raise groups
    ours = next((g for g in groups if _text(g.get("name")) == group), None)
    if ours is None:
        return StreamBacklog(undelivered=int(length), pending=0)
    pending = int(ours.get("pending") or 0)
    lag = ours.get("lag")
    undelivered = max(0, int(length) - pending) if lag is None else int(lag)
    return StreamBacklog(undelivered=undelivered, pending=pending)


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class QueryStreamCollector:
    """Per-collection gauges of the query stream's backlog, read from Redis at scrape time.

    The backlog is the signal to scale searcher replicas on (deploy/k8s/keda/): it grows when
    requests arrive faster than the replicas answer them.
    """

    def __init__(self, collection: str, client: Redis) -> None:
        self.collection = collection
        self.client = client

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The families without samples, so registering does not touch Redis."""
        yield from self._families().values()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Yield both gauges, read now; without samples when Redis cannot say."""
        families = self._families()
        try:
            streams = self.streams()
            backlogs = [(name, read_backlog(self.client, stream)) for name, stream in streams]
        except (RedisError, ShardMapError) as exc:
            # Absent rather than 0: a scaler must not shrink the searchers on a reading that
            # never happened.
            log.warning("collection=%s query stream unreadable at scrape: %s",
                        self.collection, exc)
        else:
            for name, backlog in backlogs:
                families["query_stream_backlog"].add_metric([self.collection, name],
                                                            backlog.total)
                families["query_stream_pending"].add_metric([self.collection, name],
                                                            backlog.pending)
        yield from families.values()

    def streams(self) -> list[tuple[str, str]]:
        """(shard name, stream key) of every stream the collection's searchers read now.

        A sharded collection has one stream per shard of its map (each scaled on its own);
        an unsharded one has its single stream, named `all`.
        """
        shard_map = shards.read_map(self.client, self.collection)
        if shard_map is None:
            return [("all", protocol.queue_key(self.collection))]
        return [(s.name, protocol.queue_key(self.collection, s.label)) for s in shard_map.shards]

    @staticmethod
    def _families() -> dict[str, GaugeMetricFamily]:
        docs = {
            "query_stream_backlog": "Query requests on the collection's stream not answered "
                                    "yet: not read by any searcher, plus read and pending.",
            "query_stream_pending": "Query requests a searcher has read but not answered yet "
                                    "(pending in the searchers' consumer group).",
        }
        return {key: GaugeMetricFamily(full_name(ROLE, key), doc, labels=["collection", "shard"])
                for key, doc in docs.items()}
