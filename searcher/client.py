"""The query SDK: `Client` searches, gets and counts a collection's rows through its searchers.

Each call puts a request on the collection's Redis stream (every shard's, for a sharded
collection) and awaits the reply. The calls themselves are plain steps in searcher/calls.py,
which this blocking client runs on redis-py and searcher/aclient.py's AsyncClient on
redis.asyncio: both give the same answers.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any, TypeVar

import numpy as np
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from searcher import calls, shadow
from searcher.calls import (
    REPLY_MARGIN_S,
    SHADOW_LOG_TIMEOUT_S,
    SHADOW_MARGIN_S,
    SOCKET_MARGIN_S,
    SOCKET_STEP_S,
    GetResult,
    Hit,
    Row,
    SearchResult,
)
from searcher.query import Consistency, QueryRequest
from searcher.routing import Challenge
from streamvec import redisconn
from streamvec.settings import Settings

__all__ = ["REPLY_MARGIN_S", "SHADOW_LOG_TIMEOUT_S", "SHADOW_MARGIN_S", "SOCKET_MARGIN_S",
           "SOCKET_STEP_S", "Client", "GetResult", "Hit", "Row", "SearchResult"]

T = TypeVar("T")


class Client:
    """Searches, gets and counts collections through the searchers' Redis query protocol.

    `retries` (0..10) is how many times a call that times out (SearchTimeout) is sent again,
    as a fresh request after a doubling pause; a call's own `retries=` overrides it. Every
    error a call raises on purpose is a SearchError (searcher/errors.py): InvalidRequest for
    input refused before or by the searcher, UnknownCollection, SearchTimeout (ShardTimeout,
    ConsistencyTimeout), or SearchError `internal`.
    """

    def __init__(self, redis_url: str | None = None, *, settings: Settings | None = None,
                 shadow_workers: int = shadow.DEFAULT_WORKERS, retries: int = 0) -> None:
        self.settings = settings = calls.settings_of(redis_url, settings)
        self.retries = calls.retries_of(retries)
        self._links = _Links(settings.redis_url)
        self._known = calls.Known()
        self._shadow_workers = shadow_workers
        self._shadow: shadow.Shadow | None = None  # started by the first shadowed search
        self._shadow_lock = threading.Lock()

    def close(self) -> None:
        """Wait for pending shadow requests to be logged, then close the Redis connections."""
        with self._shadow_lock:
            if self._shadow is not None:
                self._shadow.close()
        self._links.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def search(self, collection_or_alias: str, vectors: Any, k: int = 10,
               filter: Mapping[str, Any] | None = None,
               consistency: str | Mapping[str, Any] | Consistency = "eventual",
               timeout: float = 5.0, with_metadata: bool = False, ef: int | None = None,
               nprobe: int | None = None, partial: bool = False,
               score_threshold: float | None = None, retries: int | None = None
               ) -> SearchResult:
        """Search k nearest neighbours of one vector (1-D) or many (2-D); raise SearchError.

        `vectors` may be a dict keyed by model version; the collection's version picks one.
        `ef` (HNSW efSearch, 1..4096 and >= k) and `nprobe` (IVF lists, 1..65536) widen or
        narrow this search; None leaves them to the collection. `score_threshold` drops hits
        worse than it (a greater l2 distance, a lower ip or cosine score) in the searcher, so
        a query may get fewer than k. On a sharded collection a shard that fails or stays
        silent fails the search (naming it), unless `partial`: then the other shards' hits
        come back with `result.partial` set and the shard in `missing`.
        """
        searched = self._drive(calls.search(
            self._known, collection_or_alias, vectors, k=k, filter=filter,
            consistency=consistency, timeout=timeout, with_metadata=with_metadata, ef=ef,
            nprobe=nprobe, partial=partial, score_threshold=score_threshold,
            retries=self.retries if retries is None else retries, margin=REPLY_MARGIN_S))
        challenge = searched.route.challenge
        if challenge is not None and shadow.sampled(searched.request.request_id,
                                                    challenge.share):
            self._shadow_of(challenge, searched.request, searched.result, searched.took_ms,
                            vectors)
        return searched.result

    def get(self, collection_or_alias: str, ids: str | list[str],
            consistency: str | Mapping[str, Any] | Consistency = "eventual",
            timeout: float = 5.0, retries: int | None = None) -> GetResult:
        """The live rows of `ids` (one id or up to 1024) as a mapping id -> Row(vector, metadata).

        Ids never written, deleted, or not served yet are absent; an id overwritten gives its
        latest vector. Consistency levels apply as for a search.
        """
        return self._drive(calls.get(
            self._known, collection_or_alias, ids, consistency=consistency, timeout=timeout,
            retries=self.retries if retries is None else retries, margin=REPLY_MARGIN_S))

    def count(self, collection_or_alias: str, filter: Mapping[str, Any] | None = None,
              consistency: str | Mapping[str, Any] | Consistency = "eventual",
              timeout: float = 5.0, retries: int | None = None) -> int:
        """The number of live rows that `filter` accepts (every live row without one)."""
        return self._drive(calls.count(
            self._known, collection_or_alias, filter=filter, consistency=consistency,
            timeout=timeout, retries=self.retries if retries is None else retries,
            margin=REPLY_MARGIN_S))

    def _drive(self, flow: calls.Flow[T]) -> T:
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
                reply = self._run(step)
            except Exception as exc:  # the call decides what a Redis failure means
                error = exc

    def _run(self, step: calls.Step) -> Any:
        """Run one step: a command, a pipeline or a pause."""
        if isinstance(step, calls.Pause):
            time.sleep(step.seconds)
            return None
        conn = self._links.get(step.wait)
        if isinstance(step, calls.Command):
            return getattr(conn, step.name)(*step.args, **step.kwargs)
        pipe = conn.pipeline(transaction=False)
        for name, args, kwargs in step.commands:
            getattr(pipe, name)(*args, **kwargs)
        return pipe.execute()

    def _shadow_of(self, challenge: Challenge, request: QueryRequest, result: SearchResult,
                   took_ms: float, vectors: Any) -> None:
        """Queue the challenger's copy of a request; the caller does not wait for it."""
        with self._shadow_lock:
            if self._shadow is None:
                self._shadow = shadow.Shadow(self._links.get(SHADOW_LOG_TIMEOUT_S),
                                             self._shadow_workers)
        # Copies: the caller may reuse its arrays once search() returns.
        given = {v: np.array(x, copy=True) for v, x in vectors.items()} \
            if isinstance(vectors, Mapping) else request.vectors
        # Session offsets name the champion's partitions, which mean nothing to the challenger.
        level = Consistency() if request.consistency.level == "session" else request.consistency

        def send(queries: np.ndarray) -> list[list[str]]:
            asked = QueryRequest(uuid.uuid4().hex, challenge.challenger, queries, request.k,
                                 request.filter, level, request.timeout_ms,
                                 ef=request.ef, nprobe=request.nprobe,
                                 score_threshold=request.score_threshold)
            return calls.id_rows(self._drive(calls.ask(self._known, asked, SHADOW_MARGIN_S)))

        def pick() -> np.ndarray:
            return calls.queries_of(self._drive(calls.pick(
                self._known, challenge.challenger, given, SHADOW_LOG_TIMEOUT_S)))

        self._shadow.submit(shadow.Ask(
            challenge, request.request_id, request.k, request.collection, request.vectors,
            calls.id_rows(result), took_ms, pick, send))


class _Links:
    """Redis clients, one per socket timeout: each call is bounded by its wait."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = threading.Lock()
        self._clients: dict[float, redis.Redis] = {}

    def get(self, wait: float) -> redis.Redis:
        """A client whose every call gives up `wait` (plus a margin) seconds after it was sent."""
        step = calls.socket_timeout(wait)
        with self._lock:
            client = self._clients.get(step)
            if client is None:
                # One retry, of a connection error only: a pooled connection that a restarted
                # Redis closed is replaced at once; a timeout is never repeated, it would
                # double the wait (so a cluster client, which cannot tell them apart, gets
                # no retry; it follows a slot's move all the same).
                client = self._clients[step] = redisconn.connect(
                    self.url, timeout=step, retry_timeouts=False,
                    retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)))
            return client

    def close(self) -> None:
        """Close every client's connections."""
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()
