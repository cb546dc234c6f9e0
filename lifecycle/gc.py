"""Garbage collection of the segment store: remove segment folders that nothing references."""

# A folder is referenced when a registry record or a point-in-time snapshot of any collection
# in the catalog names its path. New references to a collection's folders appear only under
# its lifecycle lock (compaction, reindex, snapshot, restore) or through its own workers,
# whose new folders start at or past the checkpoint. So, holding that lock, reading the
# checkpoints before the records and keeping folders at or past the checkpoint, a decision
# cannot race with any of them. The grace period spares what a writer is still finishing,
# and what a searcher may still read: it counts from when a swap released a folder.
# Every decision is made from the store as found on disk (`scan`) and what the registry and
# the snapshots protect (`Rules`, `references`); only `_collect_one` and `prune` delete.

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

import redis
from tqdm import tqdm

from indexer.registry import Registry, records_of
from indexer.segment import parse_segment_id
from indexer.store import MARKER, OTHER, SEGMENT, TEMP, SegmentStore
from ingest import audit, catalog
from ingest.errors import CollectionNotFound
from ingest.names import CollectionName
from lifecycle.errors import LifecycleBusy, RegistryUnreadable
from lifecycle.lock import LifecycleLock
from lifecycle.pointintime import pinned_paths
from streamvec import files
from streamvec.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_GRACE_S = 600.0
DEFAULT_KEEP_GENERATIONS = 3


@dataclass(frozen=True, slots=True)
class Entry:
    """One thing found under a collection's store folder; `path` is relative to the root."""

    path: str
    kind: str  # the store's kinds: SEGMENT, TEMP, MARKER (one without its folder) or OTHER
    age_s: float
    generation: int | None = None
    partition: int | None = None
    start: int | None = None
    marker: str | None = None  # a segment's `.registered` marker, which goes with it


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
    store = SegmentStore.from_settings(settings)
    root = store.root
    if collection is not None:
        names = [str(CollectionName.parse(collection))]
        if not client.exists(catalog.spec_key(names[0])) and not (root / names[0]).is_dir():
            raise CollectionNotFound(f"collection {names[0]!r} does not exist and has no "
                                     f"folder in the segment store {root}")
    else:
        names = store.collections()
    report = _sweep(client, store, names, grace_s, keep_generations, dry_run=dry_run,
                    progress=progress, strict=collection is not None)
    if not dry_run:
        audit.record(client, "gc.run", collection or "*", report.summary(), settings.actor)
    return report


def collect_dropped(settings: Settings, name: str) -> GcReport:
    """Remove what a dropped collection left in the store, except what others reference."""
    store = SegmentStore.from_settings(settings)
    present = (store.root / name).exists()
    return _sweep(settings.redis_client(), store, [name] if present else [], 0.0,
                  DEFAULT_KEEP_GENERATIONS, dry_run=False, progress=False, strict=False)


def references(client: redis.Redis, names: Iterable[str], under: str) -> set[str]:
    """Paths below `<under>/` that a registry record or a snapshot of `names` names.

    A malformed record still protects the path it names, if it names one; one that names
    none stops the collection of `under` when it is `under`'s own (it may name any folder
    there) and is logged otherwise, so one bad record never blocks every collection.
    """
    names = list(names)
    bad: dict[tuple[str, str], bytes] = {}
    paths = {PurePosixPath(r.path).as_posix()
             for records in records_of(client, names, skipped=bad).values() for r in records}
    for (name, sid), raw in sorted(bad.items()):
        path = _raw_path(raw)
        if path is not None:
            paths.add(path)
        elif name == under:
            raise RegistryUnreadable(f"registry record {sid!r} of {name} names no readable "
                                     "path: gc cannot tell which folder it keeps; repair the "
                                     "record or rebuild the registry first")
        else:
            log.error("collection=%s registry record %s is malformed; ignored by gc of %s",
                      name, sid, under)
    paths |= pinned_paths(client, names)
    prefix = under + "/"
    return {p for p in paths if p.startswith(prefix)}


def _raw_path(raw: bytes) -> str | None:
    """The path a malformed registry record names, if its JSON holds one."""
    try:
        path = json.loads(raw).get("path")
    except (ValueError, AttributeError):
        return None
    return PurePosixPath(path).as_posix() if isinstance(path, str) and path else None


