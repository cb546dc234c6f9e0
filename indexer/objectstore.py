"""Segment folders in an object store (fsspec: s3://...), addressed like the local store."""

# The local snapshot folder stays the working copy; the object store is what other machines
# read. Upload order makes completeness visible: data files first, manifest.json last, and
# the `.registered` marker only after the registry accepted the segment. A download lands in
# a temp folder, has every sha256 verified, and only then is renamed into place, so a corrupt
# or incomplete remote folder never reaches a reader.

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import fsspec

from indexer import segfolder, store
from indexer.errors import CorruptSegment, IndexerError, RemoteStoreError

if TYPE_CHECKING:
    from streamvec.settings import Settings

log = logging.getLogger(__name__)

_NUMBERED = re.compile(r"([gp])(\d{4,})")


def check_rel_path(rel_path: str | os.PathLike[str]) -> str:
    """Return a registry path (relative to the store root) as posix text; ValueError if unsafe."""
    text = Path(rel_path).as_posix() if isinstance(rel_path, os.PathLike) else str(rel_path)
    parts = PurePosixPath(text).parts
    # Paths come from the registry: one that climbs out would read or write beside the store.
    if (not parts or text.startswith("/") or "\\" in text
            or any(p in ("", ".", "..") for p in text.split("/"))):
        raise ValueError(f"{text!r} is not a path relative to the snapshot store root")
    return "/".join(parts)


def rel_path(manifest: segfolder.SegmentManifest) -> str:
    """The store-relative path of the folder that holds the segment `manifest` describes."""
    return segfolder.segment_path(Path(), manifest.collection, manifest.generation,
                                 manifest.partition, manifest.segment_id).as_posix()


