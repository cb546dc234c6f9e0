"""Client calls without servers: input checks, the error hierarchy, retries, get routing, the
get and count wire forms, score thresholds and counts over sources."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import numpy as np
import pytest

from ingest.partition import partition_of
from ingest.spec import CollectionSpec
from searcher import calls, protocol, shards
from searcher.aclient import AsyncClient
from searcher.client import Client
from searcher.errors import (
    ConsistencyTimeout,
    InvalidRequest,
    QueryError,
    RequestTooLarge,
    SearchError,
    SearchTimeout,
    ShardTimeout,
    UnknownCollection,
    search_error,
)
from searcher.execute import CANARY_FIELD, Searchable, count, execute, validate
from searcher.query import (
    COUNT,
    GET,
    Consistency,
    CountAnswer,
    Filter,
    FoundRow,
    GetAnswer,
    QueryAnswer,
    QueryRequest,
)
from searcher.search import Source
from searcher.shards import Layout, Shard, ShardMap
from streamvec.errors import InvalidInput, NotFound, StreamvecError, Unavailable

NOWHERE = "redis://127.0.0.1:1/0"  # nothing listens: a call that got past its checks fails


def both(call: str, *args: Any, **kwargs: Any) -> list[BaseException]:
    """The error the blocking and the asyncio client raise for the same call."""
    raised = []
    with Client(NOWHERE) as client:
        with pytest.raises(StreamvecError) as caught:
            getattr(client, call)(*args, **kwargs)
        raised.append(caught.value)

    async def run() -> None:
        async with AsyncClient(NOWHERE) as client:
            with pytest.raises(StreamvecError) as caught:
                await getattr(client, call)(*args, **kwargs)
            raised.append(caught.value)
    asyncio.run(run())
    return raised


@pytest.mark.parametrize(("call", "args", "kwargs", "kind", "code", "message"), [
    ("search", ("products", []), {}, InvalidRequest, "malformed",
     "vectors must not be empty (shape (1, 0))"),
    ("search", ("products", [[1, 2], [3]]), {}, InvalidRequest, "malformed",
     "vectors must be one vector or a 2-D array of numbers"),
    ("search", ("products", ["a"]), {}, InvalidRequest, "malformed",
     "vectors must hold numbers, not <U1"),
    ("search", ("products", [1.0]), {"k": 0}, InvalidRequest, "bad_k", "k must be 1..1000, got 0"),
    ("search", ("products", [1.0]), {"k": 2.5}, InvalidRequest, "bad_k",
     "k must be an integer, not float"),
    ("search", ("products", [1.0]), {"k": 10, "ef": 5}, InvalidRequest, "bad_params",
     "ef must be an integer in 1..4096 and at least k (10), got 5"),
    ("search", ("products", [1.0]), {"timeout": 0}, InvalidRequest, "malformed",
     "timeout must be seconds in (0, 60], not 0"),
    ("search", ("products", [1.0]), {"score_threshold": math.nan}, InvalidRequest,
     "malformed", "score_threshold must be a finite number, not nan"),
    ("search", ("products", [1.0]), {"score_threshold": "0.5"}, InvalidRequest, "malformed",
     "score_threshold must be a finite number, not '0.5'"),
    ("search", ("products", [1.0]), {"retries": 11}, InvalidRequest, "malformed",
     "retries must be an integer in 0..10, not 11"),
    ("search", ("products", [1.0]), {"filter": {"a": [1]}}, InvalidRequest, "malformed",
     "field 'filter': 'a': values must be strings, finite numbers, booleans or null"),
    ("search", ("products", [1.0]), {"consistency": "bounded"}, InvalidRequest, "malformed",
     "consistency must be 'eventual', 'strong', {'bounded_ms': N} or {'session': "
     "{partition: offset}} (what Producer.flush() returns), not 'bounded'"),
    ("search", ("Bad Name", [1.0]), {}, InvalidRequest, "malformed",
     "invalid collection name 'Bad Name'"),
    ("get", ("products", []), {}, InvalidRequest, "malformed",
     "ids must be a list of 1..1024 ids, got 0"),
    ("get", ("products", ["a", 7]), {}, InvalidRequest, "malformed",
     "id 1 must be a string of 1..256 UTF-8 bytes without NUL, got 7"),
    ("get", ("products", ["x" * 257]), {}, InvalidRequest, "malformed",
     "id 0 must be a string of 1..256 UTF-8 bytes without NUL"),
    ("get", ("products", [f"i{n}" for n in range(1025)]), {}, InvalidRequest, "malformed",
     "ids must be a list of 1..1024 ids, got 1025"),
    ("get", ("products", 42), {}, InvalidRequest, "malformed",
     "ids must be an id or a list of ids, not int"),
    ("count", ("products",), {"filter": {"n": {"gt": "x", "lt": [1]}}}, InvalidRequest,
     "malformed", "field 'filter': 'n': 'lt' needs a number or a string"),
    ("count", ("products",), {"consistency": {"session": {"a": 1}}}, InvalidRequest,
     "malformed", "field 'consistency': offsets must map partitions"),
])
def test_every_input_error_is_an_invalid_request_before_anything_is_sent(
        call: str, args: tuple, kwargs: dict, kind: type, code: str, message: str) -> None:
    for error in both(call, *args, **kwargs):
        assert type(error) is kind
        assert isinstance(error, SearchError) and isinstance(error, ValueError)
        assert isinstance(error, InvalidInput)
        assert error.code == code
        assert str(error).startswith(message) and error.message == str(error)


def test_an_unreachable_redis_is_a_search_timeout_for_every_call() -> None:
    for call, args in [("search", ("products", [1.0])), ("get", ("products", ["a"])),
                       ("count", ("products",))]:
        for error in both(call, *args, timeout=0.2):
            assert type(error) is SearchTimeout and isinstance(error, Unavailable)
            assert error.code == "timeout"
            assert str(error).startswith("Redis unreachable for a query on 'products': ")


def test_clients_refuse_two_sources_of_settings(settings) -> None:
    for make in (Client, AsyncClient):
        with pytest.raises(InvalidRequest, match="give either redis_url or settings, not both"):
            make(NOWHERE, settings=settings)
        with pytest.raises(InvalidRequest, match="retries must be an integer in 0..10, not -1"):
            make(NOWHERE, retries=-1)


@pytest.mark.parametrize(("code", "kind", "text"), [
    ("malformed", InvalidRequest, "m"), ("wrong_dim", InvalidRequest, "m"),
    ("not_finite", InvalidRequest, "m"), ("bad_k", InvalidRequest, "m"),
    ("bad_params", InvalidRequest, "m"), ("too_large", RequestTooLarge, "m"),
    ("unknown_collection", UnknownCollection, "unknown_collection: m"),
    ("consistency_timeout", ConsistencyTimeout, "consistency_timeout: m"),
    ("timeout", SearchTimeout, "m"), ("internal", SearchError, "internal: m"),
])
def test_each_code_is_raised_as_its_class(code: str, kind: type, text: str) -> None:
    error = search_error(code, "m")
    assert type(error) is kind
    assert (error.code, error.message, str(error)) == (code, "m", text)
    assert isinstance(error, SearchError) and isinstance(error, StreamvecError)
    assert isinstance(error, QueryError)  # what searchers put in error replies


def test_the_hierarchy_says_what_kind_of_failure_it_is() -> None:
    assert issubclass(UnknownCollection, NotFound)
    assert issubclass(SearchTimeout, Unavailable) and issubclass(SearchTimeout, TimeoutError)
    assert issubclass(ConsistencyTimeout, SearchTimeout)
    assert issubclass(ShardTimeout, SearchTimeout)
    assert issubclass(RequestTooLarge, InvalidRequest) and issubclass(InvalidRequest, ValueError)
    shard = ShardTimeout("late", collection="c", shard="0-3")
    assert (shard.code, str(shard), shard.shard) == ("timeout", "late", "0-3")


def drive(flow: Any, respond: Any = lambda step: None) -> tuple[Any, list[Any]]:
    """Run a call's steps, each answered by respond(step) (an exception is thrown in)."""
    steps: list[Any] = []
    reply: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = flow.send(reply) if error is None else flow.throw(error)
        except StopIteration as done:
            return done.value, steps
        steps.append(step)
        reply, error = None, None
        if not isinstance(step, calls.Pause):
            got = respond(step)
            if isinstance(got, BaseException):
                error = got
            else:
                reply = got


