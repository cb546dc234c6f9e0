"""The segment store: where segment folders live, their markers, the object store mirroring them."""

# A store is a local root plus, optionally, an object store (indexer/objectstore.py) that
# mirrors it. The local folder is the working copy every reader opens; the object store is
# what other machines read. Both hold `<collection>/g<generation>/p<partition>/<segment id>`
# folders, and a `<segment id>.registered` marker beside a folder says the registry accepted
# it. A process builds one SegmentStore from its settings and passes it to whatever reads or
# writes folders: a reader asks it for a folder, which is fetched from the object store and
# verified when only the object store has it. The mirror is written in a fixed order: data
# files, the manifest last, the marker only after registration.

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from indexer import segfolder
from indexer.errors import CorruptSegment, RebuildError, RemoteStoreError
from indexer.objectstore import RemoteStore
from indexer.segment import SealedRows, is_segment_id, parse_segment_id, segment_id
from ingest.errors import InvalidName
from ingest.names import CollectionName
from streamvec import files

if TYPE_CHECKING:
    from streamvec.settings import Settings

log = logging.getLogger(__name__)

MARKER_SUFFIX = ".registered"
SEGMENT, TEMP, MARKER, OTHER = "segment", "temp", "marker", "other"  # kinds of StoreItem
_NUMBERED = re.compile(r"([gp])(\d{4,})")


def check_rel_path(rel: str | os.PathLike[str]) -> str:
    """Return a registry path (relative to the store root) as posix text; ValueError if unsafe."""
    text = Path(rel).as_posix() if isinstance(rel, os.PathLike) else str(rel)
    parts = PurePosixPath(text).parts
    # Paths come from the registry: one that climbs out would read or write beside the store.
    if (not parts or text.startswith("/") or "\\" in text
            or any(p in ("", ".", "..") for p in text.split("/"))):
        raise ValueError(f"{text!r} is not a path relative to the segment store root")
    return "/".join(parts)


def segment_rel(collection: str, generation: int, partition: int, segment: str) -> str:
    """The store-relative path of one segment's folder."""
    return f"{_partition_rel(collection, generation, partition)}/{segment}"


def rel_path(manifest: segfolder.SegmentManifest) -> str:
    """The store-relative path of the folder that holds the segment `manifest` describes."""
    return segment_rel(manifest.collection, manifest.generation, manifest.partition,
                       manifest.segment_id)


def marker_path(folder: Path) -> Path:
    """Where the registration marker of a local segment folder lies: beside it."""
    return folder.parent / (folder.name + MARKER_SUFFIX)


def is_registered(folder: Path | str) -> bool:
    """Whether a local segment folder carries its registration marker."""
    return marker_path(Path(folder)).is_file()


@dataclass(frozen=True, slots=True)
class StoreItem:
    """One thing found under a collection's local folder, placed in the layout.

    `path` and `marker` are relative to the store root. `kind` is SEGMENT (a segment folder),
    TEMP, MARKER (a registration marker whose folder is gone) or OTHER.
    """

    path: str
    kind: str
    generation: int | None = None
    partition: int | None = None
    segment: str | None = None
    marker: str | None = None  # the registration marker beside a segment folder, if any

    @property
    def registered(self) -> bool:
        """Whether a segment folder carried its registration marker when it was listed."""
        return self.marker is not None


@dataclass
class FetchReport:
    """What fetching a collection's remote folders did: installed, kept, refused, markers."""

    fetched: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # already present locally and valid
    refused: dict[str, str] = field(default_factory=dict)  # path -> why
    markers: int = 0


