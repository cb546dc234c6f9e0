"""The Redis registry of segments: checkpoints, owner epochs, generations, register and swap."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import redis

from indexer import segfolder, store
from indexer.errors import RebuildError, SwapConflict
from indexer.registry_scripts import REGISTER as _REGISTER
from indexer.registry_scripts import SWAP as _SWAP
from indexer.segment import segment_id
from ingest.names import CollectionName
from streamvec import redisconn

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SegmentRecord:
    """What the registry knows of one registered segment; `path` is relative to the store root."""

    segment_id: str
    partition: int
    start_offset: int
    end_offset: int
    rows: int
    generation: int
    path: str
    factory: str
    created_at: float

    @classmethod
    def from_manifest(cls, manifest: segfolder.SegmentManifest,
                      path: Path | str | None = None) -> SegmentRecord:
        """The record of a written segment; `path` defaults to its place under the store root."""
        rel = Path(path).as_posix() if path is not None else store.rel_path(manifest)
        return cls(manifest.segment_id, manifest.partition, manifest.start_offset,
                   manifest.end_offset, manifest.rows, manifest.generation, rel,
                   manifest.factory, manifest.created_at)

    @classmethod
    def from_json(cls, segment_id: str, text: str | bytes) -> SegmentRecord:
        """Parse and check the JSON stored under `segment_id`; ValueError names what is wrong.

        Fields this version does not know are ignored. The path must stay inside the store,
        and the id must be the one its partition and offsets imply.
        """
        try:
            body = json.loads(text)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"registry record {segment_id!r} is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ValueError(f"registry record {segment_id!r} is not a JSON object")
        known = set(cls.__dataclass_fields__)
        try:
            record = cls(segment_id=segment_id, **{k: v for k, v in body.items() if k in known})
        except TypeError as exc:
            raise ValueError(f"registry record {segment_id!r}: {exc}") from None
        record.check()
        return record

    def check(self) -> None:
        """Raise ValueError unless every field has its type and the path is store-relative."""
        ints = (self.partition, self.start_offset, self.end_offset, self.rows, self.generation)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in ints):
            raise ValueError(f"registry record {self.segment_id!r}: partition, offsets, rows and "
                             "generation must be integers >= 0")
        if not (isinstance(self.path, str) and isinstance(self.factory, str)
                and isinstance(self.created_at, int | float)):
            raise ValueError(f"registry record {self.segment_id!r}: path and factory must be "
                             "strings, created_at a number")
        expected = segment_id(self.partition, self.start_offset, self.end_offset)
        if self.segment_id != expected or self.start_offset >= self.end_offset:
            raise ValueError(f"registry record {self.segment_id!r} describes {expected!r}")
        try:
            store.check_rel_path(self.path)
        except ValueError as exc:  # a path that leaves the store would read beside it
            raise ValueError(f"registry record {self.segment_id!r}: {exc}") from None

    def to_json(self) -> str:
        """The canonical JSON stored in the segments hash (the id is the hash field)."""
        body = asdict(self)
        del body["segment_id"]
        return json.dumps(body, sort_keys=True, separators=(",", ":"))


class Fence(Protocol):
    """A lock that a fenced write checks: its Redis key, its holder's token, its error."""

    key: str
    token: str

    def lost(self) -> Exception:
        """The error to raise when the lock is no longer the holder's."""


@dataclass(frozen=True, slots=True)
class RegisterResult:
    """The answer of `Registry.register`: ok, already, fenced, conflict or stale_generation."""

    status: str
    checkpoint: int
    version: int
    epoch: int

    @property
    def ok(self) -> bool:
        """True when the segment is registered now, by this call or an earlier one."""
        return self.status in ("ok", "already")


