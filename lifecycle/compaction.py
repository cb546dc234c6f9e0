"""Compaction: merge runs of small sealed segments of a partition, purging hidden rows."""

# A merged segment covers exactly the offsets of its inputs and holds exactly their visible
# rows, so swapping it in for them changes no answer; the registry swap is one script, and a
# searcher applies it as one swap. Rows are hidden as of the plan; a segment registered
# later still hides by id (latest write wins), so nothing it overwrites comes back.

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from indexer import publish
from indexer.registry import Registry, SegmentRecord
from indexer.segfolder import load_segment
from indexer.store import SegmentStore
from indexer.view import hidden_rows
from ingest import audit, catalog
from lifecycle import rewrite
from lifecycle.lock import LifecycleLock
from streamvec import background
from streamvec.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CompactionPolicy:
    """When and how far to merge: partitions with more than `max_segments` segments get their
    consecutive segments merged greedily, oldest first, into groups of at most `max_rows` rows."""

    max_rows: int
    max_segments: int = 4

    def __post_init__(self) -> None:
        if self.max_rows < 1 or self.max_segments < 1:
            raise ValueError(f"need max_rows >= 1 and max_segments >= 1, got {self}")

    @classmethod
    def for_seal_rows(cls, seal_rows: int) -> CompactionPolicy:
        """The default for a collection: merge up to eight full seals' worth of rows."""
        return cls(max_rows=8 * seal_rows)

    def plan(self, records: list[SegmentRecord]) -> list[list[SegmentRecord]]:
        """The groups of two or more consecutive segments to merge, per partition by offset."""
        by_partition: dict[int, list[SegmentRecord]] = {}
        for rec in sorted(records, key=lambda r: (r.partition, r.start_offset)):
            by_partition.setdefault(rec.partition, []).append(rec)
        groups: list[list[SegmentRecord]] = []
        for recs in by_partition.values():
            if len(recs) <= self.max_segments:
                continue
            run: list[SegmentRecord] = []
            for rec in recs:
                if run and (sum(r.rows for r in run) + rec.rows > self.max_rows
                            or run[-1].end_offset != rec.start_offset):
                    groups.append(run)
                    run = []
                run.append(rec)
            groups.append(run)
        return [g for g in groups if len(g) > 1]

    def target(self, records: list[SegmentRecord]) -> dict[int, int]:
        """Segments per partition once `plan` is carried out (row counts before purging)."""
        counts: dict[int, int] = {}
        for rec in records:
            counts[rec.partition] = counts.get(rec.partition, 0) + 1
        for group in self.plan(records):
            counts[group[0].partition] -= len(group) - 1
        return counts


@dataclass(frozen=True, slots=True)
class CompactionReport:
    """What one compaction did."""

    collection: str
    merged: tuple[tuple[str, ...], ...]  # the input ids of each merged group
    written: tuple[str, ...]  # the new segment ids
    rows_in: int
    rows_out: int
    seconds: float
    segments_before: int
    segments_after: int

    def to_json(self) -> dict:
        """The report as a JSON-ready dict."""
        return {"collection": self.collection, "merged": [list(g) for g in self.merged],
                "written": list(self.written), "rows_in": self.rows_in,
                "rows_out": self.rows_out, "purged": self.rows_in - self.rows_out,
                "seconds": round(self.seconds, 3), "segments_before": self.segments_before,
                "segments_after": self.segments_after}


def compact(settings: Settings, collection: str, policy: CompactionPolicy | None = None, *,
            dry_run: bool = False) -> CompactionReport:
    """Carry out `policy` on a collection now; raise LifecycleBusy if another action runs."""
    client = settings.redis_client()
    spec = catalog.load_spec(client, collection)
    policy = policy or CompactionPolicy.for_seal_rows(spec.seal_rows)
    registry = Registry(client, collection)
    store = SegmentStore.from_settings(settings)
    started = time.perf_counter()
    with LifecycleLock(client, collection, "compact") as lock:
        records = registry.segments()
        groups = policy.plan(records)
        if dry_run or not groups:
            return CompactionReport(collection, tuple(tuple(r.segment_id for r in g)
                                                      for g in groups), (), 0, 0,
                                    time.perf_counter() - started, len(records), len(records))
        generation, index = registry.build_target(spec.index)
        written, rows_in = [], 0
        views: dict[int, tuple[dict, dict]] = {}  # partition -> (loaded segments, hidden rows)
        for group in groups:
            if group[0].partition not in views:
                # Only later writes hide a row: segments before a partition's first group
                # cannot change what its groups keep, so they are not read (nor verified).
                first = group[0]
                loaded = {r.segment_id: load_segment(store.folder(r.path))
                          for r in records if r.partition == first.partition
                          and r.start_offset >= first.start_offset}
                views[first.partition] = loaded, hidden_rows(list(loaded.values()))
            loaded, hidden = views[group[0].partition]
            sealed = rewrite.rows_of([loaded[r.segment_id] for r in group], hidden)
            lock.check()
            item = publish.write(store, spec.name, generation, sealed, metric=spec.metric,
                                 index=index)
            registry.swap(group, [item.record], kind="compacted", fence=lock)
            publish.mark(store, [item])
            written.append(item)
            rows_in += sum(r.rows for r in group)
            log.info('partition="%s[%d]" compacted %d segments (%d rows) into %s (%d rows)',
                     spec.name, group[0].partition, len(group), sum(r.rows for r in group),
                     item.record.segment_id, item.rows)
        after = len(registry.segments())
    report = CompactionReport(
        collection, tuple(tuple(r.segment_id for r in g) for g in groups),
        tuple(w.record.segment_id for w in written), rows_in, sum(w.rows for w in written),
        time.perf_counter() - started, len(records), after)
    audit.record(client, "compaction.run", collection, report.to_json(), settings.actor)
    return report


@dataclass
class AutoCompactor:
    """Runs the compaction policy every `interval_s` on a thread, for an indexer process."""

    settings: Settings
    collection: str
    policy: CompactionPolicy
    interval_s: float
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread."""
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"sv-compact-{self.collection}")
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread; a compaction under way finishes first."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        background.lower_priority(self.settings.build_nice)
        while not self._stop.wait(self.interval_s):
            try:
                report = compact(self.settings, self.collection, self.policy)
                if report.written:
                    log.info("collection=%s auto-compaction: %d -> %d segments",
                             self.collection, report.segments_before, report.segments_after)
            except Exception as exc:  # noqa: BLE001 - busy lock, Redis away: try next round
                log.warning("collection=%s auto-compaction skipped: %s", self.collection, exc)