def test_a_timed_out_call_is_retried_with_backoff_then_raises() -> None:
    tried: list[int] = []

    def attempt(n: int):
        tried.append(n)
        yield calls.Command(1.0, "blpop")
        raise SearchTimeout(f"attempt {n}")

    steps: list[Any] = []
    with pytest.raises(SearchTimeout, match="attempt 3"):
        for step in calls.retried(attempt, 3):
            steps.append(step)
    assert tried == [0, 1, 2, 3]
    assert [s.seconds if isinstance(s, calls.Pause) else s.name for s in steps] == [
        "blpop", 0.1, "blpop", 0.2, "blpop", 0.4, "blpop"]


def test_other_errors_are_not_retried() -> None:
    tried: list[int] = []

    def attempt(n: int):
        tried.append(n)
        yield calls.Command(1.0, "blpop")
        raise InvalidRequest("no", code="wrong_dim")

    with pytest.raises(InvalidRequest):
        drive(calls.retried(attempt, 5))
    assert tried == [0]


def test_every_attempt_is_a_fresh_request() -> None:
    spec = CollectionSpec("products", dim=2, partitions=2)
    sent: list[dict] = []

    def respond(step: calls.Command) -> Any:
        if step.name == "mget" and len(step.args[0]) == 2:  # alias and challenge: none
            return [None, None]
        if step.name == "mget":  # the layout: no shard map
            return [None, None, spec.to_json().encode()]
        if step.name == "eval":  # SUBMIT, 4, four keys, map version, MAXLEN, then the fields
            pairs = step.args[8:]
            sent.append(dict(zip(pairs[0::2], pairs[1::2], strict=True)))
            return f"{len(sent)}-0".encode()
        return None  # BLPOP: no reply

    with pytest.raises(SearchTimeout, match="no searcher answered a query on 'products' "
                                            "within 0.05s"):
        drive(calls.count(calls.Known(), "products", timeout=0.05, retries=2, margin=0.0),
              respond)
    assert [f["op"] for f in sent] == [b"count"] * 3
    assert len({f["id"] for f in sent}) == 3


