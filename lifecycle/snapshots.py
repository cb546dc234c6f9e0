"""Point-in-time snapshots of a collection: its registry at one instant, restorable by name.

Segment folders are immutable, so recording the registry's records, checkpoints, active
generation and spec under `sv:{name}:snapshots` (lifecycle/pointintime.py) pins that state
without copying a file; the garbage collector (lifecycle/gc.py) keeps every folder a snapshot
names.

`restore` makes a new collection whose registry is the snapshot's. Its records point at the
original collection's folders (no copies), so the restored collection is a read-only view of
the data as of the snapshot: searchers serve it, but its topic is new and empty and its
checkpoints are offsets of the original topic. Its spec says so (`restored_from`): the
producer SDK refuses to write it and the indexer refuses to index it.
Dropping a collection deletes its snapshots with its other Redis keys; folders that a
restored collection still references survive the drop.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import dataclass, replace
from typing import Any

import redis

from indexer.errors import RebuildError
from indexer.registry import GenerationInfo, Registry
from ingest import audit, catalog
from ingest.names import CollectionName
from ingest.spec import CollectionSpec
from lifecycle import collections
from lifecycle.errors import (
    PointInTimeError,
    RestoreTargetExists,
    SnapshotExists,
    SnapshotNotFound,
)
from lifecycle.lock import LifecycleLock
from lifecycle.pointintime import PointInTime, snapshots_key
from streamvec.settings import Settings

LATEST = "latest"
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True, slots=True)
class Restored:
    """What a restore made: the new collection and the snapshot it holds."""

    collection: str
    source: str
    snapshot_id: str
    segments: int
    rows: int
    generation: int
    version: int

    def to_json(self) -> dict[str, Any]:
        """The result as a JSON-ready dict."""
        return {"collection": self.collection, "source": self.source,
                "snapshot": self.snapshot_id, "segments": self.segments, "rows": self.rows,
                "generation": self.generation, "version": self.version}


def create(settings: Settings, collection: str, label: str | None = None, *,
           actor: str | None = None) -> PointInTime:
    """Record the collection's registry as a snapshot named `label` (default: a UTC time id)."""
    client = settings.redis_client()
    name = str(CollectionName.parse(collection))
    spec = catalog.load_spec(client, name)
    snapshot_id = check_label(label) if label is not None else new_id(time.time())
    actor = actor or settings.actor
    with LifecycleLock(client, name, "snapshot") as lock:
        pit = _read(client, name, snapshot_id, spec, actor)
        lock.check()
        if not client.hsetnx(snapshots_key(name), snapshot_id, pit.to_json()):
            raise SnapshotExists(f"{name} already has a snapshot {snapshot_id!r}; pick another "
                                 "label or delete that snapshot first")
    audit.record(client, "snapshot.create", name, _details(pit), actor)
    return pit


def list_snapshots(settings: Settings, collection: str) -> list[PointInTime]:
    """Every snapshot of a collection, oldest first."""
    client = settings.redis_client()
    name = str(CollectionName.parse(collection))
    catalog.load_spec(client, name)
    found = [PointInTime.from_json(k.decode(), v)
             for k, v in client.hgetall(snapshots_key(name)).items()]
    return sorted(found, key=lambda p: (p.created_at, p.snapshot_id))


def get(settings: Settings, collection: str, snapshot_id: str | None = None) -> PointInTime:
    """One snapshot by id; None or 'latest' means the newest. Raise SnapshotNotFound."""
    if snapshot_id in (None, LATEST):
        found = list_snapshots(settings, collection)
        if not found:
            raise SnapshotNotFound(f"{collection} has no snapshots; take one with "
                                   f"`streamvec snapshot create {collection}`")
        return found[-1]
    client = settings.redis_client()
    name = str(CollectionName.parse(collection))
    catalog.load_spec(client, name)
    raw = client.hget(snapshots_key(name), snapshot_id)
    if raw is None:
        known = sorted(k.decode() for k in client.hkeys(snapshots_key(name)))
        raise SnapshotNotFound(f"{name} has no snapshot {snapshot_id!r}; it has "
                               f"{', '.join(known[:10]) or 'none'}")
    return PointInTime.from_json(snapshot_id, raw)


def delete(settings: Settings, collection: str, snapshot_id: str, *,
           actor: str | None = None) -> PointInTime:
    """Forget a snapshot; its folders become garbage unless something else references them."""
    pit = get(settings, collection, snapshot_id)
    client = settings.redis_client()
    if not client.hdel(snapshots_key(pit.collection), pit.snapshot_id):
        raise SnapshotNotFound(f"{pit.collection} has no snapshot {pit.snapshot_id!r} any more")
    audit.record(client, "snapshot.delete", pit.collection, _details(pit),
                 actor or settings.actor)
    return pit


