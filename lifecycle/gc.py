"""Garbage collection of the segment store: remove segment folders that nothing references."""

# A folder is referenced when a registry record or a point-in-time snapshot of any collection
# in the catalog names its path. New references to a collection's folders appear only under
# its lifecycle lock (compaction, reindex, snapshot, restore) or through its own workers,
# whose new folders start at or past the checkpoint. So, holding that lock, reading the
# checkpoints before the records and keeping folders at or past the checkpoint, a decision
# cannot race with any of them. The grace period spares what a writer is still finishing.
# Every decision is made from the store as found on disk (`scan`) and what the registry and
# the snapshots protect (`Rules`, `references`); only `_collect_one` and `prune` delete.

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import redis
from tqdm import tqdm

from indexer.registry import Registry, records_of
from indexer.segment import is_segment_id, parse_segment_id
from indexer.store import MARKER_SUFFIX, SegmentStore
from ingest import audit, catalog
from ingest.errors import CollectionNotFound, InvalidName
from ingest.names import CollectionName
from lifecycle.errors import LifecycleBusy
from lifecycle.lock import LifecycleLock
from lifecycle.pointintime import pinned_paths
from streamvec import files
from streamvec.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_GRACE_S = 600.0
DEFAULT_KEEP_GENERATIONS = 3
SEGMENT, TEMP, MARKER, OTHER = "segment", "temp", "marker", "other"  # kinds of Entry
_NUMBERED = re.compile(r"(\d{4,})")


@dataclass(frozen=True, slots=True)
class Entry:
    """One thing found under a collection's store folder; `path` is relative to the root."""

    path: str
    kind: str  # SEGMENT, TEMP, MARKER (one without its folder) or OTHER
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
        names = store_names(root)
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
    """Paths below `<under>/` that a registry record or a snapshot of `names` names."""
    names = list(names)
    paths = {PurePosixPath(r.path).as_posix()
             for records in records_of(client, names).values() for r in records}
    paths |= pinned_paths(client, names)
    prefix = under + "/"
    return {p for p in paths if p.startswith(prefix)}


def _sweep(client: redis.Redis, store: SegmentStore, names: list[str], grace_s: float,
           keep: int, *,
           dry_run: bool, progress: bool, strict: bool) -> GcReport:
    """Collect each collection under its lock; a busy one raises if `strict`, else is skipped."""
    report = GcReport(dry_run=dry_run)
    for name in names:
        try:
            with LifecycleLock(client, name, "gc"):
                _collect_one(client, store, name, grace_s, keep, report, dry_run=dry_run,
                             progress=progress)
        except LifecycleBusy as exc:
            if strict:
                raise
            log.warning("collection=%s skipped by gc, run it again later: %s", name, exc)
            report.skipped.append(name)
    return report


def _collect_one(client: redis.Redis, store: SegmentStore, name: str, grace_s: float,
                 keep: int, report: GcReport, *, dry_run: bool, progress: bool) -> None:
    """Decide and delete for one collection; the caller holds its lifecycle lock."""
    rules = _rules(client, name, grace_s, keep)  # checkpoints first: see the top of the module
    referenced = references(client, catalog.list_names(client), name)
    root = store.root
    entries = scan(root, name, time.time())
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
            if entry.kind == SEGMENT:  # the object store's copy goes with the local one
                store.remove(entry.path)
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


# The store as found on disk: a collection folder's entries, classified and aged.

def scan(root: Path | str, name: str, now: float) -> list[Entry]:
    """Everything under `<root>/<name>`: segment folders (with markers), temps, the rest."""
    root = Path(root)
    found: list[Entry] = []
    for gen_dir, gen in _numbered(root, root / name, "g", now, found):
        for part_dir, part in _numbered(root, gen_dir, "p", now, found):
            found += _partition(root, part_dir, gen, part, now)
    return found


def _numbered(root: Path, folder: Path, letter: str, now: float,
              found: list[Entry]) -> list[tuple[Path, int]]:
    """Subfolders `<letter><number>` of `folder`; anything else there goes into `found`."""
    out = []
    for entry in sorted(folder.iterdir()) if folder.is_dir() else ():
        match = _NUMBERED.fullmatch(entry.name[1:])
        if entry.name[:1] == letter and match and entry.is_dir():
            out.append((entry, int(match[1])))
        else:
            kind = TEMP if entry.name.startswith(files.TMP_PREFIX) else OTHER
            found += _entry(root, entry, kind, now)
    return out


def _partition(root: Path, folder: Path, gen: int, part: int, now: float) -> list[Entry]:
    """Classify the entries of one partition folder."""
    names = {e.name: e for e in folder.iterdir()}
    found = []
    for name, entry in sorted(names.items()):
        if name.startswith(files.TMP_PREFIX):
            found += _entry(root, entry, TEMP, now)
        elif is_segment_id(name) and entry.is_dir():
            marker = names.get(name + MARKER_SUFFIX)
            found += _entry(root, entry, SEGMENT, now, generation=gen, partition=part,
                            start=parse_segment_id(name)[1],
                            marker=None if marker is None else _rel(root, marker))
        elif name.endswith(MARKER_SUFFIX) and is_segment_id(
                name[:-len(MARKER_SUFFIX)]):
            if not (folder / name[:-len(MARKER_SUFFIX)]).is_dir():
                found += _entry(root, entry, MARKER, now)
        else:
            found += _entry(root, entry, OTHER, now)
    return found


def _entry(root: Path, path: Path, kind: str, now: float, **where: Any) -> list[Entry]:
    """The entry for `path`, or none if it vanished meanwhile (a worker sweeping its temps)."""
    try:
        return [Entry(_rel(root, path), kind, _age(path, now, deep=kind == TEMP), **where)]
    except FileNotFoundError:
        return []


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


def store_names(root: Path) -> list[str]:
    """Folders directly under the store root that are named like collections."""
    names = []
    for entry in sorted(root.iterdir()) if root.is_dir() else ():
        try:
            CollectionName.parse(entry.name)
        except InvalidName:
            continue
        if entry.is_dir():
            names.append(entry.name)
    return names


def _rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()
