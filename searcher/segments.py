"""The served segment set: loading with checksum refusal, hides, hidden-row masks, the id map."""

# A sealed row is hidden when a later segment of its partition lists it in its hides, or writes
# its id again (latest write wins by offset), or when the live tail holds a newer op on its id.
# The id map points every id of a partition at its one visible sealed row, so a tail op finds
# the row it hides in O(1). Nothing here locks: the engine calls it under its own lock.

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field

import numpy as np

from indexer.errors import CorruptSegment, RemoteStoreError
from indexer.registry import SegmentRecord
from indexer.segfolder import MANIFEST, LoadedSegment, load_segment
from indexer.store import SegmentStore
from ingest.spec import CollectionSpec
from searcher.search import Source, squared_norms
from streamvec.errors import Unavailable

log = logging.getLogger(__name__)

# A location is one int, segment number << 32 | row: one object per id instead of three.
_ROW_BITS = 32
_ROW_MASK = (1 << _ROW_BITS) - 1
# Entry revisions come from one counter: a revision names one state of one entry's masks.
_revisions = itertools.count(1)


class SegmentUnavailable(Unavailable):
    """A registered segment that cannot be read now (I/O error, folder not there yet): retried."""


def load(store: SegmentStore, record: SegmentRecord,
         identity: SegmentIdentity | None = None) -> LoadedSegment:
    """Open a registered segment with every checksum verified and its identity checked.

    Raises CorruptSegment when a checksum, the manifest or the identity does not match (the
    folder itself is wrong), SegmentUnavailable on any other failure to read it (trouble
    that may pass: EMFILE, EIO, ESTALE, a folder not yet in the object store).
    """
    try:
        # A folder missing here is fetched (and verified) from the object store, if one is set.
        folder = store.folder(record.path)
        if not folder.is_dir():
            raise SegmentUnavailable(f"segment {record.segment_id}: no folder at {folder}")
        segment = load_segment(folder, verify=True)
    except CorruptSegment as exc:
        # A folder without its manifest is one still arriving (an upload or a copy under way).
        if exc.transient or (exc.file == MANIFEST and exc.reason.startswith("missing")):
            raise SegmentUnavailable(f"segment {record.segment_id} unreadable: {exc.file}: "
                                     f"{exc.reason}") from exc
        raise
    except ValueError as exc:  # a path that leaves the store: the record is wrong, not the disk
        raise CorruptSegment(record.path, MANIFEST, str(exc)) from None
    except (OSError, RemoteStoreError) as exc:
        raise SegmentUnavailable(f"segment {record.segment_id}: {exc}") from exc
    manifest = segment.manifest
    if (manifest.segment_id, manifest.partition, manifest.start_offset, manifest.end_offset) != (
            record.segment_id, record.partition, record.start_offset, record.end_offset):
        raise CorruptSegment(segment.path, MANIFEST,
                             f"describes segment {manifest.segment_id}, not the registered "
                             f"{record.segment_id}")
    if identity is not None:
        identity.check(segment)
    return segment


@dataclass(frozen=True, slots=True)
class SegmentIdentity:
    """What every segment of a collection must say of itself: collection, dim and metric."""

    collections: frozenset[str]  # its own name, and the source of a restored collection
    dim: int
    metric: str

    @classmethod
    def of(cls, spec: CollectionSpec) -> SegmentIdentity:
        """The identity a collection spec implies."""
        names = {spec.name, *([spec.restored_from] if spec.restored_from else [])}
        return cls(frozenset(names), spec.dim, spec.metric)

    def check(self, segment: LoadedSegment) -> None:
        """Raise CorruptSegment unless the segment's manifest fits this collection."""
        manifest = segment.manifest
        if manifest.collection not in self.collections:
            why = f"belongs to collection {manifest.collection!r}"
        elif manifest.dim != self.dim:
            why = f"has dim {manifest.dim}, the collection {self.dim}"
        elif manifest.metric != self.metric:
            why = f"has metric {manifest.metric!r}, the collection {self.metric!r}"
        else:
            return
        raise CorruptSegment(segment.path, MANIFEST,
                             f"{why}: not a segment of {'/'.join(sorted(self.collections))}")


@dataclass(slots=True)
class Entry:
    """One served segment and which of its rows are hidden, by sealed writes and by the tail."""

    segment: LoadedSegment
    number: int
    sealed_hidden: np.ndarray
    tail_hidden: np.ndarray
    # Changes with every change of the masks, never repeats: folds rebuild a mask on a change.
    revision: int = field(default_factory=lambda: next(_revisions))
    _source: Source | None = field(default=None, repr=False)
    _sqnorms: np.ndarray | None = field(default=None, repr=False)

    @property
    def segment_id(self) -> str:
        """The segment's id (partition and offset range)."""
        return self.segment.manifest.segment_id

    @property
    def rows(self) -> int:
        """Rows in the segment, hidden ones included."""
        return self.segment.manifest.rows

    def source(self) -> Source:
        """The segment as a search source; the mask is rebuilt only after a change."""
        if self._source is None:
            index = self.segment.index
            if index is None and self._sqnorms is None:  # scanned: norms once per segment
                self._sqnorms = squared_norms(self.segment.vectors)
            self._source = Source(self.segment.vectors, self.sealed_hidden | self.tail_hidden,
                                  index, sqnorms=None if index is not None else self._sqnorms)
        return self._source

    def changed(self) -> None:
        """Forget the cached mask after sealed_hidden or tail_hidden changed."""
        self._source = None
        self.revision = next(_revisions)


