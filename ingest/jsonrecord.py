"""Keyed JSON records: one row per Kafka message, in a form any Kafka producer can write.

FORMAT (docs/protocol.md, "Keyed JSON records")
  key    the row's id: 1..256 bytes of UTF-8, no NUL; required
  value  null (a tombstone: delete the id), or a UTF-8 JSON object, optionally led by JSON
         whitespace, of at most MAX_JSON_BYTES, with these fields and no others:
           op             "upsert" (default) or "delete"
           vector         dim finite numbers that fit float32; required by an upsert
           metadata       an object or null, at most 64 KiB as compact JSON
           model_version  a string equal to the collection's (default "")
           event_time_ms  an integer in int64 (default: the Kafka record's timestamp)
         A delete ignores vector and metadata. A field may appear once; NaN and Infinity are
         not JSON and are refused.
A value is told from a binary batch (ingest/record.py) by its first byte past whitespace, `{`.
Every error is a RecordError whose reason is in REASONS and whose message starts "json: ".
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from ingest.errors import RecordError
from ingest.record import (
    MAX_ID_BYTES,
    MAX_METADATA_BYTES,
    OP_DELETE,
    OP_UPSERT,
    Batch,
    metadata_bytes,
    one_row,
)

# A valid record holds at most 65536 numbers (about 25 characters each, written in full) and
# 64 KiB of metadata (up to six times longer when escaped): 4 MiB is room for any of them,
# and bounds what a hostile value costs to parse.
MAX_JSON_BYTES = 4 * 1024 * 1024
FIELDS = ("op", "vector", "metadata", "model_version", "event_time_ms")
OPS = {"upsert": OP_UPSERT, "delete": OP_DELETE}
REASONS = frozenset({"oversize", "bad_id", "bad_json", "bad_op", "wrong_dim", "non_finite",
                     "bad_metadata", "model_version"})

_LEADS_JSON = re.compile(rb"[ \t\r\n]*\{")
_NUMBER = (int, float)  # exactly these: bool is an int subclass, and is not a number here
_INT64 = (-(2**63), 2**63 - 1)
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


class _Refused(ValueError):
    """A parse hook's refusal, carried out of the JSON scanner with its reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _no_constant(name: str) -> None:
    raise _Refused("non_finite", f"{name} is not a finite number (nor JSON)")


def _object(pairs: list[tuple[str, Any]]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):  # a later value would silently replace an earlier one
        names = [k for k, _ in pairs]
        twice = next(k for i, k in enumerate(names) if k in names[:i])
        raise _Refused("bad_json", f"field {twice!r} appears more than once")
    return obj


_DECODER = json.JSONDecoder(object_pairs_hook=_object, parse_constant=_no_constant)


def is_json(value: bytes | bytearray | memoryview) -> bool:
    """True when a message value is a JSON record: its first byte past whitespace is `{`."""
    return _LEADS_JSON.match(value) is not None


def check_key(key: bytes | None) -> bytes:
    """The record's key as an id, or RecordError("bad_id") if it cannot be one."""
    if key is None:
        raise RecordError("bad_id", "json: the record has no key; its key is the row's id")
    if not 1 <= len(key) <= MAX_ID_BYTES:
        raise RecordError("bad_id", f"json: key is {len(key)} bytes, an id is 1..{MAX_ID_BYTES}")
    if b"\0" in key:
        raise RecordError("bad_id", "json: key contains a NUL byte")
    try:
        key.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordError("bad_id", f"json: key is not UTF-8: {exc}") from None
    return bytes(key)


def decode_valid(key: bytes | None, value: bytes | bytearray | memoryview | None, *, dim: int,
                 model_version: str, timestamp_ms: int | None = None) -> Batch:
    """Decode and check one keyed record (null value = tombstone) into a Batch of one row.

    `timestamp_ms` (the Kafka record's timestamp) is the event time when the value names none.
    """
    id_ = check_key(key)
    default_time = time.time_ns() // 1_000_000 if timestamp_ms is None else timestamp_ms
    if value is None:
        return one_row(id_, op=OP_DELETE, vector=None, event_time_ms=default_time,
                       metadata=b"", dim=dim, model_version=model_version)
    fields = _parse(value)
    if (unknown := sorted(set(fields) - set(FIELDS))):
        raise RecordError("bad_json", f"json: unknown field {unknown[0]!r} "
                                      f"(fields: {', '.join(FIELDS)})")
    mv = fields.get("model_version", "")
    if not isinstance(mv, str):
        raise RecordError("bad_json", f"json: model_version is {_kind(mv)}, not a string")
    if mv != model_version:
        raise RecordError("model_version",
                          f"json: model_version is {mv!r}, the collection expects "
                          f"{model_version!r}")
    op = _op(fields.get("op", "upsert"))
    event_time_ms = _event_time(fields.get("event_time_ms"), default_time)
    if op == OP_DELETE:
        return one_row(id_, op=op, vector=None, event_time_ms=event_time_ms, metadata=b"",
                       dim=dim, model_version=model_version)
    if "vector" not in fields:
        raise RecordError("wrong_dim", f"json: an upsert needs a vector of {dim} numbers")
    return one_row(id_, op=op, vector=_vector(fields["vector"], dim), event_time_ms=event_time_ms,
                   metadata=_metadata(fields.get("metadata")), dim=dim,
                   model_version=model_version)


