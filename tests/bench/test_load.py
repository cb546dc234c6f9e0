"""The benchmarks' background ingest: a process of its own that reports what it delivered."""

from __future__ import annotations

import pytest

from bench._load import Ingest
from bench._stack import scratch_collection
from tests.support.polling import wait_until


@pytest.mark.integration
def test_ingest_process_reports_every_row_it_delivered(settings) -> None:
    from confluent_kafka import Consumer, TopicPartition

    with scratch_collection(settings, "bench-ingest", dim=8, partitions=2) as (loaded, spec, _):
        consumer = Consumer(loaded.kafka_config(**{"group.id": "bench-ingest-check"}))
        try:
            def ends() -> dict[int, int]:
                return {p: consumer.get_watermark_offsets(
                    TopicPartition(spec.collection.topic, p), timeout=10)[1] for p in range(2)}

            with Ingest(loaded, spec.name, 8, rate=400) as ingest:
                wait_until(lambda: sum(ends().values()) >= 3, timeout=30,
                           what="rows from the ingest process")
            after = ends()
        finally:
            consumer.close()
        assert ingest.rows_sent >= 3
        assert ingest.achieved_rate == ingest.rows_sent / ingest.elapsed_s
        # Every partition written ends one past the last offset the child reported for it.
        assert ingest.offsets
        assert {p: o + 1 for p, o in ingest.offsets.items()} == {
            p: e for p, e in after.items() if e > 0}


def test_ingest_process_that_cannot_start_says_so(settings) -> None:
    with pytest.raises(RuntimeError, match="the ingest process did not start: .*"):
        with Ingest(settings, "no-such-collection", 8, rate=10):
            pass
