"""The snapshot store as found on disk: a collection folder's entries, classified and aged."""

# The garbage collector decides from these entries alone (lifecycle/gc.py); nothing here
# deletes except `prune`, which removes only empty folders.

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from indexer import store
from ingest.errors import InvalidName
from ingest.names import CollectionName

SEGMENT, TEMP, MARKER, OTHER = "segment", "temp", "marker", "other"
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
            kind = TEMP if entry.name.startswith(store.TMP_PREFIX) else OTHER
            found += _entry(root, entry, kind, now)
    return out


def _partition(root: Path, folder: Path, gen: int, part: int, now: float) -> list[Entry]:
    """Classify the entries of one partition folder."""
    names = {e.name: e for e in folder.iterdir()}
    found = []
    for name, entry in sorted(names.items()):
        if name.startswith(store.TMP_PREFIX):
            found += _entry(root, entry, TEMP, now)
        elif store.is_segment_id(name) and entry.is_dir():
            marker = names.get(name + store.MARKER_SUFFIX)
            found += _entry(root, entry, SEGMENT, now, generation=gen, partition=part,
                            start=store.parse_segment_id(name)[1],
                            marker=None if marker is None else _rel(root, marker))
        elif name.endswith(store.MARKER_SUFFIX) and store.is_segment_id(
                name[:-len(store.MARKER_SUFFIX)]):
            if not (folder / name[:-len(store.MARKER_SUFFIX)]).is_dir():
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
