"""The query SDK: `Client.search` puts a request on a collection's stream and awaits the reply."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ingest.catalog import spec_key
from ingest.names import CollectionName
from searcher import protocol
from searcher.query import MAX_K, Consistency, Filter, QueryAnswer, QueryError, QueryRequest
from streamvec.settings import Settings

# Waited beyond the request's own timeout: a searcher answers a consistency timeout only once
# that timeout has run out, counted from when it read the request off a possibly busy stream.
REPLY_MARGIN_S = 2.0

# KEYS: spec, request stream. ARGV: MAXLEN, then field/value pairs. Checking that the collection
# exists in the same round trip means a mistyped name never creates a stream nobody reads.
_SUBMIT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, 2))
"""

_CONSISTENCY_FORMS = ("'eventual', 'strong', {'bounded_ms': N} or "
                      "{'session': {partition: offset}} (what Producer.flush() returns)")


class SearchError(QueryError):
    """The searcher answered with an error: `code` is one of query.ERROR_CODES."""


class SearchTimeout(TimeoutError):
    """No reply came back in time: no searcher is serving the collection, or all are stuck."""


@dataclass(frozen=True, eq=False)
class SearchResult:
    """The answer to one search: row i holds query i's hits, best first, padded to k columns."""

    ids: np.ndarray  # object (n, k): str, None where there were fewer than k hits
    scores: np.ndarray  # float32 (n, k): NaN where there were fewer than k hits
    metadata: list[list[dict | None]] | None  # per query, one entry per hit (not padded)
    offsets: dict[int, int]
    timings_ms: dict[str, float]

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, i: int) -> list[tuple[str, float, dict | None]]:
        """Query i's hits as (id, score, metadata) tuples, best first, without padding."""
        hits = [j for j, hit in enumerate(self.ids[i]) if hit is not None]
        meta = self.metadata[i] if self.metadata is not None else [None] * len(hits)
        return [(self.ids[i, j], float(self.scores[i, j]), meta[j]) for j in hits]


class Client:
    """Searches collections through the searchers' Redis query protocol (docs/protocol.md §7)."""

    def __init__(self, redis_url: str | None = None, *, settings: Settings | None = None) -> None:
        if redis_url is not None and settings is not None:
            raise ValueError("give either redis_url or settings, not both")
        if settings is None:
            settings = Settings() if redis_url is None else Settings(redis=redis_url)
        self.settings = settings
        self._redis = settings.redis_client()
        self._submit = self._redis.register_script(_SUBMIT)

    def close(self) -> None:
        """Close the Redis connections."""
        self._redis.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _resolve(self, name: str) -> str:
        """The collection a name stands for; aliases will resolve here, for now a name is itself."""
        return name

    def search(self, collection_or_alias: str, vectors: Any, k: int = 10,
               filter: Mapping[str, Any] | None = None,
               consistency: str | Mapping[str, Any] | Consistency = "eventual",
               timeout: float = 5.0, with_metadata: bool = False) -> SearchResult:
        """Search k nearest neighbours of one vector (1-D) or many (2-D); raise SearchError."""
        name = str(CollectionName.parse(self._resolve(collection_or_alias)))
        rid = uuid.uuid4().hex
        request = QueryRequest(rid, name, _queries(vectors), _k(k), _filter(filter),
                               _consistency(consistency), _timeout_ms(timeout),
                               bool(with_metadata), protocol.reply_key(name, rid),
                               time.time() * 1000)
        fields = protocol.encode_request(request)
        args = [protocol.QUEUE_MAXLEN, *(x for pair in fields.items() for x in pair)]
        if self._submit(keys=[spec_key(name), protocol.queue_key(name)], args=args) is None:
            raise SearchError("unknown_collection", f"collection {name!r} does not exist")
        wait = request.timeout_ms / 1000 + REPLY_MARGIN_S
        got = self._redis.blpop([request.reply_key], timeout=wait)
        if got is None:
            raise SearchTimeout(f"no searcher answered a query on {name!r} within {wait:g}s: "
                                f"is `streamvec searcher --collection {name}` running?")
        return _result(request, got[1])


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
    return _padded(answer, request.k, request.with_metadata)


def _padded(answer: QueryAnswer, k: int, with_metadata: bool) -> SearchResult:
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
    return SearchResult(ids, scores, metadata, dict(answer.offsets), dict(answer.timings_ms))


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