class Registry:
    """One collection's registry in Redis; every key is `sv:{name}:...` under one hash tag.

    Create the client with a redis-py `Retry` (as `Settings.redis_client` does): re-sending a
    registration whose reply was lost is safe, since a repeat answers `already`.
    """

    def __init__(self, client: redis.Redis, collection: str) -> None:
        self.client = client
        self.collection = CollectionName.parse(collection)
        key = self.collection.key
        self.ckpt_key, self.segments_key = key("ckpt"), key("segments")
        self.epoch_key, self.version_key = key("epoch"), key("version")
        self.generation_key, self.generations_key = key("gen"), key("generations")
        self.released_key, self.lifecycle_key = key("released"), key("lifecycle")
        self._script = redisconn.register_script(client, _REGISTER)
        self._swap = redisconn.register_script(client, _SWAP)

    @property
    def register_keys(self) -> list[str]:
        """The KEYS of the registration script, in its order (one hash slot)."""
        return [self.ckpt_key, self.segments_key, self.epoch_key, self.version_key,
                self.generation_key]

    def swap_keys(self, fence: Fence | None = None) -> list[str]:
        """The KEYS of the swap script, in its order: the fence's lock, else the collection's.

        A fence of another collection is refused: its key would sit in another hash slot,
        which a script on a Redis Cluster cannot touch (and it would fence nothing here).
        """
        lock_key = self.lifecycle_key if fence is None else fence.key
        if not redisconn.same_slot([lock_key, self.segments_key]):
            raise ValueError(f"the fence {lock_key!r} is not a lock of {self.collection}")
        return [self.segments_key, self.version_key, self.generation_key, self.released_key,
                lock_key]

    @property
    def events_channel(self) -> str:
        """The pub/sub channel that announces every registration and rebuild."""
        return self.collection.key("events")

    def checkpoint(self, partition: int) -> int:
        """The end offset of the registered coverage of `partition` (0 if none)."""
        return int(self.client.hget(self.ckpt_key, str(partition)) or 0)

    def checkpoints(self) -> dict[int, int]:
        """Every partition's checkpoint."""
        return {int(p): int(c) for p, c in self.client.hgetall(self.ckpt_key).items()}

    def epoch(self, partition: int) -> int:
        """The current owner epoch of `partition` (0 if never claimed)."""
        return int(self.client.hget(self.epoch_key, str(partition)) or 0)

    def claim(self, partition: int) -> int:
        """Become the owner of `partition`: bump its epoch, fencing every earlier owner out."""
        return int(self.client.hincrby(self.epoch_key, str(partition), 1))

    def register(self, record: SegmentRecord, epoch: int) -> RegisterResult:
        """Register a segment iff `epoch` owns its partition and it starts at the checkpoint."""
        expected = segment_id(record.partition, record.start_offset, record.end_offset)
        if record.segment_id != expected:
            raise ValueError(f"segment id {record.segment_id!r} should be {expected!r}")
        event = _event("registered", record)
        reply = self._script(
            keys=self.register_keys,
            args=[record.segment_id, record.partition, record.start_offset, record.end_offset,
                  record.to_json(), epoch, self.events_channel, json.dumps(event),
                  record.generation])
        status = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
        result = RegisterResult(status, int(reply[1]), int(reply[2]), int(reply[3]))
        if not result.ok:
            log.warning('partition="%s[%d]" segment=%s not registered: %s (checkpoint=%d '
                        "epoch=%d, ours %d)", self.collection, record.partition,
                        record.segment_id, status, result.checkpoint, result.epoch, epoch)
        return result

    def segments(self, partition: int | None = None, *,
                 skipped: dict[str, str] | None = None) -> list[SegmentRecord]:
        """Registered segments, of one partition or all, by (partition, start_offset).

        A malformed record raises ValueError, unless `skipped` is given: then it is left out
        and noted there (segment id -> why), so a reader that only serves can go on.
        """
        records = []
        for key, value in self.client.hgetall(self.segments_key).items():
            sid = key.decode(errors="replace")
            try:
                records.append(SegmentRecord.from_json(sid, value))
            except ValueError as exc:
                if skipped is None:
                    raise
                skipped[sid] = str(exc)
        if partition is not None:
            records = [r for r in records if r.partition == partition]
        return sorted(records, key=lambda r: (r.partition, r.start_offset))

    def version(self) -> int:
        """The registry version, bumped by every registration and rebuild."""
        return int(self.client.get(self.version_key) or 0)

    def active_generation(self) -> int:
        """The generation that new segments are written into (0 until a reindex switches)."""
        return int(self.client.get(self.generation_key) or 0)

    def generations(self) -> dict[int, GenerationInfo]:
        """Every generation recorded by a reindex, by number."""
        return {int(g): GenerationInfo.from_json(v)
                for g, v in self.client.hgetall(self.generations_key).items()}

    def state(self, *, records: bool = True) -> RegistryState:
        """Version, active generation, checkpoints, generations and records at one instant.

        One transaction reads them all; `records=False` leaves the records out (a large hash).
        """
        with self.client.pipeline(transaction=True) as pipe:
            pipe.get(self.version_key)
            pipe.get(self.generation_key)
            pipe.hgetall(self.ckpt_key)
            pipe.hgetall(self.generations_key)
            if records:
                pipe.hgetall(self.segments_key)
            version, gen, ckpts, gens, *segments = pipe.execute()
        found = [SegmentRecord.from_json(k.decode(), v)
                 for k, v in (segments[0] if segments else {}).items()]
        return RegistryState(
            int(version or 0), int(gen or 0), {int(p): int(c) for p, c in ckpts.items()},
            {int(g): GenerationInfo.from_json(v) for g, v in gens.items()},
            tuple(sorted(found, key=lambda r: (r.partition, r.start_offset))))

    def segment_count(self) -> int:
        """How many segments are registered."""
        return int(self.client.hlen(self.segments_key))

    def build_target(self, default_index: str) -> tuple[int, str]:
        """The active generation and the index spec it builds with, read in one round trip.

        `default_index` (the collection spec's) serves a generation no reindex recorded.
        """
        with self.client.pipeline(transaction=True) as pipe:
            pipe.get(self.generation_key)
            pipe.hgetall(self.generations_key)
            gen, infos = pipe.execute()
        generation = int(gen or 0)
        raw = infos.get(str(generation).encode())
        return generation, default_index if raw is None else GenerationInfo.from_json(raw).index

    def record_generation(self, info: GenerationInfo) -> None:
        """Store or update what is known of one generation."""
        self.client.hset(self.generations_key, str(info.generation), info.to_json())

    def set_active_generation(self, generation: int) -> None:
        """Set the generation new segments go into, outside a swap: for a registry being made."""
        self.client.set(self.generation_key, generation)

    def forget_generation(self, generation: int) -> None:
        """Drop a generation's record (its folders are the garbage collector's)."""
        self.client.hdel(self.generations_key, str(generation))

    def swap(self, removed: list[SegmentRecord], added: list[SegmentRecord], *, kind: str,
             generation: int | None = None, fence: Fence | None = None) -> int:
        """Replace registered segments by others over the same offsets in one step; new version.

        Raises SwapConflict when a removed record is no longer registered as given, or an added
        id is taken by a segment not being removed: someone else changed the registry first.
        With `fence` (the lifecycle lock of the action), nothing is swapped unless its token
        is still the lock's: `fence.lost()` is raised instead. The removed paths are noted as
        released now (`released()`).
        """
        check_same_coverage(removed, added)
        args: list[object] = [self.events_channel, json.dumps({"type": kind}),
                              "" if generation is None else generation, len(removed),
                              repr(time.time()), "" if fence is None else fence.token]
        for rec in removed:
            args += [rec.segment_id, rec.to_json()]
        for rec in added:
            args += [rec.segment_id, rec.to_json()]
        reply = self._swap(keys=self.swap_keys(fence), args=args)
        status = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
        detail = reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])
        if status == "fenced" and fence is not None:
            raise fence.lost()
        if status != "ok":
            raise SwapConflict(f"{self.collection}: segment {detail} changed during the {kind}; "
                               "nothing was swapped")
        return int(detail)

    def released(self) -> dict[str, float]:
        """Store-relative path -> when a swap stopped referencing it (Unix time)."""
        out = {}
        for path, at in self.client.hgetall(self.released_key).items():
            try:
                out[path.decode()] = float(at)
            except ValueError:
                continue
        return out

    def clear(self) -> int:
        """Delete checkpoints, segments and version (not epochs, not the spec); return the count.

        Epochs stay because resetting them would let a stale worker's old epoch match again.
        """
        return int(self.client.delete(self.ckpt_key, self.segments_key, self.version_key))

    def replace_all(self, records: list[SegmentRecord], checkpoints: dict[int, int],
                    expected_version: int) -> int:
        """Swap in a whole registry atomically unless the version moved; return the new one."""
        with self.client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(self.version_key)
                if int(pipe.get(self.version_key) or 0) != expected_version:
                    raise redis.WatchError("version moved")
                pipe.multi()
                pipe.delete(self.ckpt_key, self.segments_key)
                if checkpoints:
                    pipe.hset(self.ckpt_key, mapping={str(p): c for p, c in checkpoints.items()})
                if records:
                    pipe.hset(self.segments_key,
                              mapping={r.segment_id: r.to_json() for r in records})
                version = expected_version + 1
                pipe.set(self.version_key, version)
                pipe.execute()
            except redis.WatchError:
                raise RebuildError(f"the registry of {self.collection} changed during the "
                                   "rebuild; stop its indexer workers and run it again") from None
        # Announced after the transaction, which a cluster cannot give a PUBLISH: the event is
        # a hint, and a searcher that misses it catches up at its next reconcile.
        self.client.publish(self.events_channel,
                            json.dumps({**_event("rebuilt", None), "version": version}))
        return version


