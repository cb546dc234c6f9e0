"""Producer SDK rows/s on the real broker, beside raw confluent-kafka sending the same bytes."""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the repo root must win over bench/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import statistics
import time

import numpy as np
from confluent_kafka import Producer as KafkaProducer

from bench._stack import scratch_collection
from bench.common import Result, machine_info, parse_scaled
from ingest import record
from ingest.producer import Producer
from ingest.spec import CollectionSpec
from streamvec.settings import Settings

DEFAULTS = {"small": {"rows": 50_000, "repeats": 3}, "full": {"rows": 200_000, "repeats": 6}}


def main(argv: list[str] | None = None) -> None:
    """Run both producers over the same rows, alternating, and print rows/s and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, help="rows per run")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--call-rows", type=int, default=10_000, help="rows per upsert() call")
    parser.add_argument("--repeats", type=int, help="runs of each producer, alternating")
    args = parse_scaled(parser, DEFAULTS, argv)
    base = Settings()
    result = Result("produce", "Producer SDK rows/s vs raw confluent-kafka", args, base)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((args.rows, args.dim)).astype(np.float32)
    ids = [f"item-{i:09d}" for i in range(args.rows)]
    times: dict[str, list[float]] = {"raw": [], "sdk": []}
    messages = 0
    with scratch_collection(base, "bench-produce", dim=args.dim,
                            partitions=args.partitions) as (settings, spec, _):
        for repeat in range(args.repeats):
            # Alternate which goes first so neither always meets a freshly rolled log.
            for which in ("raw", "sdk") if repeat % 2 == 0 else ("sdk", "raw"):
                if which == "raw":
                    secs, messages = _raw(settings, spec, ids, vectors, args.call_rows)
                else:
                    secs = _sdk(settings, spec, ids, vectors, args.call_rows)
                times[which].append(secs)
    _record(result, times, messages, len(ids[0]), args)
    result.write()


def _record(result: Result, times: dict[str, list[float]], messages: int, id_bytes: int,
            args: argparse.Namespace) -> None:
    mb = args.rows * record.row_nbytes(args.dim, id_bytes) / 1e6
    print(f"# produce: {args.rows} rows x {args.dim}-d float32, {args.partitions} partitions, "
          f"{messages} messages, {mb:.0f} MB per run, {args.repeats} alternating runs each")
    print(f"# machine: {machine_info()}")
    print(f"{'path':<34} {'median s':>9} {'best s':>8} {'rows/s (median)':>16} {'MB/s':>7}")
    for label, key in (("raw confluent-kafka (same bytes)", "raw"),
                       ("streamvec Producer (encode+send)", "sdk")):
        med, best = statistics.median(times[key]), min(times[key])
        print(f"{label:<34} {med:>9.3f} {best:>8.3f} {args.rows / med:>16,.0f} {mb / med:>7.1f}")
    sdk, raw = (statistics.median(times[key]) for key in ("sdk", "raw"))
    ratio = result.compare("rows_per_s", "Producer rows/s (median run)", args.rows / sdk,
                           args.rows / raw, "rows/s", "raw confluent-kafka, same bytes",
                           goal="ratio >= 0.9", summary=True)
    result.compare("mb_per_s", "Producer MB/s (median run)", mb / sdk, mb / raw, "MB/s",
                   "raw confluent-kafka, same bytes")
    result.figure("messages", "Kafka messages per run", messages, "messages")
    result.samples["run_seconds"] = times
    print(f"ratio Producer/raw (medians): {ratio:.2f}x (goal >= 0.9x); both are bound by the "
          "broker's write rate on this machine, so expect run-to-run noise of +-30%")


def _sdk(settings: Settings, spec: CollectionSpec, ids: list[str], vectors: np.ndarray,
         step: int) -> float:
    producer = Producer(spec.name, settings=settings)
    producer.upsert(ids[:1], vectors[:1])  # connect and get a producer id outside the timing
    producer.flush(30)
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
    partition, key, payload = payloads[0]
    raw.produce(spec.collection.topic, payload, key=key, partition=partition)
    raw.flush(30)  # connect and get a producer id outside the timing, as _sdk does
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
