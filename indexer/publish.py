"""Rewrite registered segments into new folders: merged (compaction) or re-built (generations)."""

# Both compaction and a reindex read the raw rows back out of immutable segment folders and
# write them again through `write`, the path the worker's own builds take (build the index,
# write the folder, mirror it), so every folder, however it was made, is one the searcher,
# the monitor and a registry rebuild already know how to read.

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexer import build, remote, segfolder
from indexer.errors import CorruptSegment, IndexerError
from indexer.registry import SegmentRecord
from indexer.segfolder import LoadedSegment
from indexer.segment import SealedRows


@dataclass(frozen=True, slots=True)
class Written:
    """A segment folder written (or found already written), with what it took."""

    record: SegmentRecord
    rows: int
    build_seconds: float
    reused: bool
    nbytes: int  # the folder's files, as its manifest lists them


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


def write(root: Path | str, collection: str, generation: int, sealed: SealedRows, *,
          metric: str, index: str, hides: dict[str, np.ndarray] | None = None) -> Written:
    """Build the index of `sealed` and write its folder into `generation`; return its record."""
    started = time.perf_counter()
    built, factory = build.build_index(sealed.vectors, metric=metric, index=index)
    manifest = segfolder.write_segment(root, collection, generation, sealed, built, factory,
                                      metric, hides or {})
    remote.mirror_segment(root, manifest)  # in the object store before anything registers it
    return Written(SegmentRecord.from_manifest(manifest), sealed.rows,
                   time.perf_counter() - started, False, _nbytes(manifest))


def reuse(root: Path | str, collection: str, generation: int,
          source: SegmentRecord) -> Written | None:
    """The verified folder of `source`'s range already in `generation`, if one is there."""
    path = segfolder.segment_path(root, collection, generation, source.partition,
                                 source.segment_id)
    try:
        path = remote.local_folder(root, path.relative_to(root))
        manifest = segfolder.verify(path)
    except (CorruptSegment, OSError, IndexerError):  # gone or damaged: rebuilt, never served
        return None
    return Written(SegmentRecord.from_manifest(manifest), manifest.rows, 0.0, True,
                   _nbytes(manifest))


def mark(root: Path | str, written: list[Written]) -> None:
    """Write the registration markers of folders a swap has just registered."""
    for item in written:
        segfolder.mark_registered(Path(root) / item.record.path)
        remote.mirror_marker(root, item.record.path)


def _nbytes(manifest: segfolder.SegmentManifest) -> int:
    return sum(f["bytes"] for f in manifest.files.values())


def _bytes_array(ids: np.ndarray) -> np.ndarray:
    """Ids as a 1-D bytes array of at least width 1 (an empty S0 array cannot be saved)."""
    if ids.dtype.kind != "S" or ids.dtype.itemsize == 0:
        return ids.astype("S1") if len(ids) == 0 else ids.astype(bytes)
    return ids
