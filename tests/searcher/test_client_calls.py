"""Client and AsyncClient over real Kafka and Redis: gets, counts, score thresholds, typed
errors, retries, and both clients giving the same answers, on one searcher and on shards.

One collection is shared by the module. Its first rows are sealed into segments, then the
indexer stops, and later writes (new ids, overwrites, deletes) live only in the searcher's
tail; the registry says which rows are sealed, the producer's ops what every answer must be.
Vectors hold small integers, so every l2 distance is exact in float32.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from indexer.registry import Registry
from indexer.store import SegmentStore
from indexer.view import load_registered
from ingest import admin, catalog
from ingest.partition import partition_of
from ingest.producer import Producer
from ingest.spec import CollectionSpec
from searcher import aclient, client, protocol
from searcher.aclient import AsyncClient
from searcher.client import Client, GetResult, SearchResult
from searcher.engine import Engine
from searcher.errors import (
    ConsistencyTimeout,
    InvalidRequest,
    SearchError,
    SearchTimeout,
    UnknownCollection,
)
from searcher.metrics import SearcherMetrics
from searcher.server import Server
from searcher.shards import Selection, ShardMap
from streamvec.errors import InvalidInput, NotFound, StreamvecError, Unavailable
from streamvec.redisconn import connect
from streamvec.settings import Settings
from tests.support.polling import wait_until
from tests.support.stack import IndexerThread, Running, SearcherThread, serving
from tests.support.workers import live_rows

pytestmark = pytest.mark.integration

DIM, PARTITIONS, SEALED, TAIL, K = 8, 3, 300, 100, 10
COLORS = ("red", "blue", "green")
SETTLE_S = 120.0


@dataclass
class Stack:
    """The module's collection, its searcher, what it must hold and what the registry holds."""

    settings: Settings
    spec: CollectionSpec
    expected: dict[str, tuple[np.ndarray, dict]]  # the live rows: id -> (vector, metadata)
    asked: list[str]  # every id ever written, plus ids never written
    sealed: dict[str, np.ndarray]  # the registry's visible rows: id -> vector
    offsets: dict[int, int]  # what the producer's flush returned after the last write
    queries: np.ndarray

    @property
    def name(self) -> str:
        return self.spec.name


