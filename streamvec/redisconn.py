"""Redis connections for every role and SDK: one server or a Redis Cluster, told by the URL.

A URL whose scheme is `redis+cluster://` (or `rediss+cluster://` over TLS) names a Redis
Cluster by one or more of its nodes, comma-separated: `redis+cluster://h1:7000,h2:7000`. The
client learns the rest of the cluster from them and sends each command to the node that owns
its key's slot. Every other scheme (`redis://`, `rediss://`, `unix://`) names one server.

The choice is explicit rather than probed: a probe would cost a round trip on every connect
and could not tell an unreachable cluster from an unreachable server, and a single-server
client pointed at a cluster fails on its first MOVED reply, which `check_url` cannot see.

Every streamvec key is `sv:{NAME}:...`, so the keys of one collection (or alias) share a hash
slot: the Lua scripts, the MULTI transactions and the WATCH of a rebuild each stay on one
slot and so on one node, which is what a cluster requires of them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from redis import Redis
from redis.backoff import NoBackoff
from redis.client import Pipeline
from redis.cluster import ClusterNode, ClusterPipeline, RedisCluster, key_slot
from redis.commands.core import Script
from redis.connection import Encoder, SSLConnection, parse_url
from redis.exceptions import (
    ClusterDownError,
    RedisClusterUnreachableError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SERVER_SCHEMES = ("redis", "rediss", "unix")
SCHEMES = SERVER_SCHEMES + CLUSTER_SCHEMES
# A cluster URL names at most this many seed nodes; the client discovers the others.
MAX_SEED_NODES = 64
DEFAULT_PORT = 6379

# What a client of either kind is: both answer the same commands for single-slot work.
AnyRedis = Redis | RedisCluster


@dataclass(frozen=True, slots=True)
class ClusterURL:
    """A parsed cluster URL: its seed nodes and the connection options every node shares."""

    nodes: tuple[tuple[str, int], ...]
    options: dict[str, Any]  # username, password, TLS and query options, as redis-py names them


def scheme(url: str) -> str:
    """The URL's scheme, lower case ('' when it has none)."""
    return urlsplit(url).scheme.lower()


def is_cluster_url(url: str) -> bool:
    """Whether `url` names a Redis Cluster (`redis+cluster://` or `rediss+cluster://`)."""
    return scheme(url) in CLUSTER_SCHEMES


def check_url(url: str) -> str:
    """Return `url` if streamvec can connect with it; raise ValueError naming what is wrong.

    The message never repeats the URL, which may hold a password.
    """
    found = scheme(url)
    if found not in SCHEMES:
        raise ValueError("redis URL must start with redis://, rediss://, unix:// or, for a "
                         f"Redis Cluster, redis+cluster:// or rediss+cluster://, not {found!r}")
    if found in CLUSTER_SCHEMES:
        parse_cluster_url(url)
    return url


def parse_cluster_url(url: str) -> ClusterURL:
    """Split a cluster URL into seed nodes and shared options; ValueError if it is malformed."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in CLUSTER_SCHEMES:
        raise ValueError(f"not a cluster URL: scheme {parts.scheme!r}")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    if parts.path not in ("", "/", "/0"):
        raise ValueError("a Redis Cluster has only database 0: a cluster URL's path must be "
                         f"empty or /0, not {parts.path[:20]!r}")
    nodes = [_node(text) for text in hosts.split(",")]
    if len(nodes) > MAX_SEED_NODES:
        raise ValueError(f"a cluster URL names {len(nodes)} nodes, over the limit of "
                         f"{MAX_SEED_NODES}; a few seeds are enough")
    # redis-py's own parser reads the user, password and query options of the first node.
    tls = parts.scheme.lower() == "rediss+cluster"
    single = f"{'rediss' if tls else 'redis'}://{userinfo + '@' if userinfo else ''}" \
             f"{hosts.split(',')[0]}/0{'?' + parts.query if parts.query else ''}"
    try:
        options = parse_url(single)
    except ValueError as exc:
        raise ValueError(f"cluster URL options: {exc}") from None
    for key in ("host", "port", "db", "path"):
        options.pop(key, None)
    if tls:
        options["ssl"] = True
        options["connection_class"] = SSLConnection
    else:
        options.pop("connection_class", None)
    return ClusterURL(tuple(nodes), options)


def _node(text: str) -> tuple[str, int]:
    """One `host[:port]` of a cluster URL; IPv6 hosts go in brackets."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":") if rest.startswith(":") else rest
    else:
        host, _, port_text = text.partition(":")
    host = unquote(host)
    if not host or any(c in host for c in "/?#@ "):
        raise ValueError(f"cluster URL: {text[:80]!r} is not host[:port]")
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"cluster URL: port {port_text[:12]!r} of {host[:60]!r} is not 1..65535")
    return host, int(port_text)


def connect(url: str, *, timeout: float | None = None, retry: Retry | None = None,
            retry_on_error: Sequence[type[Exception]] = (), retry_timeouts: bool = True,
            health_check_interval: int = 0) -> AnyRedis:
    """Open a client for `url`: a `Redis` for one server, a `RedisCluster` for a cluster.

    Neither connects before its first command. `timeout` bounds each connect and each reply
    (None: no bound). `retry` re-sends a command that failed with one of `retry_on_error` on
    a single server, and `health_check_interval` pings an idle connection before reuse there.
    A cluster client re-sends on connection errors and timeouts alike, refreshing its view of
    the slots in between; `retry_timeouts=False` gives it no retries at all, so that a call
    never waits twice its timeout (a redirect to a slot's new owner is followed all the same).
    """
    if not is_cluster_url(url):
        options: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout,
                                   "health_check_interval": health_check_interval}
        if retry is not None:
            options["retry"] = retry
        if retry_on_error:
            options["retry_on_error"] = list(retry_on_error)
        return Redis.from_url(url, **options)
    parsed = parse_cluster_url(url)
    if not retry_timeouts:
        retry = Retry(NoBackoff(), 0)
    extra: dict[str, Any] = {} if retry is None else {"retry": retry}
    return _Cluster(
        startup_nodes=list(parsed.nodes),
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        **parsed.options,
        **extra,
    )