def _sweep(client: redis.Redis, store: SegmentStore, names: list[str], grace_s: float,
           keep: int, *,
           dry_run: bool, progress: bool, strict: bool) -> GcReport:
    """Collect each collection under its lock; a busy one raises if `strict`, else is skipped."""
    report = GcReport(dry_run=dry_run)
    for name in names:
        try:
            with LifecycleLock(client, name, "gc") as lock:
                _collect_one(client, store, name, grace_s, keep, report, dry_run=dry_run,
                             progress=progress, lock=lock)
        except LifecycleBusy as exc:
            if strict:
                raise
            log.warning("collection=%s skipped by gc, run it again later: %s", name, exc)
            report.skipped.append(name)
    return report


def _collect_one(client: redis.Redis, store: SegmentStore, name: str, grace_s: float,
                 keep: int, report: GcReport, *, dry_run: bool, progress: bool,
                 lock: LifecycleLock) -> None:
    """Decide and delete for one collection; the caller holds its lifecycle lock."""
    rules = _rules(client, name, grace_s, keep)  # checkpoints first: see the top of the module
    referenced = references(client, catalog.list_names(client), name)
    root = store.root
    registry = Registry(client, name)
    released = registry.released()
    now = time.time()
    entries = [since_released(e, released, now) for e in scan(store, name, now)]
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
            lock.check()  # a lease run out: another action may be using what is left
            if entry.kind == SEGMENT:  # the object store's copy goes with the local one
                store.remove(entry.path)
                if entry.path in released:
                    client.hdel(registry.released_key, entry.path)
            else:
                for path in paths:
                    files.remove(path)
            log.info("collection=%s removed %s (%s)", name, entry.path, reason)
    if not rules.listed and not dry_run:
        prune(root / name)
    report.collections.append(name)


def _rules(client: redis.Redis, name: str, grace_s: float, keep: int) -> Rules:
    """Read what protects a collection's folders, in one transaction."""
    if not client.sismember(catalog.COLLECTIONS_KEY, name):
        return Rules(False, grace_s)
    state = Registry(client, name).state(records=False)
    return Rules(True, grace_s, state.generation,
                 kept_generations(state.generation, state.generations, keep), state.checkpoints)


def since_released(entry: Entry, released: Mapping[str, float], now: float) -> Entry:
    """A segment folder aged from when a swap stopped referencing it, where that is known.

    Its mtime says when it was written, which for a segment served a month and released a
    second ago is a month: searchers that have not reloaded yet still read it. Folders no
    swap released (never registered, or pinned by a snapshot since deleted) keep their mtime.
    """
    at = released.get(entry.path) if entry.kind == SEGMENT else None
    return entry if at is None else replace(entry, age_s=now - at)


# The store as found on disk: a collection folder's entries, as the store lists them, aged.

def scan(store: SegmentStore, name: str, now: float) -> list[Entry]:
    """Everything under a collection's folder: segment folders (with markers), temps, the rest."""
    found = []
    for item in store.walk(name):
        start = None if item.segment is None else parse_segment_id(item.segment)[1]
        try:
            age_s = _age(store.root / item.path, now, deep=item.kind == TEMP)
        except FileNotFoundError:  # vanished meanwhile: a worker sweeping its temps
            continue
        found.append(Entry(item.path, item.kind, age_s, item.generation, item.partition, start,
                           item.marker))
    return found


def _age(path: Path, now: float, *, deep: bool = False) -> float:
    """Seconds since the last change; `deep` also looks one level in (a folder being filled)."""
    times = [path.lstat().st_mtime]
    if deep and path.is_dir() and not path.is_symlink():
        times += [e.lstat().st_mtime for e in path.iterdir()]
    return now - max(times)


def tree_bytes(path: Path) -> int:
    """Bytes of a file, or of every file below a folder; what vanishes meanwhile counts 0."""
    files = [path] if not path.is_dir() or path.is_symlink() else [
        Path(d) / f for d, _, names in os.walk(path) for f in names]
    total = 0
    for file in files:
        with contextlib.suppress(FileNotFoundError):
            total += file.lstat().st_size
    return total


def prune(base: Path) -> None:
    """Remove the empty folders a dropped collection leaves, `base` included."""
    for folder, _, _ in os.walk(base, topdown=False):  # children before their parents
        with contextlib.suppress(OSError):  # not empty: something referenced lies below
            os.rmdir(folder)