def rows(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(-9, 10, (n, DIM)).astype(np.float32)


@pytest.fixture(scope="module")
def stack(kafka_server, redis_server, tmp_path_factory) -> Iterator[Stack]:
    """Seal SEALED rows, stop the indexer, then write the tail: new ids, overwrites, deletes."""
    tmp = tmp_path_factory.mktemp("calls")
    settings = Settings(kafka=kafka_server.bootstrap, redis=redis_server.url,
                        store=tmp / "segments", kafka_options={}, home=tmp / "home")
    spec = CollectionSpec(f"t-{uuid.uuid4().hex[:8]}", dim=DIM, partitions=PARTITIONS,
                          index="Flat", seal_rows=100_000, seal_seconds=0.5)
    admin.create_collection(settings, spec)
    rng = np.random.default_rng(31)
    expected: dict[str, tuple[np.ndarray, dict]] = {}
    with ExitStack() as stop:
        indexer = IndexerThread(settings, spec.name)
        searcher = SearcherThread(settings, spec.name)
        stop.callback(searcher.stop)
        with Producer(spec.name, settings=settings) as producer:
            ids = [f"s-{i}" for i in range(SEALED)]
            meta = [{"color": COLORS[i % 3], "n": i} for i in range(SEALED)]
            vectors = rows(rng, SEALED)
            producer.upsert(ids, vectors, meta)
            expected.update(zip(ids, zip(vectors, meta, strict=True), strict=True))
            sealed_at = producer.flush()
            registry = Registry(connect(settings.redis_url), spec.name)
            wait_until(lambda: all(registry.checkpoint(p) > o for p, o in sealed_at.items()),
                       timeout=SETTLE_S, what="the first rows sealed")
            indexer.stop()  # from here on, writes live only in the searcher's tail
            tail_ids = [f"t-{i}" for i in range(TAIL)]
            tail_meta = [{"color": COLORS[i % 3], "n": 1000 + i} for i in range(TAIL)]
            tail_vectors = rows(rng, TAIL)
            producer.upsert(tail_ids, tail_vectors, tail_meta)
            expected.update(zip(tail_ids, zip(tail_vectors, tail_meta, strict=True),
                                strict=True))
            over = [f"s-{i}" for i in range(20)]  # sealed, overwritten in the tail
            over_vectors, over_meta = rows(rng, 20), [{"color": "purple"}] * 20
            producer.upsert(over, over_vectors, over_meta)
            expected.update(zip(over, zip(over_vectors, over_meta, strict=True), strict=True))
            gone = [f"s-{i}" for i in range(20, 40)] + [f"t-{i}" for i in range(10)]
            producer.delete(gone)
            for i in gone:
                del expected[i]
            back = [f"t-{i}" for i in range(5)]  # deleted in the tail, then written again
            back_vectors, back_meta = rows(rng, 5), [{"color": "red", "n": -1}] * 5
            producer.upsert(back, back_vectors, back_meta)
            expected.update(zip(back, zip(back_vectors, back_meta, strict=True), strict=True))
            offsets = producer.flush()
        live = live_rows(load_registered(registry, SegmentStore.from_settings(settings)))
        sealed = {key: row.vector for key, row in live.items()}
        queries = np.vstack([vectors[40:44], rows(rng, 4)])
        yield Stack(settings, spec, expected, ids + tail_ids + ["never-1", "never-2"], sealed,
                    offsets, queries)


def session(stack: Stack) -> dict:
    return {"session": stack.offsets}


def run_async(settings: Settings, call: Any, **options: Any) -> Any:
    """Await call(client) on a fresh AsyncClient in its own event loop."""
    async def main() -> Any:
        async with AsyncClient(settings=settings, **options) as client:
            return await call(client)
    return asyncio.run(main())


def test_the_module_has_sealed_rows_tail_rows_overwrites_and_deletes(stack: Stack) -> None:
    assert set(stack.sealed) == {f"s-{i}" for i in range(SEALED)}  # nothing after the stop
    assert not any(i.startswith("t-") for i in stack.sealed)
    assert {f"s-{i}" for i in range(20, 40)}.isdisjoint(stack.expected)  # deleted later
    # The sealed rows of overwritten ids hold their first vectors, the tail their latest.
    assert all(stack.sealed[f"s-{i}"].tobytes() != stack.expected[f"s-{i}"][0].tobytes()
               for i in range(20))


def assert_get(got: GetResult, stack: Stack, asked: list[str]) -> None:
    want = [i for i in asked if i in stack.expected]
    assert list(got) == want  # live ids only, in the order asked
    for i in want:
        vector, metadata = got[i]
        assert vector.dtype == np.float32
        assert vector.tobytes() == stack.expected[i][0].tobytes(), i
        assert metadata == stack.expected[i][1], i
    assert got.collection == stack.name
    assert set(got.offsets) == set(range(PARTITIONS))


def test_get_returns_the_latest_live_row_of_each_id_from_segments_and_tail(stack: Stack) -> None:
    with Client(settings=stack.settings) as blocking:
        got = blocking.get(stack.name, stack.asked, consistency=session(stack))
        assert_get(got, stack, stack.asked)
        # Rows of every kind are there: sealed and untouched, overwritten in the tail (the
        # latest vector), deleted in the tail (absent), and in the tail only.
        assert "s-50" in got and "t-50" in got and "s-25" not in got and "t-7" not in got
        assert got["s-3"].metadata == {"color": "purple"}
        assert got["t-2"].metadata == {"color": "red", "n": -1}
        one = blocking.get(stack.name, "s-45")
        assert list(one) == ["s-45"] and one["s-45"].vector.tobytes() == \
            stack.expected["s-45"][0].tobytes()
        assert len(blocking.get(stack.name, ["never-1", "s-21"])) == 0
    async_got = run_async(stack.settings, lambda c: c.get(stack.name, stack.asked,
                                                          consistency=session(stack)))
    assert_get(async_got, stack, stack.asked)


def expected_count(stack: Stack, keep: Any = lambda meta: True) -> int:
    return sum(1 for _, meta in stack.expected.values() if keep(meta))


@pytest.mark.parametrize(("flt", "keep"), [
    (None, lambda m: True),
    ({"color": "red"}, lambda m: m.get("color") == "red"),
    ({"n": {"gte": 100, "lt": 1050}}, lambda m: 100 <= m.get("n", -10) < 1050),
    ({"or": [{"color": "purple"}, {"n": {"lt": 0}}]},
     lambda m: m.get("color") == "purple" or m.get("n", 0) < 0),
    ({"color": "none-such"}, lambda m: False),
])
def test_count_agrees_with_the_live_rows(stack: Stack, flt: Any, keep: Any) -> None:
    want = expected_count(stack, keep)
    with Client(settings=stack.settings) as blocking:
        assert blocking.count(stack.name, filter=flt, consistency=session(stack)) == want
    assert run_async(stack.settings, lambda c: c.count(stack.name, filter=flt,
                                                       consistency=session(stack))) == want


CASES = {
    "eventual": {},
    "session": None,  # filled with the module's offsets
    "bounded": {"consistency": {"bounded_ms": 60_000}},
    "strong": {"consistency": "strong"},
    "filter": {"filter": {"color": {"in": ["red", "purple"]}}, "with_metadata": True},
    "threshold": {"score_threshold": 60.0, "with_metadata": True},
}


def same_result(a: SearchResult, b: SearchResult) -> None:
    assert a.ids.tolist() == b.ids.tolist()
    assert a.scores.tobytes() == b.scores.tobytes()
    assert a.metadata == b.metadata
    assert (a.collection, a.partial, a.missing) == (b.collection, b.partial, b.missing)


@pytest.mark.parametrize("case", sorted(CASES))
def test_async_and_blocking_clients_give_identical_answers(stack: Stack, case: str) -> None:
    options = CASES[case] if CASES[case] is not None else {"consistency": session(stack)}
    with Client(settings=stack.settings) as blocking:
        # Session first: every later search sees the whole module's writes.
        blocking.search(stack.name, stack.queries[0], k=1, consistency=session(stack))
        ours = blocking.search(stack.name, stack.queries, k=K, **options)
        hits = blocking.get(stack.name, [h for row in ours.ids for h in row if h is not None])
        counted = blocking.count(stack.name, filter=options.get("filter"))
    theirs = run_async(stack.settings, lambda c: c.search(stack.name, stack.queries, k=K,
                                                          **options))
    same_result(ours, theirs)

    async def lookups(c: AsyncClient) -> tuple[GetResult, int]:
        return (await c.get(stack.name, [h for row in ours.ids for h in row if h is not None]),
                await c.count(stack.name, filter=options.get("filter")))
    their_hits, their_count = run_async(stack.settings, lookups)
    assert {i: (r.vector.tobytes(), r.metadata) for i, r in hits.items()} == {
        i: (r.vector.tobytes(), r.metadata) for i, r in their_hits.items()}
    assert counted == their_count
    # And the answers are right: the exact nearest live rows, ties by id.
    flt = options.get("filter")
    keep = {i for i, (_, meta) in stack.expected.items()
            if flt is None or meta.get("color") in ("red", "purple")}
    for q, row in zip(stack.queries, ours.ids, strict=True):
        ranked = sorted((float(((stack.expected[i][0] - q) ** 2).sum()), i) for i in keep)
        limit = options.get("score_threshold", np.inf)
        assert [i for i in row if i is not None] == [i for d, i in ranked[:K] if d <= limit]
    assert all(ours.hits(j)[0].id == ours.ids[j, 0] for j in range(len(ours))
               if ours.ids[j, 0] is not None)


def test_a_score_threshold_drops_exactly_the_hits_past_it(stack: Stack) -> None:
    with Client(settings=stack.settings) as blocking:
        full = blocking.search(stack.name, stack.queries, k=K, consistency=session(stack))
        for cut in (float(full.scores[0, 4]), float(full.scores[3, 0]), -1.0, 1e9):
            kept = blocking.search(stack.name, stack.queries, k=K, score_threshold=cut)
            for i in range(len(full)):
                want = [(h.id, h.score) for h in full.hits(i) if h.score <= cut]
                assert [(h.id, h.score) for h in kept.hits(i)] == want
                assert all(s != s for s in kept.scores[i, len(want):])  # NaN padding


def test_errors_of_the_searcher_are_typed_alike_in_both_clients(stack: Stack) -> None:
    name = stack.name

    def each(call: Any) -> list[BaseException]:
        raised = []
        with Client(settings=stack.settings) as blocking, pytest.raises(StreamvecError) as got:
            call(blocking)
        raised.append(got.value)

        async def on(c: AsyncClient) -> None:
            with pytest.raises(StreamvecError) as got:
                await call(c)
            raised.append(got.value)
        run_async(stack.settings, on)
        return raised

    for error in each(lambda c: c.search(name, np.ones(3, np.float32))):
        assert type(error) is InvalidRequest and isinstance(error, InvalidInput)
        assert (error.code, error.message) == (
            "wrong_dim", f"query vectors have dim 3, collection {name} has dim {DIM}")
    for error in each(lambda c: c.count("t-no-such-collection")):
        assert type(error) is UnknownCollection and isinstance(error, NotFound)
        assert error.message == "collection 't-no-such-collection' does not exist"
    for error in each(lambda c: c.get("t-no-such-collection", ["a"])):
        assert type(error) is UnknownCollection
    far = {"session": {p: o + 1000 for p, o in stack.offsets.items()}}
    for error in each(lambda c: c.get(name, ["s-50"], consistency=far, timeout=0.3)):
        assert type(error) is ConsistencyTimeout and isinstance(error, SearchTimeout)
        assert isinstance(error, Unavailable) and error.code == "consistency_timeout"
        assert error.message.startswith("session consistency not reached within 300 ms: "
                                        "waiting for partition")


@pytest.fixture
def silent(settings, collection_name, redis_client, monkeypatch) -> str:
    """A collection with a spec and no searcher; clients wait only 0.1 s past a timeout."""
    catalog.claim_spec(redis_client, CollectionSpec(collection_name, dim=4))
    monkeypatch.setattr(client, "REPLY_MARGIN_S", 0.1)
    monkeypatch.setattr(aclient, "REPLY_MARGIN_S", 0.1)
    return collection_name


def request_ids(redis_client, name: str) -> list[bytes]:
    return [fields[b"id"] for _, fields in redis_client.xrange(protocol.queue_key(name))]


def test_a_timed_out_call_is_retried_with_fresh_requests_then_raises(
        settings, silent, redis_client) -> None:
    name = silent
    with Client(settings=settings, retries=2) as blocking:
        with pytest.raises(SearchTimeout) as caught:
            blocking.search(name, np.ones(4, np.float32), timeout=0.1)
        assert str(caught.value) == (f"no searcher answered a query on {name!r} within 0.2s: "
                                     f"is `streamvec searcher --collection {name}` running?")
        assert len(request_ids(redis_client, name)) == 3  # the client-wide retries
        with pytest.raises(SearchTimeout):
            blocking.count(name, timeout=0.1, retries=0)  # a call's own retries win
        assert len(request_ids(redis_client, name)) == 4

    async def calls(c: AsyncClient) -> None:
        with pytest.raises(SearchTimeout):
            await c.get(name, ["a"], timeout=0.1)
        with pytest.raises(SearchTimeout):
            await c.search(name, np.ones(4, np.float32), timeout=0.1, retries=3)
    run_async(settings, calls, retries=1)
    sent = request_ids(redis_client, name)
    assert len(sent) == 4 + 2 + 4 and len(set(sent)) == len(sent)
    ops = [fields.get(b"op", b"search") for _, fields in
           redis_client.xrange(protocol.queue_key(name))]
    assert ops == [b"search"] * 3 + [b"count"] + [b"get"] * 2 + [b"search"] * 4


class ShardSearcher(Running):
    """A searcher of one shard (I/N) on a thread, with its own metrics."""

    def __init__(self, settings: Settings, name: str, shard: str) -> None:
        self.registry = CollectorRegistry()
        metrics = SearcherMetrics(self.registry, name)
        self.engine = Engine(settings, name, metrics=metrics,
                             selection=Selection.parse(shard=shard))
        self.engine.start()
        self.server = Server(settings, name, self.engine, consumer=f"r-{shard}",
                             metrics=metrics, shard=self.engine.shard)
        self.name = name
        super().__init__(self.server.run, self._halt, f"searcher-{name}-{shard}")

    def _halt(self) -> None:
        self.server.stop()
        self.engine.stop()

    def answered(self) -> float:
        return self.registry.get_sample_value("streamvec_searcher_queries_total",
                                              {"collection": self.name}) or 0.0


def test_a_sharded_collection_gets_from_the_owning_shards_and_sums_counts(
        settings, collection_name, redis_client) -> None:
    spec = CollectionSpec(collection_name, dim=DIM, partitions=4, index="Flat",
                          seal_rows=100_000, seal_seconds=0.5)
    admin.create_collection(settings, spec)
    rng = np.random.default_rng(41)
    ids = [f"v{i}" for i in range(80)]
    vectors = rows(rng, len(ids))
    meta = [{"color": COLORS[i % 3]} for i in range(len(ids))]
    with ExitStack() as stop:
        indexer = IndexerThread(settings, spec.name)
        stop.callback(indexer.stop)
        searchers = [ShardSearcher(settings, spec.name, f"{i}/2") for i in (1, 2)]
        for s in searchers:
            stop.callback(s.stop)
        shard_map = ShardMap.plan(4, 2, 1)
        redis_client.set(protocol.shard_map_key(spec.name), shard_map.to_json())
        redis_client.set(protocol.shard_version_key(spec.name), "1")
        with Producer(spec.name, settings=settings) as producer:
            producer.upsert(ids, vectors, meta)
            producer.delete(["v3", "v4"])
            offsets = producer.flush()
        live = {i: (v, m) for i, v, m in zip(ids, vectors, meta, strict=True)
                if i not in ("v3", "v4")}
        level = {"session": offsets}
        with Client(settings=settings) as blocking:
            got = blocking.get(spec.name, ids, consistency=level)
            assert list(got) == [i for i in ids if i in live]
            assert all(got[i].vector.tobytes() == live[i][0].tobytes()
                       and got[i].metadata == live[i][1] for i in got)
            assert blocking.count(spec.name, consistency=level) == len(live)
            assert blocking.count(spec.name, filter={"color": "red"}) == sum(
                1 for _, m in live.values() if m["color"] == "red")
            # A get of ids of one shard's partitions is sent to that shard only.
            first = shard_map.shards[0].partitions
            own = [i for i in ids if partition_of(i, 4, spec.partitioner) in first][:5]
            # Each shard answered the three calls above (a reply is counted once written).
            wait_until(lambda: [s.answered() for s in searchers] == [3.0, 3.0],
                       timeout=SETTLE_S, what="both shards' answers counted")
            assert list(blocking.get(spec.name, own)) == [i for i in own if i in live]
            wait_until(lambda: searchers[0].answered() == 4.0, timeout=SETTLE_S,
                       what="the first shard's answer counted")
            assert searchers[1].answered() == 3.0
        async_got = run_async(settings, lambda c: c.get(spec.name, ids))
        assert {i: r.vector.tobytes() for i, r in async_got.items()} == {
            i: r.vector.tobytes() for i, r in got.items()}
        assert run_async(settings, lambda c: c.count(spec.name)) == len(live)


def test_unexpected_redis_replies_are_search_errors(settings, collection_name,
                                                    redis_client) -> None:
    # A list where the request stream should be: Redis refuses the XADD, the client says so.
    catalog.claim_spec(redis_client, CollectionSpec(collection_name, dim=4))
    redis_client.rpush(protocol.queue_key(collection_name), "x")
    with Client(settings=settings) as blocking, pytest.raises(SearchError) as caught:
        blocking.count(collection_name)
    assert type(caught.value) is SearchError and caught.value.code == "internal"
    assert caught.value.message.startswith(f"Redis refused a query on {collection_name!r}: "
                                           "ResponseError: ")
    assert "WRONGTYPE" in caught.value.message


@pytest.mark.redis_cluster
def test_both_clients_answer_alike_on_a_redis_cluster(settings, collection_name) -> None:
    assert settings.redis_url.startswith("redis+cluster://")
    rng = np.random.default_rng(51)
    ids = [f"c{i}" for i in range(60)]
    vectors = rows(rng, len(ids))
    with serving(settings, collection_name, dim=DIM, partitions=2, seal_rows=25,
                 seal_seconds=0.3):
        with Producer(collection_name, settings=settings) as producer:
            producer.upsert(ids, vectors, [{"color": COLORS[i % 3]} for i in range(len(ids))])
            producer.delete(["c0"])
            level = {"session": producer.flush()}
        with Client(settings=settings) as blocking:
            ours = blocking.search(collection_name, vectors[:4], k=5, consistency=level)
            got = blocking.get(collection_name, ids[:10], consistency=level)
            counted = blocking.count(collection_name, filter={"color": "red"}, consistency=level)

        async def calls(c: AsyncClient) -> tuple[SearchResult, GetResult, int]:
            return (await c.search(collection_name, vectors[:4], k=5, consistency=level),
                    await c.get(collection_name, ids[:10], consistency=level),
                    await c.count(collection_name, filter={"color": "red"}, consistency=level))
        theirs, their_get, their_count = run_async(settings, calls)
    same_result(ours, theirs)
    assert ours.ids[1:, 0].tolist() == ["c1", "c2", "c3"] and "c0" not in ours.ids[0].tolist()
    assert list(got) == ids[1:10] and list(their_get) == ids[1:10]
    assert all(got[i].vector.tobytes() == their_get[i].vector.tobytes() for i in got)
    assert counted == their_count == sum(1 for i in range(1, 60) if i % 3 == 0)
