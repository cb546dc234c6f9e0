"""Keyed JSON records: decoding, every refusal with its reason, and mixing with binary batches."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME, TIMESTAMP_NOT_AVAILABLE, Message

from ingest import jsonrecord, message, record
from ingest.errors import RecordError
from ingest.partition import partition_of
from ingest.record import OP_DELETE, OP_UPSERT
from ingest.spec import CollectionSpec

DIM = 3
SPEC = CollectionSpec("c", dim=DIM, partitions=8)


def decode(value: bytes | None, key: bytes | None = b"user-42", *, model_version: str = "",
           timestamp_ms: int | None = 1000):
    return jsonrecord.decode_valid(key, value, dim=DIM, model_version=model_version,
                                   timestamp_ms=timestamp_ms)


def test_an_upsert_decodes_into_one_row_of_the_binary_batch_structure():
    batch = decode(b' \n\t{"vector": [1, 2.5, -3e-3], "metadata": {"lang": "en", "n": [1]},'
                   b' "model_version": "", "event_time_ms": 1700000000000}')
    like = record.decode(record.encode(["user-42"], np.zeros((1, DIM))))
    assert batch.rows.dtype == like.rows.dtype
    assert len(batch) == 1 and batch.dim == DIM and batch.model_version == ""
    assert batch.ids.tolist() == [b"user-42"]
    assert batch.ops.tolist() == [OP_UPSERT]
    assert batch.vectors.tolist() == [np.float32([1, 2.5, -3e-3]).tolist()]
    assert batch.event_time_ms.tolist() == [1_700_000_000_000]
    assert batch.metadata(0) == {"lang": "en", "n": [1]}
    assert batch.metadata_list() == [{"lang": "en", "n": [1]}]


def test_defaults_op_upsert_no_metadata_and_the_kafka_timestamp_as_event_time():
    batch = decode(b'{"vector": [0, 0, 1], "metadata": null}', timestamp_ms=1234)
    assert batch.ops.tolist() == [OP_UPSERT]
    assert batch.metadata(0) is None and batch.meta is None
    assert batch.event_time_ms.tolist() == [1234]


def test_a_delete_and_a_tombstone_delete_the_key_and_ignore_vector_and_metadata():
    explicit = decode(b'{"op": "delete", "vector": "ignored", "metadata": 7}', timestamp_ms=5)
    tombstone = decode(None, timestamp_ms=6)
    for batch, when in ((explicit, 5), (tombstone, 6)):
        assert batch.ids.tolist() == [b"user-42"]
        assert batch.ops.tolist() == [OP_DELETE]
        assert batch.vectors.tolist() == [[0.0, 0.0, 0.0]]
        assert batch.metadata(0) is None
        assert batch.event_time_ms.tolist() == [when]
    versioned = decode(None, model_version="v4")
    assert versioned.model_version == "v4"


def test_a_versioned_collection_needs_its_model_version():
    ok = decode(b'{"vector": [1, 2, 3], "model_version": "v4"}', model_version="v4")
    assert ok.model_version == "v4"
    with pytest.raises(RecordError, match="json: model_version is '', the collection expects "
                                          "'v4'"):
        decode(b'{"vector": [1, 2, 3]}', model_version="v4")


BIG_METADATA = b'{"vector": [1, 2, 3], "metadata": {"s": "' + b"x" * 65530 + b'"}}'

MALFORMED = [
    # (value, key, reason, message)
    (b'{"vector": [1, 2, 3]}', None, "bad_id",
     "json: the record has no key; its key is the row's id"),
    (None, None, "bad_id", "json: the record has no key; its key is the row's id"),
    (b'{"op": "delete"}', b"", "bad_id", "json: key is 0 bytes, an id is 1..256"),
    (b'{"op": "delete"}', b"k" * 257, "bad_id", "json: key is 257 bytes, an id is 1..256"),
    (b'{"op": "delete"}', b"a\0b", "bad_id", "json: key contains a NUL byte"),
    (b'{"op": "delete"}', b"\xff", "bad_id", "json: key is not UTF-8: 'utf-8' codec can't "
     "decode byte 0xff in position 0: invalid start byte"),
    (b'{"vector": [1, 2]}', b"k", "wrong_dim", "json: vector has 2 numbers, the collection's "
     "dim is 3"),
    (b'{"vector": [1, 2, 3, 4]}', b"k", "wrong_dim", "json: vector has 4 numbers, the "
     "collection's dim is 3"),
    (b'{"metadata": {}}', b"k", "wrong_dim", "json: an upsert needs a vector of 3 numbers"),
    (b'{"vector": null}', b"k", "wrong_dim", "json: vector is null, not an array of 3 numbers"),
    (b'{"vector": "1,2,3"}', b"k", "wrong_dim",
     "json: vector is a string, not an array of 3 numbers"),
    (b'{"vector": [1, true, 3]}', b"k", "bad_json", "json: vector[1] is a boolean, not a number"),
    (b'{"vector": [1, 2, "3"]}', b"k", "bad_json", "json: vector[2] is a string, not a number"),
    (b'{"vector": [1, [2], 3]}', b"k", "bad_json", "json: vector[1] is an array, not a number"),
    (b'{"vector": [1, NaN, 3]}', b"k", "non_finite", "json: NaN is not a finite number (nor JSON)"),
    (b'{"vector": [1, 2, -Infinity]}', b"k", "non_finite",
     "json: -Infinity is not a finite number (nor JSON)"),
    (b'{"vector": [1, 2, 3.5e38]}', b"k", "non_finite",
     "json: vector[2] = 3.5e+38 does not fit a float32"),
    (b'{"vector": [1e999, 2, 3]}', b"k", "non_finite",
     "json: vector[0] = inf does not fit a float32"),
    (b'{"vector": [1, 2, 1' + b"0" * 400 + b"]}", b"k", "non_finite",
     "json: vector[2] = 1000000000000000000000000000000000000... does not fit a float32"),
    (b'{"op": "insert", "vector": [1, 2, 3]}', b"k", "bad_op",
     "json: op is 'insert', must be \"upsert\" or \"delete\""),
    (b'{"op": 1}', b"k", "bad_op", "json: op is 1, must be \"upsert\" or \"delete\""),
    (b'{"vectors": [1, 2, 3]}', b"k", "bad_json", "json: unknown field 'vectors' (fields: op, "
     "vector, metadata, model_version, event_time_ms)"),
    (b'{"op": "delete", "op": "upsert"}', b"k", "bad_json",
     "json: field 'op' appears more than once"),
    (b'{"vector": [1, 2, 3], "metadata": {"a": 1, "a": 2}}', b"k", "bad_json",
     "json: field 'a' appears more than once"),
    (b'{"vector": [1, 2, 3]', b"k", "bad_json",
     "json: value is not JSON: Expecting ',' delimiter: line 1 column 21 (char 20)"),
    (b'{"vector": [1, 2, 3]} {}', b"k", "bad_json",
     "json: value is not JSON: Extra data: line 1 column 23 (char 22)"),
    (b'{"v": "\xff"}', b"k", "bad_json", "json: value is not UTF-8: 'utf-8' codec can't decode "
     "byte 0xff in position 7: invalid start byte"),
    (b'{"a":[' * 100_000, b"k", "bad_json", "json: value is not JSON: maximum recursion depth "
     "exceeded while decoding a JSON object from a unicode string"),
    (b'{"vector": [1, 2, 3], "metadata": [1]}', b"k", "bad_metadata",
     "json: metadata is an array, not an object"),
    (b'{"vector": [1, 2, 3], "metadata": "tag"}', b"k", "bad_metadata",
     "json: metadata is a string, not an object"),
    (BIG_METADATA, b"k", "oversize",
     "json: metadata is 65538 bytes as compact JSON, at most 65536"),
    (b'{"vector": [1, 2, 3], "model_version": 4}', b"k", "bad_json",
     "json: model_version is a number, not a string"),
    (b'{"vector": [1, 2, 3], "model_version": "v9"}', b"k", "model_version",
     "json: model_version is 'v9', the collection expects ''"),
    (b'{"vector": [1, 2, 3], "event_time_ms": 1.5}', b"k", "bad_json",
     "json: event_time_ms is 1.5, not an integer in int64"),
    (b'{"vector": [1, 2, 3], "event_time_ms": 9223372036854775808}', b"k", "bad_json",
     "json: event_time_ms is 9223372036854775808, not an integer in int64"),
    (b'{"vector": [1, 2, 3], "event_time_ms": true}', b"k", "bad_json",
     "json: event_time_ms is True, not an integer in int64"),
    (b" " * (4 * 1024 * 1024) + b"{}", b"k", "oversize",
     "json: value is 4194306 bytes, a JSON record is at most 4194304"),
]


@pytest.mark.parametrize(("value", "key", "reason", "text"), MALFORMED,
                         ids=[f"{i}-{case[2]}" for i, case in enumerate(MALFORMED)])
def test_each_malformed_record_is_refused_with_its_reason(value, key, reason, text):
    with pytest.raises(RecordError) as err:
        decode(value, key)
    assert (err.value.reason, err.value.message) == (reason, text)
    assert reason in jsonrecord.REASONS


def test_metadata_at_the_budget_is_accepted():
    fits = b'{"vector": [1, 2, 3], "metadata": {"s": "' + b"x" * (65536 - 8) + b'"}}'
    assert len(decode(fits).metadata(0)["s"]) == 65536 - 8


def test_encode_writes_each_float32_exactly_and_decodes_bit_for_bit():
    rng = np.random.default_rng(3)
    special = np.float32([np.finfo(np.float32).max, -np.finfo(np.float32).tiny, 1e-45, -0.0,
                          0.1, 1 / 3])
    for vector in [*rng.standard_normal((50, 6)).astype(np.float32), special]:
        value = jsonrecord.encode(vector=vector, metadata={"é": [1, None]}, model_version="m",
                                  event_time_ms=7)
        batch = jsonrecord.decode_valid(b"k", value, dim=6, model_version="m")
        assert batch.vectors[0].tobytes() == vector.tobytes()
        assert batch.metadata(0) == {"é": [1, None]}
        assert batch.event_time_ms.tolist() == [7]
    assert json.loads(jsonrecord.encode(op="delete")) == {"op": "delete"}


def test_encode_refuses_what_json_cannot_hold():
    with pytest.raises(RecordError) as err:
        jsonrecord.encode(vector=[1.0, float("nan")])
    assert (err.value.reason, err.value.message) == ("non_finite", "json: vector holds NaN or Inf")
    with pytest.raises(RecordError) as err:
        jsonrecord.encode(vector=[1e39])
    assert err.value.reason == "non_finite"
    with pytest.raises(RecordError) as err:
        jsonrecord.encode(vector=[1.0], metadata={"x": object()})
    assert err.value.reason == "bad_metadata"


def test_is_json_looks_at_the_first_byte_past_json_whitespace():
    assert jsonrecord.is_json(b"{}") and jsonrecord.is_json(b" \t\r\n{")
    assert jsonrecord.is_json(memoryview(b"{")) and jsonrecord.is_json(bytearray(b"{"))
    assert not jsonrecord.is_json(b"SVB\x01") and not jsonrecord.is_json(b"")
    assert not jsonrecord.is_json(b"[{}]") and not jsonrecord.is_json(b"\xef\xbb\xbf{")
    assert not jsonrecord.is_json(b"\x0b{")  # vertical tab is not JSON whitespace


def home(key: str) -> int:
    return partition_of(key, SPEC.partitions, SPEC.partitioner)


def test_a_topic_of_both_formats_decodes_into_one_structure():
    binary = record.encode(["a", "b"], np.float32([[1, 2, 3], [4, 5, 6]]),
                           metadata=[{"x": 1}, None], event_time_ms=9)
    batches = [
        message.decode_valid(binary, b"a", spec=SPEC, partition=3),  # binary: its key is a hint
        message.decode_valid(b'{"vector": [7, 8, 9], "metadata": {"y": 2}}', b"c", spec=SPEC,
                             partition=home("c"), timestamp_ms=11),
        message.decode_valid(None, b"a", spec=SPEC, partition=home("a"), timestamp_ms=12),
    ]
    rows = [(i.decode(), int(op), v.tolist(), int(t), b.metadata(r))
            for b in batches for r, (i, op, v, t) in enumerate(zip(
                b.ids.tolist(), b.ops, b.vectors, b.event_time_ms, strict=True))]
    assert rows == [("a", OP_UPSERT, [1.0, 2.0, 3.0], 9, {"x": 1}),
                    ("b", OP_UPSERT, [4.0, 5.0, 6.0], 9, None),
                    ("c", OP_UPSERT, [7.0, 8.0, 9.0], 11, {"y": 2}),
                    ("a", OP_DELETE, [0.0, 0.0, 0.0], 12, None)]
    assert {b.rows.dtype.names for b in batches} == {("vector", "event_time_ms", "op", "id")}


def test_a_keyed_record_on_another_partition_than_its_keys_is_refused():
    wrong = (home("user-42") + 1) % SPEC.partitions
    for value in (b'{"vector": [1, 2, 3]}', None):
        with pytest.raises(RecordError) as err:
            message.decode_valid(value, b"user-42", spec=SPEC, partition=wrong)
        assert err.value.reason == "wrong_partition"
        assert err.value.message == (
            f"json: key 'user-42' belongs to partition {home('user-42')} under the collection's "
            f"'kafka' partitioner, not {wrong} (docs/protocol.md lists each client's "
            "partitioner setting)")
    legacy = CollectionSpec("c", dim=DIM, partitions=8, partitioner="streamvec")
    p = partition_of("user-42", 8, "streamvec")
    assert p != home("user-42")
    assert len(message.decode_valid(None, b"user-42", spec=legacy, partition=p)) == 1


def test_a_value_of_neither_format_and_a_binary_failure_keep_their_reasons():
    with pytest.raises(RecordError) as err:
        message.decode_valid(b"[1, 2, 3]", b"k", spec=SPEC, partition=0)
    assert (err.value.reason, err.value.message) == (
        "bad_magic", "payload starts with b'[1,', not b'SVB': neither a binary batch nor a "
                     "JSON object")
    with pytest.raises(RecordError) as err:
        message.decode_valid(b"", b"k", spec=SPEC, partition=0)
    assert err.value.reason == "truncated"
    wide = record.encode(["a"], np.zeros((1, DIM + 1)))
    with pytest.raises(RecordError) as err:
        message.decode_valid(wide, None, spec=SPEC, partition=0)
    assert err.value.reason == "wrong_dim"
    assert message.REASONS == record.REASONS | jsonrecord.REASONS | {"wrong_partition"}


def test_decode_kafka_reads_value_key_partition_and_timestamp_of_a_consumed_message():
    def consumed(value, key, timestamp):
        return Message(topic="sv.c", partition=home("k"), offset=0, key=key, value=value,
                       timestamp=timestamp)

    batch = message.decode_kafka(consumed(b'{"vector": [1, 2, 3]}', b"k",
                                          (TIMESTAMP_CREATE_TIME, 4242)), SPEC)
    assert batch.event_time_ms.tolist() == [4242]
    before = time.time_ns() // 1_000_000
    batch = message.decode_kafka(consumed(None, b"k", (TIMESTAMP_NOT_AVAILABLE, -1)), SPEC)
    assert batch.ops.tolist() == [OP_DELETE] and batch.event_time_ms[0] >= before