class Names:
    """Redis as the calls see it: which names are aliases (to what) and which are collections."""

    def __init__(self, aliases: dict[str, str], collections: set[str]) -> None:
        self.aliases, self.collections = aliases, collections
        self.steps: list[tuple[str, Any]] = []  # (command, the name it was about)

    def respond(self, step: calls.Command) -> Any:
        if step.name == "mget" and len(step.args[0]) == 2:  # an alias and its challenge
            name = step.args[0][0].split("{")[1].split("}")[0]
            self.steps.append(("route", name))
            target = self.aliases.get(name)
            alias = {"target": target, "since": 1.0, "actor": "t"}
            return [None if target is None else json.dumps(alias).encode(), None]
        if step.name == "mget":  # a collection's layout
            name = step.args[0][2].split("{")[1].split("}")[0]
            spec = CollectionSpec(name, dim=2, partitions=1)
            return [None, None, spec.to_json().encode() if name in self.collections else None]
        if step.name == "eval":  # SUBMIT: the alias check first, then the collection
            name = step.args[2].split("{")[1].split("}")[0]
            self.steps.append(("submit", name))
            if name in self.aliases:
                return [b"alias"]
            return None if name not in self.collections else b"1-0"
        return None  # BLPOP: no reply


def test_a_collection_name_is_read_for_an_alias_once_then_sent_to_directly() -> None:
    redis = Names({}, {"products"})
    known = calls.Known()
    for _ in range(3):
        with pytest.raises(SearchTimeout):
            drive(calls.count(known, "products", timeout=0.01, margin=0.0), redis.respond)
    assert redis.steps == [("route", "products"), ("submit", "products"),
                           ("submit", "products"), ("submit", "products")]