# What a cluster answers while it cannot serve a slot: no node reachable, a slot without a
# master (CLUSTERDOWN, a failover under way), a slot being moved. Outages, all of them.
_UNAVAILABLE = (RedisClusterUnreachableError, SlotNotCoveredError, ClusterDownError,
                TryAgainError)


class ClusterUnavailable(RedisConnectionError):
    """A Redis Cluster that cannot serve a slot now, raised as the connection error it is.

    redis-py raises some of these as errors that are not connection errors (or not Redis
    errors at all); every role rides out an outage by catching connection errors, so a
    cluster's outage must be one too.
    """


def _unavailable(exc: Exception) -> ClusterUnavailable:
    return ClusterUnavailable(f"Redis Cluster unavailable: {type(exc).__name__}: {exc}")


class _Cluster(RedisCluster):
    """A RedisCluster that connects on first use and reports outages as connection errors.

    Like a single-server client, creating it never touches the network: a role may build
    its clients while the cluster is down and ride out the outage like any other.
    """

    def __init__(self, **kwargs: Any) -> None:  # RedisCluster.__init__ runs on first use
        self._sv_kwargs = kwargs
        self._sv_lock = threading.Lock()
        self._sv_connected = False

    def _sv_connect(self) -> None:
        with self._sv_lock:
            if self._sv_connected:
                return
            kwargs = dict(self._sv_kwargs)
            kwargs["startup_nodes"] = [ClusterNode(h, p) for h, p in kwargs["startup_nodes"]]
            try:
                RedisCluster.__init__(self, **kwargs)
            except _UNAVAILABLE as exc:
                raise _unavailable(exc) from exc
            self._sv_connected = True

    def __getattr__(self, name: str) -> Any:
        # Reached only for attributes not set yet: the ones RedisCluster.__init__ sets.
        if name.startswith("_sv_") or name.startswith("__"):
            raise AttributeError(name)
        self._sv_connect()
        return object.__getattribute__(self, name)

    def get_encoder(self) -> Encoder:
        """The encoder, known before connecting (a script binds to it when registered)."""
        if self._sv_connected:
            return super().get_encoder()
        k = self._sv_kwargs
        return Encoder(k.get("encoding", "utf-8"), k.get("encoding_errors", "strict"),
                       k.get("decode_responses", False))

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        """Run one command on the node of its slot; an outage raises ClusterUnavailable."""
        try:
            return super().execute_command(*args, **kwargs)
        except _UNAVAILABLE as exc:
            raise _unavailable(exc) from exc

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> ClusterPipeline:
        """A cluster pipeline whose outages raise ClusterUnavailable."""
        pipe = super().pipeline(transaction, shard_hint)
        pipe.__class__ = _Pipeline
        return pipe

    def close(self) -> None:
        """Close every node's connections (nothing to do before the first use)."""
        if self._sv_connected:
            super().close()

    def __del__(self) -> None:
        if self.__dict__.get("_sv_connected"):
            super().__del__()


class _Pipeline(ClusterPipeline):
    """A cluster pipeline whose outages raise ClusterUnavailable."""

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        """Queue a command, or run it at once while watching; an outage is ClusterUnavailable."""
        try:
            return super().execute_command(*args, **kwargs)
        except _UNAVAILABLE as exc:
            raise _unavailable(exc) from exc

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        """Send the queued commands; an outage raises ClusterUnavailable."""
        try:
            return super().execute(raise_on_error)
        except _UNAVAILABLE as exc:
            raise _unavailable(exc) from exc


def is_cluster_client(client: object) -> bool:
    """Whether `client` (or a pipeline) talks to a Redis Cluster."""
    return isinstance(client, (RedisCluster, ClusterPipeline))


class _Script(Script):
    """A Lua script that runs the same on a single server and on a cluster, pipelined or not.

    In a pipeline the script body is sent with EVAL; Redis caches it by its digest all the
    same. A cluster pipeline cannot load a script a node has not seen (after a failover or a
    restart the node's script cache is empty), and a plain one would first ask the server
    whether it has the script (SCRIPT EXISTS): one more round trip in front of every pipeline,
    on the searcher's reply path for every turn. Outside pipelines EVALSHA is sent, loading the
    script on NOSCRIPT (on every primary of a cluster).
    """

    def __call__(self, keys: Sequence[Any] | None = None, args: Iterable[Any] | None = None,
                 client: Any = None) -> Any:
        if isinstance(client, (ClusterPipeline, Pipeline)):
            keys = list(keys or ())
            return client.execute_command("EVAL", self.script, len(keys), *keys, *(args or ()))
        return super().__call__(keys, args, client)


def register_script(client: AnyRedis, text: str) -> Script:
    """The script `text` bound to `client`, callable with `keys=`, `args=` and `client=`."""
    return _Script(client, text)


def slot_of(key: str | bytes) -> int:
    """The cluster hash slot of `key` (0..16383): what its `{tag}` hashes to."""
    return key_slot(key.encode() if isinstance(key, str) else key)


def same_slot(keys: Iterable[str | bytes]) -> bool:
    """Whether every key hashes to one slot, as a script or a transaction on a cluster needs."""
    return len({slot_of(k) for k in keys}) <= 1
