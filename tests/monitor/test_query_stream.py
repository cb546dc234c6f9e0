"""The query stream's backlog, read from a real Redis at scrape time: what an autoscaler sees."""

from __future__ import annotations

import pytest
import redis
from prometheus_client import CollectorRegistry

from lifecycle.shards import write_map
from monitor.collectors import QueryStreamCollector, StreamBacklog, read_backlog
from searcher import protocol
from searcher.server import GROUP
from searcher.shards import ShardMap

BACKLOG = "streamvec_monitor_query_stream_backlog"
PENDING = "streamvec_monitor_query_stream_pending"


def scrape(client: redis.Redis, name: str,
           shard: str = "all") -> tuple[float | None, float | None]:
    """(backlog, pending) of one stream as Prometheus would scrape them from a fresh registry."""
    registry = CollectorRegistry()
    registry.register(QueryStreamCollector(name, client))
    labels = {"collection": name, "shard": shard}
    return registry.get_sample_value(BACKLOG, labels), registry.get_sample_value(PENDING, labels)


def add(client: redis.Redis, name: str, n: int) -> list[bytes]:
    """Add `n` requests (their content does not matter to the counts)."""
    return [client.xadd(protocol.queue_key(name), {"id": f"r{i}"}) for i in range(n)]


def take(client: redis.Redis, name: str, n: int) -> list[bytes]:
    """Read `n` requests as a searcher of the group does, leaving them unacknowledged."""
    got = client.xreadgroup(GROUP, "replica-1", {protocol.queue_key(name): ">"}, count=n)
    return [entry_id for entry_id, _ in got[0][1]]


def answer(client: redis.Redis, name: str, entry_ids: list[bytes]) -> None:
    """Acknowledge and delete, as the searcher's reply script does."""
    client.xack(protocol.queue_key(name), GROUP, *entry_ids)
    client.xdel(protocol.queue_key(name), *entry_ids)


@pytest.mark.integration
def test_unacknowledged_requests_are_the_pending_part_of_the_backlog(redis_client,
                                                                     collection_name) -> None:
    name = collection_name
    assert scrape(redis_client, name) == (0, 0)  # no stream yet: nothing waits
    add(redis_client, name, 7)
    assert scrape(redis_client, name) == (7, 0)  # no searcher ever started: all undelivered
    redis_client.xgroup_create(protocol.queue_key(name), GROUP, id="0")
    read = take(redis_client, name, 5)
    assert scrape(redis_client, name) == (7, 5)  # 2 undelivered + 5 pending
    answer(redis_client, name, read[:3])
    assert scrape(redis_client, name) == (4, 2)
    assert read_backlog(redis_client, protocol.queue_key(name)) == StreamBacklog(2, 2)


@pytest.mark.integration
def test_the_backlog_stays_right_when_redis_cannot_count_the_lag(redis_client,
                                                                 collection_name) -> None:
    name, stream = collection_name, protocol.queue_key(collection_name)
    added = add(redis_client, name, 6)
    redis_client.xgroup_create(stream, GROUP, id="0")
    take(redis_client, name, 2)
    redis_client.xdel(stream, added[-1])  # a deletion ahead of the group hides Redis's lag
    (group,) = redis_client.xinfo_groups(stream)
    assert group["lag"] is None
    assert read_backlog(redis_client, stream) == StreamBacklog(undelivered=3, pending=2)
    assert scrape(redis_client, name) == (5, 2)


def test_an_unreachable_redis_exports_no_sample_rather_than_zero(caplog) -> None:
    client = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1, retry=None)
    assert scrape(client, "products") == (None, None)
    assert "collection=products query stream unreadable at scrape" in caplog.text


@pytest.mark.integration
def test_a_sharded_collection_has_one_backlog_per_shard_stream(redis_client,
                                                               collection_name) -> None:
    name = collection_name
    add(redis_client, name, 3)  # the unsharded stream: no longer read once a map exists
    write_map(redis_client, name, ShardMap.plan(8, 2, 1), expected=0)
    for shard, n in (("0-3", 4), ("4-7", 1)):
        for i in range(n):
            redis_client.xadd(protocol.queue_key(name, shard), {"id": f"{shard}-{i}"})
    assert scrape(redis_client, name, "0-3") == (4, 0)
    assert scrape(redis_client, name, "4-7") == (1, 0)
    assert scrape(redis_client, name, "all") == (None, None)
