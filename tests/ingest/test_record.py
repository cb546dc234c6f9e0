"""Unit tests of the record wire format: layout, round trips, zero copy and every error reason."""

from __future__ import annotations

import struct
import time

import numpy as np
import pytest

from ingest import record
from ingest.errors import RecordError
from ingest.record import decode, decode_valid, encode, encode_deletes, validate

# encode(["a"], [[1.0]], model_version="v1", event_time_ms=5), laid out by hand.
GOLDEN = bytes.fromhex(
    "535642" "01" "00" "00" "0100" "01000000" "01000000" "0200" "7631" "00000000"  # header
    "0000803f" "0500000000000000" "00" "61" "0000"  # row: vector, event time, op, id, padding
)
# Two rows of dim 2, metadata on row 0 only: rows at 24 (20 bytes each), offsets at 64, blob at 76.
TWO = encode(["a", "b"], [[1.0, 2.0], [3.0, 4.0]], metadata=[{"k": 1}, None],
             model_version="v1", event_time_ms=7)


def header(*, magic=b"SVB", version=1, flags=0, reserved=0, id_width=1, dim=1, n=1, mv=b"v1"):
    """A header with any field set by hand, padded to its row block like a real one."""
    fixed = struct.pack("<3sBBBHIIH", magic, version, flags, reserved, id_width, dim, n, len(mv))
    return fixed + mv + bytes(-(len(fixed) + len(mv)) % 8)


def patched(payload: bytes, offset: int, data: bytes) -> bytes:
    """A copy of payload with data written over it at offset."""
    out = bytearray(payload)
    out[offset : offset + len(data)] = data
    return bytes(out)


def raised(call, *args, **kwargs) -> RecordError:
    """The RecordError that call(*args, **kwargs) must raise."""
    with pytest.raises(RecordError) as caught:
        call(*args, **kwargs)
    return caught.value


def ids_of(batch) -> list[str]:
    """A batch's ids as str."""
    return [raw.decode() for raw in batch.ids.tolist()]


def test_encode_writes_the_documented_layout():
    assert encode(["a"], [[1.0]], model_version="v1", event_time_ms=5) == GOLDEN
    assert TWO[64:] == struct.pack("<3I", 0, 7, 7) + b'{"k":1}'


@pytest.mark.parametrize(("dim", "id_width", "nbytes"),
                         [(1, 1, 16), (1, 3, 16), (1, 4, 20), (2, 256, 276), (384, 16, 1564)])
def test_row_nbytes_pads_rows_to_four_bytes(dim, id_width, nbytes):
    assert record.row_nbytes(dim, id_width) == nbytes


@pytest.mark.parametrize(("dim", "id_width"), [(0, 1), (65537, 1), (1, 0), (1, 257)])
def test_row_nbytes_refuses_out_of_range_shapes(dim, id_width):
    assert raised(record.row_nbytes, dim, id_width).reason == "bad_header"


@pytest.mark.parametrize("n", [1, 1000])
@pytest.mark.parametrize("dim", [1, 384])
def test_round_trip_keeps_every_field_exactly(n, dim):
    rng = np.random.default_rng(n * 1000 + dim)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    ids = [f"商品-{i}-é" if i % 2 else f"id{i}" for i in range(n)]
    ops = (rng.random(n) < 0.3).astype(np.uint8)
    times = rng.integers(-(2**62), 2**62, n)
    meta = [{"row": i, "tag": "ü", "x": [1.5, None]} if i % 3 else None for i in range(n)]
    payload = encode(ids, vectors, ops=ops, metadata=meta, model_version="m@v3",
                     event_time_ms=times)
    batch = decode_valid(payload, dim=dim, model_version="m@v3")
    up = ops == record.OP_UPSERT
    assert (len(batch), batch.dim, batch.model_version) == (n, dim, "m@v3")
    assert ids_of(batch) == ids
    assert np.array_equal(batch.vectors[up].view(np.uint32), vectors[up].view(np.uint32))
    assert not batch.vectors[~up].any()
    assert np.array_equal(batch.ops, ops) and np.array_equal(batch.upserts_mask, up)
    assert np.array_equal(batch.event_time_ms, times)
    assert batch.metadata_list() == meta
    assert batch.metadata(-1) == meta[-1]


