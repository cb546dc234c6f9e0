"""Publishing a sealed range: build its index, write and mirror its folder, mark it registered."""

# The worker publishes every seal through `write` and `mark`; compaction and reindex rewrite
# registered segments through the same two (lifecycle/rewrite.py), so every folder, however
# it was made, is one the searcher, the monitor and a registry rebuild already know how to read.

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from indexer import build, segfolder
from indexer.registry import SegmentRecord
from indexer.segment import SealedRows
from indexer.store import SegmentStore


@dataclass(frozen=True, slots=True)
class Written:
    """A segment folder written (or found already written), with what it took."""

    record: SegmentRecord
    rows: int
    build_seconds: float
    reused: bool
    nbytes: int  # the folder's files, as its manifest lists them


def write(store: SegmentStore, collection: str, generation: int, sealed: SealedRows, *,
          metric: str, index: str, hides: dict[str, np.ndarray] | None = None) -> Written:
    """Build the index of `sealed` and write (and mirror) its folder into `generation`.

    A segment that resolves to "Flat" (or has no rows) gets no index: its exact search scans
    the vectors, so building one would only copy them.
    """
    started = time.perf_counter()
    factory = build.resolve_factory(index, sealed.rows, sealed.dim)
    if factory == build.FLAT or sealed.rows == 0:
        build.faiss_metric(metric)  # the same refusal of an unknown metric as a build's
        built, factory = None, build.FLAT
    else:
        built, factory = build.build_index(sealed.vectors, metric=metric, index=index)
    manifest = store.write(collection, generation, sealed, built, factory, metric, hides or {})
    return Written(SegmentRecord.from_manifest(manifest), sealed.rows,
                   time.perf_counter() - started, False, folder_bytes(manifest))


def mark(store: SegmentStore, written: list[Written]) -> None:
    """Write the registration markers (here and mirrored) of folders just registered."""
    for item in written:
        store.mark_registered(item.record.path)


def folder_bytes(manifest: segfolder.SegmentManifest) -> int:
    """Bytes of a segment folder's files, as its manifest lists them."""
    return sum(f["bytes"] for f in manifest.files.values())
