"""What a searcher serves for one collection: sealed segments plus the live tail, under one lock."""

# Every mutation (a segment installed or released, tail messages applied) and every search
# holds `lock`, so a query sees either the state before a swap or the state after it: the
# segment that covers [C_old, C_new) arrives, the tail drops its rows below C_new and re-hides
# what its newer rows overwrite, all in one critical section. FAISS releases the GIL, and a
# batch is short, so the tail thread waits little. A released segment is dropped here under
# the lock, so no running search still uses it when its memory goes.

from __future__ import annotations

import logging
import threading

from indexer.registry import SegmentRecord
from indexer.segfolder import LoadedSegment
from searcher.execute import Searchable
from searcher.metrics import SearcherMetrics
from searcher.segments import Entry, SegmentSet
from searcher.tail import TailBuffer, TailMessage

log = logging.getLogger(__name__)


class ServingState:
    """Segments, tail and read positions of one collection; the sink of watcher and tail."""

    def __init__(self, dim: int, partitions: list[int], metrics: SearcherMetrics) -> None:
        self.lock = threading.Lock()
        self.segments = SegmentSet()
        self.tail = TailBuffer(dim)
        self.partitions = list(partitions)
        self.metrics = metrics
        self._next = {p: 0 for p in partitions}  # the offset the tail reads next
        self._caught_up_at: dict[int, float] = {}
        self._rewinding: set[int] = set()
        self._generation = 0
        self._paths: dict[str, str] = {}  # segment id -> registry path, to see a path change
        self.on_rewind = lambda: None  # set by the engine: asks the reader to re-assign
        # Published copies, replaced (never mutated) under the lock: the server polls them
        # while requests wait, and must not queue behind a running search for the lock.
        self._published_positions = dict(self._next)
        self._published_caught_up: dict[int, float] = {}

    def served(self) -> dict[str, str]:
        """Segment id -> registered path of every segment served."""
        with self.lock:
            return dict(self._paths)

    def replace(self, gone: set[str], loaded: list[tuple[SegmentRecord, LoadedSegment]]) -> None:
        """Apply one registry change as one swap: no query sees half of it.

        `loaded` pairs each new record with its opened segment. A compaction or generation
        switch removes segments and adds others over the same offsets; done in two steps, a
        query in between would miss those rows. Where coverage went back, the tail is read
        again from there; elsewhere it drops what is now covered.
        """
        with self.lock:
            before = {p: self.segments.coverage(p) for p in self.partitions}
            touched = self.segments.replace(gone, [segment for _, segment in loaded])
            for sid in gone:
                self._paths.pop(sid, None)
            self._paths.update({record.segment_id: record.path for record, _ in loaded})
            for partition in sorted(touched):
                coverage = self.segments.coverage(partition)
                if coverage < before.get(partition, 0):
                    self._rewind(partition, coverage)
                else:
                    self.tail.trim(partition, coverage)
                self.segments.reset_tail_hides(partition, self.tail.ids(partition))
            self._swapped()
        log.info("segments swapped: %d released, %d installed", len(gone), len(loaded))

    def start_offsets(self) -> tuple[dict[int, int], int]:
        """Where the reader must read each partition from, and the rewind generation."""
        with self.lock:
            return {p: self._position(p) for p in self.partitions}, self._generation

    def reassigned(self, generation: int) -> None:
        """The reader reads from the offsets of `generation`: stop discarding messages."""
        with self.lock:
            if generation == self._generation:
                self._rewinding.clear()

    def apply(self, messages: list[TailMessage]) -> None:
        """Append messages at or past each partition's position; skip what segments cover."""
        with self.lock:
            for msg in messages:
                p = msg.partition
                if p in self._rewinding or p not in self._next:
                    continue  # read from before a rewind: the re-read brings it again
                if msg.offset >= self._position(p) and msg.batch is not None:
                    fresh = self.tail.append(p, msg.offset, msg.batch)
                    self.segments.hide_ids(p, fresh)
                self._next[p] = max(self._next[p], msg.offset + 1)
            self.metrics.labels(self.metrics.tail_rows).set(self.tail.row_count())
            self._published_positions = self.positions_locked()

    def observe(self, highs: dict[int, int], now: float) -> None:
        """Note the partitions whose position reached the log end seen in fetch responses."""
        with self.lock:
            for p, high in highs.items():
                if p in self._next and self._position(p) >= high:
                    self._caught_up_at[p] = now
            self._published_caught_up = dict(self._caught_up_at)

    def positions(self) -> dict[int, int]:
        """Per partition, the offset below which everything is served; never waits for the lock."""
        return dict(self._published_positions)

    def positions_locked(self) -> dict[int, int]:
        """`positions()` for a caller that holds the lock."""
        return {p: self._position(p) for p in self.partitions}

    def caught_up_at(self) -> dict[int, float]:
        """Per partition, the monotonic time the tail last was at the log end; never waits."""
        return dict(self._published_caught_up)

    def searchables(self) -> list[Searchable]:
        """Every served segment and tail partition as a search source; hold the lock."""
        out = [Searchable(e.source(), _segment_id_reader(e), e.segment.metadata)
               for e in self.segments.entries()]
        out += [Searchable(t.source, t.id_of, t.metadata) for t in self.tail.sources()]
        return out

    def _position(self, partition: int) -> int:
        return max(self.segments.coverage(partition), self._next[partition])

    def _rewind(self, partition: int, offset: int) -> None:
        """Coverage went back (a registry rebuilt with less): read the partition again."""
        log.warning('partition="%d" coverage went back to offset="%d": re-reading the tail',
                    partition, offset)
        self.tail.clear(partition)
        self._next[partition] = offset
        self._rewinding.add(partition)
        self._generation += 1
        self.on_rewind()

    def _swapped(self) -> None:
        entries = self.segments.entries()
        self.metrics.labels(self.metrics.swaps).inc()
        self.metrics.labels(self.metrics.loaded_segments).set(len(entries))
        self.metrics.labels(self.metrics.loaded_rows).set(sum(e.rows for e in entries))
        self.metrics.labels(self.metrics.tail_rows).set(self.tail.row_count())
        self._published_positions = self.positions_locked()


def _segment_id_reader(entry: Entry):
    """Row -> id of a segment, decoding the stored UTF-8 bytes."""
    ids = entry.segment.ids
    return lambda row: ids[row].decode("utf-8")