def test_decode_reads_bytes_bytearray_and_memoryview_alike():
    for payload in (TWO, bytearray(TWO), memoryview(TWO)):
        batch = decode(payload)
        assert ids_of(batch) == ["a", "b"] and batch.metadata_list() == [{"k": 1}, None]
        assert batch.vectors.tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_decode_is_one_frombuffer_over_the_payload_without_copies():
    batch = decode(TWO)
    assert batch.rows.base is TWO
    for view in (batch.vectors, batch.ids, batch.ops, batch.event_time_ms):
        assert view.base is batch.rows
    assert np.shares_memory(batch.vectors, np.frombuffer(TWO, np.uint8))
    writable = bytearray(TWO)
    live = decode(writable)
    writable[24:28] = struct.pack("<f", 9.0)
    assert live.vectors[0, 0] == 9.0


def test_deletes_carry_zero_vectors_and_ignore_their_values():
    batch = decode_valid(encode_deletes(["x", "y"], dim=3, model_version="v"), dim=3,
                         model_version="v")
    assert batch.ops.tolist() == [1, 1] and not batch.upserts_mask.any()
    assert batch.vectors.tolist() == [[0.0] * 3] * 2
    mixed = decode(encode(["a", "b"], [[np.nan], [2.0]], ops=[1, 0]))
    assert mixed.vectors.tolist() == [[0.0], [2.0]]


def test_event_time_defaults_to_now_and_broadcasts_one_value():
    before = time.time_ns() // 1_000_000
    stamped = decode(encode(["a", "b"], [[1.0], [2.0]])).event_time_ms.tolist()
    after = time.time_ns() // 1_000_000
    assert before <= stamped[0] == stamped[1] <= after
    assert decode(encode(["a", "b"], [[1.0], [2.0]], event_time_ms=42)).event_time_ms.tolist() \
        == [42, 42]


@pytest.mark.parametrize(("payload", "reason", "message"), [
    (b"", "truncated", "payload is 0 bytes, a header is 18"),
    (b"SVB\x01", "truncated", "payload is 4 bytes, a header is 18"),
    (GOLDEN[:20], "truncated", "payload is 20 bytes, its header is 24"),
    (GOLDEN[:-1], "truncated", "payload is 39 bytes, the row block ends at 40"),
    (TWO[:70], "truncated", "payload is 70 bytes, offsets end at 76"),
    (TWO[:-1], "truncated", "metadata blob is 6 bytes, offsets say 7"),
    (b"SX", "bad_magic", "payload starts with b'SX', not b'SVB'"),
    (b"XVB" + GOLDEN[3:], "bad_magic", "payload starts with b'XVB', not b'SVB'"),
    (patched(GOLDEN, 3, b"\x02"), "unknown_version", "version 2 (supported: 1)"),
    (b"SVB\x07", "unknown_version", "version 7 (supported: 1)"),
    (header(flags=2) + GOLDEN[24:], "bad_header", "flags 2, reserved 0: unknown bits"),
    (header(reserved=1) + GOLDEN[24:], "bad_header", "flags 0, reserved 1: unknown bits"),
    (header(id_width=0), "bad_header", "id_width 0 must be 1..256, dim 1 1..65536"),
    (header(id_width=257), "bad_header", "id_width 257 must be 1..256, dim 1 1..65536"),
    (header(dim=0), "bad_header", "id_width 1 must be 1..256, dim 0 1..65536"),
    (header(dim=65537), "bad_header", "id_width 1 must be 1..256, dim 65537 1..65536"),
    (header(mv=b"v" * 65), "bad_header", "model_version is 65 bytes, at most 64"),
    (GOLDEN + b"\0", "trailing_bytes", "1 bytes follow the last row"),
    (TWO + b"x", "trailing_bytes", "metadata blob is 8 bytes, offsets say 7"),
    (patched(TWO, 64, struct.pack("<I", 1)), "bad_metadata",
     "metadata offsets must start at 0 and never decrease"),
    (patched(TWO, 68, struct.pack("<I", 8)), "bad_metadata",
     "metadata offsets must start at 0 and never decrease"),
])
def test_decode_names_each_structural_fault(payload, reason, message):
    error = raised(decode, payload)
    assert (error.reason, error.message) == (reason, message)


