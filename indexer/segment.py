"""Segments: their ids, and the append-only per-partition buffer a seal turns into `SealedRows`."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from indexer.errors import InvalidStoredOffset, WrongDimension
from indexer.seal import SegmentStats
from ingest.record import OP_UPSERT

# Small enough that an idle partition costs little, large enough to skip the first few doublings.
_MIN_CAPACITY = 64
# Id slots widen in steps of 8 bytes, so a stream of ever longer ids widens the buffer rarely.
_ID_WIDTH_STEP = 8
# Batch.meta is the decoded (offsets, blob) metadata section, None when the message has none.
_NO_SECTION = object()
_SEGMENT_ID = re.compile(r"p(\d{4,})-(\d{12,})-(\d{12,})")


def segment_id(partition: int, start: int, end: int) -> str:
    """Return the id of the segment covering offsets [start, end) of `partition`."""
    return f"p{partition:04d}-{start:012d}-{end:012d}"


def parse_segment_id(text: str) -> tuple[int, int, int]:
    """Return (partition, start, end) of a segment id; raise ValueError if `text` is not one."""
    match = _SEGMENT_ID.fullmatch(text)
    parts = (int(match[1]), int(match[2]), int(match[3])) if match else None
    # Extra zero padding would give one range two folder names; only the canonical form counts.
    if parts is None or segment_id(*parts) != text or parts[1] >= parts[2]:
        raise ValueError(f"{text!r} is not a segment id such as p0003-000000000100-000000000200")
    return parts


def is_segment_id(text: str) -> bool:
    """Whether `text` is a canonical segment id (see `parse_segment_id`)."""
    try:
        parse_segment_id(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class SealedRows:
    """The rows of one sealed offset range of one partition, deduplicated: latest op per id wins.

    Row i of `ids`, `vectors`, `offsets`, `event_time_ms` and `metadata` is one live upsert;
    `deleted_ids` are the ids whose last op in [start_offset, end_offset) was a delete.
    """

    partition: int
    start_offset: int
    end_offset: int
    ids: np.ndarray  # S{w} fixed-width UTF-8 ids of upserted rows, in offset order
    vectors: np.ndarray  # float32 (rows, dim), C-contiguous
    offsets: np.ndarray  # int64 source Kafka offset of each row
    event_time_ms: np.ndarray  # int64
    metadata: list[bytes]  # JSON object text per row, b"" when the row has none
    deleted_ids: np.ndarray  # S{w}

    @property
    def rows(self) -> int:
        """Number of live rows (upserts) in the range."""
        return int(self.ids.shape[0])

    @property
    def dim(self) -> int:
        """Vector dimension."""
        return int(self.vectors.shape[1])

    @property
    def held_bytes(self) -> int:
        """Bytes the vectors keep allocated: all of a growing buffer they are a view of."""
        base = self.vectors.base
        return max(self.vectors.nbytes, base.nbytes if isinstance(base, np.ndarray) else 0)


class GrowingSegment:
    """Every row of the messages at offsets [start_offset, end_offset) of one partition.

    Buffers are numpy arrays grown by doubling; deletes are kept as rows (with a zero vector)
    until `seal()` resolves each id to its last op. `created_at` is the caller's monotonic
    clock reading, so age is computed against the caller's `now` and tests stay deterministic.
    """

    def __init__(self, partition: int, start_offset: int, dim: int, created_at: float) -> None:
        if dim < 1:
            raise WrongDimension(f"dim must be >= 1, got {dim}")
        if start_offset < 0:
            raise InvalidStoredOffset(f"start offset {start_offset} is negative")
        self.partition = int(partition)
        self.start_offset = int(start_offset)
        self.dim = int(dim)
        self.created_at = float(created_at)
        self._end = self.start_offset
        self._rows = 0
        self._messages = 0
        self._skipped = 0
        self._ids = np.zeros(0, "S8")
        self._vectors = np.zeros((0, self.dim), np.float32)
        self._ops = np.zeros(0, np.uint8)
        self._offsets = np.zeros(0, np.int64)
        self._times = np.zeros(0, np.int64)
        # Row i's metadata is _meta[_meta_end[i-1]:_meta_end[i]]: one blob, no object per row.
        self._meta_end = np.zeros(0, np.int64)
        self._meta = bytearray()

    def __repr__(self) -> str:
        return (f"GrowingSegment(partition={self.partition}, offsets=[{self.start_offset}, "
                f"{self._end}), rows={self._rows}, messages={self._messages})")

    @property
    def end_offset(self) -> int:
        """The offset after the last message seen; start_offset while none was seen."""
        return self._end

    @property
    def rows(self) -> int:
        """Rows buffered, upserts and deletes alike, before deduplication."""
        return self._rows

    @property
    def messages(self) -> int:
        """Messages seen: appended and skipped."""
        return self._messages

    @property
    def skipped(self) -> int:
        """Messages seen that went to the dead-letter topic instead."""
        return self._skipped

    @property
    def nbytes(self) -> int:
        """Bytes the buffers hold allocated (capacity, not just used rows): the memory cost."""
        arrays = (self._ids, self._vectors, self._ops, self._offsets, self._times, self._meta_end)
        return sum(a.nbytes for a in arrays) + len(self._meta)

    def stats(self, now: float) -> SegmentStats:
        """What the seal policies look at, with the age measured against `now`."""
        age = max(0.0, now - self.created_at)
        return SegmentStats(self._rows, self._messages, self.nbytes, age)

    def append(self, batch: Any, offset: int) -> None:
        """Add every row of the message at `offset`; offsets may skip forward, never go back."""
        self._check_offset(offset)
        n = len(batch)
        vectors = batch.vectors
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise WrongDimension(f"offset {offset}: vectors have shape {vectors.shape}, "
                                 f"the segment's dim is {self.dim}")
        ids = batch.ids
        meta_ends, blob = _raw_metadata(batch, n)
        self._reserve(n, ids.dtype.itemsize)
        rows = slice(self._rows, self._rows + n)
        self._ids[rows] = ids
        self._vectors[rows] = vectors
        self._ops[rows] = batch.ops
        self._offsets[rows] = offset
        self._times[rows] = batch.event_time_ms
        self._meta_end[rows] = meta_ends + len(self._meta)
        self._meta += blob
        self._rows += n
        self._messages += 1
        self._end = offset + 1

    def skip(self, offset: int) -> None:
        """Account for a dead-lettered message: it is covered by this segment but adds no row."""
        self._check_offset(offset)
        self._messages += 1
        self._skipped += 1
        self._end = offset + 1

    def seal(self) -> SealedRows:
        """Deduplicate (last op per id wins); the segment is left as it was.

        The sealed vectors are read-only. Where every buffered row is a live upsert they are
        the buffer's first rows themselves, not a copy: appends only ever write past them.
        """
        n = self._rows
        ids = self._ids[:n]
        if n:
            # np.unique keeps each value's first index; on the reversed array that is the last op.
            _, first_reversed = np.unique(ids[::-1], return_index=True)
            last = np.sort(n - 1 - first_reversed)
        else:
            last = np.zeros(0, np.intp)
        upsert = self._ops[last] == OP_UPSERT
        live, dead = last[upsert], last[~upsert]
        # `live` is sorted and unique, so n of them are rows 0..n-1: a view saves copying them.
        vectors = self._vectors[:n] if len(live) == n else self._vectors[live]
        vectors.flags.writeable = False
        return SealedRows(
            partition=self.partition,
            start_offset=self.start_offset,
            end_offset=self._end,
            ids=_trim(ids[live]),
            vectors=vectors,
            offsets=self._offsets[live],
            event_time_ms=self._times[live],
            metadata=self._metadata_rows(live),
            deleted_ids=_trim(ids[dead]),
        )

    def _check_offset(self, offset: int) -> None:
        if offset < self._end:
            seen = "start offset" if self._messages == 0 else "next offset"
            raise InvalidStoredOffset(
                f'partition="{self.partition}" offset="{offset}" is before the segment\'s '
                f"{seen} {self._end}"
            )

    def _reserve(self, n: int, id_width: int) -> None:
        """Make room for n more rows and ids of id_width bytes."""
        if id_width > self._ids.dtype.itemsize:
            width = -(-id_width // _ID_WIDTH_STEP) * _ID_WIDTH_STEP
            self._ids = self._ids.astype(f"S{width}")
        need = self._rows + n
        capacity = len(self._ops)
        if need <= capacity:
            return
        capacity = max(need, 2 * capacity, _MIN_CAPACITY)
        for name in ("_ids", "_vectors", "_ops", "_offsets", "_times", "_meta_end"):
            old = getattr(self, name)
            new = np.empty((capacity, *old.shape[1:]), old.dtype)
            new[: self._rows] = old[: self._rows]
            setattr(self, name, new)

    def _metadata_rows(self, rows: np.ndarray) -> list[bytes]:
        """The raw JSON bytes of the given buffered rows, b"" for rows without metadata."""
        if not self._meta:
            return [b""] * len(rows)
        ends = self._meta_end[rows].tolist()
        starts = np.where(rows > 0, self._meta_end[np.maximum(rows - 1, 0)], 0).tolist()
        with memoryview(self._meta) as blob:
            return [blob[a:b].tobytes() for a, b in zip(starts, ends, strict=True)]


def _raw_metadata(batch: Any, n: int) -> tuple[np.ndarray, bytes]:
    """Each row's metadata end within one blob, and the blob: as sent when the batch has it."""
    section = getattr(batch, "meta", _NO_SECTION)
    if section is _NO_SECTION:
        return _reserialised(batch, n)
    if section is None:
        return np.zeros(n, np.int64), b""
    offsets, blob = section
    bounds = np.asarray(offsets, np.int64)
    return bounds[1:] - bounds[0], bytes(blob[bounds[0] : bounds[-1]])


def _reserialised(batch: Any, n: int) -> tuple[np.ndarray, bytes]:
    """The same, for a batch that only offers parsed metadata: compact JSON per row."""
    parts = []
    for i in range(n):
        value = batch.metadata(i)
        text = "" if value is None else json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        parts.append(text.encode("utf-8"))
    return np.cumsum([len(p) for p in parts], dtype=np.int64), b"".join(parts)


def _trim(ids: np.ndarray) -> np.ndarray:
    """A copy of ids as S{w} with w the longest id's length, at least 1."""
    if not len(ids):
        return np.zeros(0, "S1")
    raw = np.ascontiguousarray(ids).view(np.uint8).reshape(len(ids), -1)
    used = np.flatnonzero(raw.any(axis=0))
    width = int(used[-1]) + 1 if len(used) else 1
    return ids.astype(f"S{width}")
