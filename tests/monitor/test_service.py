"""The monitor with real Kafka, Redis, indexer and searcher: canary, recall, collectors, status."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import urllib.request

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from indexer.registry import Registry
from indexer.store import SegmentStore
from ingest import admin
from ingest.producer import Producer
from ingest.spec import CollectionSpec
from monitor import summary
from monitor.collectors import CollectionCollector, KafkaWatermarks
from monitor.metrics import CANARY_FAILURE_REASONS, MonitorMetrics
from monitor.recall import RecallProbe
from monitor.service import MonitorOptions, Service
from monitor.windows import FirstRows, SlidingWindow, WindowReader
from searcher import search
from searcher.client import Client
from searcher.execute import CANARY_FIELD, CANARY_PREFIX
from streamvec.commands import main
from streamvec.devstack.ports import free_port
from tests.support.cli import argv as cli_argv
from tests.support.polling import wait_until
from tests.support.stack import IndexerThread, SearcherThread, serving
from tests.support.workers import wait_fully_indexed

pytestmark = pytest.mark.integration

DIM = 8
NOW = 1_800_000_000.0


@pytest.fixture
def flat(settings, collection_name):
    with serving(settings, collection_name, dim=DIM, partitions=2, seal_rows=400,
                 seal_seconds=0.5) as spec:
        yield spec


def test_canary_reports_freshness_while_ingest_runs(settings, flat):
    registry = CollectorRegistry()
    labels = {"collection": flat.name}
    service = Service(settings, [flat.name], registry=registry, options=MonitorOptions(
        drift=0.3, canary=0.05, recall=0, window_rows=400, reference_rows=100))
    stop = threading.Event()
    producer = Producer(flat.name, settings=settings)

    def ingest() -> None:
        rng = np.random.default_rng(31)
        while not stop.wait(0.02):  # a steady trickle of rows, about 2.5k per second
            producer.upsert([f"row-{i}" for i in rng.integers(0, 4000, 50)],
                            rng.standard_normal((50, DIM)).astype(np.float32))
            producer.flush()

    writer = threading.Thread(target=ingest, daemon=True)
    writer.start()
    service.start()
    try:
        wait_until(lambda: (registry.get_sample_value(
            "streamvec_monitor_freshness_seconds_count", labels) or 0) >= 3,
            timeout=60, what="three canary freshness observations")
        live = wait_until(lambda: (s := summary.read(settings.redis_client(), flat.name))
                          and "drift_state" in s and "freshness_p99_s" in s and s,
                          timeout=60, what="the monitor summary")
    finally:
        stop.set()
        writer.join(30)
        service.shutdown()
        producer.close()
    assert live["drift_state"] in ("ok", "warning", "drift")
    assert 0 < float(live["freshness_p99_s"]) < 30
    assert registry.get_sample_value("streamvec_monitor_drift_state", labels) in (0, 1, 2)
    for reason in CANARY_FAILURE_REASONS:
        assert registry.get_sample_value("streamvec_monitor_canary_failures_total",
                                         {**labels, "reason": reason}) == 0


def test_canary_rows_reach_only_queries_that_filter_on_them(settings, flat):
    vector = np.full(DIM, 3.0, np.float32)
    with Producer(flat.name, settings=settings) as producer:
        producer.upsert([CANARY_PREFIX + "probe", "near"], np.stack([vector, vector + 0.5]),
                        metadata=[{CANARY_FIELD: True}, None])
        offsets = producer.flush()
    client = Client(settings=settings)
    plain = client.search(flat.name, vector, k=2, consistency={"session": offsets})
    assert [i for i in plain.ids[0] if i is not None] == ["near"]
    canary = client.search(flat.name, vector, k=2, filter={CANARY_FIELD: True},
                           consistency={"session": offsets})
    assert [i for i in canary.ids[0] if i is not None] == [CANARY_PREFIX + "probe"]


def fill_window(settings, spec: CollectionSpec, capacity: int) -> SlidingWindow:
    """A current window filled by a WindowReader from the collection's topic."""
    window = SlidingWindow(capacity)
    reader = WindowReader(settings, spec, window, FirstRows(10))
    reader.subscribe()
    try:
        wait_until(lambda: reader.poll_once() >= 0 and len(window) == capacity, timeout=60,
                   what="the current window to fill")
    finally:
        reader.close()
    return window


def probe_recall(settings, name: str, index: str) -> float:
    """Index 12,000 random rows with `index` and run one recall probe over them."""
    spec = CollectionSpec(name, dim=16, partitions=1, index=index, seal_rows=5000,
                          seal_seconds=600)
    admin.create_collection(settings, spec)
    vectors = np.random.default_rng(41).standard_normal((12000, 16)).astype(np.float32)
    ids = [f"v-{i}" for i in range(len(vectors))]
    with Producer(name, settings=settings) as producer:
        for lo in (0, 6000):  # one 6,000-row message each: two full segments
            producer.upsert(ids[lo:lo + 6000], vectors[lo:lo + 6000])
            producer.flush()
    indexer, searcher = IndexerThread(settings, name), SearcherThread(settings, name)
    metrics = CollectorRegistry()
    try:
        wait_fully_indexed(settings, name, spec.collection.topic, timeout=120)
        registry = Registry(settings.redis_client(), name)
        # Over SCAN_MAX_VISIBLE rows a segment is searched through its index, not scanned.
        assert [s.rows for s in registry.segments()] == [6000, 6000]
        assert search.SCAN_MAX_VISIBLE < 6000
        wait_until(lambda: searcher.registry.get_sample_value(
            "streamvec_searcher_loaded_segments", {"collection": name}) == 2,
            timeout=60, what="the searcher to serve both segments")
        probe = RecallProbe(spec, registry, SegmentStore(settings.store),
                            fill_window(settings, spec, 1000),
                            MonitorMetrics(metrics, name), Client(settings=settings),
                            k=10, queries=64, seed=5)
        value = probe.run_once()
    finally:
        searcher.stop()
        indexer.stop()
    assert metrics.get_sample_value("streamvec_monitor_recall",
                                    {"collection": name, "k": "10"}) == value
    assert metrics.get_sample_value("streamvec_monitor_probe_queries_total",
                                    {"collection": name}) == 64
    return value


