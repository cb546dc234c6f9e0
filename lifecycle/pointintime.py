"""The point-in-time snapshot record: its stored form, its Redis hash, the folders it pins.

A snapshot is the registry of a collection at one instant (records, checkpoints, version,
active generation and spec), stored under `sv:{NAME}:snapshots` as snapshot id -> JSON. The
actions on snapshots are lifecycle/snapshots.py; the garbage collector reads only this.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import redis

from indexer.registry import SegmentRecord
from ingest.names import CollectionName
from lifecycle.errors import PointInTimeError

FORMAT = 1


@dataclass(frozen=True, slots=True)
class PointInTime:
    """One point-in-time snapshot: the registry state of a collection and where it came from."""

    snapshot_id: str
    collection: str
    created_at: float
    actor: str
    version: int  # the registry version read
    generation: int  # the active generation then
    spec: dict[str, Any]
    checkpoints: dict[int, int]
    records: tuple[SegmentRecord, ...]
    generation_info: dict[str, Any] | None = None

    @property
    def segments(self) -> int:
        """Number of segment records."""
        return len(self.records)

    @property
    def rows(self) -> int:
        """Rows in the recorded segments, rows hidden by later writes included."""
        return sum(r.rows for r in self.records)

    def summary(self) -> dict[str, Any]:
        """What listings show: everything but the records themselves."""
        return {"id": self.snapshot_id, "collection": self.collection,
                "created_at": self.created_at, "actor": self.actor, "version": self.version,
                "generation": self.generation, "segments": self.segments, "rows": self.rows,
                "checkpoints": {str(p): c for p, c in sorted(self.checkpoints.items())}}

    def to_json(self) -> str:
        """The JSON stored as the snapshot's field value."""
        body = {"format": FORMAT, "collection": self.collection, "created_at": self.created_at,
                "actor": self.actor, "version": self.version, "generation": self.generation,
                "spec": self.spec, "generation_info": self.generation_info,
                "checkpoints": {str(p): c for p, c in sorted(self.checkpoints.items())},
                "segments": {r.segment_id: json.loads(r.to_json()) for r in self.records}}
        return json.dumps(body, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, snapshot_id: str, text: str | bytes) -> PointInTime:
        """Parse a stored snapshot; raise PointInTimeError if it is not one this version reads."""
        try:
            body = json.loads(text)
            if body.get("format") != FORMAT:
                raise ValueError(f"unknown format {body.get('format')!r}")
            records = tuple(sorted(
                (SegmentRecord.from_json(sid, json.dumps(rec))
                 for sid, rec in body["segments"].items()),
                key=lambda r: (r.partition, r.start_offset)))
            return cls(snapshot_id, body["collection"], float(body["created_at"]),
                       body["actor"], int(body["version"]), int(body["generation"]),
                       body["spec"], {int(p): int(c) for p, c in body["checkpoints"].items()},
                       records, body.get("generation_info"))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise PointInTimeError(f"snapshot {snapshot_id!r} is unreadable: {exc}") from None



def snapshots_key(collection: str) -> str:
    """The Redis hash of a collection's snapshots: snapshot id -> JSON."""
    return CollectionName.parse(collection).key("snapshots")


def pinned_paths(client: redis.Redis, collections: Iterable[str]) -> set[str]:
    """Every folder path (relative to the store root) a snapshot of `collections` records."""
    names = list(collections)
    with client.pipeline(transaction=False) as pipe:  # one slot per collection: no transaction
        for name in names:
            pipe.hgetall(snapshots_key(name))
        replies = pipe.execute() if names else []
    return {PurePosixPath(r.path).as_posix() for snapshots in replies
            for k, v in snapshots.items() for r in PointInTime.from_json(k.decode(), v).records}
