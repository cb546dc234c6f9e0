"""The live tail: rows read from Kafka past the checkpoints, latest op per id, trimmed on swaps."""

# Per partition the buffer keeps every row in offset order (numpy arrays grown by doubling) and
# the row of each id's latest op. A row is alive when it is an upsert and its id's latest op;
# deletes stay as rows so that they keep hiding older sealed rows until a segment covers them.

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ingest.record import OP_UPSERT, Batch
from searcher.search import Source

_MIN_CAPACITY = 64


@dataclass(frozen=True, slots=True)
class TailRows:
    """A partition's tail as a search source, with what turns a row back into an answer."""

    partition: int
    source: Source
    ids: list[bytes]
    meta: list[bytes]

    def id_of(self, row: int) -> str:
        """The id of a row."""
        return self.ids[row].decode("utf-8")

    def metadata(self, row: int) -> dict | None:
        """The metadata of a row, parsed now; None when it has none."""
        raw = self.meta[row]
        return json.loads(raw) if raw else None


class PartitionTail:
    """The tail rows of one partition."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.n = 0
        self.ids: list[bytes] = []
        self.meta: list[bytes] = []
        self.vectors = np.zeros((0, dim), np.float32)
        self.offsets = np.zeros(0, np.int64)
        self.alive = np.zeros(0, bool)
        self.latest: dict[bytes, int] = {}

    def append(self, offset: int, batch: Batch) -> list[bytes]:
        """Add the rows of the message at `offset`; return the ids the tail did not hold yet."""
        n = len(batch)
        self._reserve(n)
        rows = slice(self.n, self.n + n)
        self.vectors[rows] = batch.vectors
        self.offsets[rows] = offset
        upserts = (batch.ops == OP_UPSERT).tolist()
        self.alive[rows] = upserts
        fresh: list[bytes] = []
        for row, key in enumerate(batch.ids.tolist(), start=self.n):
            previous = self.latest.get(key)
            if previous is None:
                fresh.append(key)
            else:
                self.alive[previous] = False
            self.latest[key] = row
            self.ids.append(key)
        self.meta.extend(_raw_metadata(batch))
        self.n += n
        return fresh

    def trim(self, below: int) -> None:
        """Drop the rows at offsets below `below` and rebuild the latest-op map."""
        cut = int(np.searchsorted(self.offsets[: self.n], below, side="left"))
        if cut == 0:
            return
        keep = slice(cut, self.n)
        self.vectors = self.vectors[keep].copy()
        self.offsets = self.offsets[keep].copy()
        self.alive = self.alive[keep].copy()
        self.ids = self.ids[cut:]
        self.meta = self.meta[cut:]
        self.n -= cut
        # Dropped rows were older than every kept one, so each id's latest row survives if any.
        self.latest = {key: row for row, key in enumerate(self.ids)}

    def rows(self, partition: int) -> TailRows:
        """The partition's rows as a search source (views, valid until the next change)."""
        return TailRows(partition, Source(self.vectors[: self.n], ~self.alive[: self.n]),
                        self.ids, self.meta)

    def _reserve(self, n: int) -> None:
        need = self.n + n
        if need <= len(self.offsets):
            return
        capacity = max(need, 2 * len(self.offsets), _MIN_CAPACITY)
        for name in ("vectors", "offsets", "alive"):
            old = getattr(self, name)
            new = np.zeros((capacity, *old.shape[1:]), old.dtype)
            new[: self.n] = old[: self.n]
            setattr(self, name, new)


class TailBuffer:
    """The tail of every partition of a collection."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._parts: dict[int, PartitionTail] = {}

    def append(self, partition: int, offset: int, batch: Batch) -> list[bytes]:
        """Add a decoded message; return the ids new to the partition's tail."""
        part = self._parts.get(partition)
        if part is None:
            part = self._parts[partition] = PartitionTail(self.dim)
        return part.append(offset, batch)

    def trim(self, partition: int, below: int) -> None:
        """Drop the partition's rows at offsets below `below` (a segment covers them now)."""
        if (part := self._parts.get(partition)) is not None:
            part.trim(below)

    def clear(self, partition: int) -> None:
        """Drop every row of a partition."""
        self._parts.pop(partition, None)

    def ids(self, partition: int) -> list[bytes]:
        """The ids with an op in the partition's tail."""
        part = self._parts.get(partition)
        return [] if part is None else list(part.latest)

    def latest(self, partition: int, key: bytes) -> tuple[int, bool] | None:
        """(offset, is an upsert) of the latest tail op on `key`, None if the tail has none."""
        part = self._parts.get(partition)
        row = None if part is None else part.latest.get(key)
        if row is None:
            return None
        return int(part.offsets[row]), bool(part.alive[row])

    def row_count(self) -> int:
        """Rows held, every partition, deletes and superseded rows included."""
        return sum(p.n for p in self._parts.values())

    def sources(self) -> Iterator[TailRows]:
        """Every non-empty partition's rows as a search source."""
        for partition in sorted(self._parts):
            if self._parts[partition].n:
                yield self._parts[partition].rows(partition)


def _raw_metadata(batch: Batch) -> list[bytes]:
    """Each row's metadata JSON as sent (b"" for none), without parsing it."""
    if batch.meta is None:
        return [b""] * len(batch)
    offsets, blob = batch.meta
    bounds = offsets.tolist()
    return [bytes(blob[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
