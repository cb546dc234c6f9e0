"""Monitor metrics: the scrape-time collector, the drift gauges, recall@k and the status table."""

from __future__ import annotations

import numpy as np
from confluent_kafka import KafkaException
from prometheus_client import CollectorRegistry

from indexer.registry import SegmentRecord
from monitor import drift
from monitor.collectors import CollectionCollector
from monitor.metrics import MonitorMetrics
from monitor.recall import recall_at_k
from monitor.status import StatusRow, render
from monitor.summary import Samples

NOW = 1_700_000_100.0


class FakeRegistry:
    """The two registry reads the collector makes, from fixed values."""

    def __init__(self, segments: list[SegmentRecord], checkpoints: dict[int, int]) -> None:
        self._segments = segments
        self._checkpoints = checkpoints

    def segments(self, *, skipped: dict[str, str] | None = None) -> list[SegmentRecord]:
        return list(self._segments)

    def checkpoints(self) -> dict[int, int]:
        return dict(self._checkpoints)


def segment(partition: int, start: int, end: int, rows: int, created_at: float) -> SegmentRecord:
    sid = f"p{partition:04d}-{start:012d}-{end:012d}"
    return SegmentRecord(sid, partition, start, end, rows, 0, f"c/g0/p{partition}/{sid}", "Flat",
                         created_at)


def scrape(segments, checkpoints, watermarks) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(CollectionCollector("books", FakeRegistry(segments, checkpoints),
                                          watermarks, clock=lambda: NOW))
    return registry


def test_collector_computes_lag_headroom_and_segments_at_scrape_time() -> None:
    segs = [segment(0, 0, 40, 300, NOW - 90.5), segment(0, 40, 70, 120, NOW - 10.0),
            segment(1, 0, 25, 200, NOW - 30.0)]
    marks = {0: (5, 100), 1: (0, 25), 2: (3, 9)}
    registry = scrape(segs, {0: 70, 1: 25}, lambda: marks)
    value = registry.get_sample_value
    prefix = "streamvec_monitor_"
    assert value(prefix + "segments", {"collection": "books"}) == 3
    assert value(prefix + "segment_rows", {"collection": "books"}) == 620
    assert value(prefix + "oldest_segment_age_seconds", {"collection": "books"}) == 90.5
    lag = {p: value(prefix + "checkpoint_lag_messages", {"collection": "books", "partition": p})
           for p in ("0", "1", "2")}
    assert lag == {"0": 30, "1": 0, "2": 9}
    headroom = {p: value(prefix + "retention_headroom_messages",
                         {"collection": "books", "partition": p}) for p in ("0", "1", "2")}
    assert headroom == {"0": 65, "1": 25, "2": -3}  # partition 2: retention passed checkpoint 0


def test_collector_values_follow_the_registry_between_scrapes() -> None:
    segs: list[SegmentRecord] = []
    registry = scrape(segs, {}, lambda: {0: (0, 10)})
    labels = {"collection": "books"}
    assert registry.get_sample_value("streamvec_monitor_segments", labels) == 0
    assert registry.get_sample_value("streamvec_monitor_oldest_segment_age_seconds",
                                     labels) is None
    segs.append(segment(0, 0, 10, 10, NOW - 1.0))
    assert registry.get_sample_value("streamvec_monitor_segments", labels) == 1
    assert registry.get_sample_value("streamvec_monitor_checkpoint_lag_messages",
                                     {**labels, "partition": "0"}) == 10


def test_collector_without_kafka_still_reports_segments() -> None:
    def broken():
        raise KafkaException("brokers unreachable")

    registry = scrape([segment(0, 0, 5, 5, NOW - 2.0)], {0: 5}, broken)
    assert registry.get_sample_value("streamvec_monitor_segments", {"collection": "books"}) == 1
    assert registry.get_sample_value("streamvec_monitor_checkpoint_lag_messages",
                                     {"collection": "books", "partition": "0"}) is None


