"""Indexer rows/s, Kafka to registered segments, beside raw consume+decode and raw FAISS build.

Rows are produced first; then three paths read the same backlog: a plain consumer that decodes
every message (the floor for anything reading Kafka), faiss.index_factory + add over
segment-sized chunks of the same vectors (the floor for building the index), and one
`streamvec indexer` process timed from its first partition assignment until every partition's
checkpoint covers the backlog (consume, decode, seal, build, snapshot with sha256 and fsync,
register). The full scale indexes 1,000,000 384-d rows into Flat segments.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the repo root must win over bench/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import time
import uuid

import numpy as np
import psutil
from confluent_kafka import Consumer, TopicPartition

from bench._stack import produce, scratch_collection, start_role
from bench.common import Result, machine_info, parse_scaled, raw_faiss_build
from indexer.registry import Registry
from indexer.worker import CONSUMER_FETCH
from ingest import admin, record
from ingest.spec import CollectionSpec
from streamvec.settings import Settings

DEFAULTS = {
    "small": {"rows": 40_000, "hnsw_rows": 10_000, "seal_rows": 5_000},
    "full": {"rows": 1_000_000, "hnsw_rows": 100_000, "seal_rows": 25_000},
}
RSS_PROBE_S = 0.02


def main(argv: list[str] | None = None) -> None:
    """Index rows with Flat and with HNSW32 segments and print the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, help="rows for the Flat run")
    parser.add_argument("--hnsw-rows", type=int, help="rows for the HNSW32 run (0: skip)")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--seal-rows", type=int, help="rows per segment")
    parser.add_argument("--seal-seconds", type=float, default=0.25,
                        help="stale policy; bounds the wait for the last, partial segments")
    args = parse_scaled(parser, DEFAULTS, argv)
    base = Settings()
    result = Result("indexer", "Indexer: Kafka to registered segments", args, base)
    print(f"# indexer: {args.dim}-d float32, {args.partitions} partitions, one worker, "
          f"segments of {args.seal_rows} rows per partition")
    print(f"# machine: {machine_info()}")
    print(f"{'index':<8} {'rows':>9} {'indexer rows/s':>15} {'consume+decode':>15} {'ratio':>6} "
          f"{'raw FAISS build':>16} {'ratio':>6} {'peak RSS MiB':>13} {'MiB/1M rows':>12}")
    for factory, rows, summary in (("Flat", args.rows, "consume"),
                                   ("HNSW32", args.hnsw_rows, "build")):
        if rows > 0:
            run(base, factory, rows, args, result, summary)
    print("ratios: indexer rows/s over the raw baseline's rows/s (goals: >= 0.8x of consume+decode "
          "for Flat, >= 0.9x of the raw FAISS build)")
    result.write()


def run(base: Settings, factory: str, rows: int, args: argparse.Namespace, result: Result,
        summary: str) -> None:
    """Produce `rows`, time the three paths over them, print and record one row."""
    with scratch_collection(base, f"bench-indexer-{factory.lower()}", dim=args.dim,
                            partitions=args.partitions, index=factory, seal_rows=args.seal_rows,
                            seal_seconds=args.seal_seconds) as (settings, spec, tmp):
        vectors = np.random.default_rng(0).standard_normal((rows, spec.dim), dtype=np.float32)
        produce(settings, spec, vectors)
        consume_s = _raw_consume(settings, spec)
        build_s = _raw_build(vectors, spec, args.partitions)
        del vectors
        index_s, peak, cpu_s = _index(settings, spec, tmp)
    rate, consume, built = rows / index_s, rows / consume_s, rows / build_s
    mib = peak / 2**20
    print(f"{factory:<8} {rows:>9} {rate:>15,.0f} {consume:>15,.0f} {rate / consume:>5.2f}x "
          f"{built:>16,.0f} {rate / built:>5.2f}x {mib:>13,.0f} {mib / rows * 1e6:>12,.0f}")
    key = factory.lower()
    result.compare(f"{key}_vs_consume", f"{factory} indexer rows/s, {rows} rows", rate, consume,
                   "rows/s", "raw consume + decode", goal="ratio >= 0.8" if key == "flat" else None,
                   summary=summary == "consume")
    result.compare(f"{key}_vs_build", f"{factory} indexer rows/s, {rows} rows", rate, built,
                   "rows/s", "raw FAISS index_factory + add, segment-sized chunks",
                   goal="ratio >= 0.9", summary=summary == "build")
    result.figure(f"{key}_peak_rss_mib", f"{factory} worker peak RSS", mib, "MiB")
    result.figure(f"{key}_cpu_s", f"{factory} worker CPU time (user + system)", cpu_s, "s")
    result.figure(f"{key}_seconds", f"{factory} indexer wall time", index_s, "s")


def _raw_consume(settings: Settings, spec: CollectionSpec) -> float:
    """Time a plain consumer reading and decoding every message of the topic."""
    topic = spec.collection.topic
    consumer = Consumer(settings.kafka_config(**{"group.id": f"raw-{uuid.uuid4().hex}",
                                                 "enable.auto.commit": False, **CONSUMER_FETCH}))
    ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(spec.partitions)}
    consumer.assign([TopicPartition(topic, p, 0) for p in ends])
    pending = {p for p, end in ends.items() if end > 0}
    started = time.perf_counter()
    while pending:
        for msg in consumer.consume(1000, timeout=0.5):
            record.decode_valid(msg.value(), dim=spec.dim, model_version="")
            if msg.offset() >= ends[msg.partition()] - 1:
                pending.discard(msg.partition())
    elapsed = time.perf_counter() - started
    consumer.close()
    return elapsed


def _raw_build(vectors: np.ndarray, spec: CollectionSpec, partitions: int) -> float:
    """Time faiss.index_factory + add over segment-sized chunks of the same vectors."""
    chunk = max(1, min(spec.seal_rows, len(vectors) // partitions))
    started = time.perf_counter()
    for lo in range(0, len(vectors), chunk):
        raw_faiss_build(vectors[lo:lo + chunk], spec.index, spec.metric)
    return time.perf_counter() - started


def _index(settings: Settings, spec: CollectionSpec, tmp: Path) -> tuple[float, int, float]:
    """Run one worker from its first assignment until every partition is registered.

    Returns the wall seconds, the peak RSS in bytes and the worker's CPU seconds.
    """
    ends = {p.partition: p.high for p in admin.partition_offsets(settings, spec.collection.topic)}
    registry = Registry(settings.redis_client(), spec.name)
    worker = start_role(settings, "indexer", spec.name, tmp)
    started = time.perf_counter()
    try:
        watcher, peak = psutil.Process(worker.proc.pid), 0
        while not all(registry.checkpoint(p) == end for p, end in ends.items()):
            peak = max(peak, watcher.memory_info().rss)
            if worker.proc.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{worker.log_text()[-2000:]}")
            time.sleep(RSS_PROBE_S)  # sampling interval of the RSS and progress probe
        elapsed = time.perf_counter() - started
        cpu = watcher.cpu_times()
    finally:
        worker.stop()
    print(f"#   {spec.index}: worker wall {elapsed:.2f}s, cpu user {cpu.user:.2f}s "
          f"system {cpu.system:.2f}s (process total, start-up included)")
    return elapsed, peak, cpu.user + cpu.system


if __name__ == "__main__":
    main()