def test_recall_probe_reads_one_on_flat_and_drops_on_a_coarse_index(settings, collection_name):
    flat_recall = probe_recall(settings, collection_name + "-flat", "Flat")
    coarse_recall = probe_recall(settings, collection_name + "-pq", "PQ4x4")
    assert flat_recall == 1.0
    assert coarse_recall < 0.9


def indexed_then_lagging(settings, name: str) -> CollectionSpec:
    """A collection with 300 rows indexed in small segments and 40 more left unindexed."""
    spec = CollectionSpec(name, dim=4, partitions=2, index="Flat", seal_rows=50,
                          seal_seconds=0.2)
    admin.create_collection(settings, spec)
    rng = np.random.default_rng(51)
    with Producer(spec.name, settings=settings) as producer:
        for _ in range(6):
            producer.upsert([f"a-{i}" for i in rng.integers(0, 500, 50)],
                            rng.standard_normal((50, 4)).astype(np.float32))
            producer.flush()
    indexer = IndexerThread(settings, spec.name)
    try:
        wait_fully_indexed(settings, spec.name, spec.collection.topic, timeout=60)
    finally:
        indexer.stop()
    with Producer(spec.name, settings=settings) as producer:
        producer.upsert([f"b-{i}" for i in range(40)], np.ones((40, 4), np.float32))
    return spec


def test_collectors_and_status_match_the_registry_and_watermarks(settings, collection_name,
                                                                  capsys):
    spec = indexed_then_lagging(settings, collection_name)
    registry = Registry(settings.redis_client(), spec.name)
    segments, checkpoints = registry.segments(), registry.checkpoints()
    marks = {p.partition: (p.low, p.high)
             for p in admin.partition_offsets(settings, spec.collection.topic)}
    scraped = CollectorRegistry()
    scraped.register(CollectionCollector(spec.name, registry, KafkaWatermarks(
        settings, spec.collection.topic), clock=lambda: NOW))
    value = scraped.get_sample_value
    one = {"collection": spec.name}
    assert value("streamvec_monitor_segments", one) == len(segments) > 0
    rows = sum(s.rows for s in segments)  # latest op per id within a segment: under 300
    assert value("streamvec_monitor_segment_rows", one) == rows > 0
    assert value("streamvec_monitor_oldest_segment_age_seconds", one) == NOW - min(
        s.created_at for s in segments)
    lag = {p: value("streamvec_monitor_checkpoint_lag_messages", {**one, "partition": str(p)})
           for p in marks}
    assert lag == {p: high - checkpoints[p] for p, (_, high) in marks.items()}
    assert sum(lag.values()) > 0
    headroom = {p: value("streamvec_monitor_retention_headroom_messages",
                         {**one, "partition": str(p)}) for p in marks}
    assert headroom == {p: checkpoints[p] - low for p, (low, _) in marks.items()}

    summary.Summary(settings.redis_client(), spec.name, 60).update(
        drift_state="warning", recall="0.5", recall_k=10)
    argv = [*cli_argv(settings), "status", "--collection", spec.name]
    assert main(argv) == 0
    row = next(line.split() for line in capsys.readouterr().out.splitlines()
               if line.startswith(spec.name + " "))
    assert row == [spec.name, str(rows), str(len(segments)), str(sum(lag.values())), "-", "-",
                   "warning", "0.500@10", "-", "0"]


def test_monitor_command_serves_metrics_and_stops_on_sigterm(settings, flat, tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMVEC_")}
    argv = [sys.executable, "-m", "streamvec", *cli_argv(settings), "monitor",
            "--collection", flat.name, "--metrics-port", str(port), "--canary-every", "0.1",
            "--drift-every", "0", "--recall-every", "0"]
    log = tmp_path / "monitor.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        freshness = f'streamvec_monitor_freshness_seconds_count{{collection="{flat.name}"}} '
        segments = f'streamvec_monitor_segments{{collection="{flat.name}"}} '
        text = wait_until(lambda: _scrape(port, freshness), timeout=60,
                          what=f"the canary on /metrics (log: {log})")
        assert segments in text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def _scrape(port: int, needle: str) -> str | None:
    """The /metrics text once a sample starting with `needle` is above zero, else None."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    except OSError:
        return None
    line = next((ln for ln in text.splitlines() if ln.startswith(needle)), None)
    return text if line is not None and float(line.split()[-1]) >= 1 else None
