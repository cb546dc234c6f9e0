"""Redis URLs and clients: one server or a cluster by scheme, checked without leaking a password."""

from __future__ import annotations

import pytest
import redis
from pydantic import ValidationError
from redis.cluster import RedisCluster
from redis.connection import SSLConnection

from streamvec import redisconn
from streamvec.redisconn import ClusterUnavailable, check_url, connect, parse_cluster_url
from streamvec.settings import Settings, describe_invalid

SECRET = "s3cr3t-pw"  # noqa: S105 - a test value


@pytest.mark.parametrize("url", [
    "redis://h:1/0", "rediss://u:p@h:2/1", "unix:///run/redis.sock",
    "redis+cluster://h:7000", "redis+cluster://h1:7000,h2:7001,h3:7002/",
    "rediss+cluster://u:p@h:7000/0", "REDIS+CLUSTER://h", "redis+cluster://[::1]:7000,h:1",
])
def test_accepted_urls(url: str) -> None:
    assert check_url(url) == url
    assert Settings(redis=url).redis_url == url


@pytest.mark.parametrize(("url", "message"), [
    ("http://h:1", "must start with redis://, rediss://, unix:// or, for a Redis Cluster, "
                   "redis+cluster:// or rediss+cluster://, not 'http'"),
    ("h:1", "not 'h'"),
    ("redis+cluster://h:7000/2", "only database 0"),
    ("redis+cluster://h:70000", "port '70000' of 'h' is not 1..65535"),
    ("redis+cluster://h:x", "port 'x' of 'h' is not 1..65535"),
    ("redis+cluster://h:1,,h:2", "'' is not host[:port]"),
    ("redis+cluster://" + ",".join(f"h{i}:1" for i in range(65)), "65 nodes, over the limit"),
])
def test_refused_urls_say_why(url: str, message: str) -> None:
    with pytest.raises(ValueError) as err:
        check_url(url)
    assert message in str(err.value)


@pytest.mark.parametrize(("url", "why"), [
    (f"redis+cluster://app:{SECRET}@h:7000/3", "only database 0"),
    (f"redis+cluster://app:{SECRET}@h:0,h2:1", "port '0' of 'h' is not 1..65535"),
])
def test_a_refused_url_never_repeats_its_password(url: str, why: str) -> None:
    with pytest.raises(ValidationError) as err:
        Settings(redis=url)
    text = describe_invalid(err.value)
    assert why in text and text.startswith("redis: ")
    assert SECRET not in text


def test_cluster_url_parts() -> None:
    parsed = parse_cluster_url(f"redis+cluster://app:{SECRET}@10.0.0.1:7000,[fe80::1]:7001,"
                               "cache-2")
    assert parsed.nodes == (("10.0.0.1", 7000), ("fe80::1", 7001), ("cache-2", 6379))
    assert parsed.options["username"] == "app"
    assert parsed.options["password"] == SECRET
    assert "ssl" not in parsed.options and "connection_class" not in parsed.options
    tls = parse_cluster_url("rediss+cluster://h:7000?ssl_cert_reqs=none")
    assert tls.options["ssl"] is True
    assert tls.options["connection_class"] is SSLConnection
    assert tls.options["ssl_cert_reqs"] == "none"


def test_describe_masks_the_password_of_a_cluster_url(monkeypatch) -> None:
    monkeypatch.setenv("STREAMVEC_REDIS", f"rediss+cluster://app:{SECRET}@h1:7000,h2:7000/0")
    settings = Settings()
    assert settings.describe()["redis"] == "rediss+cluster://app:***@h1:7000,h2:7000/0"
    assert SECRET not in repr(settings)
    assert settings.child_env()["STREAMVEC_REDIS"] == settings.redis_url


def test_a_server_url_gives_a_server_client_without_connecting() -> None:
    client = connect(f"redis://app:{SECRET}@127.0.0.1:1/4", timeout=1.5)
    assert type(client) is redis.Redis
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["db"], kwargs["socket_timeout"], kwargs["password"]) == (4, 1.5, SECRET)
    assert not redisconn.is_cluster_client(client)


def test_a_cluster_client_connects_on_first_use_and_an_outage_is_a_connection_error() -> None:
    # Nothing listens on port 1: building the client must not fail, its first command must,
    # as the connection error every role already rides out.
    client = connect("redis+cluster://127.0.0.1:1", timeout=1)
    assert isinstance(client, RedisCluster)
    assert redisconn.is_cluster_client(client)
    script = redisconn.register_script(client, "return 1")
    assert script.sha == "e0e1f9fabfc9d4800c877a703b823ac0578ff8db"
    for call in (lambda: client.get("sv:{a}:spec"), client.ping, lambda: client.pipeline(),
                 lambda: script(keys=["sv:{a}:x"])):
        with pytest.raises(redis.ConnectionError, match="Redis Cluster unavailable") as err:
            call()
        assert isinstance(err.value, ClusterUnavailable)
    client.close()


def test_settings_client_of_a_cluster_url_is_a_cluster_client() -> None:
    client = Settings(redis="redis+cluster://127.0.0.1:1,127.0.0.1:2").redis_client(timeout=1)
    assert redisconn.is_cluster_client(client)
    with pytest.raises(redis.ConnectionError):
        client.get("x")
