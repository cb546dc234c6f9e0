"""Collection administration on Kafka and the catalog: topics and specs, created and described.

A collection as a whole (aliases, segment folders, dropping) is lifecycle/collections.py's.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from ingest import audit, catalog
from ingest.errors import CollectionExists, IngestError
from ingest.spec import CollectionSpec
from streamvec.settings import Settings

log = logging.getLogger(__name__)

# Large messages let one Kafka record carry hundreds of high-dimensional rows; the broker
# default (1 MB) would cap a 1024-d batch at about 250 rows.
TOPIC_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    """Offsets of one partition of a collection's topic."""

    partition: int
    low: int
    high: int


def create_collection(
    settings: Settings,
    spec: CollectionSpec,
    *,
    replication: int | None = None,
    timeout: float = 30.0,
) -> bool:
    """Create a collection's topics and register its spec; return False if it already existed.

    Nothing here looks at aliases or the segment store: lifecycle/collections.py does, then
    calls this.
    """
    _check_index_spec(spec)
    client = settings.redis_client()
    created = catalog.claim_spec(client, spec)
    try:
        _ensure_topics(settings, spec, replication=replication, timeout=timeout)
    except Exception:
        if created:
            catalog.forget(client, spec.name)  # leave no half-created collection behind
        raise
    if created:
        audit.record(client, "collection.create", spec.name, asdict(spec), settings.actor)
    log.info("collection=%s %s", spec.name, "created" if created else "already exists")
    return created


def list_collections(settings: Settings) -> list[CollectionSpec]:
    """Return the spec of every registered collection, sorted by name."""
    client = settings.redis_client()
    return [catalog.load_spec(client, name) for name in catalog.list_names(client)]


def describe_collection(settings: Settings, name: str, timeout: float = 10.0) -> dict:
    """Return a collection's spec, topics and per-partition offsets."""
    spec = catalog.load_spec(settings.redis_client(), name)
    return {
        "spec": spec,
        "topic": spec.collection.topic,
        "dlq_topic": spec.collection.dlq_topic,
        "partitions": partition_offsets(settings, spec.collection.topic, timeout=timeout),
    }


def partition_offsets(settings: Settings, topic: str, timeout: float = 10.0) -> list[PartitionInfo]:
    """Return the low and high watermark of every partition of `topic`."""
    from confluent_kafka import Consumer  # local: only describe needs a consumer

    consumer = Consumer(
        settings.kafka_config(**{"group.id": "sv.admin", "enable.auto.commit": False}))
    try:
        meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if meta is None or meta.error is not None:
            return []
        deadline = time.monotonic() + timeout
        return [PartitionInfo(p, *_watermarks(consumer, TopicPartition(topic, p), deadline))
                for p in sorted(meta.partitions)]
    finally:
        consumer.close()


_LEADERSHIP_SETTLING = frozenset({KafkaError.NOT_LEADER_FOR_PARTITION,
                                  KafkaError.LEADER_NOT_AVAILABLE,
                                  KafkaError.UNKNOWN_TOPIC_OR_PART})


def _watermarks(consumer, tp: TopicPartition, deadline: float) -> tuple[int, int]:
    """(low, high) of one partition, asking again while its leadership is still settling."""
    # A topic created a moment ago can answer NOT_LEADER until every broker has caught up on
    # its leaders; that is retriable, anything else is not.
    while True:
        try:
            return consumer.get_watermark_offsets(
                tp, timeout=max(0.1, deadline - time.monotonic()))
        except KafkaException as exc:
            err = exc.args[0]
            settling = err.retriable() or err.code() in _LEADERSHIP_SETTLING
            if not settling or time.monotonic() >= deadline:
                raise
            time.sleep(0.1)  # back off before asking the broker again


def delete_topics(settings: Settings, spec: CollectionSpec, timeout: float = 30.0) -> list[str]:
    """Delete a collection's topic and dead-letter topic (one already gone is fine); name them."""
    admin = AdminClient(settings.kafka_config())
    topics = [spec.collection.topic, spec.collection.dlq_topic]
    _settle(admin.delete_topics(topics, operation_timeout=timeout), timeout,
            KafkaError.UNKNOWN_TOPIC_OR_PART, "delete")
    return topics


def _ensure_topics(
    settings: Settings, spec: CollectionSpec, *, replication: int | None, timeout: float
) -> None:
    admin = AdminClient(settings.kafka_config())
    cluster = admin.list_topics(timeout=timeout)
    factor = replication or min(3, len(cluster.brokers))
    config = {"max.message.bytes": str(TOPIC_MAX_MESSAGE_BYTES)}
    wanted = {spec.collection.topic: spec.partitions, spec.collection.dlq_topic: 1}
    missing = []
    for topic, partitions in wanted.items():
        existing = cluster.topics.get(topic)
        if existing is None or existing.error is not None:
            missing.append(NewTopic(topic, partitions, factor, config=config))
        elif len(existing.partitions) != partitions:
            raise CollectionExists(
                f"topic {topic} exists with {len(existing.partitions)} partitions, "
                f"the spec of {spec.name!r} asks for {partitions}"
            )
    if not missing:
        return
    _settle(admin.create_topics(missing, operation_timeout=timeout), timeout,
            KafkaError.TOPIC_ALREADY_EXISTS, "create")
    _wait_for_leaders(admin, [t.topic for t in missing], timeout)


def _settle(futures: dict, timeout: float, harmless: int, verb: str) -> None:
    """Wait for topic operations; an error with the `harmless` code means already done."""
    for topic, future in futures.items():
        try:
            future.result(timeout)
        except KafkaException as exc:
            if exc.args[0].code() != harmless:
                raise IngestError(f"could not {verb} topic {topic}: {exc.args[0].str()}") from None


def _wait_for_leaders(admin: AdminClient, topics: list[str], timeout: float) -> None:
    """Return once every partition of `topics` has a leader, so the first send succeeds."""
    deadline = time.monotonic() + timeout
    while True:
        meta = admin.list_topics(timeout=timeout).topics
        leaderless = [
            f"{t}[{p}]" for t in topics
            for p, info in (meta[t].partitions.items() if t in meta else [(-1, None)])
            if info is None or info.leader < 0 or info.error is not None
        ]
        if not leaderless:
            return
        if time.monotonic() >= deadline:
            raise IngestError(f"partitions without a leader after {timeout:g}s: {leaderless[:5]}")
        time.sleep(0.05)  # metadata propagation takes a few milliseconds on a healthy cluster


def _check_index_spec(spec: CollectionSpec) -> None:
    """Refuse an index string FAISS cannot build for this dim, before anything is created."""
    if spec.index == "auto":
        return
    import faiss  # local: only admin paths with an explicit index string need FAISS

    try:
        faiss.index_factory(spec.dim, spec.index)
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "rejected"
        raise IngestError(
            f"index {spec.index!r} cannot be built for dim {spec.dim}: {reason}"
        ) from None