class RemoteStore:
    """Segment folders under one object-store URL, addressed by their store-relative paths."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        # Listings are never cached: other processes add and remove folders all the time.
        options = {"use_listings_cache": False, **(storage_options or {})}
        try:
            self.fs, base = fsspec.core.url_to_fs(url, **options)
        except (ImportError, ValueError, TypeError) as exc:
            raise RemoteStoreError(f"cannot open the snapshot store {url}: {exc}") from None
        self.url = url.rstrip("/")
        self.base = base.rstrip("/")
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (
            self.fs.protocol,)
        # Object stores have no folders; a local or mounted filesystem needs them made first.
        self._makes_dirs = "file" in protocols

    @classmethod
    def from_settings(cls, settings: Settings) -> RemoteStore | None:
        """The object store `settings` name, or None when snapshots are local only."""
        if not settings.store_url:
            return None
        return cls(settings.store_url, settings.store_options)

    def __repr__(self) -> str:
        return f"RemoteStore({self.url!r})"

    def key(self, rel: str | os.PathLike[str]) -> str:
        """The object-store path of a store-relative path."""
        return f"{self.base}/{check_rel_path(rel)}"

    def push(self, local_folder: Path | str, rel: str | os.PathLike[str]) -> bool:
        """Upload a finished segment folder, manifest last; False if the same one was there."""
        folder = Path(local_folder)
        manifest = (folder / segfolder.MANIFEST).read_bytes()
        dest = self.key(rel)
        with self._io(f"uploading {rel}"):
            remote_manifest = self._read_or_none(f"{dest}/{segfolder.MANIFEST}")
            if remote_manifest == manifest:
                return False
            if remote_manifest is not None:
                # A leftover of an owner that never registered it: make it incomplete first, so
                # nobody takes the half-replaced folder for a whole one.
                self.fs.rm_file(f"{dest}/{segfolder.MANIFEST}")
            if self._makes_dirs:
                self.fs.makedirs(dest, exist_ok=True)
            names = sorted(segfolder.FILES)
            self.fs.put([str(folder / n) for n in names], [f"{dest}/{n}" for n in names])
            self.fs.pipe_file(f"{dest}/{segfolder.MANIFEST}", manifest)
        log.info("segment=%s pushed to %s", folder.name, self.url)
        return True

    def push_segment(self, local_root: Path | str, manifest: segfolder.SegmentManifest) -> bool:
        """Upload the local folder of the segment `manifest` describes (see `push`)."""
        rel = rel_path(manifest)
        return self.push(Path(local_root) / rel, rel)

    def push_marker(self, rel: str | os.PathLike[str]) -> bool:
        """Write the registration marker beside a pushed folder; False (logged) if that failed.

        A missing remote marker is recoverable: `registry rebuild` bridges unmarked folders
        between marked ones, so a failed upload here must not stop the indexer.
        """
        dest = self.key(rel)
        body = json.dumps({"segment_id": PurePosixPath(dest).name, "at": time.time()}).encode()
        try:
            with self._io(f"marking {rel}"):
                self.fs.pipe_file(dest + store.MARKER_SUFFIX, body)
        except RemoteStoreError as exc:
            log.warning("%s", exc)
            return False
        return True

    def is_complete(self, rel: str | os.PathLike[str]) -> bool:
        """Whether a remote folder holds its manifest (uploaded last)."""
        with self._io(f"checking {rel}"):
            return bool(self.fs.exists(f"{self.key(rel)}/{segfolder.MANIFEST}"))

    def is_registered(self, rel: str | os.PathLike[str]) -> bool:
        """Whether a remote folder carries its registration marker."""
        with self._io(f"checking {rel}"):
            return bool(self.fs.exists(self.key(rel) + store.MARKER_SUFFIX))

    def fetch(self, rel: str | os.PathLike[str], local_root: Path | str) -> Path:
        """Download a remote folder into the local store, verified; return its local path.

        Raises CorruptSegment for an incomplete or corrupt remote folder, which then never
        appears locally. A valid local folder already there is kept.
        """
        rel = check_rel_path(rel)
        final = Path(local_root) / rel
        store.makedirs(final.parent)
        holder = store.temp_path(final.parent, final.name)  # swept as an orphan after a crash
        tmp = holder / final.name  # the manifest names its folder: keep the name while checking
        tmp.mkdir(parents=True)
        try:
            self._download(rel, tmp)
            try:
                segfolder.verify(tmp)
            except CorruptSegment as exc:
                raise CorruptSegment(f"{self.url}/{rel}", exc.file, exc.reason) from None
            if store.publish(tmp, final, verified):
                log.info("segment=%s fetched from %s", final.name, self.url)
        finally:
            store.remove(holder)
        return final

    def fetch_marker(self, rel: str | os.PathLike[str], local_root: Path | str) -> bool:
        """Copy the remote registration marker of a folder beside its local copy, if it has one."""
        local = Path(local_root) / check_rel_path(rel)
        with self._io(f"reading the marker of {rel}"):
            body = self._read_or_none(self.key(rel) + store.MARKER_SUFFIX)
        if body is None:
            return False
        marker = local.parent / (local.name + store.MARKER_SUFFIX)
        tmp = store.temp_path(local.parent, marker.name)
        store.write_file(tmp, body)
        os.replace(tmp, marker)
        store.fsync_dir(local.parent)
        return True

    def list_segments(self, collection: str, generation: int | None = None) -> list[str]:
        """Store-relative paths of a collection's remote segment folders, complete or not."""
        found = []
        with self._io(f"listing {collection}"):
            gens = [generation] if generation is not None else self._numbered(collection, "g")
            for gen in gens:
                gen_rel = f"{collection}/g{gen:04d}"
                for part in self._numbered(gen_rel, "p"):
                    part_rel = f"{gen_rel}/p{part:04d}"
                    for name in self._children(part_rel, directories=True):
                        try:
                            ident = segfolder.parse_segment_id(name)
                        except ValueError:
                            continue
                        found.append(((gen, ident), f"{part_rel}/{name}"))
        return [rel for _, rel in sorted(found)]

    def remove(self, rel: str | os.PathLike[str]) -> None:
        """Delete a remote folder and its marker: marker first, then manifest, then the rest."""
        dest = self.key(rel)
        with self._io(f"removing {rel}"):
            for key in (dest + store.MARKER_SUFFIX, f"{dest}/{segfolder.MANIFEST}"):
                try:
                    self.fs.rm_file(key)
                except FileNotFoundError:
                    pass
            if self.fs.exists(dest):
                self.fs.rm(dest, recursive=True)
        log.info("segment=%s removed from %s", PurePosixPath(dest).name, self.url)

    def _download(self, rel: str, tmp: Path) -> None:
        """Copy the files of a remote folder into `tmp`, fsynced; CorruptSegment if one lacks."""
        src = self.key(rel)
        with self._io(f"downloading {rel}"):
            present = set(self._children(rel, directories=False))
            if segfolder.MANIFEST not in present:
                raise CorruptSegment(f"{self.url}/{rel}", segfolder.MANIFEST,
                                     "missing (an incomplete upload, or no such folder)")
            missing = sorted(segfolder.FILES - present)
            if missing:
                raise CorruptSegment(f"{self.url}/{rel}", missing[0], "missing")
            names = sorted(segfolder.FILES) + [segfolder.MANIFEST]
            self.fs.get([f"{src}/{n}" for n in names], [str(tmp / n) for n in names])
        for name in names:
            store.fsync_file(tmp / name)
        store.fsync_dir(tmp)

    def _children(self, rel: str, *, directories: bool) -> list[str]:
        """Names of the folders (or files) directly under a store-relative path."""
        try:
            entries = self.fs.ls(self.key(rel), detail=True)
        except FileNotFoundError:
            return []
        want = "directory" if directories else "file"
        return sorted(PurePosixPath(e["name"]).name for e in entries if e.get("type") == want)

    def _numbered(self, rel: str, letter: str) -> list[int]:
        """Numbers of the `g0000` / `p0003` folders directly under a store-relative path."""
        out = []
        for name in self._children(rel, directories=True):
            match = _NUMBERED.fullmatch(name)
            if match and match[1] == letter:
                out.append(int(match[2]))
        return sorted(out)

    def _read_or_none(self, key: str) -> bytes | None:
        try:
            return bytes(self.fs.cat_file(key))
        except FileNotFoundError:
            return None

    @contextmanager
    def _io(self, what: str) -> Iterator[None]:
        """Turn a failure of the object store into one RemoteStoreError naming the operation."""
        try:
            yield
        except (IndexerError, ValueError):
            raise
        except Exception as exc:  # s3fs, aiohttp and botocore each raise their own types
            raise RemoteStoreError(f"{what} at {self.url} failed: {exc!r}") from exc


def verified(path: Path) -> bool:
    """Whether a local segment folder passes every check (sha256, fingerprint)."""
    try:
        segfolder.verify(path)
    except CorruptSegment:
        return False
    return True