def test_a_name_that_became_an_alias_is_sent_to_its_target_in_the_same_call() -> None:
    redis = Names({}, {"products", "products-v2"})
    known = calls.Known()
    with pytest.raises(SearchTimeout):
        drive(calls.count(known, "products", timeout=0.01, margin=0.0), redis.respond)
    redis.collections.discard("products")  # dropped, and its name now an alias
    redis.aliases["products"] = "products-v2"
    redis.steps.clear()
    with pytest.raises(SearchTimeout, match="'products-v2'"):
        drive(calls.count(known, "products", timeout=0.01, margin=0.0), redis.respond)
    assert redis.steps == [("submit", "products"), ("route", "products"),
                           ("submit", "products-v2")]
    redis.steps.clear()  # an alias is read on every call, as before
    with pytest.raises(SearchTimeout, match="'products-v2'"):
        drive(calls.count(known, "products", timeout=0.01, margin=0.0), redis.respond)
    assert redis.steps == [("route", "products"), ("submit", "products-v2")]


def test_a_known_collection_that_is_gone_is_unknown_once_its_alias_was_read() -> None:
    redis = Names({}, {"products"})
    known = calls.Known()
    with pytest.raises(SearchTimeout):
        drive(calls.count(known, "products", timeout=0.01, margin=0.0), redis.respond)
    redis.collections.clear()
    redis.steps.clear()
    with pytest.raises(UnknownCollection, match="collection 'products' does not exist"):
        drive(calls.count(known, "products", timeout=0.01, margin=0.0), redis.respond)
    assert redis.steps == [("submit", "products"), ("route", "products")]  # then its layout


def test_a_get_goes_only_to_the_shards_owning_its_ids() -> None:
    spec = CollectionSpec("products", dim=2, partitions=4)
    layout = Layout.of(ShardMap.plan(4, 2, 1), spec.metric)
    ids = [f"id-{i}" for i in range(40)]
    request = QueryRequest("r1", "products", np.zeros((0, 0), np.float32), 0, op=GET,
                           ids=tuple(ids), consistency=Consistency("session",
                                                                   offsets={0: 5, 3: 9}))
    parts = calls.split(spec, layout, request)
    owner = {p: s for s in layout.shards for p in s.partitions}
    assert sorted(i for _, part in parts for i in part.ids) == sorted(ids)
    for shard, part in parts:
        assert all(owner[partition_of(i, 4, spec.partitioner)] == shard for i in part.ids)
        assert part.reply_key == protocol.reply_key("products", "r1", shard.label)
        assert set(part.consistency.offsets) <= set(shard.partitions)
    lone = calls.split(spec, layout, request.__class__(
        "r2", "products", request.vectors, 0, op=GET, ids=("id-1",)))
    assert [s.partitions for s, _ in lone] == [
        owner[partition_of("id-1", 4, spec.partitioner)].partitions]
    counted = calls.split(spec, layout, QueryRequest("r3", "products", request.vectors, 0,
                                                     op=COUNT))
    assert [s for s, _ in counted] == list(layout.shards)


