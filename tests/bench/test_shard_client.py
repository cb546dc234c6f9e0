"""The direct-shard baseline of bench/scaling.py over real servers: one shard's stream only."""

from __future__ import annotations

import pytest

from bench._shard_client import ask_shard, shard_load
from bench._stack import clustered, sealed
from bench.scaling import served
from bench.search import start_searcher, wait_served
from indexer.registry import Registry
from ingest.partition import partition_of

pytestmark = pytest.mark.integration

ROWS = 400


def test_a_shard_asked_directly_answers_from_its_own_partitions(settings) -> None:
    data = clustered(ROWS, 8)
    with sealed(settings, "bench-t", data, partitions=2, index="Flat", seal_rows=100,
                seal_seconds=0.2) as (loaded, spec, tmp):
        first = served(Registry(loaded.redis_client(), spec.name).segments(), (0,))
        searcher, port = start_searcher(loaded, spec.name, tmp, ["--shard", "1/2"])
        try:
            wait_served(searcher, port, spec.name, len(first), 0, timeout=120)
            home = [partition_of(f"r{i}", 2, spec.partitioner) for i in range(ROWS)]
            own = {f"r{i}" for i in range(ROWS) if home[i] == 0}
            assert sum(r.rows for r in first) == len(own)
            mine, other = home.index(0), home.index(1)
            conn = loaded.redis_client(timeout=40)
            assert ask_shard(conn, spec.name, "0", data[mine], 1) == [f"r{mine}"]
            near_other = ask_shard(conn, spec.name, "0", data[other], 5)
            assert len(near_other) == 5 and set(near_other) <= own
            with pytest.raises(RuntimeError, match=f"^shard 1 of {spec.name} has no request "
                               "stream$"):
                ask_shard(conn, spec.name, "1", data[other], 1)
            load = shard_load(loaded, spec.name, "0", data[:20], clients=2, seconds=0.5, k=3)
            assert load.latencies_ms and len(load.answers) == len(load.latencies_ms)
            assert all(len(ids) == 3 and set(ids) <= own for _, ids in load.answers)
        finally:
            searcher.stop()
