"""The registered segments' visible rows, as the recall probe and pinning read them."""

# A row is visible when no later segment hides it (indexer/view.py) and it is not a canary
# row, which searchers never return. Segments are immutable, so each is loaded (and its
# checksums verified) once and kept memory-mapped; the visible-row lists are recomputed only
# when the registry version moves. Search here is exact over the vectors, so a segment's FAISS
# index, which loads into memory whole for Flat and HNSW, is let go as soon as it is checked.

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import numpy as np

from indexer.registry import Registry, note_skipped
from indexer.segfolder import LoadedSegment, load_segment
from indexer.store import SegmentStore
from indexer.view import hidden_rows
from searcher import search
from searcher.execute import CANARY_PREFIX

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SealedPart:
    """One registered segment and the indices of its visible rows."""

    segment: LoadedSegment
    rows: np.ndarray  # int64, ascending

    @property
    def ids(self) -> np.ndarray:
        """Visible ids, UTF-8 bytes (S)."""
        return np.asarray(self.segment.ids[self.rows])

    def vectors(self) -> np.ndarray:
        """Visible vectors, a float32 copy."""
        return np.ascontiguousarray(self.segment.vectors[self.rows], dtype=np.float32)


class SealedView:
    """The visible rows of a collection's registered segments, reloaded on registry changes."""

    def __init__(self, registry: Registry, store: SegmentStore) -> None:
        self.registry = registry
        self.store = store
        self._lock = threading.Lock()
        self._loaded: dict[str, LoadedSegment] = {}
        self._version: int | None = None
        self._parts: list[SealedPart] = []
        # Malformed records already logged (segment id -> why), so each is logged once.
        self._malformed: dict[str, str] = {}

    def parts(self) -> list[SealedPart]:
        """Every registered segment with its visible rows, oldest first per partition."""
        with self._lock:
            version = self.registry.version()  # read first: a later move forces a reload
            if version != self._version:
                skipped: dict[str, str] = {}
                self._parts = self._load(self.registry.segments(skipped=skipped))
                self._note_malformed(skipped)
                self._version = version
            return list(self._parts)

    def _note_malformed(self, skipped: dict[str, str]) -> None:
        self._malformed = note_skipped(log, self.registry.collection, skipped, self._malformed)

    def _load(self, records) -> list[SealedPart]:
        current = {r.segment_id for r in records}
        self._loaded = {sid: seg for sid, seg in self._loaded.items() if sid in current}
        segments = []
        for rec in records:
            if rec.segment_id not in self._loaded:
                folder = self.store.folder(rec.path)  # fetched if missing here
                segment = load_segment(folder, verify=True)
                segment.index = None
                self._loaded[rec.segment_id] = segment
            segments.append(self._loaded[rec.segment_id])
        hidden = hidden_rows(segments)
        parts = []
        for seg in segments:
            visible = np.ones(seg.manifest.rows, dtype=bool)
            visible[list(hidden.get(seg.manifest.segment_id, ()))] = False
            visible &= ~np.char.startswith(np.asarray(seg.ids), CANARY_PREFIX.encode())
            parts.append(SealedPart(seg, np.flatnonzero(visible).astype(np.int64)))
        return parts


def visible_ids(parts: list[SealedPart]) -> np.ndarray:
    """Every visible id, sorted, for membership tests with `np.searchsorted`."""
    if not parts:
        return np.zeros(0, dtype="S1")
    return np.sort(np.concatenate([p.ids for p in parts]))


def contains(sorted_ids: np.ndarray, wanted: list[str]) -> np.ndarray:
    """Which of `wanted` are in `sorted_ids` (from `visible_ids`)."""
    if not len(sorted_ids) or not wanted:
        return np.zeros(len(wanted), dtype=bool)
    probe = np.array([w.encode() for w in wanted], dtype=bytes)
    at = np.minimum(np.searchsorted(sorted_ids, probe), len(sorted_ids) - 1)
    return sorted_ids[at] == probe


def exact_top_k(parts: list[SealedPart], queries: np.ndarray, k: int,
                metric: str) -> list[list[str]]:
    """Exact k nearest visible rows per query, ids best first (fewer when rows are fewer)."""
    pieces, names = [], []
    base = 0
    for part in parts:
        if not len(part.rows):
            continue
        scores, local = search.search(search.Source(part.vectors()), queries,
                                      min(k, len(part.rows)), metric)
        pieces.append((scores, np.where(local >= 0, local + base, -1)))
        names.append(part.ids)
        base += len(part.rows)
    if not pieces:
        return [[] for _ in range(len(queries))]
    _, keys = search.merge(pieces, len(queries), k, metric)
    ids = np.concatenate(names)
    return [[ids[key].decode() for key in row if key >= 0] for row in keys.tolist()]


def latest_rows(parts: list[SealedPart], n: int) -> np.ndarray:
    """The `n` visible rows with the latest event times (float32), in segment order."""
    parts = [p for p in parts if len(p.rows)]
    if not parts:
        return np.zeros((0, 0), dtype=np.float32)
    times = np.concatenate([np.asarray(p.segment.event_time_ms[p.rows]) for p in parts])
    owner = np.concatenate([np.full(len(p.rows), i) for i, p in enumerate(parts)])
    local = np.concatenate([p.rows for p in parts])
    picked = np.sort(np.argsort(-times, kind="stable")[:n])
    out = np.empty((len(picked), parts[0].segment.vectors.shape[1]), dtype=np.float32)
    for i in np.unique(owner[picked]).tolist():
        mine = owner[picked] == i
        out[mine] = parts[i].segment.vectors[local[picked[mine]]]
    return out
