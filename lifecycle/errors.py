"""Errors raised by the lifecycle package; all derive from `LifecycleError`."""

from __future__ import annotations

from streamvec.errors import Conflict, InvalidInput, NotFound, StreamvecError, Unavailable


class LifecycleError(StreamvecError):
    """Base class of every error the lifecycle package raises on purpose."""


class LifecycleBusy(LifecycleError, Conflict):
    """Another reindex, compaction, restore or garbage collection holds the collection's lock."""


class AliasError(LifecycleError, InvalidInput, ValueError):
    """An alias or challenge operation that cannot be done; the message says why."""


class AliasNotFound(AliasError, NotFound):
    """No alias of that name exists."""


class AliasConflict(AliasError, Conflict):
    """The alias's state forbids the action now: a name clash, a running challenge, a race."""


class ChallengeNotFound(AliasError, NotFound):
    """An alias that has no challenge to report on, promote or stop."""


class GenerationError(LifecycleError, InvalidInput):
    """A generation that cannot be switched to (unknown, the active one, a bad index spec)."""


class GenerationNotFound(GenerationError, NotFound):
    """No kept generation of that number (or none before the active one) to switch to."""


class GenerationConflict(GenerationError, Conflict):
    """The registry kept changing while a generation was built, or the target is already active."""


class PointInTimeError(LifecycleError, InvalidInput):
    """A snapshot action that cannot be done as asked (bad label, version clash, busy target)."""


class SnapshotNotFound(PointInTimeError, NotFound):
    """No snapshot of that id exists for the collection."""


class SnapshotExists(PointInTimeError, Conflict):
    """A snapshot of that id (label) already exists for the collection."""


class RestoreTargetExists(PointInTimeError, Conflict):
    """The name to restore as is taken by a collection or by registry keys left behind."""


class RegistryUnreadable(LifecycleError, Conflict):
    """A registry record an action must trust cannot be read; the message names it."""


class ReshardError(LifecycleError, InvalidInput):
    """A shard count or shard map change that cannot be made as asked; the message says why."""


class ShardsNotReady(LifecycleError, Unavailable):
    """A shard of the new map has no live, caught-up searcher, so the map was not switched."""


class ShardMapMoved(LifecycleError, Conflict):
    """The shard map changed between its read and the switch (another operator); nothing changed."""
