"""Wire format of one Kafka message: a versioned binary batch of rows of one collection.

FORMAT version 1, little-endian (invariant 1 in docs/architecture.md)
  header  magic b"SVB" | version u8 = 1 | flags u8 (bit0 = metadata section; others 0) |
          reserved u8 = 0 | id_width u16 (1..256) | dim u32 (1..65536) | n u32 (rows) |
          m u16 (<= 64) | model_version (m bytes of UTF-8) | zeros up to R, a multiple of 8
  rows    at R, n rows of row_nbytes(dim, id_width) bytes, one `numpy.frombuffer` with a
          structured dtype: vector float32 x dim @0 (zeros in a delete row) | event_time_ms
          int64 ms @4*dim | op u8 (0 upsert, 1 delete) @4*dim+8 | id @4*dim+9, id_width bytes
          of UTF-8, NUL-padded, not empty, no NUL inside | zeros to a multiple of 4 bytes
  meta    only when flags bit0: (n+1) u32 offsets (offsets[0] = 0, non-decreasing,
          offsets[n] = blob length), then the blob. Row i's metadata is
          blob[offsets[i]:offsets[i+1]]: empty = none, else a UTF-8 JSON object (no NaN or
          Infinity) of at most 64 KiB.
Nothing may follow the last section; a payload is at most 64 MiB. Readers ignore padding
and a delete row's vector. Every error is a RecordError whose reason is in REASONS.
"""

from __future__ import annotations

import functools
import json
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ingest.errors import RecordError

FORMAT_VERSION = 1
OP_UPSERT = 0
OP_DELETE = 1
MAX_ID_BYTES = 256
MAX_METADATA_BYTES = 64 * 1024
MAX_MODEL_VERSION_BYTES = 64
MAX_DIM = 65536
MAX_PAYLOAD_BYTES = 64 * 1024 * 1024
REASONS = frozenset({"truncated", "bad_magic", "unknown_version", "bad_header", "trailing_bytes",
                     "oversize", "wrong_dim", "non_finite", "bad_id", "bad_op", "bad_metadata",
                     "model_version", "empty"})

_MAGIC = b"SVB"
_HEADER = struct.Struct("<3sBBBHIIH")
_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


@functools.lru_cache(maxsize=256)
def _row_dtype(dim: int, id_width: int) -> np.dtype:
    return np.dtype({"names": ["vector", "event_time_ms", "op", "id"],
                     "formats": [("<f4", (dim,)), "<i8", "u1", f"S{id_width}"],
                     "offsets": [0, 4 * dim, 4 * dim + 8, 4 * dim + 9],
                     "itemsize": (4 * dim + 9 + id_width + 3) & ~3})


