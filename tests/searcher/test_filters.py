"""The filter language: parsing and budgets, the reference and column evaluators, search plans."""

from __future__ import annotations

import json
import math
from pathlib import Path

import faiss
import numpy as np
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from indexer import columns
from indexer.build import build_index, make_index
from indexer.idmap import IdMap
from indexer.registry import SegmentRecord
from indexer.segment import GrowingSegment, segment_id
from indexer.store import SegmentStore
from ingest import record
from searcher import execute, filters, protocol, search, segments
from searcher.errors import QueryError
from searcher.execute import CANARY_FIELD, Searchable
from searcher.filters import And, Cond, Not, Or
from searcher.fold import FoldConfig
from searcher.metrics import SearcherMetrics
from searcher.query import Filter, QueryAnswer, QueryRequest
from searcher.search import SearchParams, Source
from searcher.state import ServingState
from searcher.tail import TailBuffer, TailMessage
from tests.support.oracle import exact_scores

DIM = 8
K = 10


# The language.

@pytest.mark.parametrize(("obj", "expr"), [
    ({"a": 1}, Cond("a", "in", (1,))),
    ({"a": {"eq": "x"}}, Cond("a", "in", ("x",))),
    ({"a": {"ne": None}}, Cond("a", "not_in", (None,))),
    ({"a": {"in": [1, "x", True]}}, Cond("a", "in", (1, "x", True))),
    ({"a": {"not_in": [2.5]}}, Cond("a", "not_in", (2.5,))),
    ({"a": {"gt": 1}}, Cond("a", "gt", (1,))),
    ({"a": {"gte": "m"}}, Cond("a", "gte", ("m",))),
    ({"a": {"lt": -2.5}}, Cond("a", "lt", (-2.5,))),
    ({"a": {"lte": ""}}, Cond("a", "lte", ("",))),
    ({"a": {"exists": False}}, Cond("a", "exists", (False,))),
    ({"a": {"gt": 1, "lt": 5}}, And((Cond("a", "gt", (1,)), Cond("a", "lt", (5,))))),
    ({"a": 1, "b": 2}, And((Cond("a", "in", (1,)), Cond("b", "in", (2,))))),
    ({"or": [{"a": 1}, {"not": {"b": 2}}]},
     Or((Cond("a", "in", (1,)), Not(Cond("b", "in", (2,)))))),
    ({"and": [{"a": 1}, {"and": [{"b": 2}, {"c": 3}]}], "d": 4},
     And((Cond("a", "in", (1,)), Cond("b", "in", (2,)), Cond("c", "in", (3,)),
          Cond("d", "in", (4,))))),
    ({"or": [{"a": 1}]}, Cond("a", "in", (1,))),
])
def test_each_form_parses_to_its_expression(obj, expr) -> None:
    assert filters.parse(obj) == expr
    assert filters.parse(filters.to_json(expr)) == expr


def test_true_and_one_are_different_values() -> None:
    assert filters.parse({"a": True}) != filters.parse({"a": 1})
    assert filters.parse({"a": 1}) == filters.parse({"a": 1.0})


@pytest.mark.parametrize(("obj", "expr"), [
    # Language 1 held no combinators: a field named and, or or not is still one.
    ({"and": 1}, Cond("and", "in", (1,))),
    ({"or": {"in": ["x", "y"]}}, Cond("or", "in", ("x", "y"))),
    ({"not": "x"}, Cond("not", "in", ("x",))),
    ({"not": {"in": [1, 2]}}, Cond("not", "in", (1, 2))),
    ({"not": {"gt": 1, "exists": True}},
     And((Cond("not", "gt", (1,)), Cond("not", "exists", (True,))))),
])
def test_fields_named_like_combinators_keep_their_language_1_meaning(obj, expr) -> None:
    assert filters.parse(obj) == expr
    assert filters.parse(filters.to_json(expr)) == expr


def test_a_negated_condition_on_a_field_named_like_an_operator_round_trips() -> None:
    expr = Not(Cond("gt", "in", (5,)))
    assert filters.to_json(expr) == {"not": {"and": [{"gt": 5}]}}
    assert filters.parse(filters.to_json(expr)) == expr


