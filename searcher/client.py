"""The query SDK: `Client.search` puts a request on a collection's stream and awaits the reply."""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ingest import catalog
from ingest.catalog import spec_key
from ingest.errors import CollectionNotFound
from ingest.names import CollectionName
from searcher import protocol, routing, shadow
from searcher.errors import QueryError, SearchError, SearchTimeout
from searcher.query import MAX_K, Consistency, Filter, QueryAnswer, QueryRequest
from searcher.routing import Challenge
from streamvec.settings import Settings

# Waited beyond the request's own timeout: a searcher answers a consistency timeout only once
# that timeout has run out, counted from when it read the request off a possibly busy stream.
REPLY_MARGIN_S = protocol.GIVE_UP_MARGIN_MS / 1000

# A Redis call may take this long beyond the longest wait it asks for (BLPOP's own timeout)
# before its socket gives up, so a frozen Redis ends a search within its timeout plus
# REPLY_MARGIN_S plus this, instead of whenever the server wakes up.
SOCKET_MARGIN_S = 0.5
# Socket timeouts are rounded up to this step so that a client keeps few connection pools.
SOCKET_STEP_S = 0.5
# Shadow comparisons are logged through a connection bounded like a short request.
SHADOW_LOG_TIMEOUT_S = 5.0

# A shadow request's reply is awaited only this long past its timeout: a late answer from the
# challenger is counted as a timeout rather than holding a shadow thread.
SHADOW_MARGIN_S = 0.5

# KEYS: spec, request stream. ARGV: MAXLEN, then field/value pairs. Checking that the collection
# exists in the same round trip means a mistyped name never creates a stream nobody reads.
_SUBMIT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, 2))
"""

_CONSISTENCY_FORMS = ("'eventual', 'strong', {'bounded_ms': N} or "
                      "{'session': {partition: offset}} (what Producer.flush() returns)")


@dataclass(frozen=True, eq=False)
class SearchResult:
    """The answer to one search: row i holds query i's hits, best first, padded to k columns."""

    ids: np.ndarray  # object (n, k): str, None where there were fewer than k hits
    scores: np.ndarray  # float32 (n, k): NaN where there were fewer than k hits
    metadata: list[list[dict | None]] | None  # per query, one entry per hit (not padded)
    offsets: dict[int, int]
    timings_ms: dict[str, float]
    collection: str = ""  # the collection that answered (an alias's target at the time)

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, i: int) -> list[tuple[str, float, dict | None]]:
        """Query i's hits as (id, score, metadata) tuples, best first, without padding."""
        hits = [j for j, hit in enumerate(self.ids[i]) if hit is not None]
        meta = self.metadata[i] if self.metadata is not None else [None] * len(hits)
        return [(self.ids[i, j], float(self.scores[i, j]), meta[j]) for j in hits]


