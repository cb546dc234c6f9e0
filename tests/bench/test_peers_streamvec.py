"""bench/peers.py's streamvec row on the real servers: roles and client processes end to end."""

from __future__ import annotations

import argparse

import pytest

from bench import _corpus_vectors as cv
from bench import peers
from bench._stack import clustered
from indexer.registry import Registry
from ingest import admin

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("per_query_ef", [True, False], ids=["ef-per-query", "restarted"])
def test_streamvec_inserts_sweeps_and_probes_through_client_processes(
        settings, per_query_ef: bool) -> None:
    vectors = cv.unit(clustered(420, 8))
    data, queries = vectors[:400], vectors[400:]
    truth = cv.exact_top_k(data, queries, peers.K)
    args = argparse.Namespace(point_seconds=60.0, fresh_seconds=60.0, insert_seconds=120.0)
    system = peers.Streamvec(settings, partitions=2)
    # Without Client.search(ef=), each setting gets a searcher restarted with it.
    system.per_query_ef = per_query_ef
    got = peers.measure(system, data, queries, truth, peers.probe_rows(queries, 4), args)
    assert got.status == "ok"
    assert got.insert_rows_s is not None and got.indexed_rows_s is not None
    # Segments this small are searched by one exact scan: the first setting finds every row.
    assert [(p.knob, p.recall, p.queries) for p in got.points] == [("efSearch 10", 1.0, 20)]
    assert (len(got.fresh_ms), got.fresh_missed) == (3, 0)  # the first probe is not kept
    # The scratch collection is dropped afterwards, its registry records with it.
    assert system.spec.name not in {s.name for s in admin.list_collections(settings)}
    assert Registry(settings.redis_client(), system.spec.name).segments() == []