def restore(settings: Settings, collection: str, as_name: str, snapshot_id: str | None = None,
            *, actor: str | None = None) -> Restored:
    """Create collection `as_name` holding a snapshot of `collection` (default: the latest).

    The new collection has the original's spec under the new name and references the
    original's segment folders: a read-only view as of the snapshot.
    """
    client = settings.redis_client()
    source = str(CollectionName.parse(collection))
    target = str(CollectionName.parse(as_name))
    actor = actor or settings.actor
    if target == source:
        raise RestoreTargetExists(f"cannot restore {source} onto itself; pick a new name")
    with LifecycleLock(client, source, "restore") as lock:
        pit = get(settings, source, snapshot_id)
        spec = target_spec(pit, target)
        _check_free(client, target)
        lock.check()
        if not collections.create_collection(settings.model_copy(update={"actor": actor}),
                                             spec):
            raise RestoreTargetExists(f"collection {target} was created by someone else "
                                      "meanwhile; nothing was restored")
        registry = Registry(client, target)
        # Set before the records appear, so the first registry version a reader sees is whole.
        registry.set_active_generation(pit.generation)
        if pit.generation_info is not None:
            registry.record_generation(GenerationInfo.from_json(json.dumps(pit.generation_info)))
        lock.check()
        try:
            version = registry.replace_all(list(pit.records), pit.checkpoints, 0)
        except RebuildError:
            raise RestoreTargetExists(f"the registry of {target} changed while it was being "
                                      f"restored; drop {target} and restore again") from None
    result = Restored(target, source, pit.snapshot_id, pit.segments, pit.rows, pit.generation,
                      version)
    audit.record(client, "snapshot.restore", target,
                 {"source": source, "snapshot": pit.snapshot_id, "segments": pit.segments,
                  "rows": pit.rows, "generation": pit.generation}, actor)
    return result


def target_spec(pit: PointInTime, target: str) -> CollectionSpec:
    """The snapshot's spec renamed to `target`; a versioned target must name its model version.

    The vectors were embedded by the snapshot's model version, so `x@v4` may not hold vectors
    of model v3. An unversioned target keeps the model version as it was.
    """
    spec = CollectionSpec.from_json(json.dumps(pit.spec))
    version = CollectionName.parse(target).version
    if version is not None and spec.model_version and version != spec.model_version:
        base = CollectionName.parse(target).base
        raise PointInTimeError(
            f"cannot restore as {target}: the snapshot's vectors come from model version "
            f"{spec.model_version!r}, not {version!r}; restore as {base}@{spec.model_version} "
            f"or as an unversioned name")
    return replace(spec, name=target, restored_from=spec.restored_from or pit.collection)


def check_label(label: str) -> str:
    """Validate a user label used as a snapshot id; raise PointInTimeError with the rule."""
    if label == LATEST or not _LABEL.fullmatch(label):
        raise PointInTimeError(f"invalid snapshot label {label!r}: it must match "
                               "[A-Za-z0-9][A-Za-z0-9_.-]{0,63} and not be 'latest'")
    return label


def new_id(now: float) -> str:
    """A fresh snapshot id: UTC time to the second plus 4 random hex digits."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now)) + "-" + secrets.token_hex(2)


def _read(client: redis.Redis, name: str, snapshot_id: str, spec: CollectionSpec,
          actor: str) -> PointInTime:
    """Read records, checkpoints, version and generation in one transaction: one instant."""
    state = Registry(client, name).state()
    info = state.generations.get(state.generation)
    return PointInTime(snapshot_id, name, round(time.time(), 3), actor, state.version,
                       state.generation, json.loads(spec.to_json()), state.checkpoints,
                       state.records, None if info is None else json.loads(info.to_json()))


def _check_free(client: redis.Redis, target: str) -> None:
    """Refuse a target that exists, or whose registry keys survive without a catalog entry."""
    if client.exists(catalog.spec_key(target)):
        raise RestoreTargetExists(f"collection {target} already exists; restore under a new "
                                  "name or drop it first")
    registry = Registry(client, target)
    if registry.version() or registry.segment_count():
        raise RestoreTargetExists(f"{target} is not a collection but its registry keys remain "
                                  f"(version {registry.version()}); pick another name")


def _details(pit: PointInTime) -> dict[str, Any]:
    """The audit details of a snapshot: its id and size."""
    return {"snapshot": pit.snapshot_id, "segments": pit.segments, "rows": pit.rows,
            "version": pit.version, "generation": pit.generation}
