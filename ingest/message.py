"""One message of a collection's topic, in either format, decoded and checked into a Batch.

A topic may mix both formats: a value that starts with b"SVB" (or any value that is not JSON)
is a binary batch (ingest/record.py); a value whose first byte past whitespace is `{` is a
keyed JSON record, and a null value a tombstone (ingest/jsonrecord.py). A keyed record must
sit on the partition that the collection's partitioner gives its key, or ops on one id could
land in two partitions (invariant 1): one that does not is refused as `wrong_partition`.
"""

from __future__ import annotations

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Message

from ingest import jsonrecord, record
from ingest.errors import RecordError
from ingest.partition import partition_of
from ingest.record import Batch
from ingest.spec import CollectionSpec

REASONS = record.REASONS | jsonrecord.REASONS | {"wrong_partition"}


def decode_valid(value: bytes | None, key: bytes | None, *, spec: CollectionSpec,
                 partition: int, timestamp_ms: int | None = None) -> Batch:
    """Decode a message of `spec`'s topic read from `partition`; raise RecordError if it is bad.

    `timestamp_ms`, the Kafka record's timestamp, is a JSON record's default event time.
    """
    if value is not None and not jsonrecord.is_json(value):
        try:
            return record.decode_valid(value, dim=spec.dim, model_version=spec.model_version)
        except RecordError as exc:
            if exc.reason != "bad_magic":
                raise
            raise RecordError("bad_magic", f"{exc.message}: neither a binary batch nor a JSON "
                                           "object") from None
    batch = jsonrecord.decode_valid(key, value, dim=spec.dim, model_version=spec.model_version,
                                    timestamp_ms=timestamp_ms)
    id_ = bytes(batch.ids[0])
    if (home := partition_of(id_, spec.partitions, spec.partitioner)) != partition:
        raise RecordError(
            "wrong_partition",
            f"json: key {id_.decode('utf-8')!r} belongs to partition {home} under the "
            f"collection's {spec.partitioner!r} partitioner, not {partition} (docs/protocol.md "
            f"lists each client's partitioner setting)")
    return batch


def decode_kafka(msg: Message, spec: CollectionSpec) -> Batch:
    """Decode a consumed message of `spec`'s topic; raise RecordError if it is bad."""
    kind, stamp = msg.timestamp()
    return decode_valid(msg.value(), msg.key(), spec=spec, partition=msg.partition(),
                        timestamp_ms=None if kind == TIMESTAMP_NOT_AVAILABLE else stamp)
