"""Folds: one in-memory graph index over many sealed segments, searched instead of theirs."""

# A query over m segments runs m index searches, and an HNSW search costs about log n: at one
# efSearch, one graph over all of their rows answers in about the time of one of them, with a
# slightly lower recall than m searches of that breadth (docs/operations.md, "Folds"). A fold
# is a search structure of this searcher only: coverage, the registry, hides and
# latest-write-wins stay with the segments (searcher/segments.py), and nothing of it is ever
# written anywhere.
#
# - What is folded: segments whose factory is a graph over flat storage (HNSW32, HNSW16,Flat,
#   ...), grouped by factory string, across partitions. Such an index takes new rows without
#   training and its distances are exact, so a fold scores a row as the segment's own index
#   does. In a collection whose index is "auto", Flat segments join the HNSW32 group too: auto
#   writes small segments without a graph (indexer/build.py) so that the graph over fresh rows
#   is built once, here; such a group starts a fold once it holds AUTO_GRAPH_MIN_ROWS rows,
#   below which a scan is as fast. Otherwise Flat segments are left alone (the user asked for
#   exact answers): they are scanned from their memory-mapped vectors.
# - Rows: a fold row maps to (segment, row) by contiguous ranges, one per member, in the order
#   members were added. The hidden mask is the members' masks side by side, with every row of
#   a member no longer served ("dead") hidden; it is rebuilt only when a member's entry
#   changed (Entry.revision) or was released. Past MAX_DEAD_FRACTION dead rows the fold is
#   built again from its live members.
# - Builds run on one background thread: the expensive part (a copy of the current graph, or
#   of the largest new segment's own graph, and the added rows) never holds the serving lock;
#   the result is installed under the lock in one step. Until then a new segment is searched
#   with its own index, so a search never waits for a build, and every served segment is
#   searched exactly once: through the fold that holds it, or on its own.
# - Memory: once a segment is in an installed fold its own FAISS index is dropped (the fold
#   holds its vectors); its raw vectors stay (memory-mapped) for metadata, filters and scans.
#   While a fold is extended, the copy and the new segments' own indexes exist side by side.

from __future__ import annotations

import ctypes
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import faiss
import numpy as np

from indexer import build, columns
from indexer.segfolder import LoadedSegment
from searcher import filters
from searcher.execute import Searchable
from searcher.metrics import SearcherMetrics
from searcher.search import Source
from searcher.segments import Entry
from streamvec import background

log = logging.getLogger(__name__)

# Factories whose segments may be folded: HNSW over flat (uncompressed) storage.
FOLDABLE = re.compile(r"HNSW\d+(,Flat)?")
MIN_SEGMENTS = 2
# Dead rows cost search breadth (they are hidden, yet the graph walks them) and memory.
MAX_DEAD_FRACTION = 0.25
# After a failed build (memory, a FAISS error) the same group waits this long to try again.
RETRY_S = 60.0


@dataclass(frozen=True, slots=True)
class FoldConfig:
    """How a searcher folds: the collection's metric, and the segments a new fold needs."""

    metric: str
    min_segments: int = MIN_SEGMENTS
    nice: int = 0  # added to the build thread's niceness (streamvec/background.py)
    # The collection's index is "auto": its Flat segments are folded into an HNSW32 graph.
    auto: bool = False
    # False: no thread; the owner calls Folds.settle() (tests, benchmarks).
    background: bool = True

    def __post_init__(self) -> None:
        build.faiss_metric(self.metric)
        if self.min_segments < 2:
            raise ValueError(f"a fold needs min_segments >= 2, got {self.min_segments}")


@dataclass(frozen=True, slots=True)
class Member:
    """One segment inside a fold: its rows are fold rows start .. start + rows - 1."""

    segment: LoadedSegment
    start: int

    @property
    def rows(self) -> int:
        """Rows of the segment, hidden ones included."""
        return self.segment.manifest.rows


