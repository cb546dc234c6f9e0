"""The Redis home of collection specs: `sv:{name}:spec` plus the `sv:collections` index set."""

from __future__ import annotations

import redis

from ingest.errors import CollectionExists, CollectionNotFound
from ingest.names import CollectionName
from ingest.spec import CollectionSpec

COLLECTIONS_KEY = "sv:collections"


def spec_key(name: str | CollectionName) -> str:
    """Return the Redis key that holds a collection's spec."""
    parsed = name if isinstance(name, CollectionName) else CollectionName.parse(name)
    return parsed.key("spec")


def load_spec(client: redis.Redis, name: str) -> CollectionSpec:
    """Read a collection's spec; raise CollectionNotFound if it is not registered."""
    raw = client.get(spec_key(name))
    if raw is None:
        raise CollectionNotFound(f"collection {name!r} does not exist (create it first)")
    return CollectionSpec.from_json(raw)


def claim_spec(client: redis.Redis, spec: CollectionSpec) -> bool:
    """Store `spec` if the name is free; return False if an equal spec is already stored.

    Raises CollectionExists when the stored spec differs, naming the fields that differ.
    """
    key = spec_key(spec.name)
    if client.set(key, spec.to_json(), nx=True):
        client.sadd(COLLECTIONS_KEY, spec.name)
        return True
    current = load_spec(client, spec.name)
    if current != spec:
        diffs = [
            f"{field}: {getattr(current, field)!r} != {getattr(spec, field)!r}"
            for field in CollectionSpec.__dataclass_fields__
            if getattr(current, field) != getattr(spec, field)
        ]
        raise CollectionExists(
            f"collection {spec.name!r} already exists with another spec ({'; '.join(diffs)})"
        )
    client.sadd(COLLECTIONS_KEY, spec.name)
    return False


def list_names(client: redis.Redis) -> list[str]:
    """Return the names of every registered collection, sorted."""
    return sorted(m.decode() for m in client.smembers(COLLECTIONS_KEY))


def forget(client: redis.Redis, name: str) -> int:
    """Delete every Redis key of a collection and unlist it; return how many keys went."""
    parsed = CollectionName.parse(name)
    deleted = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=parsed.key_prefix + "*", count=500):
        batch.append(key)
        if len(batch) >= 500:
            deleted += client.delete(*batch)
            batch.clear()
    if batch:
        deleted += client.delete(*batch)
    client.srem(COLLECTIONS_KEY, str(parsed))
    return deleted