class Client:
    """Searches collections through the searchers' Redis query protocol (docs/protocol.md §7)."""

    def __init__(self, redis_url: str | None = None, *, settings: Settings | None = None,
                 shadow_workers: int = shadow.DEFAULT_WORKERS) -> None:
        if redis_url is not None and settings is not None:
            raise ValueError("give either redis_url or settings, not both")
        if settings is None:
            settings = Settings() if redis_url is None else Settings(redis=redis_url)
        self.settings = settings
        self._links = _Links(settings.redis_url)
        self._versions: dict[str, str] = {}  # collection -> model version; specs never change
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

    def _resolve(self, name: str, wait: float) -> routing.Route:
        """Where a search of `name` goes: an alias's target and active challenge, else the name."""
        parsed = str(CollectionName.parse(name))
        with _bounded(name, wait):
            return routing.route(self._links.get(wait), parsed)

    def search(self, collection_or_alias: str, vectors: Any, k: int = 10,
               filter: Mapping[str, Any] | None = None,
               consistency: str | Mapping[str, Any] | Consistency = "eventual",
               timeout: float = 5.0, with_metadata: bool = False) -> SearchResult:
        """Search k nearest neighbours of one vector (1-D) or many (2-D); raise SearchError.

        `vectors` may be a dict keyed by model version; the collection's version picks one.
        """
        started = time.perf_counter()
        wait = _timeout_ms(timeout) / 1000 + REPLY_MARGIN_S
        route = self._resolve(collection_or_alias, wait)
        name = route.target
        request = QueryRequest(uuid.uuid4().hex, name, _queries(self._pick(name, vectors, wait)),
                               _k(k), _filter(filter), _consistency(consistency),
                               _timeout_ms(timeout), bool(with_metadata))
        result = self._ask(request, REPLY_MARGIN_S, started)
        took = (time.perf_counter() - started) * 1000.0
        if route.challenge is not None and shadow.sampled(request.request_id,
                                                           route.challenge.share):
            self._shadow_of(route.challenge, request, result, took, vectors)
        return result

    def _ask(self, request: QueryRequest, margin: float,
             started: float | None = None) -> SearchResult:
        """Send one request and wait for its reply up to its timeout plus `margin` seconds.

        The time counts from `started` (a perf_counter reading; default now), and every Redis
        call is bounded by what is left of it: a frozen Redis raises SearchTimeout in time.
        """
        name = request.collection
        wait = request.timeout_ms / 1000 + margin
        deadline = (time.perf_counter() if started is None else started) + wait
        request = replace(request, reply_key=protocol.reply_key(name, request.request_id),
                          sent_at_ms=time.time() * 1000)
        fields = protocol.encode_request(request)
        args = [protocol.QUEUE_MAXLEN, *(x for pair in fields.items() for x in pair)]
        conn = self._links.get(wait)
        with _bounded(name, wait):
            sent = conn.eval(_SUBMIT, 2, spec_key(name), protocol.queue_key(name), *args)
            if sent is None:
                raise SearchError("unknown_collection", f"collection {name!r} does not exist")
            left = deadline - time.perf_counter()
            # BLPOP takes whole milliseconds; 0 would mean forever.
            got = None if left < 0.001 else conn.blpop([request.reply_key], timeout=left)
        if got is None:
            raise SearchTimeout(f"no searcher answered a query on {name!r} within {wait:g}s: "
                                f"is `streamvec searcher --collection {name}` running?")
        return _result(request, got[1])

    def _pick(self, name: str, vectors: Any, wait: float = SHADOW_LOG_TIMEOUT_S) -> Any:
        """The query vectors for collection `name` (a per-model-version dict picks one)."""
        if not isinstance(vectors, Mapping):
            return vectors
        if name not in self._versions:
            try:
                with _bounded(name, wait):
                    spec = catalog.load_spec(self._links.get(wait), name)
                self._versions[name] = spec.model_version
            except CollectionNotFound:
                raise SearchError("unknown_collection",
                                  f"collection {name!r} does not exist") from None
        return shadow.pick_vectors(vectors, self._versions[name], name)

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
                                 request.filter, level, request.timeout_ms)
            return _id_rows(self._ask(asked, SHADOW_MARGIN_S))

        self._shadow.submit(shadow.Ask(
            challenge, request.request_id, request.k, request.collection, request.vectors,
            _id_rows(result), took_ms,
            lambda: _queries(self._pick(challenge.challenger, given)), send))


class _Links:
    """Redis clients of one server, one per socket timeout: each call is bounded by its wait."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = threading.Lock()
        self._clients: dict[float, redis.Redis] = {}

    def get(self, wait: float) -> redis.Redis:
        """A client whose every call gives up `wait` (plus a margin) seconds after it was sent."""
        step = math.ceil((wait + SOCKET_MARGIN_S) / SOCKET_STEP_S) * SOCKET_STEP_S
        with self._lock:
            client = self._clients.get(step)
            if client is None:
                # One retry, of a connection error only: a pooled connection that a restarted
                # Redis closed is replaced at once; a timeout is never repeated, it would
                # double the wait.
                client = self._clients[step] = redis.Redis.from_url(
                    self.url, socket_timeout=step, socket_connect_timeout=step,
                    retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)))
            return client

    def close(self) -> None:
        """Close every client's connections."""
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()