class Fold:
    """One built fold: a graph over its members' rows, member after member."""

    def __init__(self, factory: str, index: faiss.Index, members: list[Member],
                 build_s: float) -> None:
        self.factory = factory
        self.index = index
        self.members = tuple(members)
        self.build_s = build_s
        self.rows = int(index.ntotal)
        self.keys = frozenset(id(m.segment) for m in self.members)
        self._starts = np.array([m.start for m in self.members], dtype=np.int64)
        self.vectors = _stored_vectors(index)
        self._mask_key: tuple[int, ...] | None = None
        self._item: Searchable | None = None

    def live(self, served: dict[int, Entry]) -> list[Member]:
        """The members that are still served."""
        return [m for m in self.members if id(m.segment) in served]

    def dead_rows(self, served: dict[int, Entry]) -> int:
        """Rows of members no longer served."""
        return sum(m.rows for m in self.members if id(m.segment) not in served)

    def searchable(self, served: dict[int, Entry]) -> Searchable | None:
        """The fold as one search source with its current mask; None when no member is served.

        `served` maps id(segment) to the entry serving it. The mask is rebuilt only when an
        entry of a member changed, appeared or went away.
        """
        entries = [served.get(id(m.segment)) for m in self.members]
        key = tuple(-1 if e is None else e.revision for e in entries)
        if key != self._mask_key:
            hidden = np.ones(self.rows, dtype=bool)
            for member, entry in zip(self.members, entries, strict=True):
                if entry is not None:
                    np.logical_or(entry.sealed_hidden, entry.tail_hidden,
                                  out=hidden[member.start:member.start + member.rows])
            live = any(e is not None for e in entries)
            self._item = (Searchable(Source(self.vectors, hidden, self.index), self.id_of,
                                     self.metadata_of, self.accepts) if live else None)
            self._mask_key = key
        return self._item

    def locate(self, row: int) -> tuple[LoadedSegment, int]:
        """The segment and segment row of fold row `row`."""
        if not 0 <= row < self.rows:
            raise IndexError(f"row {row} out of range for a fold of {self.rows} rows")
        member = self.members[int(np.searchsorted(self._starts, row, side="right")) - 1]
        return member.segment, row - member.start

    def id_of(self, row: int) -> str:
        """The id of fold row `row`."""
        segment, local = self.locate(row)
        return segment.ids[local].decode("utf-8")

    def metadata_of(self, row: int) -> dict | None:
        """The metadata of fold row `row`."""
        segment, local = self.locate(row)
        return segment.metadata(local)

    def accepts(self, expr: filters.Expr) -> np.ndarray:
        """Which fold rows a filter accepts: its members' column masks side by side."""
        return np.concatenate([filters.evaluate(expr, columns.of_segment(m.segment))
                               for m in self.members])


@dataclass(frozen=True, slots=True)
class _Job:
    """One build: `base` (None: start anew) plus the rows of `segments`."""

    factory: str
    base: Fold | None
    segments: tuple[LoadedSegment, ...]


