"""The query server on a real Redis: round trips, bad input, consistency waits, recovery."""

from __future__ import annotations

import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from searcher import SearchError, SearchTimeout, protocol
from searcher import client as client_module
from searcher.errors import QueryError
from searcher.query import Consistency, Filter
from searcher.server import GROUP
from tests.support.polling import wait_until
from tests.support.standin import (
    DEADLINE_S,
    DIM,
    HITS,
    add_all,
    assert_answer,
    drained,
    raw_request,
    replies,
    serving,
)

pytestmark = pytest.mark.integration


def test_round_trip_through_redis(redis_settings, engine, client) -> None:
    one = np.array([1.0, 2.0, 3.0, 4.5], dtype=np.float32)
    many = np.arange(3 * DIM, dtype=np.float64).reshape(3, DIM)
    with serving(redis_settings, engine) as (_, metrics):
        single = client.search(engine.spec.name, one, k=3)
        padded = client.search(engine.spec.name, many, k=7, with_metadata=True,
                               filter={"color": "red", "size": {"in": [1, 2]}},
                               consistency={"session": {0: 36, 1: 4}}, timeout=2.5)
    assert single.ids.tolist() == [["h10-0", "h10-1", "h10-2"]]
    assert single.scores.dtype == np.float32 and single.scores.tolist() == [[1.0, 2.0, 3.0]]
    assert (single.metadata, single.offsets, len(single)) == (None, {0: 37, 1: 5}, 1)
    assert single.rows(0) == [("h10-0", 1.0, None), ("h10-1", 2.0, None), ("h10-2", 3.0, None)]
    assert set(single.timings_ms) == {"engine", "queue", "wait", "search", "total"}
    assert padded.ids.shape == padded.scores.shape == (3, 7) and len(padded) == 3
    assert padded.ids[1].tolist() == ["h22-0", "h22-1", "h22-2", "h22-3", "h22-4", None, None]
    assert np.isnan(padded.scores[:, HITS:]).all()
    assert padded.scores[2, :HITS].tolist() == [8.0, 9.0, 10.0, 11.0, 12.0]
    assert padded.metadata[0] == [{"rank": j, "base": 6} for j in range(HITS)]
    assert padded.rows(2)[4] == ("h38-4", 12.0, {"rank": 4, "base": 38})
    sent = engine.requests[-1]
    assert (sent.k, sent.with_metadata, sent.timeout_ms, sent.consistency, sent.filter) \
        == (7, True, 2500, Consistency("session", offsets={0: 36, 1: 4}),
            Filter({"color": ("red",), "size": (1, 2)}))
    assert metrics.get("queries_total") == 2 and metrics.get("batch_size_count") == 2
    assert metrics.get("queue_wait_seconds_count") == 2
    assert metrics.get("total_seconds_count") == 2
    assert metrics.get("consistency_wait_seconds_count", level="session") == 1


def test_error_replies_and_the_server_keeps_serving(redis_settings, engine, client) -> None:
    name = engine.spec.name
    with serving(redis_settings, engine) as (_, metrics):
        for vectors, code, message in [
            ([1.0, 2.0, 3.0], "wrong_dim",
             f"query vectors have dim 3, collection {name} has dim 4"),
            ([[0, 0, 0, 0], [1, np.inf, 0, 0]], "not_finite", "query vector 1 holds NaN or Inf"),
        ]:
            with pytest.raises(SearchError) as caught:
                client.search(name, vectors)
            assert (caught.value.code, caught.value.message) == (code, message)
        engine.failing = True
        with pytest.raises(SearchError) as caught:
            client.search(name, [1, 2, 3, 4])
        assert (caught.value.code, caught.value.message) == (
            "internal", "RuntimeError: index on fire")
        engine.failing = False
        assert client.search(name, [1, 2, 3, 4], k=1).ids.tolist() == [["h10-0"]]
        with pytest.raises(SearchError) as caught:
            client.search("no-such-collection", [1, 2, 3, 4])
        assert (caught.value.code, caught.value.message) == (
            "unknown_collection", "collection 'no-such-collection' does not exist")
    assert [metrics.get("errors_total", code=c) for c in ("wrong_dim", "not_finite", "internal")] \
        == [1, 1, 1]
    assert metrics.get("queries_total") == 4


