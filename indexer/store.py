"""The snapshot store's layout: segment ids, folder paths, listing, orphans, markers, fsync."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from indexer.errors import RebuildError

log = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"
MARKER_SUFFIX = ".registered"
_SEGMENT_ID = re.compile(r"p(\d{4,})-(\d{12,})-(\d{12,})")
_NUMBERED = re.compile(r"(\d{4,})")
_CHUNK = 1 << 20


def segment_id(partition: int, start: int, end: int) -> str:
    """Return the id of the segment covering offsets [start, end) of `partition`."""
    return f"p{partition:04d}-{start:012d}-{end:012d}"


def parse_segment_id(text: str) -> tuple[int, int, int]:
    """Return (partition, start, end) of a segment id; raise ValueError if `text` is not one."""
    match = _SEGMENT_ID.fullmatch(text)
    parts = (int(match[1]), int(match[2]), int(match[3])) if match else None
    # Extra zero padding would give one range two folder names; only the canonical form counts.
    if parts is None or segment_id(*parts) != text or parts[1] >= parts[2]:
        raise ValueError(f"{text!r} is not a segment id such as p0003-000000000100-000000000200")
    return parts


def is_segment_id(text: str) -> bool:
    """Whether `text` is a canonical segment id (see `parse_segment_id`)."""
    try:
        parse_segment_id(text)
    except ValueError:
        return False
    return True


def partition_path(root: Path | str, collection: str, generation: int, partition: int) -> Path:
    """Return the folder that holds every segment of one partition in one generation."""
    return Path(root) / collection / f"g{generation:04d}" / f"p{partition:04d}"


def segment_path(
    root: Path | str, collection: str, generation: int, partition: int, segment_id: str
) -> Path:
    """Return the folder of one segment."""
    return partition_path(root, collection, generation, partition) / segment_id


def temp_path(folder: Path, name: str) -> Path:
    """Return a fresh temporary name in `folder`: never listed, swept by orphan cleanup."""
    return folder / f"{TMP_PREFIX}{name}-{os.getpid()}-{secrets.token_hex(4)}"


def list_segments(root: Path | str, collection: str, generation: int | None = None) -> list[Path]:
    """Return the segment folders of a collection by (generation, partition, start); skips temps."""
    base = Path(root) / collection
    gens = [(generation, base / f"g{generation:04d}")] if generation is not None else _numbered(
        base, "g")
    found = [(g, parse_segment_id(s.name), s)
             for g, gen in gens for _, part in _numbered(gen, "p") for s in segment_dirs(part)]
    return [path for _, _, path in sorted(found)]


def segment_dirs(folder: Path) -> list[Path]:
    """Segment folders directly in a partition folder: canonical names only, no temps or markers."""
    entries = folder.iterdir() if folder.is_dir() else ()
    return [e for e in entries if is_segment_id(e.name) and e.is_dir()]


def remove_orphans(
    root: Path | str, collection: str, generation: int, partition: int, min_start: int
) -> list[Path]:
    """Delete unregistered folders of a partition starting at or after `min_start`, and temps.

    A worker calls this when it takes a partition over: such folders were written by an owner
    that never registered them, and the new owner will write that range again.
    """
    folder = partition_path(root, collection, generation, partition)
    if not folder.is_dir():
        return []
    stale = [e for e in folder.iterdir() if e.name.startswith(TMP_PREFIX)]
    stale += [s for s in segment_dirs(folder)
              if parse_segment_id(s.name)[1] >= min_start and not is_registered(s)]
    for entry in sorted(stale):
        remove(entry)
        log.info("segment=%s removed (temporary or never registered)", entry)
    if stale:
        fsync_dir(folder)
    return sorted(stale)


def publish(tmp: Path, final: Path, is_valid: Callable[[Path], bool]) -> bool:
    """Rename the complete folder `tmp` to `final`; return False if a valid `final` was kept.

    A `final` that fails `is_valid` is replaced. Two writers of one name race safely: the
    second rename fails, and the folder already there is checked instead.
    """
    trash = None
    if final.exists():
        if is_valid(final):
            return False
        log.warning("segment=%s failed verification; replacing it", final)
        # A folder cannot be renamed over a non-empty one: move the bad one aside first.
        trash = temp_path(final.parent, final.name)
        os.rename(final, trash)
    try:
        os.rename(tmp, final)
    except OSError:
        if final.exists() and is_valid(final):
            return False
        raise
    fsync_dir(final.parent)
    if trash is not None:
        remove(trash)
    return True


def mark_registered(path: Path | str) -> Path:
    """Write the durable marker beside a segment folder that says the registry accepted it."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no segment folder at {path}")
    marker = path.parent / (path.name + MARKER_SUFFIX)
    tmp = temp_path(path.parent, marker.name)
    write_file(tmp, json.dumps({"segment_id": path.name, "at": time.time()}).encode())
    os.replace(tmp, marker)
    fsync_dir(path.parent)
    return marker


