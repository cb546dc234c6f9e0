"""Freshness: time from produce to searchable, as a CDF, beside raw Kafka produce-to-consume.

A probe upserts one row with a unique vector through the Producer SDK, flushes, then asks an
`eventual` k=1 query with that vector until the row comes back; the sample is the time from
before the upsert to that answer. The raw baseline sends the same bytes with a raw producer
(the SDK's librdkafka config) to a scratch topic and waits for a raw consumer (the searcher
tail's fetch config) to receive them. Samples of both kinds alternate while background
ingest runs into the collection, so both meet the same broker load.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the repo root must win over bench/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka import Producer as KafkaProducer
from confluent_kafka.admin import AdminClient, NewTopic

from bench._load import Ingest
from bench._stack import clustered
from bench.common import Result, machine_info, parse_scaled, percentile
from bench.search import settled_serving
from ingest import record
from ingest.producer import Producer
from searcher.client import Client
from searcher.tail import CONSUMER_CONFIG
from streamvec.settings import Settings

DEFAULTS = {
    "small": {"samples": 40, "rows": 5_000, "ingest_rate": 500},
    "full": {"samples": 500, "rows": 50_000, "ingest_rate": 5000},
}
PROBE_TIMEOUT_S = 30.0
# Pause between probes so the CDF samples the pipeline at rest between writes, not a queue.
PROBE_GAP_S = 0.02
QUANTILES = (50, 90, 95, 99, 100)


def main(argv: list[str] | None = None) -> None:
    """Bring up a serving collection, then take alternating raw and streamvec samples."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, help="probes of each kind")
    parser.add_argument("--rows", type=int, help="rows loaded and sealed before probing")
    parser.add_argument("--ingest-rate", type=int, help="background upserts, rows/s (0: none)")
    parser.add_argument("--dim", type=int, default=384)
    args = parse_scaled(parser, DEFAULTS, argv)
    base = Settings()
    result = Result("freshness", "Freshness: produce to searchable", args, base)
    data = clustered(args.rows, args.dim)
    probes = np.random.default_rng(7).standard_normal((args.samples, args.dim)).astype(
        np.float32) * 10
    # The loaded rows are history: probing starts once the searcher serves them settled.
    with settled_serving(base, "bench-fresh", data, partitions=4, seal_seconds=5.0) as (
            settings, spec, _):
        with _raw_topic(settings) as topic, Ingest(settings, spec.name, args.dim,
                                                   args.ingest_rate) as ingest:
            ours, raw = _sample(settings, spec.name, topic, probes)
        rate = ingest.achieved_rate
    _record(result, sorted(ours), sorted(raw), rate, args)
    result.write()


@contextmanager
def _raw_topic(settings: Settings) -> Iterator[str]:
    """A one-partition scratch topic for the raw baseline, deleted afterwards."""
    admin = AdminClient(settings.kafka_config())
    topic = f"bench-raw-{uuid.uuid4().hex[:8]}"
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    try:
        yield topic
    finally:
        admin.delete_topics([topic])[topic].result(30)


def _sample(settings: Settings, collection: str, topic: str,
            probes: np.ndarray) -> tuple[list[float], list[float]]:
    """Milliseconds to visible of every probe, through streamvec and through raw Kafka."""
    ours, raw = [], []
    with Producer(collection, settings=settings) as producer, Client(settings=settings) as client:
        raw_producer = KafkaProducer(producer.kafka_config)
        consumer = Consumer(settings.kafka_config(**{**CONSUMER_CONFIG,
                                                     "group.id": f"bench-{uuid.uuid4().hex}"}))
        end = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1]
        consumer.assign([TopicPartition(topic, 0, end)])
        try:
            # One probe of each kind first, unrecorded: the idempotent producers' start-up
            # (a producer id from the broker) is not what the CDF is about.
            _raw_probe(raw_producer, consumer, topic, -1, -probes[0])
            _probe(producer, client, collection, -1, -probes[0])
            for i, vector in enumerate(probes):
                raw.append(_raw_probe(raw_producer, consumer, topic, i, vector))
                ours.append(_probe(producer, client, collection, i, vector))
                time.sleep(PROBE_GAP_S)  # pacing between probes
        finally:
            consumer.close()
    return ours, raw


def _probe(producer: Producer, client: Client, collection: str, i: int,
           vector: np.ndarray) -> float:
    key = f"probe-{i}"
    started = time.perf_counter()
    producer.upsert([key], vector[None, :])
    producer.flush()
    while True:
        got = client.search(collection, vector, k=1, timeout=10)
        if got.ids[0][0] == key:
            return (time.perf_counter() - started) * 1e3
        if time.perf_counter() - started > PROBE_TIMEOUT_S:
            raise TimeoutError(f"{key} not searchable after {PROBE_TIMEOUT_S:g}s")


def _raw_probe(producer: KafkaProducer, consumer: Consumer, topic: str, i: int,
               vector: np.ndarray) -> float:
    key = f"raw-{i}".encode()
    payload = record.encode([key.decode()], vector[None, :])
    started = time.perf_counter()
    producer.produce(topic, payload, key=key, partition=0)
    producer.flush(10)
    while True:
        msg = consumer.poll(0.1)
        if msg is not None and msg.error() is None and msg.key() == key:
            return (time.perf_counter() - started) * 1e3
        if time.perf_counter() - started > PROBE_TIMEOUT_S:
            raise TimeoutError(f"raw message {key!r} not consumed after {PROBE_TIMEOUT_S:g}s")


def _record(result: Result, ours: list[float], raw: list[float], rate: float,
            args: argparse.Namespace) -> None:
    print(f"# freshness: {args.samples} probes each, {args.rows} sealed rows x {args.dim}-d, "
          f"background ingest {rate:,.0f} rows/s, eventual k=1 queries")
    print(f"# machine: {machine_info()}")
    print(f"{'ms':<28} " + " ".join(f"{'max' if q == 100 else f'p{q}':>8}" for q in QUANTILES))
    for label, samples in (("streamvec produce->search", ours), ("raw Kafka produce->consume",
                                                                 raw)):
        print(f"{label:<28} " + " ".join(f"{percentile(samples, q):>8.1f}" for q in QUANTILES))
    for q in QUANTILES:
        name = "max" if q == 100 else f"p{q}"
        result.compare(f"{name}_ms", f"produce to searchable, {name}", percentile(ours, q),
                       percentile(raw, q), "ms", "raw Kafka produce to consume",
                       goal="<= 100 ms" if q == 99 else None, summary=q in (50, 95, 99))
    result.figure("samples", "probes of each kind", len(ours), "samples")
    result.figure("ingest_rate", "background ingest achieved", rate, "rows/s")
    result.samples["streamvec_ms"] = ours
    result.samples["raw_kafka_ms"] = raw


if __name__ == "__main__":
    main()