class SegmentStore:
    """Every collection's segment folders: a local root, mirrored to an object store if set.

    Usage: store = SegmentStore.from_settings(settings); folder = store.folder(record.path)
    """

    def __init__(self, root: Path | str, remote: RemoteStore | None = None) -> None:
        self.root = Path(root)
        self.remote = remote

    @classmethod
    def from_settings(cls, settings: Settings) -> SegmentStore:
        """The store `settings` name: its local folder and its object store, if any."""
        return cls(settings.store, RemoteStore.from_settings(settings))

    def __repr__(self) -> str:
        return f"SegmentStore({str(self.root)!r}, remote={self.remote!r})"

    # The layout.

    def path(self, rel: str | os.PathLike[str]) -> Path:
        """The local path of a store-relative path, as it is here (nothing is fetched)."""
        return self.root / check_rel_path(rel)

    def segment_path(self, collection: str, generation: int, partition: int,
                     segment: str) -> Path:
        """The local folder of one segment."""
        return self.root / segment_rel(collection, generation, partition, segment)

    def list_segments(self, collection: str, generation: int | None = None) -> list[Path]:
        """The local segment folders of a collection by (generation, partition, start)."""
        base = self.path(collection)
        gens = ([(generation, base / f"g{generation:04d}")] if generation is not None
                else _numbered(base, "g"))
        found = [(g, parse_segment_id(s.name), s)
                 for g, gen in gens for _, part in _numbered(gen, "p") for s in _segments(part)]
        return [path for _, _, path in sorted(found)]

    def walk(self, collection: str) -> list[StoreItem]:
        """Everything under a collection's local folder, in name order, each level's own
        entries before the levels below; a marker beside its folder goes with the folder.
        """
        found: list[StoreItem] = []
        for gen, gen_dir in self._walk_level(self.path(collection), "g", found):
            for part, part_dir in self._walk_level(gen_dir, "p", found):
                found += self._walk_partition(part_dir, gen, part)
        return found

    def collections(self) -> list[str]:
        """Folders directly under the local root that are named like collections."""
        names = []
        for entry in sorted(self.root.iterdir()) if self.root.is_dir() else ():
            try:
                CollectionName.parse(entry.name)
            except InvalidName:
                continue
            if entry.is_dir():
                names.append(entry.name)
        return names

    def count_folders(self, collection: str) -> int:
        """How many local segment folders a collection has, in every generation."""
        return len(self.list_segments(collection))

    def remove_orphans(self, collection: str, generation: int, partition: int,
                       min_start: int) -> list[Path]:
        """Delete unregistered folders of a partition starting at or after `min_start`, and temps.

        A worker calls this when it takes a partition over: such folders were written by an
        owner that never registered them, and the new owner will write that range again.
        """
        folder = self.root / _partition_rel(collection, generation, partition)
        if not folder.is_dir():
            return []
        stale = [e for e in folder.iterdir() if e.name.startswith(files.TMP_PREFIX)]
        stale += [s for s in _segments(folder)
                  if parse_segment_id(s.name)[1] >= min_start and not is_registered(s)]
        for entry in sorted(stale):
            files.remove(entry)
            log.info("segment=%s removed (temporary or never registered)", entry)
        if stale:
            files.fsync_dir(folder)
        return sorted(stale)

    # Writing: the folder, then its copy in the object store, then (once registered) markers.

    def write(self, collection: str, generation: int, sealed: SealedRows, index: Any,
              factory: str, metric: str, hides: dict[str, Any]) -> segfolder.SegmentManifest:
        """Write a segment's folder (idempotent per range) and upload it to the object store."""
        sid = segment_id(sealed.partition, sealed.start_offset, sealed.end_offset)
        final = self.segment_path(collection, generation, sealed.partition, sid)
        manifest = segfolder.write_segment(final, collection, generation, sealed, index,
                                           factory, metric, hides)
        self.mirror(rel_path(manifest))  # in the object store before anything registers it
        return manifest

    def mirror(self, rel: str | os.PathLike[str]) -> bool:
        """Upload a local folder to the object store; False without one or if it was there."""
        rel = check_rel_path(rel)
        return self.remote is not None and self.remote.push(self.root / rel, rel)

    def mark_registered(self, rel: str | os.PathLike[str], *, mirror: bool = True) -> Path:
        """Write the durable marker that says the registry accepted a folder (and mirror it).

        A marker missing from the object store is recoverable (`registry rebuild` bridges
        unmarked folders between marked ones), so a failed upload is logged, never raised.
        """
        rel = check_rel_path(rel)
        folder = self.root / rel
        if not folder.is_dir():
            raise FileNotFoundError(f"no segment folder at {folder}")
        body = json.dumps({"segment_id": folder.name, "at": time.time()}).encode()
        marker = marker_path(folder)
        files.write_atomic(marker, body)
        if mirror and self.remote is not None:
            try:
                self.remote.write_bytes(rel + MARKER_SUFFIX, body)
            except RemoteStoreError as exc:
                log.warning("%s", exc)
        return marker

    # Reading: a folder missing here comes from the object store, verified.

    def folder(self, rel: str | os.PathLike[str]) -> Path:
        """The local folder of `rel`, fetched from the object store first if it is missing."""
        path = self.path(rel)
        if self.remote is None or path.is_dir():
            return path
        return self.fetch(rel)

    def fetch(self, rel: str | os.PathLike[str]) -> Path:
        """Download a remote folder into the local store, verified; return its local path.

        Raises CorruptSegment for an incomplete or corrupt remote folder, which then never
        appears locally. A valid local folder already there is kept.
        """
        remote = self._remote()
        rel = check_rel_path(rel)
        final = self.root / rel
        files.makedirs(final.parent)
        holder = files.temp_path(final)  # swept as an orphan after a crash
        tmp = holder / final.name  # the manifest names its folder: keep the name while checking
        tmp.mkdir(parents=True)
        try:
            remote.download(rel, tmp)
            try:
                segfolder.verify(tmp)
            except CorruptSegment as exc:
                raise CorruptSegment(f"{remote.url}/{rel}", exc.file, exc.reason) from None
            if files.install_dir(tmp, final, _verified):
                log.info("segment=%s fetched from %s", final.name, remote.url)
        finally:
            files.remove(holder)
        return final

    def fetch_marker(self, rel: str | os.PathLike[str]) -> bool:
        """Copy the remote registration marker of a folder beside its local copy, if it has one."""
        rel = check_rel_path(rel)
        body = self._remote().read_bytes(rel + MARKER_SUFFIX)
        if body is None:
            return False
        files.write_atomic(marker_path(self.root / rel), body)
        return True

    def fetch_collection(self, collection: str, generation: int | None = None) -> FetchReport:
        """Copy a collection's remote folders and markers into the local store, each verified."""
        report = FetchReport()
        for rel in self.list_remote(collection, generation):
            local = self.root / rel
            try:
                if local.is_dir() and _verified(local):
                    report.kept.append(rel)
                else:
                    self.fetch(rel)
                    report.fetched.append(rel)
            except CorruptSegment as exc:
                report.refused[rel] = f"{exc.file}: {exc.reason}"
                log.warning("%s", exc)
                continue
            if not is_registered(local) and self.fetch_marker(rel):
                report.markers += 1
        return report

    def list_remote(self, collection: str, generation: int | None = None) -> list[str]:
        """Store-relative paths of a collection's remote segment folders, complete or not."""
        remote = self._remote()
        base = check_rel_path(collection)
        gens = [generation] if generation is not None else _remote_numbered(remote, base, "g")
        found = []
        for gen in gens:
            gen_rel = f"{base}/g{gen:04d}"
            for part in _remote_numbered(remote, gen_rel, "p"):
                part_rel = f"{gen_rel}/p{part:04d}"
                found += [((gen, parse_segment_id(name)), f"{part_rel}/{name}")
                          for name in remote.children(part_rel, directories=True)
                          if is_segment_id(name)]
        return [rel for _, rel in sorted(found)]

    # Removing.

    def remove(self, rel: str | os.PathLike[str]) -> None:
        """Delete a segment folder and its marker, here and in the object store, marker first.

        The marker goes first everywhere, so a crash never leaves a marked remnant.
        """
        rel = check_rel_path(rel)
        folder = self.root / rel
        files.remove(marker_path(folder))
        files.remove(folder)
        if self.remote is not None:
            self.remote.remove_file(rel + MARKER_SUFFIX)
            self.remote.remove_folder(rel)

    def remove_collection(self, collection: str) -> int:
        """Delete every folder of a collection, here and in the object store; return the count."""
        base = check_rel_path(collection)
        rels = {p.relative_to(self.root).as_posix() for p in self.list_segments(base)}
        if self.remote is not None:
            rels.update(self.list_remote(base))
        for rel in sorted(rels):
            self.remove(rel)
        files.remove(self.root / base)  # temps, stray markers and the empty folders
        return len(rels)

    def _walk_level(self, folder: Path, letter: str,
                    found: list[StoreItem]) -> list[tuple[int, Path]]:
        """Subfolders `<letter><number>` of `folder` by name; its other entries go to `found`."""
        out = []
        for entry in sorted(folder.iterdir()) if folder.is_dir() else ():
            match = _NUMBERED.fullmatch(entry.name)
            if match and match[1] == letter and entry.is_dir():
                out.append((int(match[2]), entry))
            else:
                kind = TEMP if entry.name.startswith(files.TMP_PREFIX) else OTHER
                found.append(StoreItem(self._rel(entry), kind))
        return out

    def _walk_partition(self, folder: Path, generation: int, partition: int) -> list[StoreItem]:
        """The entries of one partition folder, each placed in the layout."""
        entries = {e.name: e for e in folder.iterdir()}
        found = []
        for name, entry in sorted(entries.items()):
            rel = self._rel(entry)
            if name.startswith(files.TMP_PREFIX):
                found.append(StoreItem(rel, TEMP))
            elif is_segment_id(name) and entry.is_dir():
                marker = rel + MARKER_SUFFIX if name + MARKER_SUFFIX in entries else None
                found.append(StoreItem(rel, SEGMENT, generation, partition, name, marker))
            elif name.endswith(MARKER_SUFFIX) and is_segment_id(name[:-len(MARKER_SUFFIX)]):
                if not (folder / name[:-len(MARKER_SUFFIX)]).is_dir():
                    found.append(StoreItem(rel, MARKER))
            else:
                found.append(StoreItem(rel, OTHER))
        return found

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def _remote(self) -> RemoteStore:
        if self.remote is None:
            raise RemoteStoreError("no object store is set (STREAMVEC_STORE_URL)")
        return self.remote


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