def is_registered(path: Path | str) -> bool:
    """Whether a segment folder carries its registration marker."""
    path = Path(path)
    return (path.parent / (path.name + MARKER_SUFFIX)).is_file()


def coverage_chain(partition: int, paths: list[Path]) -> list[Path]:
    """Order a partition's registered folders into gapless coverage from offset 0.

    A hole between two marked folders is filled only by the one chain of unmarked folders
    spanning it exactly: registration succeeded there but the marker was never written. A marked
    folder inside the range of a wider marked one was merged into it by compaction: skipped.
    """
    spans = {p: parse_segment_id(p.name)[1:] for p in paths}
    # Widest first at each start: a compacted segment supersedes the marked inputs it merged,
    # which stay on disk until garbage collection.
    marked = sorted(((start, -end), p) for p in paths if is_registered(p)
                    for start, end in [spans[p]])
    chain: list[Path] = []
    cur = 0
    for (start, neg_end), path in marked:
        end = -neg_end
        if start < cur and end <= cur:
            continue
        if start < cur:
            raise RebuildError(f"partition {partition}: registered segment {path.name} overlaps "
                               f"offsets already covered up to {cur}")
        if start > cur:
            unmarked = [p for p in paths if not is_registered(p)]
            chain += _bridge(partition, {p: spans[p] for p in unmarked}, cur, start)
        chain.append(path)
        cur = end
    return chain


def _bridge(partition: int, spans: dict[Path, tuple[int, int]], lo: int, hi: int) -> list[Path]:
    """The unique chain of unmarked folders covering exactly [lo, hi), or RebuildError."""
    ways: dict[int, int] = {hi: 1}  # number of chains from an offset to `hi`, capped at 2
    step: dict[int, Path] = {}
    for start in sorted({s for s, _ in spans.values() if lo <= s < hi}, reverse=True):
        options = [(p, e) for p, (s, e) in spans.items() if s == start and ways.get(e, 0)]
        ways[start] = min(2, sum(ways[e] for _, e in options))
        if options:
            step[start] = options[0][0]  # the only option whenever ways[start] == 1
    if ways.get(lo, 0) != 1:
        why = "more than one set of unregistered folders" if ways.get(lo) else "no segment"
        raise RebuildError(f"partition {partition}: gap in the registered segments: offsets "
                           f"[{lo}, {hi}) are covered by {why}")
    chain, cur = [], lo
    while cur != hi:
        chain.append(step[cur])
        cur = spans[step[cur]][1]
    return chain


def write_file(path: Path, data: bytes) -> None:
    """Write `data` to a new file and fsync it."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def fsync_file(path: Path) -> None:
    """Fsync a file written by a library that takes a file name (np.save, faiss.write_index)."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Fsync a folder so that entries created, renamed or removed in it survive a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def makedirs(path: Path) -> None:
    """Create `path` and its missing parents, fsyncing each new entry into its parent."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        folder.mkdir(exist_ok=True)
        fsync_dir(folder.parent)


def remove(path: Path) -> None:
    """Delete a folder tree or a file; a path already gone is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _numbered(folder: Path, letter: str) -> list[tuple[int, Path]]:
    """Subfolders named `<letter><number>` (g0000, p0003), by number."""
    if not folder.is_dir():
        return []
    found = []
    for entry in folder.iterdir():
        match = _NUMBERED.fullmatch(entry.name[1:])
        if entry.name[:1] == letter and match and entry.is_dir():
            found.append((int(match[1]), entry))
    return sorted(found)
