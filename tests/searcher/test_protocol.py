"""The query protocol codec: round trips, every refusal with its code and message, fuzzing."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from searcher import protocol
from searcher.errors import ERROR_CODES, QueryError
from searcher.protocol import decode_reply, decode_request, encode_reply, encode_request
from searcher.query import Consistency, Filter, QueryAnswer, QueryRequest
from tests.support.wire import DIM, NAME, request, wire


def refusal(fields, dim: int = DIM) -> QueryError:
    """The QueryError that decoding `fields` must raise."""
    with pytest.raises(QueryError) as caught:
        decode_request(NAME, fields, dim=dim)
    return caught.value


def assert_same(a: QueryRequest, b: QueryRequest) -> None:
    """Equal requests: the same float32 vectors and every other field equal."""
    np.testing.assert_array_equal(a.vectors, b.vectors)
    assert a.vectors.dtype == b.vectors.dtype == np.float32
    for field in dataclasses.fields(QueryRequest):
        if field.name != "vectors":
            assert getattr(a, field.name) == getattr(b, field.name), field.name


def test_keys_are_hash_tagged_per_collection() -> None:
    assert protocol.queue_key(NAME) == "sv:{products@v4}:q"
    assert protocol.reply_key(NAME, "a1") == "sv:{products@v4}:r:a1"
    assert protocol.done_key("products", "a1") == "sv:{products}:done:a1"


def test_encoded_fields_are_the_documented_ones() -> None:
    fields = encode_request(request(filter=Filter({"color": ("red",), "size": (1, 2)}),
                                    consistency=Consistency("bounded", bound_ms=250),
                                    with_metadata=True, sent_at_ms=1700000000123.25))
    assert {k: v for k, v in fields.items() if k != "vectors"} == {
        "v": b"1", "id": b"req-1", "reply": b"sv:{products@v4}:r:req-1", "k": b"5",
        "dim": b"3", "n": b"2", "consistency": b'{"level":"bounded","bound_ms":250}',
        "timeout_ms": b"5000", "meta": b"1", "filter": b'{"color":"red","size":{"in":[1,2]}}',
        "sent_ms": b"1700000000123.250"}
    assert fields["vectors"] == np.arange(6, dtype="<f4").tobytes()


@pytest.mark.parametrize("changes", [
    {},
    {"consistency": Consistency("strong"), "timeout_ms": 1},
    {"consistency": Consistency("bounded", bound_ms=0), "with_metadata": True},
    {"consistency": Consistency("session", offsets={0: 41, 1023: 2**63 - 1})},
    {"consistency": Consistency("session", offsets={})},
    {"filter": Filter({"a": (None,), "b": (True, 1.5, "x"), "c": (-(2**70),)})},
    {"sent_at_ms": 1700000000123.5, "timeout_ms": 60000, "k": 1000},
    {"vectors": np.full((1024, DIM), -1.5, dtype=np.float32), "k": 1},
    {"request_id": "A-z_0.9:" + "x" * 56},
])
def test_request_round_trip(changes) -> None:
    sent = request(**changes, reply_key=protocol.reply_key(NAME, changes.get("request_id",
                                                                               "req-1")))
    fields = {k.encode(): v for k, v in encode_request(sent).items()}
    assert_same(decode_request(NAME, fields, dim=DIM), sent)


def test_defaults_for_optional_fields() -> None:
    got = decode_request(NAME, wire(consistency=None, timeout_ms=None, meta=None), dim=DIM)
    assert (got.consistency, got.timeout_ms, got.with_metadata, got.filter, got.sent_at_ms) == (
        Consistency("eventual"), 5000, False, None, None)
    assert decode_request(NAME, wire(filter=b"{}"), dim=DIM).filter is None


def test_unknown_fields_are_ignored_and_str_fields_accepted() -> None:
    fields = {**wire(), b"future": b"x", b"\xff\xfe": b"y"}
    assert decode_request(NAME, fields, dim=DIM).request_id == "req-1"
    as_text = {k.decode(): v for k, v in wire().items()}
    assert decode_request(NAME, as_text, dim=DIM).k == 5


MALFORMED = [
    ({"v": None}, "field 'v': protocol version must be '1', got nothing (it is required)"),
    ({"v": b"2"}, "field 'v': protocol version must be '1', got b'2'"),
    ({"id": None}, "field 'id': must match [A-Za-z0-9_.:-]{1,64}, got nothing (it is required)"),
    ({"id": b"a b"}, "field 'id': must match [A-Za-z0-9_.:-]{1,64}, got b'a b'"),
    ({"id": b"x" * 65}, "field 'id': must match [A-Za-z0-9_.:-]{1,64}, got "
                        + repr(b"x" * 40) + "..."),
    ({"reply": b"sv:{other}:r:req-1"},
     "field 'reply': must be 'sv:{products@v4}:r:req-1', got b'sv:{other}:r:req-1'"),
    ({"reply": None},
     "field 'reply': must be 'sv:{products@v4}:r:req-1', got nothing (it is required)"),
    ({"k": b"five"}, "field 'k': must be a decimal integer, got b'five'"),
    ({"k": b" 5"}, "field 'k': must be a decimal integer, got b' 5'"),
    ({"k": None}, "field 'k': must be a decimal integer, got nothing (it is required)"),
    ({"n": b"0"}, "field 'n': must be 1..1024, got 0"),
    ({"n": b"1025"}, "field 'n': must be 1..1024, got 1025"),
    ({"dim": b"0"}, "field 'dim': must be 1..65536, got 0"),
    ({"dim": b"3.0"}, "field 'dim': must be a decimal integer, got b'3.0'"),
    ({"vectors": b"\x00" * 23},
     "field 'vectors': must be n*dim*4 = 24 bytes of float32 (at most 67108864), got 23"),
    ({"vectors": None},
     "field 'vectors': must be n*dim*4 = 24 bytes of float32 (at most 67108864), got nothing"),
    ({"n": b"1024", "dim": b"65536"}, "field 'vectors': must be n*dim*4 = 268435456 bytes of "
                                      "float32 (at most 67108864), got 24"),
    ({"filter": b"[1]"},
     "field 'filter': must be a JSON object: {\"field\": value}, {\"field\": {\"op\": value}}, "
     "{\"and\": [filters]}, {\"or\": [filters]} or {\"not\": filter}"),
    ({"filter": b"{"}, "field 'filter': is not valid JSON (Expecting property name enclosed in "
                       "double quotes: line 1 column 2 (char 1))"),
    ({"filter": b"\xff"}, "field 'filter': is not valid JSON ('utf-8' codec can't decode byte "
                          "0xff in position 0: invalid start byte)"),
    ({"filter": b"[" * 70000}, "field 'filter': is 70000 bytes, over the limit of 65536"),
    ({"filter": b"[" * 60000}, "field 'filter': is not valid JSON (maximum recursion depth "
                               "exceeded while decoding a JSON array from a unicode string)"),
    ({"filter": b'{"a": {"x": 1}}'},
     "field 'filter': 'a': unknown operator 'x'; expected one of eq, ne, in, not_in, gt, gte, "
     "lt, lte, exists"),
    ({"filter": b'{"a": {"in": []}}'},
     "field 'filter': 'a': 'in' needs a list of 1..1024 values"),
    ({"filter": b'{"a": [1, 2]}'},
     "field 'filter': 'a': values must be strings, finite numbers, booleans or null"),
    ({"filter": b'{"a": NaN}'},
     "field 'filter': 'a': values must be strings, finite numbers, booleans or null"),
    ({"filter": b'{"": 1}'}, "field 'filter': field names must be non-empty strings"),
    ({"filter": json.dumps({f"f{i}": i for i in range(65)}).encode()},
     "field 'filter': has 65 fields, over the limit of 64"),
    ({"consistency": b'"strong"'},
     "field 'consistency': must be a JSON object with a string \"level\""),
    ({"consistency": b'{"level": "linear"}'},
     "field 'consistency': unknown level 'linear'; expected eventual, bounded, session or strong"),
    ({"consistency": b'{"level": "strong", "bound_ms": 5}'},
     "field 'consistency': level 'strong' takes no other key, got ['bound_ms']"),
    ({"consistency": b'{"level": "bounded"}'},
     "field 'consistency': level 'bounded' takes 'bound_ms', got []"),
    ({"consistency": b'{"level": "bounded", "bound_ms": -1}'},
     "field 'consistency': bound_ms must be an integer 0..86400000"),
    ({"consistency": b'{"level": "bounded", "bound_ms": true}'},
     "field 'consistency': bound_ms must be an integer 0..86400000"),
    ({"consistency": b'{"level": "session", "offsets": {"01": 3}}'},
     "field 'consistency': offsets must map partitions (\"0\"..\"1023\") to offsets >= 0"),
    ({"consistency": b'{"level": "session", "offsets": {"1024": 3}}'},
     "field 'consistency': offsets must map partitions (\"0\"..\"1023\") to offsets >= 0"),
    ({"consistency": b'{"level": "session", "offsets": {"0": -1}}'},
     "field 'consistency': offsets must map partitions (\"0\"..\"1023\") to offsets >= 0"),
    ({"timeout_ms": b"0"}, "field 'timeout_ms': must be 1..60000, got 0"),
    ({"timeout_ms": b"60001"}, "field 'timeout_ms': must be 1..60000, got 60001"),
    ({"meta": b"yes"}, "field 'meta': must be '0' or '1', got b'yes'"),
    ({"sent_ms": b"-5"}, "field 'sent_ms': must be unix milliseconds, got b'-5'"),
    ({"sent_ms": b"1e12"}, "field 'sent_ms': must be unix milliseconds, got b'1e12'"),
]


@pytest.mark.parametrize(("changes", "message"), MALFORMED)
def test_malformed_requests_name_the_field(changes, message) -> None:
    error = refusal(wire(**changes))
    assert (error.code, error.message) == ("malformed", message)


@pytest.mark.parametrize("fields", [None, b"v=1", ["v", "1"], {b"v": 1}, {1: b"1"}])
def test_a_request_that_is_not_a_map_of_bytes_is_malformed(fields) -> None:
    error = refusal(fields)
    assert (error.code, error.message) == (
        "malformed", "a request is a map of field names to values, all bytes")


def test_wrong_dim() -> None:
    error = refusal(wire(), dim=4)
    assert (error.code, error.message) == (
        "wrong_dim", "query vectors have dim 3, collection products@v4 has dim 4")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_not_finite_names_the_query(bad) -> None:
    vectors = np.zeros((3, DIM), dtype=np.float32)
    vectors[2, 1] = bad
    error = refusal({k.encode(): v for k, v in encode_request(request(vectors=vectors)).items()})
    assert (error.code, error.message) == ("not_finite", "query vector 2 holds NaN or Inf")


@pytest.mark.parametrize("k", [0, -3, 1001, 10**18 - 1])
def test_bad_k(k) -> None:
    error = refusal(wire(k=str(k).encode()))
    assert (error.code, error.message) == ("bad_k", f"k must be 1..1000, got {k}")


def test_structure_is_checked_before_meaning() -> None:
    # wrong dim, NaN and bad k together with a broken filter: the parse error wins.
    fields = wire(k=b"0", dim=b"6", n=b"1", filter=b"nope")
    assert refusal(fields).message.startswith("field 'filter': is not valid JSON")


def test_request_id_is_read_only_when_well_formed() -> None:
    assert protocol.request_id(wire()) == "req-1"
    assert protocol.request_id({b"id": b"bad id"}) is None
    assert protocol.request_id({}) is None
    assert protocol.request_id("garbage") is None


ANSWER = QueryAnswer(ids=[["a", "b"], []], scores=[[0.5, 1.25], []],
                     metadata=[[{"color": "red"}, None], []], offsets={0: 41, 3: 7},
                     timings_ms={"search": 1.23456})


def test_ok_reply_round_trip_with_metadata() -> None:
    body = encode_reply("req-1", ANSWER, with_metadata=True, timings_ms={"total": 2})
    assert json.loads(body) == {
        "v": 1, "id": "req-1", "ok": True, "ids": [["a", "b"], []],
        "scores": [[0.5, 1.25], []], "metadata": [[{"color": "red"}, None], []],
        "offsets": {"0": 41, "3": 7}, "timings_ms": {"search": 1.235, "total": 2.0}}
    rid, answer = decode_reply(body)
    assert rid == "req-1"
    assert answer == QueryAnswer(ANSWER.ids, ANSWER.scores, ANSWER.metadata, {0: 41, 3: 7},
                                 {"search": 1.235, "total": 2.0})


def test_ok_reply_leaves_metadata_out_unless_asked() -> None:
    doc = json.loads(encode_reply("r", ANSWER))
    assert "metadata" not in doc
    assert decode_reply(encode_reply("r", ANSWER))[1].metadata is None
    no_meta = QueryAnswer([["a"]], [[1.0]])
    assert json.loads(encode_reply("r", no_meta, with_metadata=True))["metadata"] == [[None]]


@pytest.mark.parametrize("code", sorted(ERROR_CODES))
def test_error_reply_round_trip_for_every_code(code) -> None:
    body = encode_reply("req-9", QueryError(code, "what went wrong"))
    assert json.loads(body) == {"v": 1, "id": "req-9", "ok": False,
                                "error": {"code": code, "message": "what went wrong"}}
    rid, error = decode_reply(body)
    assert (rid, error.code, error.message) == ("req-9", code, "what went wrong")


def test_an_unknown_error_code_is_kept_in_an_internal_error() -> None:
    body = b'{"v":1,"id":"x","ok":false,"error":{"code":"overloaded","message":"busy"}}'
    error = decode_reply(body)[1]
    assert (error.code, error.message) == ("internal", "overloaded: busy")


def test_scores_json_cannot_carry_are_refused() -> None:
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        encode_reply("r", QueryAnswer([["a"]], [[float("nan")]]))


@pytest.mark.parametrize(("body", "message"), [
    (b"nope", "reply is not JSON"),
    (b'{"v":2,"id":"x","ok":true}', "reply lacks v=1, a string id or a boolean ok"),
    (b'{"v":1,"id":"x","ok":false}', "error reply lacks error.code and error.message strings"),
    (b'{"v":1,"id":"x","ok":true,"ids":[["a"]],"scores":[["b"]]}',
     "reply scores is not a list of lists of the right type"),
    (b'{"v":1,"id":"x","ok":true,"ids":[["a"]],"scores":[[1,2]]}',
     "reply ids, scores and metadata differ in shape"),
    (b'{"v":1,"id":"x","ok":true,"ids":[],"scores":[],"offsets":{"p":1}}',
     "reply offsets or timings_ms are not maps of numbers"),
])
def test_replies_that_break_the_protocol_raise_value_error(body, message) -> None:
    with pytest.raises(ValueError, match=message):
        decode_reply(body)