@dataclass(frozen=True, slots=True)
class GenerationInfo:
    """One index generation: the index spec its segments are built with, and its history."""

    generation: int
    index: str
    created_at: float
    actor: str = ""
    source: int | None = None  # the generation it was rebuilt from
    state: str = "building"  # building, active, retired

    @classmethod
    def from_json(cls, text: str | bytes) -> GenerationInfo:
        """Parse the stored JSON, ignoring fields this version does not know."""
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in json.loads(text).items() if k in known})

    def to_json(self) -> str:
        """The canonical JSON stored in the generations hash."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class RegistryState:
    """A collection's registry as read at one instant (`Registry.state`)."""

    version: int
    generation: int  # the active one
    checkpoints: dict[int, int]
    generations: dict[int, GenerationInfo]
    records: tuple[SegmentRecord, ...]  # by (partition, start offset); empty if not read


def note_skipped(logger: logging.Logger, collection: str, skipped: dict[str, str],
                 logged: dict[str, str]) -> dict[str, str]:
    """Log each malformed record once (again only when its reason changes); the new `logged`.

    A reader that skips a bad record keeps serving the good ones; the log says so once, not on
    every read.
    """
    for record_id, why in skipped.items():
        if logged.get(record_id) != why:
            logger.error("collection=%s registry record skipped: %s", collection, why)
    return dict(skipped)


