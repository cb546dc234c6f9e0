"""The bench harness over the real servers: a loaded collection, sealed only or served."""

from __future__ import annotations

import pytest

from bench._stack import clustered, sealed, serving
from indexer.registry import Registry
from searcher.client import Client

pytestmark = pytest.mark.integration

STOPPING = "finishing builds in flight, then exiting"  # what an indexer logs on SIGTERM


def test_sealed_registers_every_row_then_stops_its_indexer(settings) -> None:
    data = clustered(300, 8)
    with sealed(settings, "bench-t", data, partitions=2, seal_rows=100, seal_seconds=0.2) as (
            loaded, spec, tmp):
        records = Registry(loaded.redis_client(), spec.name).segments()
        assert sum(r.rows for r in records) == 300
        logs = sorted(p.name.split("-")[0] for p in tmp.iterdir() if p.suffix == ".log")
        assert logs == ["indexer"]
        assert STOPPING in next(tmp.glob("indexer-*.log")).read_text()


def test_serving_answers_from_the_loaded_rows_with_both_roles_up(settings) -> None:
    data = clustered(300, 8)
    with serving(settings, "bench-t", data, partitions=2, seal_rows=100, seal_seconds=0.2) as (
            loaded, spec, tmp):
        with Client(settings=loaded) as client:
            found = client.search(spec.name, data[[7, 250]], k=1, timeout=30)
        assert found.ids.tolist() == [["r7"], ["r250"]]
        assert STOPPING not in next(tmp.glob("indexer-*.log")).read_text()
        assert len(list(tmp.glob("searcher-*.log"))) == 1