def test_the_wire_form_of_language_1_filters_is_unchanged() -> None:
    assert Filter({"color": ("red",), "size": (1, 2)}).to_json() == {
        "color": "red", "size": {"in": [1, 2]}}
    assert Filter({"a": {"gt": 1, "ne": 3}, "b": {"exists": True}}).to_json() == {
        "a": {"gt": 1, "ne": 3}, "b": {"exists": True}}
    # A condition that cannot share an object with the field's others goes in an "and".
    assert Filter(And((Cond("a", "gt", (1,)), Cond("b", "in", (1,)),
                       Cond("a", "lt", (3,))))).to_json() == {
        "and": [{"a": {"gt": 1}}, {"b": 1}, {"a": {"lt": 3}}]}


def test_filter_objects_compare_by_expression() -> None:
    assert Filter({"a": ("x",)}) == Filter({"a": "x"}) == Filter({"a": {"in": ["x"]}})
    assert Filter({}).expr is None and not Filter({})
    assert Filter({"or": [{"a": 1}, {"not": {"c": 2}}], "b": {"gt": 1}}).fields == {
        "a", "b", "c"}


def nested(levels: int) -> dict:
    obj: dict = {"a": 1}
    for _ in range(levels):
        obj = {"not": obj}
    return obj


@pytest.mark.parametrize(("obj", "message"), [
    ([1], "must be a JSON object: {\"field\": value}, {\"field\": {\"op\": value}}, "
          "{\"and\": [filters]}, {\"or\": [filters]} or {\"not\": filter}"),
    ({"a": {"gt": True}}, "'a': 'gt' needs a number or a string, got True"),
    ({"a": {"lte": None}}, "'a': 'lte' needs a number or a string, got None"),
    ({"a": {"lt": [1]}}, "'a': 'lt' needs a number or a string, got [1]"),
    ({"a": {"exists": 1}}, "'a': 'exists' needs true or false, got 1"),
    ({"a": {}}, "'a': a condition needs at least one operator of eq, ne, in, not_in, gt, "
                "gte, lt, lte, exists"),
    ({"a": {"in": 3}}, "'a': 'in' needs a list of 1..1024 values"),
    ({"a": {"not_in": list(range(1025))}}, "'a': 'not_in' needs a list of 1..1024 values"),
    ({"a": {"in": [[1]]}}, "'a': values must be strings, finite numbers, booleans or null"),
    ({"a": {"ne": {"x": 1}}}, "'a': values must be strings, finite numbers, booleans or null"),
    ({"a": 10**400}, "'a': values must be strings, finite numbers, booleans or null"),
    ({"a": math.inf}, "'a': values must be strings, finite numbers, booleans or null"),
    ({"a": {"between": [1, 2]}}, "'a': unknown operator 'between'; expected one of eq, ne, in, "
                                 "not_in, gt, gte, lt, lte, exists"),
    ({"and": []}, "'and' needs a list of at least one filter"),
    ({"or": [1]}, "or[0]: must be a filter object, got 1"),
    ({"or": [{}]}, "or[0]: is an empty filter: an empty object means no filter only as the "
                   "whole filter"),
    ({"and": [{"a": 1}, {"or": [{"b": {"lt": False}}]}]},
     "and[1]: or[0]: 'b': 'lt' needs a number or a string, got False"),
    ({"not": {"a": {"gt": 1, "x": 2}}}, "not: 'a': unknown operator 'x'; expected one of eq, "
                                        "ne, in, not_in, gt, gte, lt, lte, exists"),
    ({1: 2}, "field names must be non-empty strings"),
    (nested(9), "not: " * 8 + "nests and/or/not deeper than 8 levels"),
    ({"and": [{f"f{i}": i} for i in range(65)]},
     "holds more than 64 conditions (an operator on a field each), over the limit"),
    ({"a": {"gt": 1, "lt": 2}, **{f"f{i}": i for i in range(63)}},
     "holds more than 64 conditions (an operator on a field each), over the limit"),
])
def test_a_bad_filter_is_malformed_and_the_message_names_the_problem(obj, message) -> None:
    with pytest.raises(QueryError) as info:
        protocol.parse_filter(obj)
    assert (info.value.code, info.value.message) == ("malformed", f"field 'filter': {message}")


def test_filters_at_their_budgets_are_accepted() -> None:
    assert filters.parse(nested(8)) is not None
    assert len(filters.parse({f"f{i}": i for i in range(64)}).parts) == 64
    assert filters.parse({"a": {"in": list(range(1024))}}) == Cond("a", "in",
                                                                   tuple(range(1024)))
    assert protocol.parse_filter({}) is None and protocol.parse_filter(None) is None


