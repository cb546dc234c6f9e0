"""Rewriting registered segments into new folders: merged (compaction) or rebuilt (reindex).

Both read the raw rows back out of immutable segment folders (`rows_of`) and write them again
through the worker's own publish path (indexer/publish.py); a reindex or rollback first looks
for a folder of the same range already in the target generation (`reuse`).
"""

from __future__ import annotations

import itertools

import numpy as np

from indexer import segfolder
from indexer.errors import CorruptSegment, IndexerError
from indexer.publish import Written, folder_bytes
from indexer.registry import SegmentRecord
from indexer.segfolder import LoadedSegment
from indexer.segment import SealedRows
from indexer.store import SegmentStore, segment_rel


def rows_of(segments: list[LoadedSegment], hidden: dict[str, set[int]]) -> SealedRows:
    """The visible rows of consecutive segments of one partition as one sealed range.

    `hidden` names, per segment id, rows that a later write hides (view.hidden_rows over the
    whole partition); they are left out. An id whose last op in the range is a delete stays
    in `deleted_ids`, so it still hides older rows before the range.
    """
    if not segments:
        raise ValueError("nothing to rewrite")
    ordered = sorted(segments, key=lambda s: s.manifest.start_offset)
    first, last = ordered[0].manifest, ordered[-1].manifest
    for before, after in itertools.pairwise(ordered):
        if before.manifest.end_offset != after.manifest.start_offset or (
                before.manifest.partition != after.manifest.partition):
            raise ValueError(f"segments {before.manifest.segment_id} and "
                             f"{after.manifest.segment_id} are not consecutive")
    ids, vectors, offsets, times, metadata = [], [], [], [], []
    for seg in ordered:
        rows = _kept(seg.manifest.rows, hidden.get(seg.manifest.segment_id, set()))
        # Every row kept (a reindex, mostly): the segment's own arrays, not copies of them.
        whole = len(rows) == seg.manifest.rows
        ids.append(seg.ids if whole else seg.ids[rows])
        vectors.append(seg.vectors if whole else seg.vectors[rows])
        offsets.append(seg.offsets if whole else seg.offsets[rows])
        times.append(seg.event_time_ms if whole else seg.event_time_ms[rows])
        blob, bounds = bytes(seg.meta_blob), seg.meta_offsets
        metadata += [blob[a:b] for a, b in zip(bounds[rows].tolist(), bounds[rows + 1].tolist(),
                                                 strict=True)]
    return SealedRows(
        partition=first.partition, start_offset=first.start_offset, end_offset=last.end_offset,
        ids=_bytes_array(_joined(ids)),
        vectors=_joined(vectors).astype(np.float32, copy=False).reshape(-1, first.dim),
        offsets=_joined(offsets).astype(np.int64, copy=False),
        event_time_ms=_joined(times).astype(np.int64, copy=False),
        metadata=metadata, deleted_ids=_bytes_array(_last_deletes(ordered)))


def reuse(store: SegmentStore, collection: str, generation: int,
          source: SegmentRecord) -> Written | None:
    """The verified folder of `source`'s range already in `generation`, if one is there."""
    rel = segment_rel(collection, generation, source.partition, source.segment_id)
    try:
        manifest = segfolder.verify(store.folder(rel))
    except (CorruptSegment, OSError, IndexerError):  # gone or damaged: rebuilt, never served
        return None
    return Written(SegmentRecord.from_manifest(manifest), manifest.rows, 0.0, True,
                   folder_bytes(manifest))


def _kept(rows: int, gone: set[int]) -> np.ndarray:
    """Row numbers 0..rows-1 without those in `gone` (numbers out of range are ignored)."""
    keep = np.ones(rows, dtype=bool)
    hidden = np.fromiter((r for r in gone if 0 <= r < rows), dtype=np.int64)
    keep[hidden] = False
    return np.flatnonzero(keep)


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    """The parts one after another; a single part as it is, without copying it."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _last_deletes(ordered: list[LoadedSegment]) -> np.ndarray:
    """The ids whose last op over consecutive segments is a delete, in order of first sight."""
    if len(ordered) == 1:  # within one segment an id is either upserted or deleted
        return np.asarray(ordered[0].deleted_ids)
    last_op: dict[bytes, bool] = {}  # id -> True when its last op in the range is a delete
    for seg in ordered:
        for key in seg.deleted_ids.tolist():
            last_op[key] = True
        for key in seg.ids.tolist():
            last_op[key] = False
    return np.array([key for key, is_delete in last_op.items() if is_delete], dtype=bytes)


def _bytes_array(ids: np.ndarray) -> np.ndarray:
    """Ids as a 1-D bytes array of at least width 1 (an empty S0 array cannot be saved)."""
    if ids.dtype.kind != "S" or ids.dtype.itemsize == 0:
        return ids.astype("S1") if len(ids) == 0 else ids.astype(bytes)
    return ids
