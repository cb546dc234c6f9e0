"""A collection as a whole: create, describe and drop it across Kafka, Redis and the store.

`ingest/admin.py` knows topics and specs only; here they meet the aliases (a collection may
not take an alias's name) and the segment store (a new collection may not inherit folders of
an earlier one; a dropped one leaves no folder that nothing references).
"""

from __future__ import annotations

import logging

from indexer.store import SegmentStore
from ingest import admin, audit, catalog
from ingest.errors import CollectionExists
from ingest.spec import CollectionSpec
from lifecycle import aliases, gc, shards
from streamvec.settings import Settings

log = logging.getLogger(__name__)


def create_collection(settings: Settings, spec: CollectionSpec, *, replication: int | None = None,
                      timeout: float = 30.0, adopt_store: bool = False) -> bool:
    """Create a collection's topics and register its spec; return False if it already existed.

    A new collection refuses the name of an alias, and a name whose store folder still holds
    segment folders (kept because a restored collection references them, or left from
    before): its workers would take those folders for their own. `adopt_store` is for
    rebuilding a lost registry from them on purpose (`streamvec registry rebuild`).
    """
    client = settings.redis_client()
    aliases.refuse_collection_name(client, spec.name)  # an alias already answers to the name
    if not adopt_store and not client.exists(catalog.spec_key(spec.name)):
        leftovers = SegmentStore.from_settings(settings).count_folders(spec.name)
        if leftovers:
            raise CollectionExists(
                f"the segment store {settings.store} still holds {leftovers} segment "
                f"folder(s) of an earlier collection named {spec.name!r} (a restored collection "
                "may reference them); choose another name, or pass --adopt-store to rebuild "
                "its registry from them")
    return admin.create_collection(settings, spec, replication=replication, timeout=timeout)


def describe_collection(settings: Settings, name: str, timeout: float = 10.0) -> dict:
    """Return a collection's spec, topics, per-partition offsets and its store folder."""
    info = admin.describe_collection(settings, name, timeout=timeout)
    folder = SegmentStore.from_settings(settings).path(info["spec"].name)
    return {**info, "snapshots": str(folder)}


def drop_collection(settings: Settings, name: str, timeout: float = 30.0) -> None:
    """Delete a collection's topics, Redis keys (snapshots too) and unreferenced folders.

    Folders that a restored collection still references stay (lifecycle/gc.py), and so does
    a folder whose collection's lifecycle lock is busy; `streamvec gc` sweeps it later.
    """
    client = settings.redis_client()
    spec = catalog.load_spec(client, name)
    topics = admin.delete_topics(settings, spec, timeout=timeout)
    catalog.forget(client, name)
    shards.forget_shards(client, spec.name)  # its shards' streams have tags of their own
    gc.collect_dropped(settings, spec.name)
    audit.record(client, "collection.drop", spec.name, {"topics": topics}, settings.actor)
    log.info("collection=%s dropped", name)
