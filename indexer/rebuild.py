"""Rebuild a collection's registry from the segment store alone (invariant 4, the snapshot)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import redis

from indexer import segfolder
from indexer.errors import RebuildError
from indexer.registry import Registry, SegmentRecord
from indexer.segment import parse_segment_id
from indexer.store import SegmentStore, coverage_chain, is_registered, segment_rel
from ingest.names import CollectionName

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PartitionReport:
    """What a rebuild found for one partition."""

    partition: int
    segments: int
    rows: int
    checkpoint: int


@dataclass(frozen=True, slots=True)
class RebuildReport:
    """The registry a rebuild derived from the store, and what it left out or recovered."""

    collection: str
    generation: int
    partitions: tuple[PartitionReport, ...]
    records: tuple[SegmentRecord, ...]
    ignored: tuple[str, ...]  # unregistered folders outside the chain (orphans)
    recovered: tuple[str, ...]  # unmarked folders that a later registered segment proves
    version: int | None = None  # the registry version written; None for a plan

    @property
    def checkpoints(self) -> dict[int, int]:
        """Checkpoint per partition that has at least one segment."""
        return {p.partition: p.checkpoint for p in self.partitions if p.segments}


def plan_rebuild(store: SegmentStore, collection: str, generation: int = 0) -> RebuildReport:
    """Derive a collection's registry from the segment store alone, writing nothing.

    Marked folders chain per partition from offset 0. A hole between two is filled only by the
    one chain of unmarked folders spanning it exactly (a crash between register and mark).
    """
    CollectionName.parse(collection)
    by_partition: dict[int, list[Path]] = {}
    for path in store.list_segments(collection, generation):
        by_partition.setdefault(parse_segment_id(path.name)[0], []).append(path)
    parts, records, ignored, recovered = [], [], [], []
    for partition, paths in sorted(by_partition.items()):
        chain = coverage_chain(partition, paths)
        chain_ids = {p.name for p in chain}
        ignored += [p.name for p in paths if p.name not in chain_ids]
        recovered += [p.name for p in chain if not is_registered(p)]
        found = [_checked(path, collection, generation) for path in chain]
        records += [SegmentRecord.from_manifest(m) for m in found]
        parts.append(PartitionReport(partition, len(found), sum(m.rows for m in found),
                                     found[-1].end_offset if found else 0))
    return RebuildReport(collection, generation, tuple(parts), tuple(records), tuple(ignored),
                         tuple(recovered))


def rebuild(client: redis.Redis, store: SegmentStore, collection: str, generation: int = 0,
            *, mirror_markers: bool = False) -> RebuildReport:
    """Replace a collection's registry with the one derived from the segment store.

    The markers of recovered folders are written locally, and with `mirror_markers` in the
    object store too: for folders that were fetched from it.
    """
    registry = Registry(client, collection)
    before = registry.version()
    report = plan_rebuild(store, collection, generation)
    version = registry.replace_all(list(report.records), report.checkpoints, before)
    for seg_id in report.recovered:
        store.mark_registered(segment_rel(collection, generation, parse_segment_id(seg_id)[0],
                                          seg_id), mirror=mirror_markers)
    log.info("collection=%s registry rebuilt from %s: %d segments, version %d",
             collection, store.root, len(report.records), version)
    return replace(report, version=version)


def _checked(path: Path, collection: str, generation: int) -> segfolder.SegmentManifest:
    """Verify one chained folder completely and check it belongs where it lies."""
    seg = segfolder.load_segment(path, verify=True)
    m = seg.manifest
    if (m.collection, m.generation) != (collection, generation):
        raise RebuildError(f"segment {path} belongs to {m.collection} generation {m.generation}")
    # Hides may name segments that compaction has since merged away: visibility follows ids
    # (latest write wins), so such names are history, not a gap.
    return m
