"""Garbage collection of the snapshot store: remove segment folders that nothing references."""

# A folder is referenced when a registry record or a point-in-time snapshot of any collection
# in the catalog names its path. New references to a collection's folders appear only under
# its lifecycle lock (compaction, reindex, snapshot, restore) or through its own workers,
# whose new folders start at or past the checkpoint. So, holding that lock, reading the
# checkpoints before the records and keeping folders at or past the checkpoint, a decision
# cannot race with any of them. The grace period spares what a writer is still finishing.

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import redis
from tqdm import tqdm

from indexer import remote, store
from indexer.errors import LifecycleBusy
from indexer.registry import Registry, SegmentRecord
from ingest import audit, catalog
from ingest.errors import CollectionNotFound
from ingest.names import CollectionName
from lifecycle.gc_scan import (
    MARKER,
    OTHER,
    SEGMENT,
    TEMP,
    Entry,
    prune,
    scan,
    store_names,
    tree_bytes,
)
from lifecycle.lock import LifecycleLock
from lifecycle.snapshots import PointInTime, snapshots_key
from streamvec.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_GRACE_S = 600.0
DEFAULT_KEEP_GENERATIONS = 3


@dataclass(frozen=True, slots=True)
class Rules:
    """What a collection's registry protects besides references; not `listed` once dropped."""

    listed: bool
    grace_s: float
    active_generation: int = 0
    kept_generations: frozenset[int] = frozenset()
    checkpoints: Mapping[int, int] = field(default_factory=dict)