def _parse(value: bytes | bytearray | memoryview) -> dict:
    if len(value) > MAX_JSON_BYTES:
        raise RecordError("oversize",
                          f"json: value is {len(value)} bytes, a JSON record is at most "
                          f"{MAX_JSON_BYTES}")
    try:
        parsed = _DECODER.decode(str(value, "utf-8"))
    except _Refused as exc:
        raise RecordError(exc.reason, f"json: {exc}") from None
    except UnicodeDecodeError as exc:
        raise RecordError("bad_json", f"json: value is not UTF-8: {exc}") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise RecordError("bad_json", f"json: value is not JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise RecordError("bad_json", f"json: value is {_kind(parsed)}, not an object")
    return parsed


def _op(op: Any) -> int:
    if not isinstance(op, str) or op not in OPS:
        raise RecordError("bad_op", f'json: op is {op!r}, must be "upsert" or "delete"')
    return OPS[op]


def _event_time(value: Any, default: int) -> int:
    if value is None:
        return default
    if type(value) is not int or not _INT64[0] <= value <= _INT64[1]:
        raise RecordError("bad_json",
                          f"json: event_time_ms is {_short(value)}, not an integer in int64")
    return value


@np.errstate(over="ignore")  # a number past float32 becomes Inf, then refused as non_finite
def _vector(value: Any, dim: int) -> np.ndarray:
    if not isinstance(value, list):
        raise RecordError("wrong_dim", f"json: vector is {_kind(value)}, not an array of "
                                       f"{dim} numbers")
    if len(value) != dim:
        raise RecordError("wrong_dim", f"json: vector has {len(value)} numbers, "
                                       f"the collection's dim is {dim}")
    if (bad := next((i for i, x in enumerate(value) if type(x) not in _NUMBER), None)) is not None:
        raise RecordError("bad_json", f"json: vector[{bad}] is {_kind(value[bad])}, not a number")
    try:
        wide = np.array(value, dtype=np.float64)
    except OverflowError:  # an integer beyond any float
        wide = np.array([float("inf") if _huge(x) else 0.0 for x in value])
    narrow = wide.astype(np.float32)
    if not np.isfinite(narrow).all():
        bad = int(np.argmin(np.isfinite(narrow)))
        raise RecordError("non_finite", f"json: vector[{bad}] = {_short(value[bad])} does not "
                                        "fit a float32")
    return narrow


def _huge(x: int | float) -> bool:
    try:
        float(x)
    except OverflowError:
        return True
    return False


def _metadata(value: Any) -> bytes:
    if value is None:
        return b""
    if not isinstance(value, dict):
        raise RecordError("bad_metadata", f"json: metadata is {_kind(value)}, not an object")
    blob = metadata_bytes([value], 1)[0]
    if len(blob) > MAX_METADATA_BYTES:
        raise RecordError("oversize", f"json: metadata is {len(blob)} bytes as compact JSON, "
                                      f"at most {MAX_METADATA_BYTES}")
    return blob


def _kind(value: Any) -> str:
    """A JSON value's type as JSON names it, with its article: "an array", "null"."""
    names = {type(None): "null", bool: "a boolean", int: "a number", float: "a number",
             str: "a string", list: "an array", dict: "an object"}
    return names.get(type(value), type(value).__name__)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def encode(*, vector: np.ndarray | None = None, op: str = "upsert",
           metadata: Mapping[str, Any] | None = None, model_version: str = "",
           event_time_ms: int | None = None) -> bytes:
    """The JSON value of one row (its key, the id, travels beside it); `decode_valid` checks it.

    Vectors are written as the exact decimal of each float32, so they decode bit for bit.
    """
    fields: dict[str, Any] = {"op": op} if op != "upsert" else {}
    if vector is not None:
        with np.errstate(over="ignore"):  # past float32 is Inf, refused just below
            narrow = np.asarray(vector, dtype=np.float32)
        if not np.isfinite(narrow).all():
            raise RecordError("non_finite", "json: vector holds NaN or Inf")
        fields["vector"] = narrow.astype(np.float64).tolist()
    if metadata is not None:
        fields["metadata"] = metadata
    if model_version:
        fields["model_version"] = model_version
    if event_time_ms is not None:
        fields["event_time_ms"] = int(event_time_ms)
    try:
        return _ENCODER.encode(fields).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:
        raise RecordError("bad_metadata", f"json: metadata is not JSON: {exc}") from None
