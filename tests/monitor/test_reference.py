"""Monitor pieces that read Redis, against the real one: drift reference, query rate."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from monitor import reference
from monitor.metrics import MonitorMetrics
from monitor.summary import QueryRate
from monitor.tracker import DriftTracker
from monitor.windows import FirstRows, SlidingWindow
from searcher.protocol import queue_key

pytestmark = pytest.mark.integration


def test_drift_tracker_uses_first_rows_until_a_reference_is_pinned(redis_client,
                                                                     collection_name) -> None:
    client, registry, name = redis_client, CollectorRegistry(), collection_name
    rng = np.random.default_rng(3)
    current, first = SlidingWindow(200), FirstRows(200)
    tracker = DriftTracker(client, name, current, first, MonitorMetrics(registry, name))
    first.extend(rng.standard_normal((19, 4)))
    current.extend(rng.standard_normal((200, 4)))
    assert tracker.run_once() is None  # 19 reference rows: below drift.MIN_ROWS
    first.extend(rng.standard_normal((181, 4)))
    report = tracker.run_once()
    assert tracker.reference()[1] == "first-seen"
    labels = {"collection": name}
    assert registry.get_sample_value("streamvec_monitor_drift_mmd", labels) == report.mmd
    assert registry.get_sample_value("streamvec_monitor_window_rows",
                                     {**labels, "window": "reference"}) == 200

    far = (rng.standard_normal((100, 4)) + 5.0).astype(np.float32)
    client.hset(reference.ref_key(name), mapping={
        b"vectors": far.astype("<f4").tobytes(), b"dim": b"4", b"rows": b"100",
        b"pinned_at": b"1700000000.5", b"source": b"topic"})
    vectors, origin = tracker.reference()
    assert origin == "pinned" and np.array_equal(vectors, far)
    assert tracker.run_once().state == "drift"
    assert registry.get_sample_value("streamvec_monitor_drift_state", labels) == 2
    client.hset(reference.ref_key(name), mapping={b"rows": b"99",
                                                  b"pinned_at": b"1700000001.5"})
    with pytest.raises(reference.PinError, match="damaged"):
        tracker.reference()


def test_query_rate_follows_the_query_stream(redis_client, collection_name) -> None:
    rate = QueryRate(redis_client, collection_name)
    redis_client.xadd(queue_key(collection_name), {"x": "1"})
    assert rate.sample(now=10.0) is None
    for _ in range(50):
        redis_client.xadd(queue_key(collection_name), {"x": "1"})
    assert rate.sample(now=12.0) == 25.0
    assert rate.sample(now=12.0) is None  # no time passed