def test_a_request_round_trips_every_operator() -> None:
    flt = Filter({"or": [{"a": {"gte": 1, "lt": "z"}}, {"not": {"b": {"not_in": [None, 2]}}}],
                  "c": {"exists": False}})
    sent = QueryRequest("r1", "c", np.zeros((1, DIM), np.float32), 3, flt,
                        reply_key=protocol.reply_key("c", "r1"))
    fields = {k.encode(): v for k, v in protocol.encode_request(sent).items()}
    assert protocol.decode_request("c", fields, dim=DIM).filter == flt


# What each operator means.

ROWS: dict[str, object] = {
    "one": {"x": 1}, "one.0": {"x": 1.0}, "big": {"x": 2**53 + 1}, "true": {"x": True},
    "b": {"x": "b"}, "b0": {"x": "b\x00"}, "null": {"x": None}, "list": {"x": [1]},
    "object": {"x": {"y": 1}}, "none": None, "other": {"y": 1}, "nan": {"x": math.nan},
    "huge": {"x": 10**400}, "array": [1, 2],
}
HAS_X = {"one", "one.0", "big", "true", "b", "b0", "null", "list", "object", "nan", "huge"}
EVERY = set(ROWS)


@pytest.mark.parametrize(("obj", "accepted"), [
    ({"x": 1}, {"one", "one.0"}),
    ({"x": True}, {"true"}),
    ({"x": None}, {"null"}),
    ({"x": "b"}, {"b"}),
    ({"x": {"ne": 1}}, EVERY - {"one", "one.0"}),
    ({"x": {"in": [1, "b", None]}}, {"one", "one.0", "b", "null"}),
    ({"x": {"not_in": [1, "b", None]}}, EVERY - {"one", "one.0", "b", "null"}),
    ({"x": {"gt": 0}}, {"one", "one.0", "big"}),
    ({"x": {"gte": 1, "lt": 2}}, {"one", "one.0"}),
    ({"x": {"lte": 1}}, {"one", "one.0"}),
    ({"x": {"gte": "b"}}, {"b", "b0"}),
    ({"x": {"gt": "b"}}, {"b0"}),
    ({"x": {"lt": "b\x00"}}, {"b"}),
    ({"x": {"lt": "a"}}, set()),
    ({"x": {"gt": "0"}}, {"b", "b0"}),
    ({"x": {"exists": True}}, HAS_X),
    ({"x": {"exists": False}}, EVERY - HAS_X),
    ({"or": [{"x": True}, {"y": 1}]}, {"true", "other"}),
    ({"not": {"x": {"exists": True}}}, EVERY - HAS_X),
    ({"and": [{"x": {"exists": True}}, {"not": {"x": {"in": [1, True]}}}]},
     HAS_X - {"one", "one.0", "true"}),
    # Numbers compare as doubles: 2**53 + 1 is 2**53.
    ({"x": 2**53}, {"big"}),
])
@pytest.mark.parametrize("evaluator", ["reference", "columns"])
def test_operators_on_every_kind_of_value(obj, accepted, evaluator) -> None:
    names = list(ROWS)
    expr = filters.parse(obj)
    if evaluator == "reference":
        got = [filters.matches(expr, ROWS[n]) for n in names]
    else:
        raws = [b"" if ROWS[n] is None else json.dumps(ROWS[n]).encode() for n in names]
        got = filters.evaluate(expr, columns.build(raws)).tolist()
    assert {n for n, ok in zip(names, got, strict=True) if ok} == accepted


# Columns against the reference, on random metadata and filters.

NAMES = ["a", "b", "c", "d"]
WORDS = st.sampled_from(["", "a", "a\x00", "ab", "b", "é", "\ud800", "z", "10"])
NUMBERS = st.one_of(st.integers(-3, 3), st.sampled_from([0.5, -0.0, 2.5, 1e300, 2**53 + 1]))
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, WORDS)
VALUES = st.one_of(SCALARS, st.sampled_from([math.nan, math.inf, -math.inf, 10**400]),
                   st.lists(SCALARS, max_size=2), st.dictionaries(WORDS, SCALARS, max_size=2))
ROW = st.one_of(st.none(), st.dictionaries(st.sampled_from(NAMES), VALUES, max_size=4),
                st.sampled_from([b"[1]", b"not json", b"3"]))


