"""streamvec on a real three-master Redis Cluster: every role, the SDKs and the lifecycle.

Each collection's keys live in one slot, on one node; the collections of a test spread over
the three masters. The roles run as processes given only the `redis+cluster://` URL.
"""

from __future__ import annotations

import numpy as np
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from indexer.registry import Registry
from ingest import admin, catalog
from ingest.producer import Producer
from ingest.spec import CollectionSpec
from lifecycle import aliases, challenges
from lifecycle.collections import drop_collection
from lifecycle.compaction import CompactionPolicy, compact
from lifecycle.errors import AliasConflict, LifecycleBusy
from lifecycle.lock import LifecycleLock
from monitor import status
from searcher.client import Client
from streamvec import redisconn
from streamvec.redisconn import slot_of
from tests.support.polling import wait_until
from tests.support.redis_cluster import MASTERS, ClusterNode, LocalCluster
from tests.support.roles import RoleProcess
from tests.support.servers import start_cluster
from tests.support.workers import wait_fully_indexed

pytestmark = [pytest.mark.integration, pytest.mark.redis_cluster]

DIM = 4


def owners(cluster: LocalCluster, keys: list[str]) -> set[str]:
    """The nodes that hold any of `keys`, asked of each node directly."""
    return {node.address for node in cluster.nodes for key in keys if _has(node, key)}


def _has(node: ClusterNode, key: str) -> bool:
    with node.client() as conn:
        try:
            return bool(conn.exists(key))
        except redis.ResponseError:  # MOVED: another node owns its slot
            return False


def keys_anywhere(cluster: LocalCluster, pattern: str) -> list[bytes]:
    """Keys matching `pattern` on every node, scanned node by node."""
    out: list[bytes] = []
    for node in cluster.nodes:
        with node.client() as conn:
            out += list(conn.scan_iter(match=pattern, count=500))
    return sorted(out)


def test_every_role_and_the_sdks_connect_with_the_cluster_url(settings, collection_name,
                                                              redis_cluster, tmp_path):
    assert settings.redis_url == redis_cluster.url
    spec = CollectionSpec(collection_name, dim=DIM, partitions=2, index="Flat", seal_rows=50,
                          seal_seconds=0.3)
    admin.create_collection(settings, spec)
    roles = [RoleProcess(settings, role, collection_name, tmp_path)
             for role in ("indexer", "searcher")]
    try:
        for role in roles:
            assert role.wait_ready()["status"] == "ok", role.tail()
        rng = np.random.default_rng(5)
        vectors = rng.standard_normal((400, DIM)).astype(np.float32)
        ids = [f"v{i}" for i in range(400)]
        with Client(redis_cluster.url) as client, Producer(collection_name,
                                                           settings=settings) as producer:
            # Two rounds, each indexed before the next: at least two segments per partition.
            for lo in (0, 200):
                producer.upsert(ids[lo:lo + 200], vectors[lo:lo + 200])
                offsets = producer.flush()
                got = client.search(collection_name, vectors[lo + 7], k=1,
                                    consistency={"session": offsets})
                assert got.ids[0][0] == ids[lo + 7]
                wait_fully_indexed(settings, collection_name, spec.collection.topic, timeout=120)
            # A compaction swaps segments under the fenced lock, on the collection's slot.
            report = compact(settings, collection_name, CompactionPolicy(10_000, 1))
            assert report.segments_after == 2 < report.segments_before
            wait_until(lambda: len(Registry(settings.redis_client(), collection_name)
                                   .segments()) == 2, timeout=10, what="the swap")
            queries = vectors[[3, 250, 399]]
            found = wait_until(lambda: client.search(collection_name, queries, k=1),
                               timeout=30, what="answers after the compaction")
            assert [row[0] for row in found.ids] == ["v3", "v250", "v399"]
        (row,) = status.collect(settings, [collection_name])
        assert (row.name, row.rows, row.segments, row.lag) == (collection_name, 400, 2, 0)
        # The monitor reads the query stream and the registry, and writes its canary, too.
        monitor = RoleProcess(settings, "monitor", collection_name, tmp_path)
        roles.append(monitor)
        assert monitor.wait_ready()["status"] == "ok", monitor.tail()
    finally:
        codes = {r.role: r.stop() for r in roles}
    assert set(codes.values()) == {0}, "\n".join(r.tail() for r in roles)

    registry = Registry(settings.redis_client(), collection_name)
    assert registry.version() > 0
    keys = [registry.ckpt_key, registry.segments_key, registry.version_key,
            catalog.spec_key(collection_name)]
    assert len(owners(redis_cluster, keys)) == 1  # one collection, one node
    drop_collection(settings, collection_name)
    assert keys_anywhere(redis_cluster, f"sv:{{{collection_name}}}:*") == []