def test_bad_k_is_refused_alike_by_client_and_searcher(redis_settings, engine, client,
                                                       redis_client) -> None:
    with pytest.raises(SearchError) as local:
        client.search(engine.spec.name, [1, 2, 3, 4], k=1001)
    fields = raw_request(engine.spec.name, "k0", np.ones((1, DIM)), k=1)
    add_all(redis_client, engine.spec.name, [{**fields, "k": b"1001"}])
    with serving(redis_settings, engine):
        key, body = redis_client.blpop([protocol.reply_key(engine.spec.name, "k0")], DEADLINE_S)
    remote = protocol.decode_reply(body)[1]
    assert (local.value.code, local.value.message) == (remote.code, remote.message) == (
        "bad_k", "k must be 1..1000, got 1001")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"vectors": []}, "vectors must not be empty (shape (1, 0))"),
    ({"vectors": np.zeros((0, DIM))}, "vectors must not be empty (shape (0, 4))"),
    ({"vectors": np.zeros((2, 2, 2))}, "vectors must be 1-D (one query) or 2-D (n, dim), not 3-D"),
    ({"vectors": ["a", "b"]}, "vectors must hold numbers, not <U1"),
    ({"vectors": [[1, 2], [3]]}, "vectors must be one vector or a 2-D array of numbers"),
    ({"vectors": np.zeros((1025, DIM))}, "at most 1024 queries per search, got 1025"),
    ({"k": 2.5}, "k must be an integer, not float"),
    ({"timeout": 0}, "timeout must be seconds in (0, 60], not 0"),
    ({"consistency": "bounded"}, "consistency must be 'eventual', 'strong', {'bounded_ms': N} or "
                                 "{'session': {partition: offset}} (what Producer.flush() "
                                 "returns), not 'bounded'"),
    ({"consistency": {"bounded_ms": -1}}, "field 'consistency': bound_ms must be an integer "
                                          "0..86400000"),
    ({"filter": {"a": [1]}}, "field 'filter': 'a': values must be strings, finite numbers, "
                             "booleans or null"),
])
def test_client_refuses_bad_input_before_sending(engine, client, redis_client, kwargs,
                                                 message) -> None:
    call = {"vectors": [1, 2, 3, 4], **kwargs}
    with pytest.raises(ValueError) as caught:
        client.search(engine.spec.name, call.pop("vectors"), **call)
    assert str(caught.value).startswith(message)
    assert redis_client.exists(protocol.queue_key(engine.spec.name)) == 0


def test_no_searcher_means_a_search_timeout(engine, client, monkeypatch) -> None:
    monkeypatch.setattr(client_module, "REPLY_MARGIN_S", 0.2)
    with pytest.raises(SearchTimeout) as caught:
        client.search(engine.spec.name, [1, 2, 3, 4], timeout=0.1)
    name = engine.spec.name
    assert str(caught.value) == (f"no searcher answered a query on {name!r} within 0.3s: "
                                 f"is `streamvec searcher --collection {name}` running?")


def test_replies_expire_and_the_request_leaves_the_stream(redis_settings, engine,
                                                          redis_client) -> None:
    name = engine.spec.name
    add_all(redis_client, name, [raw_request(name, "ttl-1", np.ones((1, DIM)))])
    with serving(redis_settings, engine):
        wait_until(lambda: redis_client.exists(protocol.reply_key(name, "ttl-1")),
                   timeout=DEADLINE_S, what="the reply")
    assert 0 < redis_client.ttl(protocol.reply_key(name, "ttl-1")) <= protocol.REPLY_TTL_S
    assert 0 < redis_client.ttl(protocol.done_key(name, "ttl-1")) <= protocol.DONE_TTL_S
    assert drained(redis_client, name)


MUTATIONS = ("drop", "bytes", "json", "number", "id", "vectors", "shape", "name")


def mutate(fields: dict[str, bytes], i: int, rng: random.Random) -> dict:
    """A copy of a valid request with one to three fields broken in a random way."""
    out: dict = dict(fields)
    for _ in range(rng.randint(1, 3)):
        key, how = rng.choice(list(fields)), rng.choice(MUTATIONS)
        if key == "id" and how != "drop":
            how = "id"  # random bytes could make two requests share a valid id
        if how == "drop":
            out.pop(key, None)
        elif how == "bytes":
            out[key] = rng.randbytes(rng.randint(0, 12))
        elif how == "json":
            out[key] = rng.choice([b"{}", b"[]", b"null", b'{"level":"session"}',
                                   b'{"level":"bounded","bound_ms":5}', b'{"a":{"in":[1,"x"]}}',
                                   b'{"level":"strong"}', b"1e999", b'{"a":' * 50])
        elif how == "number":
            out[key] = str(rng.choice([-1, 0, 1, 3, 4, 1000, 1001, 1024, 60001, 2**64])).encode()
        elif how == "id":
            out["id"] = rng.choice([b"", b"bad id", b"x" * 65, b"\xff", f"alt-{i}".encode()])
        elif how == "vectors":
            out["vectors"] = np.array([[np.nan, 1, 2, 3]], "<f4").tobytes()
        elif how == "shape":  # the same 16 bytes read as two queries of dim 2
            out.update(n=b"2", dim=b"2")
        else:
            out[rng.randbytes(3)] = rng.randbytes(3)
    return out