def _operand(op: str):
    if op in ("in", "not_in"):
        return st.lists(SCALARS, min_size=1, max_size=3)
    if op in filters.RANGE_OPS:
        return st.one_of(NUMBERS, WORDS)
    if op == "exists":
        return st.booleans()
    return SCALARS


CONDITIONS = st.builds(
    lambda name, ops: {name: ops},
    st.sampled_from(NAMES),
    st.sampled_from(filters.OPERATORS).flatmap(
        lambda op: _operand(op).map(lambda v: {op: v})) | SCALARS)
FILTERS = st.recursive(
    CONDITIONS,
    lambda inner: st.one_of(
        st.builds(lambda fs: {"and": fs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda fs: {"or": fs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda f: {"not": f}, inner)),
    max_leaves=8)


def _raw(row) -> bytes:
    if row is None:
        return b""
    return row if isinstance(row, bytes) else json.dumps(row).encode()


@hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ROW, min_size=1, max_size=30), FILTERS, st.integers(0, 4), st.data())
def test_columns_answer_as_the_reference_does(rows, obj, max_fields, data) -> None:
    expr = filters.parse(obj)
    raws = [_raw(r) for r in rows]
    want = [filters.matches(expr, columns.parse_row(r)) for r in raws]
    # Built in memory, with fields left to on-demand builds, and read back from files.
    built = columns.build(raws, max_fields=max_fields)
    assert filters.evaluate(expr, built).tolist() == want
    arrays, blobs = columns.to_files(built)
    stored = columns.from_files(arrays, blobs, len(raws), raw=lambda: raws)
    assert filters.evaluate(expr, stored).tolist() == want
    # Over a growing list, asked for in random steps (the tail's blocks).
    tail = columns.TailColumns([])
    lo = 0
    for hi in sorted(data.draw(st.lists(st.integers(1, len(raws)), max_size=4))) + [len(raws)]:
        tail.raws.extend(raws[len(tail.raws):hi])
        lo = data.draw(st.integers(0, hi), label="lo")
        assert filters.evaluate_pieces(expr, tail.pieces(lo, hi), hi - lo).tolist() == \
            want[lo:hi]
    assert filters.parse(filters.to_json(expr)) == expr


# Plans over search sources.

def metadata_rows(rng: np.random.Generator, n: int) -> list[dict | None]:
    out: list[dict | None] = []
    for i in range(n):
        row: dict = {"cat": "abcde"[int(rng.integers(5))], "n": int(rng.integers(100)),
                     "price": round(float(rng.uniform(0, 50)), 2)}
        if i % 3:
            row["flag"] = bool(rng.integers(2))
        if i % 7 == 0:
            row["tag"] = None
        out.append(None if i % 11 == 5 else row)
    return out


class Corpus:
    """Search sources over random rows with metadata, and the brute-force answer."""

    def __init__(self, seed: int = 3) -> None:
        self.rng = np.random.default_rng(seed)
        self.items: list[Searchable] = []
        self.live: dict[str, tuple[np.ndarray, dict | None]] = {}

    def add(self, name: str, rows: int, index: str | None = None, hidden_every: int = 0,
            columns_too: bool = True) -> None:
        vectors = self.rng.standard_normal((rows, DIM)).astype(np.float32)
        meta = metadata_rows(self.rng, rows)
        raws = [_raw(m) for m in meta]
        hidden = None
        if hidden_every:
            hidden = np.zeros(rows, bool)
            hidden[::hidden_every] = True
        built = None
        if index is not None:
            built = make_index(DIM, index, "l2")
            if not built.is_trained:
                built.train(vectors)
            built.add(vectors)
        ids = [f"{name}-{r}" for r in range(rows)]
        table = columns.build(raws)
        self.items.append(Searchable(
            Source(vectors, hidden, built), ids.__getitem__, meta.__getitem__,
            (lambda expr, t=table: filters.evaluate(expr, t)) if columns_too else None))
        for r in range(rows):
            if hidden is None or not hidden[r]:
                self.live[ids[r]] = (vectors[r], meta[r])

    def expected(self, queries: np.ndarray, obj: dict, k: int = K) -> list[list[str]]:
        expr = filters.parse(obj)
        ids = sorted(i for i, (_, m) in self.live.items() if filters.matches(expr, m))
        if not ids:
            return [[] for _ in queries]
        scores = exact_scores(np.stack([self.live[i][0] for i in ids]), queries, "l2")
        order = np.argsort(scores, axis=1, kind="stable")[:, :k]
        return [[ids[j] for j in row] for row in order]

    def ask(self, queries: np.ndarray, obj: dict, k: int = K) -> QueryAnswer:
        request = QueryRequest("q", "c", queries, k, Filter(obj))
        # nprobe = every list: the IVF source's searches are exhaustive, so exact.
        (answer,) = execute.execute([request], [queries], self.items, "l2", {},
                                    defaults=SearchParams(nprobe=16))
        assert isinstance(answer, QueryAnswer), answer
        return answer


