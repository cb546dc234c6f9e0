"""Monitor readers of a real registry in Redis: one malformed record never hides the rest."""

from __future__ import annotations

import json
import logging

import pytest
from prometheus_client import CollectorRegistry

from indexer.registry import Registry
from indexer.store import SegmentStore
from monitor.collectors import CollectionCollector
from monitor.sealed import SealedView
from tests.support.segments import write_offsets

pytestmark = pytest.mark.integration

BAD_ID = "p0000-000000000009-000000000012"


@pytest.fixture
def registered(redis_client, collection_name, tmp_path):
    """Two good segments of partition 0 (offsets 0-5 and 5-9) and one malformed record."""
    registry = Registry(redis_client, collection_name)
    store = SegmentStore(tmp_path / "store")
    epoch = registry.claim(0)
    good = [write_offsets(store, collection_name, 0, 0, 5),
            write_offsets(store, collection_name, 0, 5, 9)]
    for record in good:
        assert registry.register(record, epoch).ok
    body = json.loads(good[-1].to_json())
    redis_client.hset(registry.segments_key, BAD_ID,
                      json.dumps(body))  # the body of another segment
    try:
        yield registry, store, good
    finally:  # the session's Redis is shared: leave no bad record for other tests to meet
        redis_client.hdel(registry.segments_key, BAD_ID)


def test_the_collector_reports_the_good_records_and_logs_the_bad_one_once(registered, caplog):
    registry, _, good = registered
    name = str(registry.collection)
    scraped = CollectorRegistry()
    scraped.register(CollectionCollector(name, registry, lambda: {0: (0, 12)}))
    caplog.set_level(logging.ERROR, logger="monitor.collectors")
    for _ in range(3):
        labels = {"collection": name}
        assert scraped.get_sample_value("streamvec_monitor_segments", labels) == 2
        assert scraped.get_sample_value("streamvec_monitor_segment_rows", labels) == 9
        assert scraped.get_sample_value("streamvec_monitor_checkpoint_lag_messages",
                                        {**labels, "partition": "0"}) == 3
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [f"collection={name} registry record skipped: registry record "
                      f"'{BAD_ID}' describes 'p0000-000000000005-000000000009'"]
    with pytest.raises(ValueError, match=f"registry record '{BAD_ID}'"):
        registry.segments()
    assert [r.segment_id for r in registry.segments(skipped={})] == [
        r.segment_id for r in good]


def test_the_sealed_view_reads_the_good_records_and_logs_the_bad_one_once(registered, caplog):
    registry, store, good = registered
    view = SealedView(registry, store)
    caplog.set_level(logging.ERROR, logger="monitor.sealed")
    parts = view.parts()
    assert [p.segment.manifest.segment_id for p in parts] == [r.segment_id for r in good]
    assert sorted(i.decode() for p in parts for i in p.ids) == sorted(
        f"id-{o}" for o in range(9))
    registry.client.incr(registry.version_key)  # a registry change forces a reload
    assert len(view.parts()) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and f"registry record '{BAD_ID}'" in errors[0]