@contextmanager
def _bounded(name: str, wait: float) -> Iterator[None]:
    """Turn a Redis timeout or connection error during one search into SearchTimeout."""
    try:
        yield
    except redis.TimeoutError as exc:
        raise SearchTimeout(f"Redis did not answer a query on {name!r} within {wait:g}s: "
                            f"{exc}") from exc
    except redis.ConnectionError as exc:
        raise SearchTimeout(f"Redis unreachable for a query on {name!r}: {exc}") from exc


def _id_rows(result: SearchResult) -> list[list[str]]:
    return [[h for h in row if h is not None] for row in result.ids.tolist()]


def _result(request: QueryRequest, body: bytes) -> SearchResult:
    try:
        rid, answer = protocol.decode_reply(body)
    except ValueError as exc:
        raise SearchError("internal", f"the searcher's reply breaks the protocol: {exc}") from None
    if rid != request.request_id:
        raise SearchError("internal", f"reply to request {rid!r} on the key of "
                                      f"{request.request_id!r}")
    if isinstance(answer, QueryError):
        raise SearchError(answer.code, answer.message)
    return _padded(answer, request.k, request.with_metadata, request.collection)


def _padded(answer: QueryAnswer, k: int, with_metadata: bool, collection: str = ""
            ) -> SearchResult:
    n = len(answer.ids)
    ids = np.full((n, k), None, dtype=object)
    scores = np.full((n, k), np.nan, dtype=np.float32)
    for i, (row_ids, row_scores) in enumerate(zip(answer.ids, answer.scores, strict=True)):
        hits = min(len(row_ids), k)
        ids[i, :hits] = row_ids[:hits]
        scores[i, :hits] = row_scores[:hits]
    metadata = None
    if with_metadata:
        metadata = [list(row[:k]) for row in answer.metadata] if answer.metadata is not None \
            else [[None] * min(len(row), k) for row in answer.ids]
    return SearchResult(ids, scores, metadata, dict(answer.offsets), dict(answer.timings_ms),
                        collection)


def _queries(vectors: Any) -> np.ndarray:
    try:
        arr = np.asarray(vectors)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"vectors must be one vector or a 2-D array of numbers ({exc})") from None
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"vectors must hold numbers, not {arr.dtype}")
    if arr.ndim == 1:
        arr = arr[np.newaxis, :]
    if arr.ndim != 2:
        raise ValueError(f"vectors must be 1-D (one query) or 2-D (n, dim), not {arr.ndim}-D")
    if arr.size == 0:
        raise ValueError(f"vectors must not be empty (shape {arr.shape})")
    if len(arr) > protocol.MAX_QUERIES:
        raise ValueError(f"at most {protocol.MAX_QUERIES} queries per search, got {len(arr)}")
    return arr.astype(np.float32)


def _k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k must be an integer, not {type(k).__name__}")
    if not 1 <= k <= MAX_K:  # the searcher would refuse it with the same code and message
        raise SearchError("bad_k", f"k must be 1..{MAX_K}, got {k}")
    return int(k)


def _timeout_ms(timeout: Any) -> int:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not (
            0 < timeout * 1000 <= protocol.MAX_TIMEOUT_MS):
        raise ValueError(f"timeout must be seconds in (0, {protocol.MAX_TIMEOUT_MS // 1000}], "
                         f"not {timeout!r}")
    return max(1, round(timeout * 1000))


def _filter(flt: Any) -> Filter | None:
    try:
        return protocol.parse_filter(flt)
    except QueryError as exc:
        raise ValueError(exc.message) from None


def _consistency(value: Any) -> Consistency:
    if isinstance(value, Consistency):
        return value
    if isinstance(value, str) and value in ("eventual", "strong"):
        return Consistency(value)
    obj: dict[str, Any] | None = None
    if isinstance(value, Mapping) and list(value) == ["bounded_ms"]:
        obj = {"level": "bounded", "bound_ms": value["bounded_ms"]}
    elif isinstance(value, Mapping) and list(value) == ["session"] and isinstance(
            value["session"], Mapping):
        obj = {"level": "session", "offsets": {str(p): o for p, o in value["session"].items()}}
    if obj is None:
        raise ValueError(f"consistency must be {_CONSISTENCY_FORMS}, not {value!r}")
    try:
        return protocol.parse_consistency(obj)
    except QueryError as exc:
        raise ValueError(exc.message) from None