FILTER_CASES = [
    {"cat": "a"},
    {"cat": {"ne": "a"}},
    {"cat": {"in": ["b", "d"]}},
    {"cat": {"not_in": ["b", "d", "e"]}},
    {"n": {"gt": 90}},
    {"n": {"gte": 10, "lt": 12}},
    {"price": {"lte": 0.5}},
    {"cat": {"gte": "d"}},
    {"flag": {"exists": False}},
    {"tag": None},
    {"or": [{"n": 3}, {"and": [{"cat": "e"}, {"flag": True}]}]},
    {"not": {"or": [{"cat": {"lt": "e"}}, {"n": {"lt": 80}}]}},
    {"and": [{"flag": False}, {"not": {"price": {"gt": 10}}}, {"n": {"not_in": [1, 2, 3]}}]},
    {"cat": "nothing"},
]


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    c = Corpus()
    c.add("flat", 6000, hidden_every=5)
    c.add("ivf", 6000, index="IVF16,Flat", hidden_every=4)
    c.add("small", 300)
    return c


def force(monkeypatch, scan_values: int, scan_fraction: float, select_fraction: float) -> None:
    monkeypatch.setattr(execute, "FILTER_SCAN_VALUES", scan_values)
    monkeypatch.setattr(execute, "FILTER_SCAN_FRACTION", scan_fraction)
    monkeypatch.setattr(execute, "FILTER_SELECT_FRACTION", select_fraction)


@pytest.mark.parametrize("plan", ["auto", "select", "post"])
@pytest.mark.parametrize("obj", FILTER_CASES)
def test_every_plan_gives_exactly_the_brute_force_answer(corpus, monkeypatch, obj, plan) -> None:
    if plan != "auto":  # no scans where there is an index: it is searched by `plan`
        force(monkeypatch, 0, 0, 1.1 if plan == "select" else 0)
    queries = corpus.rng.standard_normal((3, DIM)).astype(np.float32)
    answer = corpus.ask(queries, obj)
    assert answer.ids == corpus.expected(queries, obj)
    report = answer.filter
    accepted = sum(filters.matches(filters.parse(obj), m) for _, m in corpus.live.values())
    assert (report["rows"], report["accepted"]) == (len(corpus.live), accepted)
    if accepted and plan != "auto":
        assert report["plans"].get(plan) == 1  # the IVF source
    assert "filter" in answer.timings_ms


def test_the_plan_follows_how_many_rows_are_accepted(monkeypatch) -> None:
    c = Corpus(5)
    c.add("ivf", 4000, index="IVF16,Flat")
    c.add("flat", 4000)
    queries = c.rng.standard_normal((2, DIM)).astype(np.float32)
    rare, most = {"n": 7}, {"n": {"ne": 7}}  # about 1% and 99% of the rows
    assert c.ask(queries, rare).filter["plans"] == {"scan": 2}
    # Gathered scans of 16 rows at most; an index below 2% scanned too, in blocks of 16 rows.
    force(monkeypatch, 16 * DIM, 0.02, 0.05)
    assert c.ask(queries, rare).filter["plans"] == {"scan": 2}
    some = {"cat": {"in": ["a", "b"]}, "n": {"lt": 10}}  # about 3% of the rows
    assert c.ask(queries, some).filter["plans"] == {"select": 1, "scan": 1}
    assert c.ask(queries, most).filter["plans"] == {"post": 1, "scan": 1}
    assert c.ask(queries, {"cat": "none"}).filter == {"rows": 8000, "accepted": 0,
                                                      "plans": {"empty": 2}}
    for obj in (rare, most, some):
        assert c.ask(queries, obj).ids == c.expected(queries, obj)