def test_registering_the_collector_reads_nothing() -> None:
    class Untouchable:
        def segments(self, *, skipped=None):
            raise AssertionError("read at registration")

        checkpoints = segments

    CollectorRegistry(auto_describe=True).register(
        CollectionCollector("books", Untouchable(), lambda: {}))


def test_drift_gauges_and_state_come_from_a_report() -> None:
    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry, "books")
    report = drift.DriftReport(mean_cosine_distance=0.25, mmd=0.125, mmd_pvalue=0.005,
                               drifted_share=0.5, norm_shift=0.0625, state="drift",
                               reasons=("mmd", "mean_cosine_distance"))
    metrics.observe_drift(report)
    labels = {"collection": "books"}
    value = registry.get_sample_value
    assert value("streamvec_monitor_drift_mean_cosine_distance", labels) == 0.25
    assert value("streamvec_monitor_drift_mmd", labels) == 0.125
    assert value("streamvec_monitor_drift_mmd_p_value", labels) == 0.005
    assert value("streamvec_monitor_drift_drifted_share", labels) == 0.5
    assert value("streamvec_monitor_drift_norm_shift", labels) == 0.0625
    assert value("streamvec_monitor_drift_state", labels) == 2
    assert value("streamvec_monitor_canary_failures_total", {**labels, "reason": "timeout"}) == 0
    metrics.labels(metrics.freshness_seconds).observe(0.3)
    assert value("streamvec_monitor_freshness_seconds_count", labels) == 1
    assert value("streamvec_monitor_freshness_seconds_bucket", {**labels, "le": "0.5"}) == 1


def sealed_of(ids: set[str]):
    return lambda hits: np.array([h in ids for h in hits], dtype=bool)


def test_recall_at_k_counts_sealed_hits_against_the_exact_top_k() -> None:
    sealed = sealed_of(set("abcdefgh"))
    exact = [list("abcd"), list("efgh")]
    assert recall_at_k([list("abcd"), list("efgh")], exact, sealed, 4) == 1.0
    # x is a tail row: it displaced d, so the sealed hits compare with the exact top 3.
    assert recall_at_k([["a", "x", "b", "c"], list("efab")], exact, sealed, 4) == 0.75
    assert recall_at_k([["a", None, None, None], list("efgh")], exact, sealed, 4) == 0.625
    assert recall_at_k([list("wxyz"), list("hgfe")], exact, sealed, 4) == 1.0  # query 0 skipped
    assert recall_at_k([list("wxyz")], [list("abcd")], sealed, 4) is None
    assert recall_at_k([["a"]], [[]], sealed, 4) is None


def test_status_table_prints_dashes_for_what_is_unknown() -> None:
    rows = [StatusRow("books", 620, 3, 39, 12.5, 4.25, "ok", 0.9876, 10, 0.1234),
            StatusRow("films", 0, 0, None, None, None, None, None, None, None)]
    lines = render(rows).splitlines()
    assert lines[0].split() == ["COLLECTION", "ROWS", "SEGS", "LAG", "QPS", "P99", "MS",
                                "DRIFT", "RECALL", "FRESH", "P99", "UNSERVED"]
    assert lines[1].split() == ["books", "620", "3", "39", "12.5", "4.2", "ok", "0.988@10",
                                "0.123", "0"]
    assert lines[2].split() == ["films", "0", "0", "-", "-", "-", "-", "-", "-", "0"]


def test_status_lists_every_segment_not_served_under_the_table() -> None:
    why = "corrupt since 2026-12-06T03:00:00Z: vectors.npy: sha256 does not match the manifest"
    rows = [StatusRow("books", 620, 3, 0, None, None, None, None, None, None,
                      {"p0000-000000000000-000000000010": why})]
    lines = render(rows).splitlines()
    assert lines[1].split()[-1] == "1"
    assert lines[2] == f"books: p0000-000000000000-000000000010 not served: {why}"


def test_samples_percentiles() -> None:
    samples = Samples(size=4)
    assert samples.percentile(99) is None
    for value in (9.0, 1.0, 2.0, 3.0, 4.0):
        samples.add(value)
    assert len(samples) == 4 and samples.percentile(50) == 2.5 and samples.percentile(100) == 4.0