def test_shard_answers_of_gets_and_counts_merge() -> None:
    first, second = Shard((0, 1), 4), Shard((2, 3), 4)
    row = FoundRow("a", np.ones(2, np.float32), {"c": 1}, 0, 4)
    got = shards.combine("p", [(first, GetAnswer([row], {0: 5, 1: 2}, {"search": 1.0})),
                               (second, GetAnswer([], {2: 7, 3: 1}, {"search": 3.0}))],
                         0, "l2", merger=calls.merge_rows)
    assert got.answer.rows == [row] and got.answer.offsets == {0: 5, 1: 2, 2: 7, 3: 1}
    assert got.answer.timings_ms == {"search": 3.0}
    summed = shards.combine("p", [(first, CountAnswer(3)), (second, CountAnswer(4))], 0, "l2",
                            merger=calls.merge_counts)
    assert summed.answer.count == 7
    with pytest.raises(ShardTimeout, match="shard 2-3 of 'p'"):
        shards.combine("p", [(first, CountAnswer(3)), (second, None)], 0, "l2",
                       merger=calls.merge_counts)
    with pytest.raises(RequestTooLarge, match="shard 0-1 of p: too big"):
        shards.combine("p", [(first, QueryError("too_large", "too big")),
                             (second, CountAnswer(1))], 0, "l2", merger=calls.merge_counts)


def test_get_and_count_requests_and_replies_round_trip() -> None:
    get = QueryRequest("g1", "products", np.zeros((0, 0), np.float32), 0, op=GET,
                       ids=("a", "é", "b"), consistency=Consistency("strong"), timeout_ms=900)
    fields = protocol.encode_request(replace_reply(get))
    assert fields["op"] == b"get" and json.loads(fields["ids"]) == ["a", "é", "b"]
    back = protocol.decode_request("products", fields, dim=3)
    assert (back.op, back.ids, back.consistency, back.timeout_ms, back.vectors.shape) == (
        GET, ("a", "é", "b"), Consistency("strong"), 900, (0, 3))
    counted = QueryRequest("c1", "products", np.zeros((0, 0), np.float32), 0, op=COUNT,
                           filter=Filter({"color": "red"}))
    back = protocol.decode_request("products", protocol.encode_request(counted), dim=3)
    assert (back.op, back.filter) == (COUNT, Filter({"color": "red"}))
    row = FoundRow("a", np.array([0.1, -2.5, 3e-8], np.float32), {"color": "red"}, 2, 41)
    rid, answer = protocol.decode_reply(protocol.encode_reply(
        "g1", GetAnswer([row], {2: 42}), timings_ms={"total": 1.5}))
    assert rid == "g1" and answer.offsets == {2: 42} and answer.timings_ms == {"total": 1.5}
    (found,) = answer.rows
    assert (found.id, found.metadata, found.partition, found.offset) == ("a", {"color": "red"},
                                                                       2, 41)
    assert found.vector.dtype == np.float32
    assert found.vector.view(np.uint32).tolist() == row.vector.view(np.uint32).tolist()
    _, answer = protocol.decode_reply(protocol.encode_reply("c1", CountAnswer(12, {0: 3})))
    assert (answer.count, answer.offsets) == (12, {0: 3})
    # A search's reply names no op, as before gets and counts existed.
    assert "op" not in json.loads(protocol.encode_reply("s1", QueryAnswer([["a"]], [[0.5]])))


def replace_reply(request: QueryRequest) -> QueryRequest:
    return QueryRequest(request.request_id, request.collection, request.vectors, request.k,
                        request.filter, request.consistency, request.timeout_ms, op=request.op,
                        ids=request.ids)


