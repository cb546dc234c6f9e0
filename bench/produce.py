"""Producer SDK rows/s against the real broker, beside raw confluent-kafka sending the same bytes."""

from __future__ import annotations

import argparse
import time
import uuid

import numpy as np
from common import machine_info
from confluent_kafka import Producer as KafkaProducer

from ingest import admin, record
from ingest.producer import Producer
from ingest.spec import CollectionSpec
from streamvec.settings import Settings


def main() -> None:
    """Run both producers over the same rows, alternating, and print rows/s and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--call-rows", type=int, default=10_000, help="rows per upsert() call")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    settings = Settings()
    name = f"bench-produce-{uuid.uuid4().hex[:8]}"
    spec = CollectionSpec(name, dim=args.dim, partitions=args.partitions)
    admin.create_collection(settings, spec)
    try:
        rng = np.random.default_rng(0)
        vectors = rng.standard_normal((args.rows, args.dim)).astype(np.float32)
        ids = [f"item-{i:09d}" for i in range(args.rows)]
        sdk_best, raw_best, messages = float("inf"), float("inf"), 0
        for _ in range(args.repeats):
            raw_s, messages = _raw(settings, spec, ids, vectors, args.call_rows)
            raw_best = min(raw_best, raw_s)
            sdk_best = min(sdk_best, _sdk(settings, spec, ids, vectors, args.call_rows))
    finally:
        admin.drop_collection(settings, name)

    mb = args.rows * record.row_nbytes(args.dim, len(ids[0])) / 1e6
    print(f"# produce: {args.rows} rows x {args.dim}-d float32, {args.partitions} partitions, "
          f"{messages} messages, {mb:.0f} MB per run, best of {args.repeats}")
    print(f"# machine: {machine_info()}")
    print(f"{'path':<34} {'seconds':>8} {'rows/s':>12} {'MB/s':>8}")
    for label, secs in (("raw confluent-kafka (same bytes)", raw_best),
                        ("streamvec Producer (encode+send)", sdk_best)):
        print(f"{label:<34} {secs:>8.3f} {args.rows / secs:>12,.0f} {mb / secs:>8.1f}")
    print(f"ratio Producer/raw: {raw_best / sdk_best:.2f}x (goal >= 0.9x)")


def _sdk(settings: Settings, spec: CollectionSpec, ids: list[str], vectors: np.ndarray,
         step: int) -> float:
    producer = Producer(spec.name, settings=settings)
    started = time.perf_counter()
    for lo in range(0, len(ids), step):
        producer.upsert(ids[lo:lo + step], vectors[lo:lo + step])
    producer.flush(120)
    return time.perf_counter() - started


def _raw(settings: Settings, spec: CollectionSpec, ids: list[str], vectors: np.ndarray,
         step: int) -> tuple[float, int]:
    """Pre-encode exactly what the SDK sends, then time only the raw client sending it."""
    sdk = Producer(spec.name, settings=settings)
    payloads = []
    for lo in range(0, len(ids), step):
        chunk = ids[lo:lo + step]
        for partition, rows in sdk._chunks(chunk, None):
            payload = record.encode([chunk[i] for i in rows], vectors[lo:lo + step][rows])
            payloads.append((partition, chunk[rows[0]].encode(), payload))
    raw = KafkaProducer(sdk.kafka_config)
    started = time.perf_counter()
    for partition, key, payload in payloads:
        while True:
            try:
                raw.produce(spec.collection.topic, payload, key=key, partition=partition)
                break
            except BufferError:
                raw.poll(0.05)
        raw.poll(0)
    raw.flush(120)
    return time.perf_counter() - started, len(payloads)


if __name__ == "__main__":
    main()