@dataclass
class GcReport:
    """What a collection run removed (or would remove) and why it kept the rest."""

    dry_run: bool
    collections: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    kept: Counter[str] = field(default_factory=Counter)
    removed_by: Counter[str] = field(default_factory=Counter)
    skipped: list[str] = field(default_factory=list)  # collections whose lock was busy

    def summary(self) -> dict[str, Any]:
        """Counts only: what the audit entry records."""
        return {"collections": len(self.collections), "removed": len(self.removed),
                "bytes_freed": self.bytes_freed, "kept": dict(sorted(self.kept.items())),
                "removed_by": dict(sorted(self.removed_by.items())), "skipped": self.skipped,
                "dry_run": self.dry_run}

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON-ready dict, with every removed path."""
        return {**self.summary(), "collections": self.collections, "paths": self.removed}


def decide(entry: Entry, referenced: Set[str], rules: Rules) -> tuple[bool, str]:
    """Whether to keep one entry, and the reason: (True, reason) keeps it."""
    if entry.kind == SEGMENT:
        if entry.path in referenced:
            return True, "referenced"
        if entry.age_s < rules.grace_s:
            return True, "young"
        if not rules.listed:
            return False, "dropped"
        if entry.generation == rules.active_generation:
            # Compaction leaves its merged inputs here: only what the registry may still
            # take (written, not yet registered) is kept.
            pending = entry.start >= rules.checkpoints.get(entry.partition, 0)
            return (True, "pending") if pending else (False, "unreferenced")
        if entry.generation in rules.kept_generations:
            return True, "generation"
        return False, "unreferenced"
    if entry.kind == OTHER and rules.listed:
        return True, "unknown"  # not ours to judge in a live collection
    if entry.age_s < rules.grace_s:
        return True, "young"
    return False, {TEMP: "temp", MARKER: "orphan-marker"}.get(entry.kind, "dropped")


def kept_generations(active: int, known: Iterable[int], keep: int) -> frozenset[int]:
    """The `keep` highest recorded generations plus the active one."""
    return frozenset(sorted(known, reverse=True)[:max(keep, 0)]) | {active}


def collect(settings: Settings, collection: str | None = None, *,
            grace_s: float = DEFAULT_GRACE_S, keep_generations: int = DEFAULT_KEEP_GENERATIONS,
            dry_run: bool = False, progress: bool = False) -> GcReport:
    """Remove unreferenced folders of one collection or of every folder in the store.

    A named collection whose lock is busy raises LifecycleBusy; in a whole-store run it is
    skipped and listed in the report. Audited as `gc.run` unless `dry_run`.
    """
    if grace_s < 0 or keep_generations < 0:
        raise ValueError("grace and keep-generations must be >= 0")
    client = settings.redis_client()
    root = Path(settings.store)
    remote.attach(settings)
    if collection is not None:
        names = [str(CollectionName.parse(collection))]
        if not client.exists(catalog.spec_key(names[0])) and not (root / names[0]).is_dir():
            raise CollectionNotFound(f"collection {names[0]!r} does not exist and has no "
                                     f"folder in the snapshot store {root}")
    else:
        names = store_names(root)
    report = _sweep(client, root, names, grace_s, keep_generations, dry_run=dry_run,
                    progress=progress, strict=collection is not None)
    if not dry_run:
        audit.record(client, "gc.run", collection or "*", report.summary(), settings.actor)
    return report


def collect_dropped(settings: Settings, name: str) -> GcReport:
    """Remove what a dropped collection left in the store, except what others reference."""
    root = Path(settings.store)
    remote.attach(settings)
    return _sweep(settings.redis_client(), root, [name] if (root / name).exists() else [], 0.0,
                  DEFAULT_KEEP_GENERATIONS, dry_run=False, progress=False, strict=False)


def references(client: redis.Redis, names: Iterable[str], under: str) -> set[str]:
    """Paths below `<under>/` that a registry record or a snapshot of `names` names."""
    names = list(names)
    with client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hgetall(Registry(client, name).segments_key)
            pipe.hgetall(snapshots_key(name))
        replies = pipe.execute()
    paths: list[str] = []
    for segments, snapshots in zip(replies[::2], replies[1::2], strict=True):
        paths += [SegmentRecord.from_json(k.decode(), v).path for k, v in segments.items()]
        for k, v in snapshots.items():
            paths += [r.path for r in PointInTime.from_json(k.decode(), v).records]
    prefix = under + "/"
    return {p for p in (PurePosixPath(x).as_posix() for x in paths) if p.startswith(prefix)}


def _sweep(client: redis.Redis, root: Path, names: list[str], grace_s: float, keep: int, *,
           dry_run: bool, progress: bool, strict: bool) -> GcReport:
    """Collect each collection under its lock; a busy one raises if `strict`, else is skipped."""
    report = GcReport(dry_run=dry_run)
    for name in names:
        try:
            with LifecycleLock(client, name, "gc"):
                _collect_one(client, root, name, grace_s, keep, report, dry_run=dry_run,
                             progress=progress)
        except LifecycleBusy as exc:
            if strict:
                raise
            log.warning("collection=%s skipped by gc, run it again later: %s", name, exc)
            report.skipped.append(name)
    return report


def _collect_one(client: redis.Redis, root: Path, name: str, grace_s: float, keep: int,
                 report: GcReport, *, dry_run: bool, progress: bool) -> None:
    """Decide and delete for one collection; the caller holds its lifecycle lock."""
    rules = _rules(client, name, grace_s, keep)  # checkpoints first: see the top of the module
    referenced = references(client, catalog.list_names(client), name)
    entries = scan(root, name, time.time())
    objects = remote.attached(root)
    for entry in tqdm(entries, desc=f"gc {name}", unit="entries", disable=not progress):
        keep_it, reason = decide(entry, referenced, rules)
        if keep_it:
            report.kept[reason] += 1
            continue
        report.removed.append(entry.path)
        report.removed_by[reason] += 1
        paths = [root / p for p in (entry.marker, entry.path) if p is not None]
        report.bytes_freed += sum(tree_bytes(p) for p in paths)
        if not dry_run:
            for path in paths:  # the marker first: a crash never leaves a marked remnant
                store.remove(path)
            if objects is not None and entry.kind == SEGMENT:
                objects.remove(entry.path)  # the object store's copy goes with the local one
            log.info("collection=%s removed %s (%s)", name, entry.path, reason)
    if not rules.listed and not dry_run:
        prune(root / name)
    report.collections.append(name)


def _rules(client: redis.Redis, name: str, grace_s: float, keep: int) -> Rules:
    """Read what protects a collection's folders, in one transaction."""
    if not client.sismember(catalog.COLLECTIONS_KEY, name):
        return Rules(False, grace_s)
    registry = Registry(client, name)
    with client.pipeline(transaction=True) as pipe:
        pipe.hgetall(registry.ckpt_key)
        pipe.get(registry.generation_key)
        pipe.hkeys(registry.generations_key)
        ckpts, gen, gens = pipe.execute()
    active = int(gen or 0)
    return Rules(True, grace_s, active, kept_generations(active, (int(g) for g in gens), keep),
                 {int(p): int(c) for p, c in ckpts.items()})


