"""Two searcher replicas share the query stream; one dies by SIGKILL under load; nothing is lost."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

from ingest import admin
from ingest.producer import Producer
from ingest.spec import CollectionSpec
from searcher.client import Client
from tests.support.polling import wait_until
from tests.support.stack import IndexerThread

pytestmark = pytest.mark.integration

DIM = 8
CLIENTS = 4
REQUESTS_PER_CLIENT = 250


def spawn_searcher(settings, name: str, log_dir, replica: str) -> tuple[subprocess.Popen, object]:
    env = settings.child_env()
    argv = [sys.executable, "-m", "streamvec", "searcher", "--collection", name,
            "--replica", replica]
    log = log_dir / f"searcher-{replica}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    wait_until(lambda: "serving" in log.read_text() or proc.poll() is not None, timeout=60,
               what=f"searcher {replica} to serve")
    assert proc.poll() is None, log.read_text()[-3000:]
    return proc, log


def test_a_replica_killed_under_load_loses_no_request(settings, collection_name, tmp_path,
                                                      redis_client):
    spec = CollectionSpec(collection_name, dim=DIM, partitions=2, index="Flat", seal_rows=500)
    admin.create_collection(settings, spec)
    indexer = IndexerThread(settings, spec.name)
    rng = np.random.default_rng(31)
    vectors = rng.standard_normal((1000, DIM)).astype(np.float32)
    with Producer(spec.name, settings=settings) as producer:
        producer.upsert([f"v{i}" for i in range(1000)], vectors)
        offsets = producer.flush()
    replicas = [spawn_searcher(settings, spec.name, tmp_path, f"r{i}") for i in range(2)]
    Client(settings=settings).search(spec.name, vectors[0], consistency={"session": offsets},
                                     timeout=30)
    answered = []
    failures = []

    def client_loop(seed: int) -> None:
        client = Client(settings=settings)
        local = np.random.default_rng(seed)
        for _ in range(REQUESTS_PER_CLIENT):
            pick = int(local.integers(0, 1000))
            try:
                result = client.search(spec.name, vectors[pick], k=1, timeout=20)
                answered.append(result.ids[0][0] == f"v{pick}")
            except Exception as exc:  # collected and asserted on the test thread
                failures.append(repr(exc))

    threads = [threading.Thread(target=client_loop, args=(s,)) for s in range(CLIENTS)]
    for t in threads:
        t.start()
    wait_until(lambda: len(answered) >= 200, timeout=60, what="200 answers before the kill")
    replicas[0][0].send_signal(signal.SIGKILL)
    for t in threads:
        t.join(120)
    replicas[1][0].send_signal(signal.SIGTERM)
    assert replicas[1][0].wait(30) == 0, replicas[1][1].read_text()[-3000:]
    indexer.stop()

    assert failures == []
    assert len(answered) == CLIENTS * REQUESTS_PER_CLIENT and all(answered)
    leftovers = [k for k in redis_client.scan_iter(match=f"sv:{{{spec.name}}}:r:*")
                 if redis_client.llen(k)]
    assert leftovers == [], "a request got a second reply"