@pytest.mark.parametrize(("fields", "message"), [
    ({"op": b"put"}, "field 'op': must be one of search, get, count, got b'put'"),
    ({"op": b"get"}, "field 'ids': a get needs a JSON list of ids, got nothing"),
    ({"op": b"get", "ids": b"[]"}, "field 'ids': ids must be a list of 1..1024 ids, got 0"),
    ({"op": b"get", "ids": b'{"a": 1}'}, "field 'ids': ids must be a list of 1..1024 ids, got "
                                         "a dict"),
    ({"op": b"get", "ids": b'["a\\u0000b"]'}, "field 'ids': id 0 must be a string of 1..256"),
    ({"op": b"get", "ids": b'["\\ud800"]'}, "field 'ids': id 0 must be a string of 1..256"),
    ({"op": b"get", "ids": b"[1"}, "field 'ids': is not valid JSON"),
    ({"op": b"count", "filter": b'{"a": {"near": 1}}'}, "field 'filter': 'a': unknown operator"),
    ({"score_threshold": b"nan"}, "field 'score_threshold': must be a decimal number"),
    ({"score_threshold": b"1e999"}, "field 'score_threshold': must be finite"),
])
def test_bad_get_count_and_threshold_fields_are_malformed(fields: dict, message: str) -> None:
    base = protocol.encode_request(QueryRequest("x1", "products", np.ones((1, 3), np.float32), 2))
    with pytest.raises(QueryError) as caught:
        protocol.decode_request("products", {**base, **fields}, dim=3)
    assert caught.value.code == "malformed"
    assert caught.value.message.startswith(message)


def test_a_threshold_travels_exactly() -> None:
    request = QueryRequest("t1", "products", np.ones((1, 3), np.float32), 2,
                           score_threshold=0.1 + 0.2)
    back = protocol.decode_request("products", protocol.encode_request(request), dim=3)
    assert back.score_threshold == 0.1 + 0.2


def sources(vectors: np.ndarray, metadata: list[dict | None],
            hidden: np.ndarray | None = None) -> list[Searchable]:
    """One source of rows `r0`, `r1`, ... with this metadata, parsed row by row."""
    return [Searchable(Source(vectors, hidden), lambda r: f"r{r}", lambda r: metadata[r])]


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_a_score_threshold_drops_exactly_the_hits_past_it(metric: str) -> None:
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((50, 4)).astype(np.float32)
    query = rng.standard_normal((2, 4)).astype(np.float32)
    items = sources(vectors, [None] * 50)

    def ask(threshold: float | None) -> QueryAnswer:
        request = QueryRequest("q", "c", query, 10, score_threshold=threshold)
        return execute([request], [validate(request, 4)], items, metric, {})[0]

    full = ask(None)
    cut = full.scores[0][4]  # the fifth hit's score: the first five stay for query 0
    kept = ask(cut)
    for row_ids, row_scores, got_ids, got_scores in zip(full.ids, full.scores, kept.ids,
                                                        kept.scores, strict=True):
        stays = [s <= cut if metric == "l2" else s >= cut for s in row_scores]
        assert got_ids == [i for i, keep in zip(row_ids, stays, strict=True) if keep]
        assert got_scores == [s for s, keep in zip(row_scores, stays, strict=True) if keep]
    assert len(kept.ids[0]) == 5
    beyond = -1e9 if metric == "l2" else 1e9
    assert ask(beyond).ids == [[], []]


def test_count_takes_live_rows_that_the_filter_accepts_and_leaves_canaries_out() -> None:
    metadata = [{"color": "red"}, {"color": "blue"}, None, {"color": "red"},
                {CANARY_FIELD: True, "token": "ab"}, {"color": "red", "n": 3}]
    hidden = np.array([False, False, False, True, False, False])
    items = sources(np.zeros((6, 2), np.float32), metadata, hidden)
    assert count(items, None) == 4  # rows 0, 1, 2, 5: row 3 is hidden, row 4 a canary
    assert count(items, Filter({"color": "red"})) == 2
    assert count(items, Filter({CANARY_FIELD: True})) == 1
    assert count(items, Filter({"n": {"gte": 3}})) == 1
    assert count([], Filter({"color": "red"})) == 0
