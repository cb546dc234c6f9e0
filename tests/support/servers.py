"""Server fixtures: real Kafka, Redis, Redis Cluster and S3 servers per session, on first use.

A test marked `redis_cluster` gets the three-master Redis Cluster instead of the single Redis
in its `settings` and `redis_client`; everything else about it stays the same.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

from streamvec.devstack import cache_dir
from streamvec.devstack.jars import S3PROXY
from streamvec.devstack.kafka import KafkaServer, ensure_jars
from streamvec.devstack.ports import LOOPBACK, free_port, free_ports
from streamvec.devstack.process import ServerProcess
from streamvec.devstack.redis import RedisServer
from streamvec.devstack.s3proxy import S3ProxyServer
from streamvec.errors import DevStackError
from streamvec.redisconn import connect
from streamvec.settings import Settings
from tests.support.redis_cluster import MASTERS, ClusterNode, LocalCluster

# A cold JVM on a busy two-core CI machine; a warm start takes a few seconds.
KAFKA_START_TIMEOUT_S = 180.0
REDIS_START_TIMEOUT_S = 30.0
S3_START_TIMEOUT_S = 120.0
S3_BUCKET = "streamvec-test"
# The free port we picked can be taken by another run before the server binds it.
START_ATTEMPTS = 3
# Port 1 on loopback: nothing listens there, so a unit test that connects fails at once.
NOWHERE_PORT = 1
SERVER_FIXTURES = frozenset({"kafka_server", "redis_server", "redis_client", "redis_cluster",
                             "s3_server"})
CLUSTER_MARK = "redis_cluster"

S = TypeVar("S", bound=ServerProcess)


def pytest_configure(config: pytest.Config) -> None:
    """Declare the marker that points a test's settings at the Redis Cluster."""
    config.addinivalue_line(
        "markers", f"{CLUSTER_MARK}: the test's settings and redis_client use the session's "
                   "three-master Redis Cluster (redis+cluster://) instead of the single Redis")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses a server as integration, so `-m "not integration"` starts none."""
    for item in items:
        uses_server = SERVER_FIXTURES & set(getattr(item, "fixturenames", ())) or (
            item.get_closest_marker(CLUSTER_MARK) is not None)
        if uses_server and item.get_closest_marker("integration") is None:
            item.add_marker(pytest.mark.integration)


def _start(make: Callable[[], S], timeout: float) -> S:
    """Start a server on fresh ports, retrying when another process grabbed a port first."""
    attempt = 1
    while True:
        server = make()
        try:
            server.start(die_with_parent=True)
            server.wait_healthy(timeout)
            return server
        except BaseException as exc:
            # Stop it whatever went wrong (Ctrl-C included) so no server outlives the failure.
            lost_race = isinstance(exc, DevStackError) and "Address already in use" in (
                server.log_tail(200)
            )
            server.stop()
            if not lost_race or attempt >= START_ATTEMPTS:
                raise
            attempt += 1


@pytest.fixture(scope="session")
def kafka_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaServer]:
    """A single-node KRaft broker on free loopback ports, for the whole session."""
    libs = ensure_jars(cache_dir(Settings()))

    def make() -> KafkaServer:
        port, controller_port = free_ports(2)
        return KafkaServer(tmp_path_factory.mktemp("kafka"), port, controller_port, libs)

    server = _start(make, KAFKA_START_TIMEOUT_S)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server on a free loopback port, for the whole session."""
    server = _start(
        lambda: RedisServer(tmp_path_factory.mktemp("redis"), free_port()), REDIS_START_TIMEOUT_S
    )
    try:
        yield server
    finally:
        server.stop()


def start_cluster(mkdir: Callable[[], Path]) -> LocalCluster:
    """Start three cluster nodes on fresh ports, each in a folder from `mkdir`, and join them."""
    nodes: list[ClusterNode] = []

    def make() -> ClusterNode:
        port, bus_port = free_ports(2)
        return ClusterNode(mkdir(), port, bus_port)

    try:
        for _ in range(MASTERS):
            nodes.append(_start(make, REDIS_START_TIMEOUT_S))
        cluster = LocalCluster(nodes)
        cluster.create()
        return cluster
    except BaseException:
        for node in nodes:
            node.stop()
        raise


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A three-master Redis Cluster on free loopback ports, for the whole session.

    Started only when a test asks for it (directly or through the `redis_cluster` marker).
    """
    cluster = start_cluster(lambda: tmp_path_factory.mktemp("redis-node"))
    try:
        yield cluster
    finally:
        cluster.stop()


def redis_url(request: pytest.FixtureRequest) -> str:
    """The Redis URL of a test's servers: the cluster's if it is marked so, else the server's."""
    if request.node.get_closest_marker(CLUSTER_MARK) is not None:
        return request.getfixturevalue("redis_cluster").url
    return request.getfixturevalue("redis_server").url


@dataclass(frozen=True)
class S3Endpoint:
    """The session's S3-compatible server: where it listens, its bucket, fsspec options."""

    endpoint: str
    bucket: str
    storage_options: dict[str, Any] = field(default_factory=dict)

    def url(self, prefix: str) -> str:
        """An `s3://` URL under the bucket, e.g. one prefix per test."""
        return f"s3://{self.bucket}/{prefix}"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    """S3Proxy (jclouds filesystem backend) on a free loopback port with one bucket, per session."""
    libs = ensure_jars(cache_dir(Settings()), jars=S3PROXY)
    server = _start(
        lambda: S3ProxyServer(tmp_path_factory.mktemp("s3proxy"), free_port(), libs),
        S3_START_TIMEOUT_S,
    )
    try:
        import s3fs

        options = server.storage_options()
        s3fs.S3FileSystem(**options, skip_instance_cache=True).call_s3(
            "create_bucket", Bucket=S3_BUCKET
        )
        yield S3Endpoint(server.endpoint, S3_BUCKET, options)
    finally:
        server.stop()


@pytest.fixture
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings for one test: the session's servers if it is an integration test, else nowhere."""
    if request.node.get_closest_marker("integration") is not None:
        kafka = request.getfixturevalue("kafka_server").bootstrap
        url = redis_url(request)
    else:
        kafka = f"{LOOPBACK}:{NOWHERE_PORT}"
        url = f"redis://{LOOPBACK}:{NOWHERE_PORT}/0"
    # Every field is explicit so a developer's STREAMVEC_* variables never leak into a test.
    return Settings(
        kafka=kafka,
        redis=url,
        store=tmp_path / "snapshots",
        kafka_options={},
        home=tmp_path / "home",
    )


@pytest.fixture
def collection_name() -> str:
    """A collection name no other test uses, such as `t-1a2b3c4d`."""
    return f"t-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def redis_client(request: pytest.FixtureRequest) -> Iterator[redis.Redis]:
    """A client of the session's Redis, or of its cluster (bytes in, bytes out), closed after."""
    client = connect(redis_url(request))
    try:
        yield client
    finally:
        client.close()
