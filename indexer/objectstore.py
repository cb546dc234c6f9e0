"""Transfers to and from an object store (fsspec: s3://...): segment folders and small files."""

# This is the transfer layer only: it copies what the segment store (indexer/store.py) asks
# for, under paths relative to the store root that the store has already checked. Uploads
# make completeness visible: data files first, manifest.json last, so a folder without its
# manifest is an incomplete upload; removals take the manifest away first for the same reason.

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import fsspec

from indexer import segfolder
from indexer.errors import CorruptSegment, IndexerError, RemoteStoreError
from streamvec import files

if TYPE_CHECKING:
    from streamvec.settings import Settings

log = logging.getLogger(__name__)


class RemoteStore:
    """Segment folders under one object-store URL, addressed by their store-relative paths."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        # Listings are never cached: other processes add and remove folders all the time.
        options = {"use_listings_cache": False, **(storage_options or {})}
        try:
            self.fs, base = fsspec.core.url_to_fs(url, **options)
        except (ImportError, ValueError, TypeError) as exc:
            raise RemoteStoreError(f"cannot open the segment store {url}: {exc}") from None
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

    def key(self, rel: str) -> str:
        """The object-store path of a (checked) store-relative path."""
        return f"{self.base}/{rel}"

    def push(self, local_folder: Path | str, rel: str) -> bool:
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
            names = sorted(n for n in segfolder.FILES if (folder / n).exists())
            self.fs.put([str(folder / n) for n in names], [f"{dest}/{n}" for n in names])
            self.fs.pipe_file(f"{dest}/{segfolder.MANIFEST}", manifest)
        log.info("segment=%s pushed to %s", folder.name, self.url)
        return True

    def download(self, rel: str, into: Path) -> None:
        """Copy the files of a remote folder into the empty folder `into`, fsynced.

        Raises CorruptSegment when the manifest or a data file is missing; the copy is not
        verified here (the caller checks every sha256 before installing it).
        """
        src = self.key(rel)
        with self._io(f"downloading {rel}"):
            present = set(self._children(rel, directories=False))
            if segfolder.MANIFEST not in present:
                raise CorruptSegment(f"{self.url}/{rel}", segfolder.MANIFEST,
                                     "missing (an incomplete upload, or no such folder)")
            # Whether the folder has an index file is the manifest's to say: checked later.
            missing = sorted(segfolder.DATA_FILES - present)
            if missing:
                raise CorruptSegment(f"{self.url}/{rel}", missing[0], "missing")
            names = sorted(segfolder.FILES & present) + [segfolder.MANIFEST]
            self.fs.get([f"{src}/{n}" for n in names], [str(into / n) for n in names])
        for name in names:
            files.fsync_file(into / name)
        files.fsync_dir(into)

    def write_bytes(self, rel: str, body: bytes) -> None:
        """Store a small file (a marker) at a store-relative path."""
        with self._io(f"writing {rel}"):
            self.fs.pipe_file(self.key(rel), body)

    def read_bytes(self, rel: str) -> bytes | None:
        """The content of a small file at a store-relative path, or None if there is none."""
        with self._io(f"reading {rel}"):
            return self._read_or_none(self.key(rel))

    def exists(self, rel: str) -> bool:
        """Whether a file or folder exists at a store-relative path."""
        with self._io(f"checking {rel}"):
            return bool(self.fs.exists(self.key(rel)))

    def children(self, rel: str, *, directories: bool) -> list[str]:
        """Names of the folders (or files) directly under a store-relative path, sorted."""
        with self._io(f"listing {rel}"):
            return self._children(rel, directories=directories)

    def remove_file(self, rel: str) -> None:
        """Delete one file; one already gone is fine."""
        with self._io(f"removing {rel}"):
            try:
                self.fs.rm_file(self.key(rel))
            except FileNotFoundError:
                pass

    def remove_folder(self, rel: str) -> None:
        """Delete a remote segment folder: its manifest first, so it is never taken as whole."""
        dest = self.key(rel)
        self.remove_file(f"{rel}/{segfolder.MANIFEST}")
        with self._io(f"removing {rel}"):
            if self.fs.exists(dest):
                self.fs.rm(dest, recursive=True)
        log.info("segment=%s removed from %s", PurePosixPath(dest).name, self.url)

    def _children(self, rel: str, *, directories: bool) -> list[str]:
        try:
            entries = self.fs.ls(self.key(rel), detail=True)
        except FileNotFoundError:
            return []
        want = "directory" if directories else "file"
        return sorted(PurePosixPath(e["name"]).name for e in entries if e.get("type") == want)

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
