"""The searcher through Redis with the real indexer: read-your-writes, exactness, swap safety."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from ingest.producer import Producer
from searcher.client import Client
from tests.support.stack import exact_top_k, serving
from tests.support.workers import Workload

pytestmark = pytest.mark.integration

DIM = 8


@pytest.fixture
def running(settings, collection_name):
    with serving(settings, collection_name, dim=DIM, partitions=3, seal_rows=400,
                 seal_seconds=0.3) as spec:
        yield spec


def test_read_your_writes_1000_trials(settings, running):
    client = Client(settings=settings)
    rng = np.random.default_rng(21)
    with Producer(running.name, settings=settings) as producer:
        for trial in range(1000):
            vector = rng.standard_normal(DIM).astype(np.float32)
            producer.upsert([f"ryw-{trial}"], vector[None, :])
            offsets = producer.flush()
            found = client.search(running.name, vector, k=1, consistency={"session": offsets})
            assert found.ids[0][0] == f"ryw-{trial}", trial
            if trial % 10 == 0:
                producer.delete([f"ryw-{trial}"])
                offsets = producer.flush()
                after = client.search(running.name, vector, k=5,
                                      consistency={"session": offsets})
                assert f"ryw-{trial}" not in set(after.ids[0]), trial


@pytest.mark.redis_cluster
def test_read_your_writes_on_a_redis_cluster(settings, running):
    """The same trials with the searcher, the indexer and the client on a Redis Cluster."""
    assert settings.redis_url.startswith("redis+cluster://")
    test_read_your_writes_1000_trials(settings, running)


def test_answers_equal_exact_search_while_ingest_and_seals_run(settings, running):
    client = Client(settings=settings)
    workload = Workload(DIM, np.random.default_rng(22))
    queries = np.random.default_rng(23).standard_normal((16, DIM)).astype(np.float32)
    with Producer(running.name, settings=settings) as producer:
        for _ in range(12):
            workload.send_round(producer, 700, id_space=3000)
            offsets = producer.flush()
            got = client.search(running.name, queries, k=10, consistency={"session": offsets})
            want_ids, want_scores = exact_top_k(workload.live(), queries, 10)
            assert [list(row) for row in got.ids] == want_ids
            np.testing.assert_allclose(got.scores, want_scores, rtol=1e-5, atol=1e-5)


def test_20k_queries_during_continuous_sealing(settings, running):
    client = Client(settings=settings)
    rng = np.random.default_rng(24)
    stable = rng.standard_normal((50, DIM)).astype(np.float32) * 10
    stop = threading.Event()
    with Producer(running.name, settings=settings) as producer:
        producer.upsert([f"stable-{i}" for i in range(50)], stable)
        offsets = producer.flush()
        client.search(running.name, stable[0], k=1, consistency={"session": offsets})

        def churn() -> None:
            churn_rng = np.random.default_rng(25)
            # About 5k rows/s: a seal every ~0.1 s per partition, at a pace a test can sustain.
            while not stop.wait(0.02):
                producer.upsert([f"churn-{i}" for i in churn_rng.integers(0, 5000, 100)],
                                churn_rng.standard_normal((100, DIM)).astype(np.float32))
                producer.flush()

        writer = threading.Thread(target=churn, daemon=True)
        writer.start()
        try:
            for batch in range(2000):  # 2000 requests of 10 query vectors: 20k queries
                picks = rng.integers(0, 50, 10)
                result = client.search(running.name, stable[picks], k=3)
                for row, pick in zip(result.ids, picks, strict=True):
                    hits = [h for h in row if h is not None]
                    assert len(hits) == len(set(hits)), f"an id twice in {hits}"
                    assert hits[0] == f"stable-{pick}", (batch, hits)
        finally:
            stop.set()
            writer.join(30)
