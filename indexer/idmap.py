"""The worker's id -> (segment, row) map: which rows of earlier segments a new segment hides."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from indexer.segment import SealedRows

# A location is one int, segment number << 32 | row: a tuple of (str, int) per id costs
# three objects where this costs one, and the map holds every live id of a partition.
_ROW_BITS = 32
_ROW_MASK = (1 << _ROW_BITS) - 1


class IdMap:
    """Per owned partition, where each live id's latest upsert sits: (segment_id, row).

    Only the latest row of an id is in the map, so the rows a new segment hides are exactly
    the map's entries for the ids it upserts or deletes. Segments must be applied (or
    loaded) in offset order per partition: latest write wins by offset.
    """

    def __init__(self) -> None:
        self._by_partition: dict[int, dict[bytes, int]] = {}
        self._segment_numbers: dict[str, int] = {}
        self._segment_names: list[str] = []

    def __len__(self) -> int:
        return sum(len(ids) for ids in self._by_partition.values())

    def __repr__(self) -> str:
        return f"IdMap(partitions={sorted(self._by_partition)}, ids={len(self)})"

    @property
    def partitions(self) -> list[int]:
        """Partitions with at least one segment applied, ascending."""
        return sorted(self._by_partition)

    def locate(self, partition: int, id_: bytes | str) -> tuple[str, int] | None:
        """Where the live row of an id is, or None if the id is deleted or unknown."""
        key = id_.encode("utf-8") if isinstance(id_, str) else id_
        packed = self._by_partition.get(partition, {}).get(key)
        if packed is None:
            return None
        return self._segment_names[packed >> _ROW_BITS], packed & _ROW_MASK

    def hides_for(self, sealed: SealedRows) -> dict[str, np.ndarray]:
        """segment_id -> sorted int32 rows of earlier segments that `sealed` hides."""
        live = self._by_partition.get(sealed.partition)
        if not live:
            return {}
        get = live.get
        hits = [get(key) for key in sealed.ids.tolist()]
        hits += [get(key) for key in sealed.deleted_ids.tolist()]
        packed = np.array([h for h in hits if h is not None], dtype=np.int64)
        if not len(packed):
            return {}
        packed.sort()  # by segment number, then row
        segments = packed >> _ROW_BITS
        bounds = np.flatnonzero(np.diff(segments)) + 1
        hides: dict[str, np.ndarray] = {}
        for group in np.split(packed, bounds):
            name = self._segment_names[int(group[0] >> _ROW_BITS)]
            hides[name] = (group & _ROW_MASK).astype(np.int32)
        return hides

    def apply(self, segment_id: str, sealed: SealedRows) -> None:
        """Record an accepted segment: its deleted ids leave the map, its upserts point at it."""
        self.load(segment_id, sealed.ids, sealed.deleted_ids, partition=sealed.partition)

    def load(
        self,
        segment_id: str,
        ids: np.ndarray | Iterable[bytes],
        deleted_ids: np.ndarray | Iterable[bytes],
        *,
        partition: int,
    ) -> None:
        """Replay a registered segment (row i holds ids[i]) when rebuilding from snapshots."""
        keys = _keys(ids)
        if len(keys) > _ROW_MASK + 1:
            raise ValueError(f"segment {segment_id} has {len(keys)} rows, at most {_ROW_MASK + 1}")
        live = self._by_partition.setdefault(partition, {})
        for key in _keys(deleted_ids):
            live.pop(key, None)
        base = self._number(segment_id) << _ROW_BITS
        live.update(zip(keys, range(base, base + len(keys)), strict=True))

    def drop_partition(self, partition: int) -> None:
        """Forget a partition this worker no longer owns; a new owner rebuilds it."""
        self._by_partition.pop(partition, None)

    def _number(self, segment_id: str) -> int:
        number = self._segment_numbers.get(segment_id)
        if number is None:
            number = len(self._segment_names)
            self._segment_numbers[segment_id] = number
            self._segment_names.append(segment_id)
        return number


def _keys(ids: np.ndarray | Iterable[bytes]) -> list[bytes]:
    """Ids as bytes keys; an S array's tolist() already strips the NUL padding."""
    if isinstance(ids, np.ndarray):
        return ids.tolist()
    return [key.encode("utf-8") if isinstance(key, str) else bytes(key) for key in ids]
