"""The asyncio query SDK: `AsyncClient`, Client's methods as coroutines over redis.asyncio.

It runs the same calls as Client (searcher/calls.py), so it gives the same answers and raises
the same errors; only the waiting is asynchronous. One AsyncClient belongs to one event loop
(its connections are bound to the loop that first uses them). Shadow comparisons of an
alias under a challenge run as Client's do, on background threads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, TypeVar

import redis
import redis.asyncio
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    ClusterDownError,
    RedisClusterUnreachableError,
    SlotNotCoveredError,
    TryAgainError,
)

from searcher import calls, shadow
from searcher.calls import REPLY_MARGIN_S, GetResult, SearchResult
from searcher.client import Client
from searcher.query import Consistency
from streamvec import redisconn
from streamvec.settings import Settings

T = TypeVar("T")

# What a cluster answers while it cannot serve a slot: outages, as for the blocking client
# (streamvec/redisconn.py), raised to the calls as the connection errors they are.
_CLUSTER_DOWN = (RedisClusterUnreachableError, SlotNotCoveredError, ClusterDownError,
                 TryAgainError)


class AsyncClient:
    """Client's search, get and count as coroutines: `await client.search(...)`.

    Use it as `async with AsyncClient(url) as client:`, or call `await client.aclose()`.
    """

    def __init__(self, redis_url: str | None = None, *, settings: Settings | None = None,
                 shadow_workers: int = shadow.DEFAULT_WORKERS, retries: int = 0) -> None:
        self.settings = settings = calls.settings_of(redis_url, settings)
        self.retries = calls.retries_of(retries)
        self._links = _AsyncLinks(settings.redis_url)
        self._known = calls.Known()
        self._shadow_workers = shadow_workers
        # A blocking client that runs shadow comparisons on its threads, made when first needed.
        self._shadows: Client | None = None

    async def aclose(self) -> None:
        """Wait for pending shadow requests to be logged, then close the Redis connections."""
        if self._shadows is not None:
            await asyncio.to_thread(self._shadows.close)
        await self._links.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def search(self, collection_or_alias: str, vectors: Any, k: int = 10,
                     filter: Mapping[str, Any] | None = None,
                     consistency: str | Mapping[str, Any] | Consistency = "eventual",
                     timeout: float = 5.0, with_metadata: bool = False, ef: int | None = None,
                     nprobe: int | None = None, partial: bool = False,
                     score_threshold: float | None = None, retries: int | None = None
                     ) -> SearchResult:
        """Client.search, awaited."""
        searched = await self._drive(calls.search(
            self._known, collection_or_alias, vectors, k=k, filter=filter,
            consistency=consistency, timeout=timeout, with_metadata=with_metadata, ef=ef,
            nprobe=nprobe, partial=partial, score_threshold=score_threshold,
            retries=self.retries if retries is None else retries, margin=REPLY_MARGIN_S))
        challenge = searched.route.challenge
        if challenge is not None and shadow.sampled(searched.request.request_id,
                                                    challenge.share):
            if self._shadows is None:
                self._shadows = Client(settings=self.settings,
                                       shadow_workers=self._shadow_workers)
            self._shadows._shadow_of(challenge, searched.request, searched.result,
                                     searched.took_ms, vectors)
        return searched.result

    async def get(self, collection_or_alias: str, ids: str | list[str],
                  consistency: str | Mapping[str, Any] | Consistency = "eventual",
                  timeout: float = 5.0, retries: int | None = None) -> GetResult:
        """Client.get, awaited."""
        return await self._drive(calls.get(
            self._known, collection_or_alias, ids, consistency=consistency, timeout=timeout,
            retries=self.retries if retries is None else retries, margin=REPLY_MARGIN_S))

    async def count(self, collection_or_alias: str, filter: Mapping[str, Any] | None = None,
                    consistency: str | Mapping[str, Any] | Consistency = "eventual",
                    timeout: float = 5.0, retries: int | None = None) -> int:
        """Client.count, awaited."""
        return await self._drive(calls.count(
            self._known, collection_or_alias, filter=filter, consistency=consistency,
            timeout=timeout, retries=self.retries if retries is None else retries,
            margin=REPLY_MARGIN_S))

    async def _drive(self, flow: calls.Flow[T]) -> T:
        """Run a call's steps on this client's connections and return what it returns."""
        reply: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = flow.send(reply) if error is None else flow.throw(error)
            except StopIteration as done:
                return done.value
            reply, error = None, None
            try:
                reply = await self._run(step)
            except _CLUSTER_DOWN as exc:
                error = redisconn.ClusterUnavailable(
                    f"Redis Cluster unavailable: {type(exc).__name__}: {exc}")
            except Exception as exc:  # the call decides what a Redis failure means
                error = exc

    async def _run(self, step: calls.Step) -> Any:
        """Run one step: a command, a pipeline or a pause."""
        if isinstance(step, calls.Pause):
            await asyncio.sleep(step.seconds)
            return None
        conn = self._links.get(step.wait)
        if isinstance(step, calls.Command):
            return await getattr(conn, step.name)(*step.args, **step.kwargs)
        pipe = conn.pipeline(transaction=False)
        for name, args, kwargs in step.commands:
            getattr(pipe, name)(*args, **kwargs)
        return await pipe.execute()


class _AsyncLinks:
    """redis.asyncio clients, one per socket timeout: each call is bounded by its wait."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._clients: dict[float, Any] = {}

    def get(self, wait: float) -> Any:
        """A client whose every call gives up `wait` (plus a margin) seconds after it was sent."""
        step = calls.socket_timeout(wait)
        client = self._clients.get(step)
        if client is None:
            client = self._clients[step] = _connect(self.url, step)
        return client

    async def aclose(self) -> None:
        """Close every client's connections."""
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()


def _connect(url: str, timeout: float) -> Any:
    """An asyncio client for `url` (one server, or a cluster by `redis+cluster://`), bounded
    like the blocking client's: one retry of a connection error on a server, none on a
    cluster, and never a retry of a timeout, which would double the wait."""
    if not redisconn.is_cluster_url(url):
        return redis.asyncio.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)))
    parsed = redisconn.parse_cluster_url(url)
    options = dict(parsed.options)
    options.pop("connection_class", None)  # the blocking client's TLS class; `ssl` says it here
    return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in parsed.nodes],
                        socket_timeout=timeout, socket_connect_timeout=timeout,
                        retry=Retry(NoBackoff(), 0), **options)
