"""Errors raised by the indexer package; all derive from `IndexerError`."""

from __future__ import annotations

from streamvec.errors import Conflict, InvalidInput, StreamvecError, Unavailable


class IndexerError(StreamvecError):
    """Base class of every error the indexer package raises on purpose."""


class InvalidStoredOffset(IndexerError):
    """A message offset at or before one a growing segment has already seen."""


class WrongDimension(IndexerError, InvalidInput, ValueError):
    """A batch whose vectors do not have the segment's dimension."""


class BuildError(IndexerError, InvalidInput):
    """A FAISS index that cannot be made from its spec (bad factory string, failed add)."""


class CorruptSegment(IndexerError):
    """A segment folder whose files do not match its manifest; names the file and the reason."""

    def __init__(self, path: object, file: str, reason: str, *, transient: bool = False) -> None:
        super().__init__(f"segment {path} is corrupt: {file}: {reason}")
        self.path = path
        self.file = file
        self.reason = reason
        # True when an I/O error (EIO, EMFILE, ESTALE...) stood in the way, not what was read:
        # reading again may succeed, so a reader that can wait retries instead of refusing.
        self.transient = transient


class RebuildError(IndexerError):
    """The segment store cannot be turned back into a registry (a gap, an ambiguity, a race)."""


class SwapConflict(IndexerError, Conflict):
    """A segment swap refused because the registry changed since the swap was planned."""


class RemoteStoreError(IndexerError, Unavailable):
    """The object store of the snapshots failed (unreachable, denied, missing bucket)."""


class CheckpointOutOfRange(IndexerError):
    """A partition's checkpoint points below the log start: retention deleted unindexed records."""
