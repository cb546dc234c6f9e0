"""Indexer rows/s, Kafka to registered segments, beside raw consume+decode and raw FAISS build."""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the repo root must win over bench/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import signal
import subprocess
import tempfile
import time
import uuid

import faiss
import numpy as np
import psutil
from confluent_kafka import Consumer, TopicPartition

from bench.common import machine_info
from indexer import build
from indexer.registry import Registry
from indexer.worker import CONSUMER_FETCH
from ingest import admin, record
from ingest.producer import Producer
from ingest.spec import CollectionSpec
from streamvec.settings import Settings


def main() -> None:
    """Index the same rows with Flat and HNSW32 segments and print the ratios."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000, help="rows for the Flat run")
    parser.add_argument("--hnsw-rows", type=int, default=100_000, help="rows for the HNSW32 run")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--seal-rows", type=int, default=25_000)
    parser.add_argument("--seal-seconds", type=float, default=0.25,
                        help="stale policy; bounds the wait for the last, partial segments")
    args = parser.parse_args()
    settings = Settings()
    print(f"# indexer: {args.dim}-d float32, {args.partitions} partitions, one worker, "
          f"segments of {args.seal_rows} rows per partition")
    print(f"# machine: {machine_info()}")
    print(f"{'index':<8} {'rows':>8} {'indexer rows/s':>15} {'consume+decode':>15} {'ratio':>6} "
          f"{'raw FAISS build':>16} {'ratio':>6} {'peak RSS MiB':>13} {'MiB/1M rows':>12}")
    for factory, rows in (("Flat", args.rows), ("HNSW32", args.hnsw_rows)):
        run(settings, factory, rows, args)
    print("ratios: indexer rows/s over the raw baseline's rows/s (goals: >= 0.8x of consume+decode "
          "for Flat, >= 0.9x of the raw FAISS build)")


def run(settings: Settings, factory: str, rows: int, args: argparse.Namespace) -> None:
    """Produce `rows`, time the three paths over them, print one table row."""
    name = f"bench-indexer-{factory.lower()}-{uuid.uuid4().hex[:6]}"
    spec = CollectionSpec(name, dim=args.dim, partitions=args.partitions, index=factory,
                          seal_rows=args.seal_rows, seal_seconds=args.seal_seconds)
    with tempfile.TemporaryDirectory(prefix="sv-bench-") as tmp:
        settings = settings.model_copy(update={"snapshots": Path(tmp)})
        admin.create_collection(settings, spec)
        try:
            vectors = _produce(settings, spec, rows)
            consume_s = _raw_consume(settings, spec)
            build_s = _raw_build(vectors, spec, args.partitions)
            index_s, peak = _index(settings, spec, Path(tmp))
        finally:
            admin.drop_collection(settings, name)
    rate = rows / index_s
    print(f"{factory:<8} {rows:>8} {rate:>15,.0f} {rows / consume_s:>15,.0f} "
          f"{rate / (rows / consume_s):>5.2f}x {rows / build_s:>16,.0f} "
          f"{rate / (rows / build_s):>5.2f}x {peak / 2**20:>13,.0f} "
          f"{peak / 2**20 / rows * 1e6:>12,.0f}")


def _produce(settings: Settings, spec: CollectionSpec, rows: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((rows, spec.dim)).astype(np.float32)
    with Producer(spec.name, settings=settings) as producer:
        for lo in range(0, rows, 10_000):
            producer.upsert([f"r{i}" for i in range(lo, min(lo + 10_000, rows))],
                            vectors[lo:lo + 10_000])
    return vectors


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
        index = faiss.index_factory(spec.dim, spec.index, build.faiss_metric(spec.metric))
        index.add(np.ascontiguousarray(vectors[lo:lo + chunk]))
    return time.perf_counter() - started


def _index(settings: Settings, spec: CollectionSpec, tmp: Path) -> tuple[float, int]:
    """Run one worker process from its first assignment until every partition is registered."""
    log = tmp / "worker.log"
    argv = [sys.executable, "-m", "streamvec", "indexer", "--collection", spec.name]
    ends = {p.partition: p.high for p in admin.partition_offsets(settings, spec.collection.topic)}
    registry = Registry(settings.redis_client(), spec.name)
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                env=settings.child_env())
    watcher, peak, started = psutil.Process(proc.pid), 0, None
    while True:
        peak = max(peak, watcher.memory_info().rss)
        if started is None and "taken over" in log.read_text():
            started = time.perf_counter()
        if started and all(registry.checkpoint(p) == end for p, end in ends.items()):
            break
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited early:\n{log.read_text()[-2000:]}")
        time.sleep(0.02)  # sampling interval of the RSS and progress probe
    elapsed = time.perf_counter() - started
    cpu = watcher.cpu_times()
    print(f"#   {spec.index}: worker wall {elapsed:.2f}s, cpu user {cpu.user:.2f}s "
          f"system {cpu.system:.2f}s (process total, start-up included)")
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    return elapsed, peak


if __name__ == "__main__":
    main()