def test_decode_refuses_a_model_version_that_is_not_utf8():
    error = raised(decode, header(mv=b"\xff\xfe") + GOLDEN[24:])
    assert error.reason == "bad_header" and error.message.startswith("model_version is not UTF-8")


def test_decode_refuses_oversize_payloads_and_metadata():
    too_big = bytes(record.MAX_PAYLOAD_BYTES + 1)
    assert raised(decode, too_big).message == "payload is 67108865 bytes, at most 67108864"
    blob = b"{" + b" " * 65536 + b"}"
    payload = header(flags=1) + GOLDEN[24:] + struct.pack("<2I", 0, len(blob)) + blob
    error = raised(decode, payload)
    assert (error.reason, error.message) == ("oversize",
                                             "row 0: metadata is 65538 bytes, max 65536")


def test_decode_keeps_empty_batches_and_validate_refuses_them():
    batch = decode(header(n=0))
    assert len(batch) == 0 and batch.vectors.shape == (0, 1)
    assert raised(validate, batch, dim=1, model_version="v1").reason == "empty"


@pytest.mark.parametrize(("dim", "model_version", "reason", "message"), [
    (4, "v1", "wrong_dim", "batch has dim 1, the collection expects 4"),
    (1, "v2", "model_version", "batch has 'v1', the collection expects 'v2'"),
])
def test_validate_checks_the_collection(dim, model_version, reason, message):
    error = raised(decode_valid, GOLDEN, dim=dim, model_version=model_version)
    assert (error.reason, error.message) == (reason, message)


def row_at(row: int, field_offset: int) -> int:
    """Offset in TWO of a field of a row."""
    return 24 + 20 * row + field_offset  # rows of TWO: dim 2, id width 1


@pytest.mark.parametrize(("offset", "data", "reason", "message"), [
    (row_at(1, 0), struct.pack("<f", np.nan), "non_finite", "row 1 (id 'b'): NaN or Inf"),
    (row_at(0, 4), struct.pack("<f", -np.inf), "non_finite", "row 0 (id 'a'): NaN or Inf"),
    (row_at(1, 16), b"\x02", "bad_op", "row 1: op is 2, must be 0 or 1"),
    (row_at(1, 17), b"\x00", "bad_id", "row 1: id is empty"),
    (row_at(0, 17), b"\xff", "bad_id", "row 0: id is not UTF-8"),
    (76, b"[", "bad_metadata", "row 0: metadata is not JSON: Expecting ',' delimiter: line 1 "
                               "column 5 (char 4)"),
])
def test_validate_names_the_faulty_row(offset, data, reason, message):
    error = raised(decode_valid, patched(TWO, offset, data), dim=2, model_version="v1")
    assert (error.reason, error.message) == (reason, message)


def test_non_finite_values_in_delete_rows_are_ignored():
    deletes = encode_deletes(["a"], dim=1, model_version="v1")
    assert decode_valid(patched(deletes, 24, struct.pack("<f", np.nan)), dim=1, model_version="v1")


def test_id_checks_see_nul_bytes_inside_and_utf8_split_across_slots():
    two = encode(["ab", "cd"], [[1.0], [2.0]], model_version="v1")  # rows of 16 bytes
    inner_nul = raised(decode_valid, patched(two, 24 + 13, b"\0"), dim=1, model_version="v1")
    assert inner_nul.message == "row 0: id contains a NUL byte"
    # "é" is c3 a9: cut across the end of row 0's slot and the start of row 1's, each half is
    # invalid on its own even though the two slots' bytes concatenated decode cleanly.
    split = patched(patched(two, 24 + 13, b"a\xc3"), 24 + 16 + 13, b"\xa9a")
    error = raised(decode_valid, split, dim=1, model_version="v1")
    assert (error.reason, error.message) == ("bad_id", "row 0: id is not UTF-8")


@pytest.mark.parametrize(("blob", "message"), [
    (b"[1]", "row 0: metadata is a JSON list"),
    (b"{\"a\":NaN}", "row 0: metadata is not JSON: NaN is not JSON"),
    (b"\xff\xfe{}", "row 0: metadata is not JSON: 'utf-8' codec can't decode byte 0xff in "
                    "position 0: invalid start byte"),
])
def test_metadata_is_parsed_lazily_and_refused_when_not_a_json_object(blob, message):
    payload = header(flags=1) + GOLDEN[24:] + struct.pack("<2I", 0, len(blob)) + blob
    batch = decode(payload)
    assert raised(batch.metadata, 0).message.startswith(message)
    assert raised(validate, batch, dim=1, model_version="v1").reason == "bad_metadata"