def records_of(client: redis.Redis, collections: Iterable[str], *,
               skipped: dict[tuple[str, str], bytes] | None = None
               ) -> dict[str, list[SegmentRecord]]:
    """The registered segments of several collections, read in one round trip.

    A malformed record raises ValueError, unless `skipped` is given: then it is left out and
    its stored text kept there under (collection, segment id).
    """
    names = list(collections)
    with client.pipeline(transaction=False) as pipe:  # one slot per collection: no transaction
        for name in names:
            pipe.hgetall(Registry(client, name).segments_key)
        replies = pipe.execute() if names else []
    out: dict[str, list[SegmentRecord]] = {}
    for name, reply in zip(names, replies, strict=True):
        out[name] = []
        for key, value in reply.items():
            sid = key.decode(errors="replace")
            try:
                out[name].append(SegmentRecord.from_json(sid, value))
            except ValueError:
                if skipped is None:
                    raise
                skipped[(name, sid)] = value
    return out


def check_same_coverage(removed: list[SegmentRecord], added: list[SegmentRecord]) -> None:
    """Raise ValueError unless `added` covers exactly the offsets of `removed`, per partition."""
    def spans(records: list[SegmentRecord]) -> dict[int, list[tuple[int, int]]]:
        out: dict[int, list[tuple[int, int]]] = {}
        for rec in sorted(records, key=lambda r: (r.partition, r.start_offset)):
            merged = out.setdefault(rec.partition, [])
            if merged and merged[-1][1] > rec.start_offset:
                raise ValueError(f"segments overlap at {rec.segment_id}")
            if merged and merged[-1][1] == rec.start_offset:
                merged[-1] = (merged[-1][0], rec.end_offset)
            else:
                merged.append((rec.start_offset, rec.end_offset))
        return out

    if spans(removed) != spans(added):
        raise ValueError(f"a swap must cover the same offsets: removes {spans(removed)}, "
                         f"adds {spans(added)}")


def _event(kind: str, record: SegmentRecord | None) -> dict:
    """An event for the events channel, without the version (added by whoever bumps it)."""
    if record is None:
        return {"type": kind, "segment_id": None, "partition": None, "start_offset": None,
                "end_offset": None}
    return {"type": kind, "segment_id": record.segment_id, "partition": record.partition,
            "start_offset": record.start_offset, "end_offset": record.end_offset}