@dataclass(slots=True)
class _Partition:
    """A partition's served segments (by start offset), id map and coverage."""

    entries: list[Entry] = field(default_factory=list)
    ids: dict[bytes, int] = field(default_factory=dict)
    tail_marked: set[int] = field(default_factory=set)  # entry numbers with tail-hidden rows
    covered: int = 0  # end offset of the served segments


class SegmentSet:
    """Every served segment of a collection, grouped by partition."""

    def __init__(self) -> None:
        self._parts: dict[int, _Partition] = {}
        self._by_number: dict[int, Entry] = {}
        self._numbers = 0

    def entries(self) -> list[Entry]:
        """Every served segment, by (partition, start offset)."""
        return [e for p in sorted(self._parts) for e in self._parts[p].entries]

    def coverage(self, partition: int) -> int:
        """The end of the offsets the served segments of `partition` cover."""
        part = self._parts.get(partition)
        return 0 if part is None else part.covered

    def replace(self, gone: set[str], segments: list[LoadedSegment]) -> set[int]:
        """Drop `gone` and serve `segments`, all in one step; return the partitions touched.

        A partition that only gains segments past its coverage is extended in place; any
        other change (compaction, a generation switch, a segment older than the served ones)
        replays the partition in offset order.
        """
        new: dict[int, list[LoadedSegment]] = {}
        for segment in sorted(segments, key=lambda s: s.manifest.start_offset):
            new.setdefault(segment.manifest.partition, []).append(segment)
        hit = {p for p, part in self._parts.items()
               if any(e.segment_id in gone for e in part.entries)}
        touched = hit | set(new)
        for partition in touched:
            part = self._parts.setdefault(partition, _Partition())
            adding = new.get(partition, [])
            if partition not in hit and adding[0].manifest.start_offset >= part.covered:
                for segment in adding:
                    self._apply(part, segment)
                continue
            keep = [e.segment for e in part.entries if e.segment_id not in gone]
            self._rebuild(partition, keep + adding)
        return touched

    def find(self, keys: set[bytes]) -> dict[bytes, tuple[int, LoadedSegment, int]]:
        """Each of `keys` with a visible sealed row: (partition, segment, row); under the lock.

        Rows hidden by later writes, sealed or in the tail, are left out. An id found in two
        partitions (a producer that ignored the partitioner) keeps the lower one's row.
        """
        found: dict[bytes, tuple[int, LoadedSegment, int]] = {}
        for partition in sorted(self._parts):
            part = self._parts[partition]
            for key in part.ids.keys() & keys:  # iterates the smaller side, in C
                packed = part.ids[key]
                entry, row = self._by_number[packed >> _ROW_BITS], packed & _ROW_MASK
                if key not in found and not (entry.sealed_hidden[row] or entry.tail_hidden[row]):
                    found[key] = (partition, entry.segment, row)
        return found

    def hide_ids(self, partition: int, ids: list[bytes]) -> None:
        """The tail holds a newer op on each of `ids`: hide their sealed rows."""
        part = self._parts.get(partition)
        if part is None or not part.ids:
            return
        for key in ids:
            packed = part.ids.get(key)
            if packed is None:
                continue
            entry = self._by_number[packed >> _ROW_BITS]
            entry.tail_hidden[packed & _ROW_MASK] = True
            entry.changed()
            part.tail_marked.add(entry.number)

    def reset_tail_hides(self, partition: int, ids: list[bytes]) -> None:
        """Recompute the tail's hides of `partition` from the ids the tail now holds."""
        part = self._parts.get(partition)
        if part is None:
            return
        for number in part.tail_marked:
            entry = self._by_number.get(number)
            if entry is not None:
                entry.tail_hidden[:] = False
                entry.changed()
        part.tail_marked.clear()
        self.hide_ids(partition, ids)

    def _apply(self, part: _Partition, segment: LoadedSegment) -> None:
        """Add a segment that is newer than every served one of its partition."""
        self._numbers += 1
        rows = segment.manifest.rows
        entry = Entry(segment, self._numbers, np.zeros(rows, bool), np.zeros(rows, bool))
        by_id = {e.segment_id: e for e in part.entries}
        for target, hidden in segment.hides.items():
            if (old := by_id.get(target)) is not None:
                old.sealed_hidden[hidden[(hidden >= 0) & (hidden < old.rows)]] = True
                old.changed()
        ids = segment.ids.tolist()
        # Only ids mapped already hide a row: found in one pass in C (a start-up finds none).
        for key in part.ids.keys() & (ids + segment.deleted_ids.tolist()) if part.ids else ():
            packed = part.ids.pop(key)
            # Latest write wins even where the hides do not say so.
            old = self._by_number[packed >> _ROW_BITS]
            old.sealed_hidden[packed & _ROW_MASK] = True
            old.changed()
        base = entry.number << _ROW_BITS
        part.ids.update(zip(ids, range(base, base + rows), strict=True))
        part.entries.append(entry)
        part.covered = max(part.covered, segment.manifest.end_offset)
        self._by_number[entry.number] = entry

    def _rebuild(self, partition: int, segments: list[LoadedSegment]) -> None:
        """Serve exactly `segments` for `partition`, replayed in offset order."""
        old = self._parts.get(partition, _Partition())
        for entry in old.entries:
            del self._by_number[entry.number]
        part = _Partition()
        self._parts[partition] = part
        for segment in sorted(segments, key=lambda s: s.manifest.start_offset):
            self._apply(part, segment)
