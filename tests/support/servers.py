"""Server fixtures: a real Kafka broker, Redis and S3 server per session, started on first use."""

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
from streamvec.settings import Settings

# A cold JVM on a busy two-core CI machine; a warm start takes a few seconds.
KAFKA_START_TIMEOUT_S = 180.0
REDIS_START_TIMEOUT_S = 30.0
S3_START_TIMEOUT_S = 120.0
S3_BUCKET = "streamvec-test"
# The free port we picked can be taken by another run before the server binds it.
START_ATTEMPTS = 3
# Port 1 on loopback: nothing listens there, so a unit test that connects fails at once.
NOWHERE_PORT = 1
SERVER_FIXTURES = frozenset({"kafka_server", "redis_server", "redis_client", "s3_server"})

S = TypeVar("S", bound=ServerProcess)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses a server as integration, so `-m "not integration"` starts none."""
    for item in items:
        uses_server = SERVER_FIXTURES & set(getattr(item, "fixturenames", ()))
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
        redis_url = request.getfixturevalue("redis_server").url
    else:
        kafka = f"{LOOPBACK}:{NOWHERE_PORT}"
        redis_url = f"redis://{LOOPBACK}:{NOWHERE_PORT}/0"
    # Every field is explicit so a developer's STREAMVEC_* variables never leak into a test.
    return Settings(
        kafka=kafka,
        redis=redis_url,
        store=tmp_path / "snapshots",
        kafka_options={},
        home=tmp_path / "home",
    )


@pytest.fixture
def collection_name() -> str:
    """A collection name no other test uses, such as `t-1a2b3c4d`."""
    return f"t-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client of the session's Redis (bytes in, bytes out), closed after the test."""
    client = redis.Redis.from_url(redis_server.url)
    try:
        yield client
    finally:
        client.close()
