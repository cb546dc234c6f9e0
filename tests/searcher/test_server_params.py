"""Search parameters through Redis: the client sends them, the searcher checks them alike, and
an engine takes a collection's defaults and its search threads from the spec and settings."""

from __future__ import annotations

import os

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from ingest import catalog
from ingest.errors import SpecError
from ingest.spec import CollectionSpec
from searcher import SearchError, protocol
from searcher.engine import Engine
from searcher.execute import search_threads
from searcher.metrics import SearcherMetrics
from searcher.search import SearchParams
from tests.support.standin import DEADLINE_S, DIM, add_all, raw_request, serving

pytestmark = pytest.mark.integration


def test_the_client_sends_ef_and_nprobe_and_older_requests_go_without(redis_settings, engine,
                                                                       client) -> None:
    with serving(redis_settings, engine):
        client.search(engine.spec.name, [1, 2, 3, 4], k=10, ef=200, nprobe=3)
        client.search(engine.spec.name, [1, 2, 3, 4], k=10)
    assert [(r.ef, r.nprobe) for r in engine.requests] == [(200, 3), (None, None)]


@pytest.mark.parametrize(("field", "value", "message"), [
    ("ef", 9, "ef must be an integer in 1..4096 and at least k (10), got 9"),
    ("nprobe", 70_000, "nprobe must be an integer in 1..65536, got 70000"),
])
def test_bad_params_are_refused_alike_by_client_and_searcher(redis_settings, engine, client,
                                                             redis_client, field, value,
                                                             message) -> None:
    with pytest.raises(SearchError) as local:
        client.search(engine.spec.name, [1, 2, 3, 4], k=10, **{field: value})
    fields = raw_request(engine.spec.name, "p0", np.ones((1, DIM)), k=10)
    add_all(redis_client, engine.spec.name, [{**fields, field: str(value).encode()}])
    with serving(redis_settings, engine) as (_, metrics):
        _, body = redis_client.blpop([protocol.reply_key(engine.spec.name, "p0")], DEADLINE_S)
    remote = protocol.decode_reply(body)[1]
    assert (local.value.code, local.value.message) == (remote.code, remote.message) == (
        "bad_params", message)
    assert metrics.get("errors_total", code="bad_params") == 1
    assert engine.requests == []


def test_an_engine_takes_its_defaults_from_the_spec_and_its_threads_from_settings(
        redis_settings, redis_client, collection_name) -> None:
    spec = CollectionSpec(collection_name, dim=DIM, search_ef=300)
    catalog.claim_spec(redis_client, spec)
    assert CollectionSpec.from_json(spec.to_json()) == spec
    engines = [Engine(settings, collection_name, metrics=SearcherMetrics(CollectorRegistry(),
                                                                          collection_name))
               for settings in (redis_settings.model_copy(update={"search_threads": 3}),
                                redis_settings)]
    try:
        assert engines[0].defaults == SearchParams(ef=300, nprobe=None)
        assert [e.workers.threads for e in engines] == [3, search_threads(0)]
        assert search_threads(0) == min(4, os.cpu_count() or 1)
    finally:
        for e in engines:
            e.stop()
    for bad, message in [({"search_ef": 4097}, "search_ef must be 0..4096"),
                         ({"search_nprobe": -1}, "search_nprobe must be 0..65536")]:
        with pytest.raises(SpecError, match=message):
            CollectionSpec(collection_name, dim=DIM, **bad)
