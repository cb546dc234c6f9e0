"""Shard maps: the one writer of `sv:{NAME}:shards`, and changing a collection's shard count.

The map's format, its keys and the searchers' adverts are the query protocol's
(searcher/shards.py, searcher/protocol.py); this module does every write. A switch is one Lua
script over the map and its version key (one hash slot): it checks the version the caller
read and sets both, so a searcher or client sees the old map or the new one.

Changing the shard count of a running collection fails no query: the new shards' searchers
start first (each on its own stream, STANDBY), `reshard` waits until every new shard has a
live searcher that has caught up, then switches the map. Clients follow at their next search;
a request already on an old shard's stream is answered there, since the old searchers drain
their streams before they stop (searcher/server.py).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from ingest import audit, catalog
from ingest.names import CollectionName
from lifecycle.errors import ReshardError, ShardMapMoved, ShardsNotReady
from searcher import protocol, shards
from searcher.errors import ShardMapError
from searcher.shards import ShardMap
from streamvec import redisconn
from streamvec.settings import Settings

log = logging.getLogger(__name__)

# How long `reshard` waits for the new shards' searchers by default, and how often it looks.
DEFAULT_WAIT_S = 60.0
POLL_S = 0.5

# KEYS: map, its version. ARGV: the version the caller read ('0': no map), the new version,
# the new map JSON. Returns 'ok', or the version found instead of the expected one.
_SWITCH = """
local found = redis.call('GET', KEYS[2]) or '0'
if found ~= ARGV[1] then return found end
redis.call('SET', KEYS[1], ARGV[3])
redis.call('SET', KEYS[2], ARGV[2])
return 'ok'
"""


@dataclass(frozen=True, slots=True)
class Reshard:
    """What a shard count change did: the maps before and after, and the shards retired."""

    collection: str
    before: ShardMap | None
    after: ShardMap | None
    changed: bool

    @property
    def retired(self) -> list[str]:
        """Shards of the old layout that the new one no longer lists: their searchers drain."""
        if self.before is None:
            return [] if self.after is None or len(self.after.shards) == 1 else ["all"]
        return [s.name for s in self.before.shards
                if self.after is None or not self.after.names(s)]

    def to_json(self) -> dict[str, Any]:
        """The change as JSON, for the audit trail and `--json`."""
        return {"collection": self.collection, "changed": self.changed,
                "version": 0 if self.after is None else self.after.version,
                "shards": _names(self.after), "previous": _names(self.before),
                "retired": self.retired}


def _names(shard_map: ShardMap | None) -> list[str]:
    return ["all"] if shard_map is None else [s.name for s in shard_map.shards]


def write_map(client: Any, collection: str, new: ShardMap, expected: int) -> None:
    """Switch the collection's map to `new` if its version is still `expected` (0: none).

    ShardMapMoved when another switch came first; `new.version` must be above `expected`.
    """
    if new.version <= expected:
        raise ReshardError(f"the new shard map's version {new.version} must be above "
                           f"{expected}")
    keys = [protocol.shard_map_key(collection), protocol.shard_version_key(collection)]
    found = redisconn.register_script(client, _SWITCH)(
        keys=keys, args=[str(expected), str(new.version), new.to_json()])
    if found not in (b"ok", "ok"):
        text = found.decode() if isinstance(found, bytes) else str(found)
        raise ShardMapMoved(f"the shard map of {collection} moved to version {text} while this "
                            f"change was planned against version {expected}; nothing changed")


def reshard(settings: Settings, collection: str, count: int, *,
            wait_s: float = DEFAULT_WAIT_S, poll_s: float = POLL_S) -> Reshard:
    """Serve `collection` as `count` shards of contiguous partitions (1: unsharded again).

    Waits up to `wait_s` for a live, caught-up searcher of every new shard (their adverts in
    `sv:{NAME}:searchers`), then switches the map in one step; ShardsNotReady names the
    shards still without one, and nothing changes. The same count again changes nothing.
    """
    client = settings.redis_client()
    spec = catalog.load_spec(client, collection)
    try:
        before = shards.read_map(client, collection)
    except ShardMapError as exc:
        raise ReshardError(f"the shard map of {collection} is unreadable ({exc}); repair or "
                           f"delete {protocol.shard_map_key(collection)} and "
                           f"{protocol.shard_version_key(collection)} first") from None
    expected = 0 if before is None else before.version
    try:
        after = ShardMap.plan(spec.partitions, count, expected + 1, actor=settings.actor)
    except ShardMapError as exc:
        raise ReshardError(f"cannot serve {collection} as {count} shard(s): {exc}") from None
    unchanged = after.same_shards(before) if before is not None else count == 1
    if unchanged:
        return Reshard(collection, before, before, changed=False)
    _wait_for_searchers(client, collection, after, wait_s, poll_s)
    write_map(client, collection, after, expected)
    done = Reshard(collection, before, after, changed=True)
    audit.record(client, "collection.reshard", collection, done.to_json(), settings.actor)
    log.info("collection=%s shard map version %d: %s (retired: %s)", collection, after.version,
             ", ".join(_names(after)), ", ".join(done.retired) or "none")
    return done


def _wait_for_searchers(client: Any, collection: str, target: ShardMap, wait_s: float,
                        poll_s: float) -> None:
    """Return once every shard of `target` has a live, ready searcher; else ShardsNotReady."""
    deadline = time.monotonic() + wait_s
    while True:
        adverts = shards.read_adverts(client, collection)
        missing = [s for s in target.shards if not shards.serving(adverts, s)]
        if not missing:
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(poll_s)
    count = len(target.shards)
    starts = "; ".join(
        f"shard {s.name}: `streamvec searcher --collection {collection}"
        + ("" if s.whole else f" --shard {target.shards.index(s) + 1}/{count}") + "`"
        for s in missing[:8])
    raise ShardsNotReady(
        f"no live, caught-up searcher serves {len(missing)} of the {count} new shard(s) of "
        f"{collection} after {wait_s:g}s, so the shard map was not switched; start them and "
        f"wait for /readyz (or run again with a longer --wait): {starts}")


def forget_shards(client: Any, collection: str) -> int:
    """Delete every key under the collection's shard tags (`sv:{NAME~...}`); return how many."""
    name = CollectionName.parse(collection)
    deleted = 0
    # Each key has its own slot on a cluster: deleted one by one, in pipelines.
    batch: list[bytes] = []
    for key in client.scan_iter(match=f"sv:{{{name}{protocol.SHARD_SEP}*", count=500):
        batch.append(key)
        if len(batch) >= 500:
            deleted += _delete(client, batch)
            batch = []
    return deleted + _delete(client, batch)


def _delete(client: Any, keys: list[bytes]) -> int:
    if not keys:
        return 0
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.delete(key)
        return sum(int(n) for n in pipe.execute())