class Folds:
    """The folds of one collection, the choice of what each search goes through, and builds.

    `lock` is the serving lock: `split` is called under it, and builds take it only to plan
    and to install. `entries` returns the served entries, and `publish` makes an installed
    fold what searches read; both are called under the lock.
    """

    def __init__(self, config: FoldConfig, lock: threading.Lock,
                 entries: Callable[[], list[Entry]], metrics: SearcherMetrics | None = None,
                 publish: Callable[[], None] = lambda: None) -> None:
        self.config = config
        self.lock = lock
        self.entries = entries
        self.metrics = metrics
        self.publish = publish
        self._folds: dict[str, Fold] = {}
        self._retry_at: dict[str, float] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def split(self, entries: list[Entry]) -> tuple[list[Searchable], list[Entry]]:
        """The folds to search, and the entries to search on their own; hold the lock."""
        if not self._folds:
            return [], entries
        served = {id(e.segment): e for e in entries}
        items, held = [], set()
        for fold in self._folds.values():
            item = fold.searchable(served)
            if item is not None:
                items.append(item)
                held |= fold.keys
        return items, [e for e in entries if id(e.segment) not in held]

    def folds(self) -> list[Fold]:
        """The installed folds (hold the lock to use them)."""
        return list(self._folds.values())

    def wake(self) -> None:
        """The served set changed: plan builds again (starts the thread on first call)."""
        if not self.config.background or self._stop.is_set():
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True, name="sv-fold")
            self._thread.start()
        self._wake.set()

    def settle(self) -> int:
        """Run builds until none is due; return how many ran. Do not hold the lock."""
        if self._thread is not None:
            raise RuntimeError("folds are built by their thread: settle() is for background=False")
        done = 0
        while self._step():
            done += 1
        return done

    def close(self, timeout: float = 5.0) -> None:
        """Stop the build thread; a build still running after `timeout` ends on its own and
        is discarded (FAISS cannot be interrupted)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        faiss.omp_set_num_threads(1)  # a build must not take the cores that answer queries
        background.lower_priority(self.config.nice)
        while not self._stop.is_set():
            self._wake.wait(RETRY_S)
            self._wake.clear()
            try:
                while not self._stop.is_set() and self._step():
                    pass
            except Exception:  # the planner itself failed: searches go on, try again later
                log.exception("fold planning failed")

    def _step(self) -> bool:
        """Plan, build and install one fold; False when nothing was due."""
        with self.lock:
            job = self._plan(self.entries())
        if job is None:
            return False
        try:
            fold = self._build(job)
        except Exception:
            log.exception("fold of %d %s segments failed; its segments are searched on "
                          "their own, tried again in %.0f s", len(job.segments), job.factory,
                          RETRY_S)
            self._retry_at[job.factory] = time.monotonic() + RETRY_S
            return True
        if self._stop.is_set():
            return False
        with self.lock:
            self._install(fold)
        _give_back_memory()  # after the lock: a trim of a large heap takes milliseconds
        return True

    def _plan(self, entries: list[Entry]) -> _Job | None:
        """The next build due, if any; drops folds none of whose members is served."""
        served = {id(e.segment): e for e in entries}
        for factory, fold in list(self._folds.items()):
            if not fold.live(served):
                del self._folds[factory]
                log.info("fold %s released: none of its %d segments is served", factory,
                         len(fold.members))
        self._report(served)
        groups: dict[str, list[LoadedSegment]] = {}
        for entry in entries:
            factory = foldable(entry.segment, auto=self.config.auto)
            if factory is not None:
                groups.setdefault(factory, []).append(entry.segment)
        now = time.monotonic()
        for factory in sorted(groups):
            if self._retry_at.get(factory, 0.0) > now:
                continue
            fold = self._folds.get(factory)
            new = [s for s in groups[factory] if fold is None or id(s) not in fold.keys]
            if fold is None:
                if self._starts(new):
                    return _Job(factory, None, tuple(new))
            elif fold.dead_rows(served) > MAX_DEAD_FRACTION * fold.rows:
                live = [m.segment for m in fold.live(served)]
                return _Job(factory, None, tuple(live + new))
            elif new:
                return _Job(factory, fold, tuple(new))
        return None

    def _starts(self, segments: list[LoadedSegment]) -> bool:
        """Whether these segments of one group, none folded yet, make a new fold worth it."""
        return starts_fold([(s.manifest.factory, s.manifest.rows) for s in segments],
                           self.config.min_segments)

    def _build(self, job: _Job) -> Fold:
        """Build a fold without the lock: copy a graph, then add the other rows."""
        started = time.perf_counter()
        adding = list(job.segments)
        if job.base is not None:
            index = faiss.clone_index(job.base.index)
            members = list(job.base.members)
        else:
            # The largest segment's own graph is already built over its rows: start from a copy.
            seeds = [s for s in adding if s.index is not None and s.index.ntotal == s.manifest.rows]
            if seeds:
                seed = max(seeds, key=lambda s: s.manifest.rows)
                index = faiss.clone_index(seed.index)
                members = [Member(seed, 0)]
                adding.remove(seed)
            else:
                dim = int(adding[0].vectors.shape[1])
                index = build.make_index(dim, job.factory, self.config.metric)
                members = []
        for segment in adding:
            start = int(index.ntotal)
            index.add(build.prepare(segment.vectors, self.config.metric))
            members.append(Member(segment, start))
        return Fold(job.factory, index, members, time.perf_counter() - started)

    def _install(self, fold: Fold) -> None:
        """Serve `fold` in place of its group's previous one; drop its members' own indexes."""
        self._folds[fold.factory] = fold
        self._retry_at.pop(fold.factory, None)
        for member in fold.members:
            member.segment.index = None  # the fold holds its vectors and answers for it
        entries = self.entries()
        for entry in entries:
            if id(entry.segment) in fold.keys:
                entry.changed()  # forget the cached source that still points at the old index
        served = {id(e.segment): e for e in entries}
        self.publish()
        self._report(served)
        if self.metrics is not None:
            self.metrics.labels(self.metrics.fold_build_seconds).observe(fold.build_s)
        log.info("fold %s installed: %d segments, %d rows (%d live segments), built in %.2f s",
                 fold.factory, len(fold.members), fold.rows, len(fold.live(served)),
                 fold.build_s)

    def _report(self, served: dict[int, Entry]) -> None:
        if self.metrics is None:
            return
        folds = list(self._folds.values())
        self.metrics.labels(self.metrics.folded_rows).set(sum(f.rows for f in folds))
        self.metrics.labels(self.metrics.folded_segments).set(
            sum(len(f.live(served)) for f in folds))


def foldable(segment: LoadedSegment, *, auto: bool = False) -> str | None:
    """The fold group of a segment, or None when it is searched on its own."""
    return fold_group(segment.manifest.factory, segment.manifest.rows, auto=auto)


def fold_group(factory: str, rows: int, *, auto: bool = False) -> str | None:
    """The fold group of a segment of `rows` rows built with `factory`: its factory, HNSW32
    for a Flat segment of an "auto" collection, None for one searched on its own."""
    factory = factory.strip()
    if rows == 0:
        return None
    if auto and factory == build.FLAT:
        return build.AUTO_GRAPH_FACTORY
    return factory if FOLDABLE.fullmatch(factory) else None


def starts_fold(members: list[tuple[str, int]], min_segments: int = MIN_SEGMENTS) -> bool:
    """Whether segments of one group, given as (factory, rows), start a fold: at least
    `min_segments` graphs, or, with Flat ones among them, AUTO_GRAPH_MIN_ROWS rows in all."""
    if any(factory.strip() == build.FLAT for factory, _ in members):
        # Flat rows have no graph at all: one graph pays from the scan/graph crossover on.
        return sum(rows for _, rows in members) >= build.AUTO_GRAPH_MIN_ROWS
    return len(members) >= min_segments


def _stored_vectors(index: faiss.Index) -> np.ndarray:
    """The graph's own copy of its vectors (prepared: unit length for cosine), as a view."""
    storage = faiss.downcast_index(faiss.downcast_index(index).storage)
    rows, dim = int(storage.ntotal), int(storage.d)
    if rows == 0:
        return np.zeros((0, dim), dtype=np.float32)
    return faiss.rev_swig_ptr(storage.get_xb(), rows * dim).reshape(rows, dim)


def _give_back_memory() -> None:
    """Return the freed segment indexes' pages to the system (glibc keeps them otherwise).

    The indexes a fold replaces are many small graph allocations that glibc holds in its
    arenas after they are freed: without a trim the searcher's RSS stays as if both the fold
    and the segment indexes were resident.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim this way
        pass