def test_a_selector_the_index_refuses_falls_back_to_a_growing_fetch(monkeypatch) -> None:
    c = Corpus(6)
    c.add("pq", 3000, index="PQ4x4")  # IndexPQ takes no search parameters
    force(monkeypatch, 0, 0, 1.1)
    queries = c.rng.standard_normal((2, DIM)).astype(np.float32)
    answer = c.ask(queries, {"cat": "b"})
    assert answer.filter["plans"] == {"post": 1}
    assert all(len(row) == K for row in answer.ids)
    assert all(c.live[i][1]["cat"] == "b" for row in answer.ids for i in row)


def test_sources_without_columns_parse_metadata_row_by_row() -> None:
    c = Corpus(7)
    c.add("json", 2000, columns_too=False)
    c.add("cols", 2000)
    queries = c.rng.standard_normal((2, DIM)).astype(np.float32)
    obj = {"or": [{"cat": "c"}, {"n": {"gte": 95}}]}
    answer = c.ask(queries, obj)
    assert answer.ids == c.expected(queries, obj)
    assert answer.filter["plans"] == {"rows": 1, "scan": 1}


def test_the_plan_travels_in_the_reply() -> None:
    answer = QueryAnswer([["a"]], [[0.5]], None, {0: 3}, {"filter": 0.25},
                         {"rows": 10, "accepted": 1, "plans": {"scan": 1}})
    body = protocol.encode_reply("r", answer, timings_ms={"total": 1.0})
    doc = json.loads(body)
    assert doc["filter"] == {"rows": 10, "accepted": 1, "plans": {"scan": 1}}
    assert doc["timings_ms"] == {"filter": 0.25, "total": 1.0}
    assert protocol.decode_reply(body)[1].filter == doc["filter"]
    plain = protocol.encode_reply("r", QueryAnswer([["a"]], [[0.5]]))
    assert "filter" not in json.loads(plain) and protocol.decode_reply(plain)[1].filter is None


def test_canary_rows_show_when_the_filter_names_the_canary_field_anywhere() -> None:
    vectors = np.eye(3, DIM, dtype=np.float32)
    meta = [{CANARY_FIELD: True}, {"x": 1}, {"x": 2}]
    ids = [f"{execute.CANARY_PREFIX}1", "a", "b"]
    table = columns.build([_raw(m) for m in meta])
    items = [Searchable(Source(vectors), ids.__getitem__, meta.__getitem__,
                        lambda expr: filters.evaluate(expr, table))]

    def got(obj: dict) -> list[str]:
        request = QueryRequest("q", "c", vectors[:1], 3, Filter(obj))
        return execute.execute([request], [vectors[:1]], items, "l2", {})[0].ids[0]
    assert got({"or": [{CANARY_FIELD: True}, {"x": 1}]}) == [ids[0], "a"]
    assert got({"x": {"exists": True}}) == ["a", "b"]
    assert got({"not": {CANARY_FIELD: False}}) == [ids[0], "a", "b"]


# Sealed segments, a fold and the live tail together.

class Log:
    """One partition's messages, sealed into segments as the indexer would seal them."""

    def __init__(self, root: Path, rng: np.random.Generator) -> None:
        self.store = SegmentStore(root)
        self.rng = rng
        self.growing = GrowingSegment(0, 0, DIM, 0.0)
        self.idmap = IdMap()
        self.messages: list[TailMessage] = []
        self.latest: dict[str, tuple[np.ndarray, dict | None] | None] = {}

    def send(self, ids: list[str], delete: bool = False) -> TailMessage:
        vectors = self.rng.standard_normal((len(ids), DIM)).astype(np.float32)
        meta = metadata_rows(self.rng, len(ids))
        payload = (record.encode_deletes(ids, dim=DIM) if delete
                   else record.encode(ids, vectors, metadata=meta))
        msg = TailMessage(0, len(self.messages), record.decode(payload))
        self.messages.append(msg)
        self.growing.append(msg.batch, msg.offset)
        for i, key in enumerate(ids):
            self.latest[key] = None if delete else (vectors[i], meta[i])
        return msg

    def seal(self, factory: str) -> tuple[SegmentRecord, object]:
        sealed = self.growing.seal()
        sid = segment_id(0, sealed.start_offset, sealed.end_offset)
        hides = self.idmap.hides_for(sealed)
        self.idmap.apply(sid, sealed)
        index, factory = build_index(sealed.vectors, metric="l2", index=factory)
        manifest = self.store.write("unit", 0, sealed, index, factory, "l2", hides)
        path = self.store.segment_path("unit", 0, 0, sid)
        rec = SegmentRecord.from_manifest(manifest, path.relative_to(self.store.root))
        self.growing = GrowingSegment(0, sealed.end_offset, DIM, 0.0)
        return rec, segments.load(self.store, rec)

    def live(self) -> dict[str, tuple[np.ndarray, dict | None]]:
        return {k: v for k, v in self.latest.items() if v is not None}