def test_ten_thousand_malformed_requests(redis_settings, engine, client, redis_client) -> None:
    name, rng = engine.spec.name, random.Random(20240607)
    sent, expected, unaddressable = [], {}, 0
    for i in range(10_000):
        level = rng.choice([Consistency(), Consistency("strong")])
        fields = mutate(raw_request(name, f"m-{i}", np.full((1, DIM), i % 7), consistency=level),
                        i, rng)
        sent.append(fields)
        rid = protocol.request_id(fields)
        if rid is None:
            unaddressable += 1
            continue
        try:
            expected[rid] = protocol.decode_request(name, fields, dim=DIM)
        except QueryError as error:
            expected[rid] = error
    errors = Counter(e.code for e in expected.values() if isinstance(e, QueryError))
    assert unaddressable > 100 and errors["malformed"] > 4000 and len(errors) == 4
    add_all(redis_client, name, sent)
    with serving(redis_settings, engine) as (_, metrics):
        wait_until(lambda: drained(redis_client, name), timeout=120, what="every request answered")
        assert client.search(name, [1, 1, 1, 1], k=2).ids.tolist() == [["h4-0", "h4-1"]]
    got = replies(redis_client, name, list(expected))
    for rid, outcome in expected.items():
        assert len(got[rid]) == 1, rid
        reply_id, answer = protocol.decode_reply(got[rid][0])
        assert reply_id == rid
        if isinstance(outcome, QueryError):
            assert (answer.code, answer.message) == (outcome.code, outcome.message), rid
        else:
            assert_answer(got[rid][0], rid, outcome.vectors, outcome.k)
    reply_keys = list(redis_client.scan_iter(match=protocol.reply_key(name, "*"), count=1000))
    assert len(reply_keys) == len(expected)
    errors["malformed"] += unaddressable
    assert {c: metrics.get("errors_total", code=c) for c in errors} == errors
    assert metrics.get("queries_total") == len(sent) + 1


def test_consistency_timeout_names_level_and_what_is_missing(redis_settings, engine,
                                                             client) -> None:
    engine.blocked = {"session", "strong", "bounded"}
    name = engine.spec.name
    cases = [
        ({"session": {0: 41, 1: 4}}, "session consistency not reached within 300 ms: waiting "
                                     "for partition 0 to pass offset 41 (searcher at 37)"),
        ("strong", "strong consistency not reached within 300 ms: waiting for partition 0 to "
                   "reach the high watermark 50 (searcher at 37)"),
        ({"bounded_ms": 100}, "bounded consistency not reached within 300 ms: waiting for the "
                              "live tail to lag at most 100 ms (positions {0: 37, 1: 5})"),
    ]
    with serving(redis_settings, engine) as (_, metrics):
        for consistency, message in cases:
            with pytest.raises(SearchError) as caught:
                client.search(name, [1, 2, 3, 4], consistency=consistency, timeout=0.3)
            assert (caught.value.code, caught.value.message) == ("consistency_timeout", message)
    assert metrics.get("errors_total", code="consistency_timeout") == 3
    for level in ("session", "strong", "bounded"):
        assert metrics.get("consistency_wait_seconds_count", level=level) == 1
        assert metrics.get("consistency_wait_seconds_sum", level=level) >= 0.3
    assert engine.requests == []


def test_waiting_requests_do_not_block_others(redis_settings, engine, client,
                                              redis_client) -> None:
    engine.blocked = {"strong"}
    name, stream = engine.spec.name, protocol.queue_key(engine.spec.name)
    with serving(redis_settings, engine) as (server, metrics), ThreadPoolExecutor(1) as pool:
        strong = pool.submit(client.search, name, [9, 9, 9, 9], k=2, consistency="strong",
                             timeout=30)
        wait_until(lambda: redis_client.xpending(stream, GROUP)["pending"] == 1,
                   timeout=DEADLINE_S, what="the strong request being held")
        for i in range(20):
            assert client.search(name, [i, 0, 0, 0], k=1).ids.tolist() == [[f"h{i}-0"]]
        assert not strong.done()
        engine.blocked.clear()
        assert strong.result(DEADLINE_S).ids.tolist() == [["h36-0", "h36-1"]]
    assert metrics.get("consistency_wait_seconds_count", level="strong") == 1
    assert metrics.get("consistency_wait_seconds_count", level="eventual") == 20


def test_a_deleted_stream_is_recreated(redis_settings, engine, client, redis_client) -> None:
    name = engine.spec.name
    with serving(redis_settings, engine):
        assert client.search(name, [1, 1, 1, 1], k=1).ids.tolist() == [["h4-0"]]
        redis_client.delete(protocol.queue_key(name))
        assert client.search(name, [2, 2, 2, 2], k=1, timeout=10).ids.tolist() == [["h8-0"]]