def row_nbytes(dim: int, id_width: int) -> int:
    """Bytes per row for a dim and an id slot width, for producers sizing messages."""
    if not (1 <= id_width <= MAX_ID_BYTES and 1 <= dim <= MAX_DIM):
        raise RecordError("bad_header", f"id_width {id_width} must be 1..256, dim {dim} 1..65536")
    return _row_dtype(dim, id_width).itemsize


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Batch:
    """A decoded batch: zero-copy views over the payload's row block plus lazy metadata."""

    model_version: str
    rows: np.ndarray
    meta: tuple[np.ndarray, memoryview] | None = None  # (offsets, blob)

    ids = property(lambda self: self.rows["id"], doc="Ids, NUL-padded bytes (S{id_width}).")
    ops = property(lambda self: self.rows["op"], doc="uint8 op per row, OP_UPSERT or OP_DELETE.")
    event_time_ms = property(lambda self: self.rows["event_time_ms"], doc="int64 ms per row.")
    vectors = property(lambda self: self.rows["vector"], doc="(n, dim) float32 view, strided.")
    upserts_mask = property(lambda self: self.rows["op"] == OP_UPSERT, doc="True for upserts.")
    dim = property(lambda self: self.rows.dtype["vector"].shape[0], doc="Floats per vector.")

    def __len__(self) -> int:
        return len(self.rows)

    def metadata(self, i: int) -> dict | None:
        """Row i's metadata, parsed on each call; None when the row has none."""
        i = range(len(self.rows))[i]  # IndexError out of range, as a list would
        if self.meta is None or self.meta[0][i] == self.meta[0][i + 1]:
            return None
        raw = self.meta[1][self.meta[0][i] : self.meta[0][i + 1]]
        try:  # json.loads would take NaN and Infinity, which are not JSON
            value = json.loads(str(raw, "utf-8"), parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise RecordError("bad_metadata", f"row {i}: metadata is not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise RecordError("bad_metadata", f"row {i}: metadata is a JSON {type(value).__name__}")
        return value

    def metadata_list(self) -> list[dict | None]:
        """Every row's metadata, parsed now."""
        n = len(self.rows)
        return [None] * n if self.meta is None else [self.metadata(i) for i in range(n)]


def _read_header(buf: Any, size: int) -> tuple[int, np.dtype, int, str, int]:
    """Check the header; return flags, row dtype, n, model_version and the row block start."""
    head = bytes(buf[:4])
    if head[:3] != _MAGIC[: len(head)]:
        raise RecordError("bad_magic", f"payload starts with {head[:3]!r}, not {_MAGIC!r}")
    if len(head) == 4 and head[3] != FORMAT_VERSION:
        raise RecordError("unknown_version", f"version {head[3]} (supported: {FORMAT_VERSION})")
    if size < _HEADER.size:
        raise RecordError("truncated", f"payload is {size} bytes, a header is {_HEADER.size}")
    _, _, flags, reserved, id_width, dim, n, mv_len = _HEADER.unpack_from(buf)
    if flags > 1 or reserved:
        raise RecordError("bad_header", f"flags {flags}, reserved {reserved}: unknown bits")
    row_nbytes(dim, id_width)  # checks both ranges
    if mv_len > MAX_MODEL_VERSION_BYTES:
        raise RecordError("bad_header", f"model_version is {mv_len} bytes, at most 64")
    if size < (start := (_HEADER.size + mv_len + 7) & ~7):
        raise RecordError("truncated", f"payload is {size} bytes, its header is {start}")
    mv = buf[_HEADER.size : _HEADER.size + mv_len]
    try:
        return flags, _row_dtype(dim, id_width), n, str(mv, "utf-8"), start
    except UnicodeDecodeError as exc:
        raise RecordError("bad_header", f"model_version is not UTF-8: {exc}") from None


def _metadata_section(buf: Any, size: int, end: int, n: int) -> tuple[np.ndarray, memoryview]:
    if size < (blob_start := end + 4 * (n + 1)):
        raise RecordError("truncated", f"payload is {size} bytes, offsets end at {blob_start}")
    offsets = np.frombuffer(buf, "<u4", count=n + 1, offset=end)
    lengths = np.diff(offsets.astype(np.int64))
    if offsets[0] != 0 or (n and lengths.min() < 0):
        raise RecordError("bad_metadata", "metadata offsets must start at 0 and never decrease")
    if (blob_len := size - blob_start) != offsets[-1]:
        reason = "truncated" if blob_len < offsets[-1] else "trailing_bytes"
        raise RecordError(reason, f"metadata blob is {blob_len} bytes, offsets say {offsets[-1]}")
    if n and lengths.max() > MAX_METADATA_BYTES:
        row = int(np.argmax(lengths))
        raise RecordError("oversize", f"row {row}: metadata is {lengths[row]} bytes, max 65536")
    return offsets, memoryview(buf)[blob_start:]


def decode(payload: bytes | bytearray | memoryview) -> Batch:
    """Parse a payload into a Batch of zero-copy views; raise RecordError if it is malformed."""
    buf = payload if isinstance(payload, bytes | bytearray) else memoryview(payload).cast("B")
    if (size := len(buf)) > MAX_PAYLOAD_BYTES:
        raise RecordError("oversize", f"payload is {size} bytes, at most {MAX_PAYLOAD_BYTES}")
    flags, dtype, n, model_version, start = _read_header(buf, size)
    if size < (end := start + n * dtype.itemsize):
        raise RecordError("truncated", f"payload is {size} bytes, the row block ends at {end}")
    rows = np.frombuffer(buf, dtype, count=n, offset=start)
    if flags:
        return Batch(model_version, rows, _metadata_section(buf, size, end, n))
    if size != end:
        raise RecordError("trailing_bytes", f"{size - end} bytes follow the last row")
    return Batch(model_version, rows)


def one_row(id_: bytes, *, op: int, vector: np.ndarray | None, event_time_ms: int,
            metadata: bytes, dim: int, model_version: str) -> Batch:
    """A Batch of one row, for a format that carries one row per message (ingest/jsonrecord.py).

    The caller has checked every field: the id (1..256 bytes of UTF-8, no NUL), the vector's
    length and finiteness, the metadata JSON and its size.
    """
    rows = np.zeros(1, _row_dtype(dim, len(id_)))
    if vector is not None and op == OP_UPSERT:
        rows["vector"][0] = vector
    rows["event_time_ms"], rows["op"], rows["id"] = event_time_ms, op, id_
    if not metadata:
        return Batch(model_version, rows)
    return Batch(model_version, rows, (np.array([0, len(metadata)], "<u4"), memoryview(metadata)))


def _check_ids(rows: np.ndarray) -> None:
    w = rows.dtype["id"].itemsize
    raw = np.frombuffer(rows["id"].tobytes(), np.uint8)  # the slots, copied to be contiguous
    present = raw != 0
    # A non-NUL byte after a NUL is fine at the start of a slot, an embedded NUL elsewhere.
    starts = np.flatnonzero(present[1:] & ~present[:-1]) + 1
    broken = np.concatenate([starts[starts % w != 0] // w, np.flatnonzero(~present[::w])])
    if broken.size:
        row = int(broken.min())
        what = "contains a NUL byte" if present[row * w : row * w + w].any() else "is empty"
        raise RecordError("bad_id", f"row {row}: id {what}")
    if raw.max() >= 0x80:
        # A NUL after each slot stops a sequence cut at an id's end pairing with the next id.
        spaced = np.pad(raw.reshape(len(rows), w), ((0, 0), (0, 1)))
        try:
            spaced.tobytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RecordError("bad_id", f"row {exc.start // (w + 1)}: id is not UTF-8") from None


def validate(batch: Batch, *, dim: int, model_version: str) -> None:
    """Check a decoded batch against its collection: dim, model_version, then every row."""
    if batch.dim != dim:
        raise RecordError("wrong_dim", f"batch has dim {batch.dim}, the collection expects {dim}")
    if batch.model_version != model_version:
        raise RecordError("model_version", f"batch has {batch.model_version!r}, "
                                           f"the collection expects {model_version!r}")
    if not len(rows := batch.rows):
        raise RecordError("empty", "batch has no rows")
    if (ops := rows["op"]).max() > OP_DELETE:
        row = int(np.argmax(ops > OP_DELETE))
        raise RecordError("bad_op", f"row {row}: op is {ops[row]}, must be 0 or 1")
    _check_ids(rows)
    finite = np.isfinite(rows["vector"])
    if not finite.all() and (broken := ~finite.all(axis=1) & (ops == OP_UPSERT)).any():
        row = int(np.argmax(broken))
        raise RecordError("non_finite", f"row {row} (id {rows['id'][row].decode()!r}): NaN or Inf")
    batch.metadata_list()


def decode_valid(payload: bytes | bytearray | memoryview, *, dim: int, model_version: str) -> Batch:
    """Decode a payload and validate it against its collection."""
    validate(batch := decode(payload), dim=dim, model_version=model_version)
    return batch


def _as_id_bytes(ids: Any) -> np.ndarray:
    """Ids as an S array of UTF-8, refusing those that a NUL-padded slot would silently alter."""
    if isinstance(ids, str | bytes):
        raise RecordError("bad_id", "ids must be a sequence of ids, not one id")
    items = ids.tolist() if isinstance(ids, np.ndarray) else ids
    try:  # a lone surrogate becomes invalid UTF-8, which the id check reports with its row
        encoded = [i if isinstance(i, bytes) else i.encode("utf-8", "surrogatepass") for i in items]
    except AttributeError:
        raise RecordError("bad_id", "ids must be a sequence of str or bytes") from None
    if not encoded:
        raise RecordError("empty", "a batch needs at least one row")
    if (fixed := np.array(encoded, dtype=bytes)).itemsize > MAX_ID_BYTES:  # as wide as the longest
        row, size = next((r, len(b)) for r, b in enumerate(encoded) if len(b) > MAX_ID_BYTES)
        raise RecordError("oversize", f"row {row}: id is {size} bytes, at most 256")
    if b"\0" in b"".join(encoded):
        row = next(r for r, b in enumerate(encoded) if b"\0" in b)
        raise RecordError("bad_id", f"row {row}: id contains a NUL byte")
    return fixed


def _as_ints(values: Any, n: int, reason: str, what: str, high: int | None) -> np.ndarray:
    column = np.asarray(values)  # one value stays 0-d: assigning it to a field broadcasts
    if column.shape not in ((), (n,)) or not np.can_cast(column.dtype, np.int64):
        raise RecordError(reason, f"{what}: 1 or {n} ints wanted, not {column.dtype}{column.shape}")
    if high is not None and (broken := (column < 0) | (column > high)).any():
        row = int(np.argmax(broken))
        raise RecordError(reason, f"row {row}: {what} is {column.flat[row]}, must be 0..{high}")
    return column


def metadata_bytes(metadata: Sequence[Any] | None, n: int) -> list[bytes]:
    """Rows' metadata as JSON bytes (b"" = none; bytes pass, `encode` checks its output)."""
    if metadata is None:
        return []
    if len(items := list(metadata)) != n:
        raise RecordError("bad_metadata", f"{len(items)} metadata entries for {n} rows")
    blobs = []
    for row, item in enumerate(items):  # JSON encoding is per object: nothing to vectorize
        if item is not None and not isinstance(item, (dict, bytes)):
            raise RecordError("bad_metadata", f"row {row}: metadata is a {type(item).__name__}")
        try:
            blobs.append(item if isinstance(item, bytes) else
                         b"" if item is None else _JSON.encode(item).encode("utf-8"))
        except (TypeError, ValueError, RecursionError) as exc:
            raise RecordError("bad_metadata", f"row {row}: metadata is not JSON: {exc}") from None
    return blobs if any(blobs) else []


def _assemble(mv: bytes, columns: tuple, blobs: list[bytes]) -> bytes:
    """Lay out header, row block and metadata; columns are (vectors, times, ops, S ids)."""
    n, dim, id_width = len(columns[3]), columns[0].shape[1], columns[3].itemsize
    rows = np.zeros(n, _row_dtype(dim, id_width))
    rows["vector"], rows["event_time_ms"], rows["op"], rows["id"] = columns
    rows["vector"][rows["op"] == OP_DELETE] = 0
    header = _HEADER.pack(_MAGIC, FORMAT_VERSION, int(bool(blobs)), 0, id_width, dim, n, len(mv))
    meta = [np.cumsum([0, *map(len, blobs)], dtype="<u4").tobytes(), *blobs] if blobs else []
    return b"".join([header, mv, bytes(-(len(header) + len(mv)) % 8), rows.data, *meta])


@np.errstate(over="ignore")  # a float32 overflow becomes Inf, then refused as non_finite
def encode(ids: Any, vectors: Any, *, ops: Any = None, metadata: Sequence[Any] | None = None,
           model_version: str = "", event_time_ms: Any = None) -> bytes:
    """Encode rows of one collection into a payload, refusing anything a worker would refuse."""
    n = len(encoded := _as_id_bytes(ids))
    try:
        vecs = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise RecordError("wrong_dim", f"vectors are not a float array: {exc}") from None
    if vecs.ndim != 2 or len(vecs) != n or not 1 <= vecs.shape[1] <= MAX_DIM:
        raise RecordError("wrong_dim", f"vectors have shape {vecs.shape}, need ({n}, 1..65536)")
    op_column = _as_ints(OP_UPSERT if ops is None else ops, n, "bad_op", "op", OP_DELETE)
    times = _as_ints(time.time_ns() // 1_000_000 if event_time_ms is None else event_time_ms,
                     n, "bad_header", "event_time_ms", None)
    # A lone surrogate goes into the header as invalid UTF-8, which decode then refuses.
    mv = model_version.encode("utf-8", "surrogatepass") if isinstance(model_version, str) else None
    if mv is None or len(mv) > MAX_MODEL_VERSION_BYTES:
        raise RecordError("bad_header", "model_version must be a str of at most 64 UTF-8 bytes")
    payload = _assemble(mv, (vecs, times, op_column, encoded), metadata_bytes(metadata, n))
    decode_valid(payload, dim=vecs.shape[1], model_version=model_version)
    return payload


def encode_deletes(ids: Any, *, dim: int, model_version: str = "",
                   event_time_ms: Any = None) -> bytes:
    """Encode delete rows (all-zero vectors) for ids of a collection of the given dim."""
    zeros = np.broadcast_to(np.float32(0), (len(ids), max(dim, 0)))  # no memory, whatever dim
    return encode(ids, zeros, ops=OP_DELETE, model_version=model_version,
                  event_time_ms=event_time_ms)