def test_collections_spread_over_the_masters_and_a_drop_scans_them_all(
        settings, redis_client, redis_cluster, collection_name):
    assert redisconn.is_cluster_client(redis_client)
    names = [f"{collection_name}-{i}" for i in range(12)]
    for name in names:
        catalog.claim_spec(redis_client, CollectionSpec(name, dim=DIM, partitions=1))
        registry = Registry(redis_client, name)
        registry.claim(0)
        redis_client.set(registry.collection.key("extra"), "x")
    homes = {name: owners(redis_cluster, [catalog.spec_key(name)]) for name in names}
    assert all(len(h) == 1 for h in homes.values()), homes
    assert len(set().union(*homes.values())) >= 2  # 12 tags over 3 masters
    # forget scans every master for the prefix, and deletes only this collection's keys.
    assert catalog.forget(redis_client, names[0]) == 3
    assert keys_anywhere(redis_cluster, f"sv:{{{names[0]}}}:*") == []
    assert len(keys_anywhere(redis_cluster, f"sv:{{{collection_name}-*}}:*")) == 3 * 11
    for name in names[1:]:
        catalog.forget(redis_client, name)


def test_aliases_challenges_and_locks_on_the_cluster(settings, redis_client, collection_name):
    alias = f"{collection_name}-alias"
    blue, green = f"{collection_name}@blue", f"{collection_name}@green"
    for name in (blue, green):
        catalog.claim_spec(redis_client, CollectionSpec(name, dim=DIM, partitions=1))
    assert slot_of(catalog.spec_key(blue)) != slot_of(aliases.switch_keys(alias)[0])
    assert aliases.set_alias(redis_client, alias, blue, "ops") is None
    assert aliases.set_alias(redis_client, alias, green, "ops") == blue
    assert aliases.rollback(redis_client, alias, "ops") == (green, blue)
    assert [s.target for s in aliases.history(redis_client, alias)] == [blue, green, blue]
    assert alias in [a.name for a in aliases.list_aliases(redis_client)]
    taken = f"{collection_name}-c"  # a collection's name: the switch script sees its spec
    catalog.claim_spec(redis_client, CollectionSpec(taken, dim=DIM, partitions=1))
    with pytest.raises(AliasConflict, match="is the name of a collection"):
        aliases.switch(redis_client, taken, blue, "ops", "set")

    config = challenges.start(redis_client, alias, green, 0.5, "ops")
    assert challenges.active(redis_client, alias) == config
    assert challenges.stop(redis_client, alias, "ops") == config
    assert challenges.latest(redis_client, alias) == (config, False)
    assert aliases.delete(redis_client, alias, "ops") == blue  # scans for challenge keys
    assert redis_client.exists(*challenges.end_keys(alias)) == 0

    with LifecycleLock(redis_client, blue, "compact") as held:
        with pytest.raises(LifecycleBusy, match="held by a running compact"):
            LifecycleLock(redis_client, blue, "gc").__enter__()
        held.check()
    assert redis_client.get(held.key) is None


def test_a_master_restart_is_an_outage_the_same_client_rides_out(tmp_path):
    folders = iter(tmp_path / f"node{i}" for i in range(MASTERS))
    cluster = start_cluster(lambda: next(folders))  # its own: this test stops a master
    try:
        client = redisconn.connect(cluster.url, timeout=2, retry=Retry(NoBackoff(), 1))
        registry = Registry(client, "restarted")
        assert registry.claim(0) == 1
        (owner,) = [n for n in cluster.nodes if _has(n, registry.epoch_key)]
        owner.stop()
        with pytest.raises(redis.ConnectionError):
            registry.epoch(0)
        owner.start(die_with_parent=True)
        owner.wait_healthy(30)
        wait_until(cluster.ready, timeout=60, what="the cluster to be ok again")
        assert wait_until(lambda: answer(lambda: registry.claim(0)), timeout=30,
                          what="the same client to write again") == 2
    finally:
        cluster.stop()


def answer(call):
    """What `call` returns, or None while it fails with a connection error."""
    try:
        return call()
    except redis.ConnectionError:
        return None
