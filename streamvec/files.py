"""Crash-safe local files: temp names beside the target, fsync, atomic rename, cleanup on error."""

# Every file or folder that a reader may open while it is being written is made under a temp
# name in the same folder and renamed into place: a rename within one filesystem is atomic,
# so a reader sees the old version or the new one, never half of either. Temp names share one
# prefix, so whatever a crash leaves behind can be recognized and swept.

from __future__ import annotations

import logging
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"


def temp_path(target: Path | str) -> Path:
    """A fresh temp name beside `target`, in the same folder: unique per process and call."""
    target = Path(target)
    return target.parent / f"{TMP_PREFIX}{target.name}-{os.getpid()}-{secrets.token_hex(4)}"


def write_atomic(path: Path | str, data: bytes | str, *, durable: bool = True) -> None:
    """Replace `path` with `data` in one rename; `durable` also survives a power loss.

    Text is written as UTF-8. Without `durable` nothing is fsynced: enough for files that
    are only read while the machine stays up (reports, server configuration, pid files).
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        write_new(tmp, data.encode() if isinstance(data, str) else data, durable=durable)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if durable:
        fsync_dir(path.parent)


def write_new(path: Path | str, data: bytes, *, durable: bool = True) -> None:
    """Write `data` to a file that nobody reads yet (a temp name), fsynced if `durable`."""
    with open(path, "wb") as f:
        f.write(data)
        if durable:
            f.flush()
            os.fsync(f.fileno())


def install_dir(tmp: Path, final: Path, is_valid: Callable[[Path], bool]) -> bool:
    """Rename the complete folder `tmp` to `final`; return False if a valid `final` was kept.

    A `final` that fails `is_valid` is replaced. Two writers of one name race safely: the
    second rename fails, and the folder already there is checked instead.
    """
    trash = None
    if final.exists():
        if is_valid(final):
            return False
        log.warning("%s failed verification; replacing it", final)
        # A folder cannot be renamed over a non-empty one: move the bad one aside first.
        trash = temp_path(final)
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


def fsync_file(path: Path | str) -> None:
    """Fsync a file written by a library that takes a file name (np.save, faiss.write_index)."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path | str) -> None:
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