def expected_over(live: dict[str, tuple[np.ndarray, dict | None]], queries: np.ndarray,
                  obj: dict) -> list[list[str]]:
    expr = filters.parse(obj)
    ids = sorted(i for i, (_, m) in live.items() if filters.matches(expr, m))
    if not ids:
        return [[] for _ in queries]
    scores = exact_scores(np.stack([live[i][0] for i in ids]), queries, "l2")
    order = np.argsort(scores, axis=1, kind="stable")[:, :K]
    return [[ids[j] for j in row] for row in order]


def test_sealed_segments_a_fold_and_the_tail_answer_as_brute_force(tmp_path) -> None:
    rng = np.random.default_rng(11)
    log = Log(tmp_path, rng)
    metrics = SearcherMetrics(CollectorRegistry(), "unit")
    state = ServingState(DIM, [0], metrics,
                         fold=FoldConfig("l2", min_segments=2, background=False))
    state.reassigned(state.start_offsets()[1])

    def round_of(n: int) -> list[TailMessage]:
        out = []
        for i in range(n):
            ids = sorted({f"id-{j}" for j in rng.integers(0, 900, 40)})
            out.append(log.send(ids, delete=i % 5 == 4))
        return out

    def check() -> None:
        queries = rng.standard_normal((3, DIM)).astype(np.float32)
        view = state.view()
        for obj in FILTER_CASES:
            request = QueryRequest("q", "unit", queries, K, Filter(obj))
            (answer,) = execute.execute([request], [queries], view.searchables, "l2",
                                        view.positions)
            assert answer.ids == expected_over(log.live(), queries, obj), obj

    for factory in ("HNSW16", "Flat", "HNSW16"):
        state.apply(round_of(12))
        check()  # the rows are in the tail
        state.replace(set(), [log.seal(factory)])
        check()  # now sealed, the tail trimmed
    assert state.folds.settle() == 1  # the two graph segments, folded
    check()
    for _ in range(3):  # the tail grows between searches: its column blocks merge
        state.apply(round_of(3))
        check()
    assert len(state.folds.folds()) == 1
    assert all(item.accepts is not None for item in state.view().searchables)


def test_tail_rows_are_filtered_on_columns_of_their_own_metadata() -> None:
    tail = TailBuffer(DIM)
    meta = [{"n": i, "even": i % 2 == 0} for i in range(6)]
    vectors = np.arange(6 * DIM, dtype=np.float32).reshape(6, DIM)
    tail.append(0, 1, record.decode(record.encode([f"r{i}" for i in range(6)], vectors,
                                                  metadata=meta)))
    tail.trim(0, 1)
    tail.append(0, 2, record.decode(record.encode_deletes(["r2"], dim=DIM)))
    (rows,) = list(tail.sources())
    assert rows.accepts(filters.parse({"even": True})).tolist() == [
        True, False, True, False, True, False, False]
    tail.trim(0, 2)  # the upserts go: only the delete is left
    (rows,) = list(tail.sources())
    assert rows.accepts(filters.parse({"even": {"exists": False}})).tolist() == [True]


def test_an_index_search_through_a_selector_returns_only_chosen_rows() -> None:
    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((2000, DIM)).astype(np.float32)
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(DIM), DIM, 8)
    index.train(vectors)
    index.add(vectors)
    chosen = np.zeros(2000, bool)
    chosen[::13] = True
    queries = rng.standard_normal((4, DIM)).astype(np.float32)
    scores, rows = search.search_selected(Source(vectors, None, index), chosen, queries, 5, "l2",
                                          SearchParams(nprobe=8))
    assert chosen[rows].all()
    truth = np.flatnonzero(chosen)[np.argsort(exact_scores(vectors[chosen], queries, "l2"),
                                              axis=1)[:, :5]]
    assert rows.tolist() == truth.tolist()
    # Fewer chosen rows than a query asks for: the caller must fetch another way.
    few = np.zeros(2000, bool)
    few[3] = True
    assert search.search_selected(Source(vectors, None, index), few, queries, 5, "l2",
                                  SearchParams(nprobe=1)) is None
