"""What a searcher serves for one collection: segments plus the live tail, as published views."""

# Writers (the watcher's swaps, the tail's messages) change the segments and the tail under
# `lock` and end each change by publishing a View: the search sources and the positions they
# serve, as one immutable value. Searches never take the lock: they read the last View, so a
# query sees the state before a swap or after it, never half of one (the segment that covers
# [C_old, C_new) arrives, the tail drops its rows below C_new and re-hides what its newer rows
# overwrite, all before the next View), and a swap or a long batch of tail messages never pauses
# answers. A View stays valid after it is replaced because nothing it holds is changed in place:
# a segment's mask is a fresh array per change, and the tail only appends past the rows a source
# covers (see searcher/tail.py). A released segment's memory goes with the last View holding it.
#
# Tail messages are applied a chunk at a time, so one lock hold stays short and readers see the
# rows of a long catch-up arrive in steps. Every publication notifies `progress`, which wakes a
# request loop whose requests wait for offsets, instead of it polling.

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from indexer.registry import SegmentRecord
from indexer.segfolder import LoadedSegment
from searcher import filters
from searcher.consistency import Progress
from searcher.execute import Searchable
from searcher.fold import FoldConfig, Folds
from searcher.metrics import SearcherMetrics
from searcher.search import Source
from searcher.segments import Entry, SegmentSet
from searcher.tail import TailBuffer, TailMessage

log = logging.getLogger(__name__)

# Tail rows applied per hold of the lock: a catch-up of many messages is published in steps.
APPLY_ROWS = 4096


@dataclass(frozen=True, slots=True)
class View:
    """What one search reads: every source, and per partition the offset served up to."""

    searchables: tuple[Searchable, ...] = ()
    positions: dict[int, int] = field(default_factory=dict)  # never changed once published


class ServingState:
    """Segments, tail and read positions of one collection; the sink of watcher and tail."""

    def __init__(self, dim: int, partitions: list[int], metrics: SearcherMetrics, *,
                 progress: Progress | None = None, fold: FoldConfig | None = None) -> None:
        self.lock = threading.Lock()
        self.segments = SegmentSet()
        # With a fold config, graph segments are searched through folds (searcher/fold.py);
        # a fold installed by its builder is published as any other change.
        self.folds = (None if fold is None else
                      Folds(fold, self.lock, self.segments.entries, metrics, self._publish))
        self.tail = TailBuffer(dim)
        self.partitions = list(partitions)
        self.metrics = metrics
        self.progress = progress if progress is not None else Progress()
        self._next = {p: 0 for p in partitions}  # the offset the tail reads next
        self._caught_up_at: dict[int, float] = {}
        self._rewinding: set[int] = set()
        self._generation = 0
        self._paths: dict[str, str] = {}  # segment id -> registry path, to see a path change
        self.on_rewind = lambda: None  # set by the engine: asks the reader to re-assign
        # The segments' part of the last View, kept while no entry's source changes.
        self._segment_sources: list[Source] = []
        self._segment_items: tuple[Searchable, ...] = ()
        self._view = View((), self._positions_locked())
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
        self.progress.notify()
        if self.folds is not None:
            self.folds.wake()
        log.info("segments swapped: %d released, %d installed", len(gone), len(loaded))

    def start_offsets(self) -> tuple[dict[int, int], int]:
        """Where the reader must read each partition from, and the rewind generation."""
        with self.lock:
            return self._positions_locked(), self._generation

    def reassigned(self, generation: int) -> None:
        """The reader reads from the offsets of `generation`: stop discarding messages."""
        with self.lock:
            if generation == self._generation:
                self._rewinding.clear()

    def apply(self, messages: list[TailMessage]) -> None:
        """Append messages at or past each partition's position; skip what segments cover."""
        for chunk in _chunks(messages, APPLY_ROWS):
            with self.lock:
                for msg in chunk:
                    p = msg.partition
                    if p in self._rewinding or p not in self._next:
                        continue  # read from before a rewind: the re-read brings it again
                    if msg.offset >= self._position(p) and msg.batch is not None:
                        fresh = self.tail.append(p, msg.offset, msg.batch)
                        self.segments.hide_ids(p, fresh)
                    self._next[p] = max(self._next[p], msg.offset + 1)
                self.metrics.labels(self.metrics.tail_rows).set(self.tail.row_count())
                self._publish()
            self.progress.notify()

    def observe(self, highs: dict[int, int], now: float) -> None:
        """Note the partitions whose position reached the log end seen in fetch responses."""
        with self.lock:
            caught_up = [p for p, high in highs.items()
                         if p in self._next and self._position(p) >= high]
            for p in caught_up:
                self._caught_up_at[p] = now
            self._published_caught_up = dict(self._caught_up_at)
        if caught_up:
            self.progress.notify()

    def view(self) -> View:
        """The last published sources and positions; never waits for the lock."""
        return self._view

    def positions(self) -> dict[int, int]:
        """Per partition, the offset below which everything is served; never waits for the lock."""
        return dict(self._view.positions)

    def caught_up_at(self) -> dict[int, float]:
        """Per partition, the monotonic time the tail last was at the log end; never waits."""
        return dict(self._published_caught_up)

    def searchables(self) -> list[Searchable]:
        """Every served segment and tail partition as a search source, as last published."""
        return list(self._view.searchables)

    def _publish(self) -> None:
        """Make the current segments, tail and positions the View searches read; hold the lock.

        Segments held by a fold are searched through it, each served segment exactly once.
        """
        entries, folded = self.segments.entries(), ()
        if self.folds is not None:
            items, entries = self.folds.split(entries)
            folded = tuple(items)
        sources = [e.source() for e in entries]
        if len(sources) != len(self._segment_sources) or any(
                new is not old for new, old in zip(sources, self._segment_sources, strict=True)):
            self._segment_sources = sources
            self._segment_items = tuple(
                Searchable(src, _segment_id_reader(e), e.segment.metadata,
                           filters.segment_accepts(e.segment))
                for e, src in zip(entries, sources, strict=True))
        tail = tuple(Searchable(t.source, t.id_of, t.metadata, t.accepts)
                     for t in self.tail.sources())
        self._view = View(folded + self._segment_items + tail, self._positions_locked())

    def close(self) -> None:
        """Stop building folds; what is served stays searchable."""
        if self.folds is not None:
            self.folds.close()

    def _positions_locked(self) -> dict[int, int]:
        return {p: self._position(p) for p in self.partitions}

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
        self._publish()


def _chunks(messages: list[TailMessage], rows: int) -> Iterator[list[TailMessage]]:
    """Consecutive runs of messages holding about `rows` rows each (a message is never split)."""
    chunk: list[TailMessage] = []
    held = 0
    for msg in messages:
        chunk.append(msg)
        held += 1 if msg.batch is None else len(msg.batch)
        if held >= rows:
            yield chunk
            chunk, held = [], 0
    if chunk:
        yield chunk


def _segment_id_reader(entry: Entry):
    """Row -> id of a segment, decoding the stored UTF-8 bytes."""
    ids = entry.segment.ids
    return lambda row: ids[row].decode("utf-8")