def test_deeply_nested_metadata_is_refused_not_crashing():
    blob = b"[" * 60000
    batch = decode(header(flags=1) + GOLDEN[24:] + struct.pack("<2I", 0, len(blob)) + blob)
    assert raised(batch.metadata, 0).reason == "bad_metadata"
    with pytest.raises(IndexError):
        batch.metadata(1)


@pytest.mark.parametrize(("kwargs", "reason", "message"), [
    ({"ids": []}, "empty", "a batch needs at least one row"),
    ({"ids": "ab"}, "bad_id", "ids must be a sequence of ids, not one id"),
    ({"ids": [7]}, "bad_id", "ids must be a sequence of str or bytes"),
    ({"ids": ["a", ""]}, "bad_id", "row 1: id is empty"),
    ({"ids": ["a\0"]}, "bad_id", "row 0: id contains a NUL byte"),
    ({"ids": ["a", "\ud800"]}, "bad_id", "row 1: id is not UTF-8"),
    ({"ids": ["é" * 129]}, "oversize", "row 0: id is 258 bytes, at most 256"),
    ({"vectors": [[1.0, 2.0]]}, "wrong_dim", "vectors have shape (1, 2), need (2, 1..65536)"),
    ({"vectors": [1.0, 2.0]}, "wrong_dim", "vectors have shape (2,), need (2, 1..65536)"),
    ({"vectors": [["x"], ["y"]]}, "wrong_dim", "vectors are not a float array: could not convert "
                                               "string to float: 'x'"),
    ({"vectors": [[1.0], [1e39]]}, "non_finite", "row 1 (id 'b'): NaN or Inf"),
    ({"ops": [0, 2]}, "bad_op", "row 1: op is 2, must be 0..1"),
    ({"ops": [-1, 0]}, "bad_op", "row 0: op is -1, must be 0..1"),
    ({"ops": [0.0, 1.0]}, "bad_op", "op: 1 or 2 ints wanted, not float64(2,)"),
    ({"event_time_ms": [1, 2, 3]}, "bad_header",
     "event_time_ms: 1 or 2 ints wanted, not int64(3,)"),
    ({"model_version": "v" * 65}, "bad_header", "model_version must be a str of at most 64 "
                                                "UTF-8 bytes"),
    ({"metadata": [{}]}, "bad_metadata", "1 metadata entries for 2 rows"),
    ({"metadata": [None, [1]]}, "bad_metadata", "row 1: metadata is a list"),
    ({"metadata": [{"a": {1, 2}}, None]}, "bad_metadata",
     "row 0: metadata is not JSON: Object of type set is not JSON serializable"),
    ({"metadata": [None, {"x": float("nan")}]}, "bad_metadata",
     "row 1: metadata is not JSON: Out of range float values are not JSON compliant"),
    ({"metadata": [{"x": "y" * 65536}, None]}, "oversize",
     "row 0: metadata is 65544 bytes, max 65536"),
])
def test_encode_refuses_what_a_worker_would_refuse(kwargs, reason, message):
    args = {"ids": ["a", "b"], "vectors": [[1.0], [2.0]], "model_version": "v1", **kwargs}
    error = raised(encode, **args)
    assert (error.reason, error.message) == (reason, message)


def test_encode_accepts_the_limits_exactly():
    batch = decode_valid(encode(["é" * 128], [[1.0]], model_version="v" * 64), dim=1,
                         model_version="v" * 64)
    assert batch.ids.dtype.itemsize == 256 and ids_of(batch) == ["é" * 128]


def test_encode_refuses_a_payload_over_the_limit():
    error = raised(encode_deletes, [f"{i}" for i in range(257)], dim=65536)
    assert (error.reason, error.message) == ("oversize",
                                             "payload is 67374116 bytes, at most 67108864")


def test_encode_takes_numpy_id_arrays():
    for ids in (np.array(["x", "ÿz"]), np.array([b"x", "ÿz".encode()])):
        assert ids_of(decode(encode(ids, [[1.0], [2.0]]))) == ["x", "ÿz"]