def _partition_rel(collection: str, generation: int, partition: int) -> str:
    """The store-relative folder of every segment of one partition in one generation."""
    return f"{collection}/g{generation:04d}/p{partition:04d}"


def _segments(folder: Path) -> list[Path]:
    """Segment folders directly in a partition folder: canonical names only, no temps or markers."""
    entries = folder.iterdir() if folder.is_dir() else ()
    return [e for e in entries if is_segment_id(e.name) and e.is_dir()]


def _numbered(folder: Path, letter: str) -> list[tuple[int, Path]]:
    """Local subfolders named `<letter><number>` (g0000, p0003), by number."""
    if not folder.is_dir():
        return []
    found = []
    for entry in folder.iterdir():
        match = _NUMBERED.fullmatch(entry.name)
        if match and match[1] == letter and entry.is_dir():
            found.append((int(match[2]), entry))
    return sorted(found)


def _remote_numbered(remote: RemoteStore, rel: str, letter: str) -> list[int]:
    """Numbers of the `g0000` / `p0003` folders directly under a remote store-relative path."""
    return sorted(int(match[2]) for name in remote.children(rel, directories=True)
                  if (match := _NUMBERED.fullmatch(name)) and match[1] == letter)


def _verified(path: Path) -> bool:
    """Whether a local segment folder passes every check (sha256, fingerprint)."""
    try:
        segfolder.verify(path)
    except CorruptSegment:
        return False
    return True
