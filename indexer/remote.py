"""How a process uses the snapshots' object store: attach it, fetch what is missing, mirror."""

# Readers only know the local snapshot root (`root / record.path`); a process that has an
# object store attaches it to that root once, and every reader of the root then fetches a
# missing folder (verified) before opening it. See indexer/objectstore.py for the transfers.

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from indexer import segfolder, store
from indexer.errors import CorruptSegment
from indexer.objectstore import RemoteStore, check_rel_path, rel_path, verified

if TYPE_CHECKING:
    from streamvec.settings import Settings

__all__ = ["FetchReport", "RemoteStore", "attach", "attached", "check_rel_path",
           "fetch_collection", "local_folder", "mirror_marker", "mirror_segment", "rel_path"]

log = logging.getLogger(__name__)

_attached: dict[Path, RemoteStore] = {}
_attached_lock = threading.Lock()


@dataclass
class FetchReport:
    """What fetching a collection's remote folders did: installed, kept, refused, markers."""

    fetched: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # already present locally and valid
    refused: dict[str, str] = field(default_factory=dict)  # path -> why
    markers: int = 0


def attach(settings: Settings) -> RemoteStore | None:
    """Serve folders missing under `settings.store` from its object store, in this process."""
    objects = RemoteStore.from_settings(settings)
    if objects is not None:
        with _attached_lock:
            _attached[_root_key(settings.store)] = objects
    return objects


def attached(root: Path | str) -> RemoteStore | None:
    """The object store attached to a local snapshot root, if any."""
    with _attached_lock:
        return _attached.get(_root_key(root))


def local_folder(root: Path | str, rel: str | os.PathLike[str]) -> Path:
    """Return `root/rel`, fetching it from the attached object store first if it is missing."""
    path = Path(root) / rel
    objects = attached(root)
    if objects is None or path.is_dir():
        return path
    return objects.fetch(rel, root)


def mirror_segment(root: Path | str, manifest: segfolder.SegmentManifest) -> bool:
    """Push a segment just written under `root` to the object store attached to it, if any."""
    objects = attached(root)
    return objects is not None and objects.push_segment(root, manifest)


def mirror_marker(root: Path | str, rel: str | os.PathLike[str]) -> bool:
    """Push the marker of a folder just marked under `root` to the attached store, if any."""
    objects = attached(root)
    return objects is not None and objects.push_marker(rel)


def fetch_collection(objects: RemoteStore, local_root: Path | str, collection: str,
                     generation: int | None = None) -> FetchReport:
    """Copy a collection's remote folders and markers into the local store, each verified."""
    report = FetchReport()
    for rel in objects.list_segments(collection, generation):
        local = Path(local_root) / rel
        try:
            if local.is_dir() and verified(local):
                report.kept.append(rel)
            else:
                objects.fetch(rel, local_root)
                report.fetched.append(rel)
        except CorruptSegment as exc:
            report.refused[rel] = f"{exc.file}: {exc.reason}"
            log.warning("%s", exc)
            continue
        if not store.is_registered(local) and objects.fetch_marker(rel, local_root):
            report.markers += 1
    return report


def _root_key(root: Path | str) -> Path:
    return Path(root).expanduser().resolve()
