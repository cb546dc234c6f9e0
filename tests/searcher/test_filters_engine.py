"""Filters on a real indexer, searcher, Kafka and Redis: sealed segments and the live tail."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ingest.producer import Producer
from ingest.spec import CollectionSpec
from searcher import filters, protocol
from searcher.client import Client
from searcher.errors import QueryError
from searcher.query import Consistency, Filter, QueryAnswer, QueryRequest
from tests.support.oracle import exact_scores
from tests.support.polling import wait_until
from tests.support.stack import served

pytestmark = pytest.mark.integration

DIM = 8
K = 7
REPLY_WAIT_S = 10


def metadata(rng: np.random.Generator, i: int) -> dict | None:
    if i % 13 == 0:
        return None
    row = {"shop": ["north", "south", "east", "west"][int(rng.integers(4))],
           "stock": int(rng.integers(0, 50)), "price": round(float(rng.uniform(1, 100)), 2)}
    if i % 4:
        row["sale"] = bool(rng.integers(2))
    if i % 9 == 0:
        row["note"] = None
    return row


CASES = [
    {"shop": "north"},
    {"shop": {"ne": "north"}, "stock": {"gte": 25}},
    {"price": {"gt": 10, "lte": 30}},
    {"shop": {"in": ["east", "west"]}, "sale": {"exists": False}},
    {"or": [{"stock": {"lt": 3}}, {"note": None}]},
    {"not": {"or": [{"sale": True}, {"shop": {"not_in": ["south"]}}]}},
    {"shop": {"gte": "s"}},
]


def expected(live: dict[str, tuple[np.ndarray, dict | None]], queries: np.ndarray,
             obj: dict) -> list[list[str]]:
    expr = filters.parse(obj)
    ids = sorted(i for i, (_, m) in live.items() if filters.matches(expr, m))
    scores = exact_scores(np.stack([live[i][0] for i in ids]), queries, "l2")
    order = np.argsort(scores, axis=1, kind="stable")[:, :K]
    return [[ids[j] for j in row] for row in order]


def test_filtered_searches_over_segments_and_tail_equal_brute_force(settings,
                                                                    collection_name) -> None:
    spec = CollectionSpec(collection_name, dim=DIM, partitions=2, index="Flat",
                          seal_rows=300, seal_seconds=0.3)
    rng = np.random.default_rng(41)
    live: dict[str, tuple[np.ndarray, dict | None]] = {}
    with served(settings, spec) as running, Client(settings=settings) as client, \
            Producer(spec.name, settings=settings) as producer:
        for round_ in range(6):
            ids = [f"r{round_}-{i}" for i in range(250)] + [f"r0-{i}" for i in range(0, 60, 3)]
            vectors = rng.standard_normal((len(ids), DIM)).astype(np.float32)
            meta = [metadata(rng, i) for i in range(len(ids))]
            producer.upsert(ids, vectors, metadata=meta)
            gone = [f"r{round_}-{i}" for i in range(1, 250, 17)]
            producer.delete(gone)
            live.update({k: (v, m) for k, v, m in zip(ids, vectors, meta, strict=True)})
            for key in gone:
                live.pop(key, None)
            flushed = producer.flush()
            if round_ == 3:  # the later rounds search sealed segments and the tail together
                wait_until(lambda: running.searchers[0].engine.state.segments.entries(),
                           timeout=60, what="a sealed segment served")
            queries = rng.standard_normal((2, DIM)).astype(np.float32)
            for obj in CASES:
                got = client.search(spec.name, queries, k=K, filter=obj,
                                    consistency={"session": flushed}, timeout=10)
                assert [[i for i in row if i is not None] for row in got.ids] == expected(
                    live, queries, obj), (round_, obj)


def test_the_reply_names_the_plan_and_a_bad_filter_is_malformed(settings, collection_name,
                                                                redis_client) -> None:
    spec = CollectionSpec(collection_name, dim=DIM, partitions=1, index="Flat",
                          seal_rows=100, seal_seconds=0.2)
    rng = np.random.default_rng(42)
    with served(settings, spec), Producer(spec.name, settings=settings) as producer:
        vectors = rng.standard_normal((400, DIM)).astype(np.float32)
        producer.upsert([f"p{i}" for i in range(400)], vectors,
                        metadata=[{"n": i} for i in range(400)])
        flushed = producer.flush()

        def ask(rid: str, flt: Filter | None = None, raw_filter: bytes | None = None):
            request = QueryRequest(rid, spec.name, vectors[:1], 3, flt,
                                   Consistency("session", offsets=flushed), timeout_ms=10_000)
            fields = protocol.encode_request(request)
            if raw_filter is not None:
                fields["filter"] = raw_filter
            redis_client.xadd(protocol.queue_key(spec.name), fields)
            popped = redis_client.blpop([protocol.reply_key(spec.name, rid)], REPLY_WAIT_S)
            assert popped is not None, f"no reply to {rid}"
            return protocol.decode_reply(popped[1])[1], json.loads(popped[1])

        answer, doc = ask("f1", Filter({"n": {"in": [0, 5, 399]}}))
        assert isinstance(answer, QueryAnswer) and sorted(answer.ids[0]) == ["p0", "p399", "p5"]
        assert doc["filter"]["accepted"] == 3 and doc["filter"]["rows"] == 400
        assert set(doc["filter"]["plans"]) <= {"scan", "empty"}
        assert doc["timings_ms"]["filter"] >= 0
        plain, doc = ask("f2")
        assert isinstance(plain, QueryAnswer) and "filter" not in doc
        refused, _ = ask("f3", raw_filter=b'{"n": {"between": [1, 2]}}')
        assert isinstance(refused, QueryError)
        assert (refused.code, refused.message) == (
            "malformed", "field 'filter': 'n': unknown operator 'between'; expected one of eq, "
                         "ne, in, not_in, gt, gte, lt, lte, exists")
        with Client(settings=settings) as client:
            with pytest.raises(ValueError, match="'n': 'gt' needs a number or a string"):
                client.search(spec.name, vectors[0], k=3, filter={"n": {"gt": None}})
        # The searcher keeps serving after the bad one.
        wait_until(lambda: ask("f4", Filter({"n": 7}))[0].ids == [["p7"]], timeout=10,
                   what="a filtered answer after a malformed request")
