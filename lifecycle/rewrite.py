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
    last_op: dict[bytes, bool] = {}  # id -> True when its last op in the range is a delete
    keep, ids, vectors, offsets, times, metadata = [], [], [], [], [], []
    for seg in ordered:
        for key in seg.deleted_ids.tolist():
            last_op[key] = True
        for key in seg.ids.tolist():
            last_op[key] = False
        gone = hidden.get(seg.manifest.segment_id, set())
        rows = np.array([r for r in range(seg.manifest.rows) if r not in gone], dtype=np.int64)
        keep.append(rows)
        ids.append(seg.ids[rows])
        vectors.append(np.asarray(seg.vectors[rows], dtype=np.float32))
        offsets.append(np.asarray(seg.offsets[rows], dtype=np.int64))
        times.append(np.asarray(seg.event_time_ms[rows], dtype=np.int64))
        mo = seg.meta_offsets
        metadata += [bytes(seg.meta_blob[int(mo[r]):int(mo[r + 1])]) for r in rows.tolist()]
    deleted = [key for key, is_delete in last_op.items() if is_delete]
    return SealedRows(
        partition=first.partition, start_offset=first.start_offset, end_offset=last.end_offset,
        ids=_bytes_array(np.concatenate(ids)),
        vectors=np.ascontiguousarray(np.concatenate(vectors).reshape(-1, first.dim)),
        offsets=np.concatenate(offsets), event_time_ms=np.concatenate(times),
        metadata=metadata, deleted_ids=_bytes_array(np.array(deleted, dtype=bytes)))


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


def _bytes_array(ids: np.ndarray) -> np.ndarray:
    """Ids as a 1-D bytes array of at least width 1 (an empty S0 array cannot be saved)."""
    if ids.dtype.kind != "S" or ids.dtype.itemsize == 0:
        return ids.astype("S1") if len(ids) == 0 else ids.astype(bytes)
    return ids
