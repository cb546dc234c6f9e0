"""The query model shared by the protocol, the server and the engine: requests and answers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ingest.spec import MAX_EF, MAX_NPROBE
from searcher import filters
from searcher.errors import QueryError

MAX_K = 1000
# Request kinds: a k-nearest-neighbour search, live rows by id, a count of live rows.
SEARCH, GET, COUNT = "search", "get", "count"
OPS = (SEARCH, GET, COUNT)

Level = Literal["eventual", "bounded", "session", "strong"]


@dataclass(frozen=True, slots=True)
class Consistency:
    """How fresh an answer must be: see invariant 6 in docs/architecture.md."""

    level: Level = "eventual"
    bound_ms: int | None = None  # bounded: the tail lags the log end by at most this much
    offsets: dict[int, int] | None = None  # session: {partition: offset} from Producer.flush()

    def to_json(self) -> dict[str, Any]:
        """The JSON form carried in a request."""
        out: dict[str, Any] = {"level": self.level}
        if self.bound_ms is not None:
            out["bound_ms"] = self.bound_ms
        if self.offsets is not None:
            out["offsets"] = {str(p): o for p, o in self.offsets.items()}
        return out


class Filter:
    """A request's metadata filter: a parsed expression of the filter language (filters.py).

    Made from an expression, or from a filter object, where a tuple stands for the values
    of an "in" (language 1's form: {"color": ("red", "blue")}); raises filters.FilterError.
    """

    __slots__ = ("expr", "fields")

    def __init__(self, spec: Mapping[str, Any] | filters.Expr | None = None) -> None:
        if isinstance(spec, Mapping):
            spec = filters.parse({name: {"in": list(v)} if isinstance(v, tuple) else v
                                  for name, v in spec.items()})
        self.expr: filters.Expr | None = spec
        self.fields = filters.fields(spec)  # every field the filter names

    def matches(self, metadata: dict | None) -> bool:
        """True if a row with this metadata passes the filter (the reference evaluator)."""
        return filters.matches(self.expr, metadata)

    def to_json(self) -> dict[str, Any]:
        """The filter's canonical JSON object ({} for none)."""
        return {} if self.expr is None else filters.to_json(self.expr)

    def __bool__(self) -> bool:
        return self.expr is not None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Filter) and self.expr == other.expr

    def __hash__(self) -> int:
        return hash(self.expr)

    def __repr__(self) -> str:
        return f"Filter({self.to_json()!r})"


@dataclass(frozen=True, slots=True)
class QueryRequest:
    """One decoded request: one or many query vectors answered together."""

    request_id: str
    collection: str
    vectors: np.ndarray  # float32 (n, dim)
    k: int
    filter: Filter | None = None
    consistency: Consistency = Consistency()
    timeout_ms: int = 5000
    with_metadata: bool = False
    reply_key: str = ""
    sent_at_ms: float | None = None
    ef: int | None = None  # HNSW efSearch for this request (None: the collection's default)
    nprobe: int | None = None  # IVF lists probed for this request (None: the collection's)
    # What is asked (OPS): a search of `vectors`; the live rows of `ids`; a count of the live
    # rows `filter` accepts. A get or a count carries no query vectors and no k.
    op: str = "search"
    ids: tuple[str, ...] = ()
    # A search's hits worse than this are dropped: a greater l2 distance, a lower ip or cosine.
    score_threshold: float | None = None


def check_params(k: object, ef: object, nprobe: object) -> QueryError | None:
    """The bad_params error of search parameters out of bounds, or None when they fit.

    ef (HNSW efSearch) is 1..MAX_EF and at least k; nprobe (IVF lists probed) is 1..MAX_NPROBE;
    None leaves either to the collection's default.
    """
    if ef is not None and not (_whole(ef, 1, MAX_EF) and (not _whole(k, 1, MAX_K) or ef >= k)):
        return QueryError("bad_params", f"ef must be an integer in 1..{MAX_EF} and at least "
                                        f"k ({k}), got {ef!r}")
    if nprobe is not None and not _whole(nprobe, 1, MAX_NPROBE):
        return QueryError("bad_params", f"nprobe must be an integer in 1..{MAX_NPROBE}, "
                                        f"got {nprobe!r}")
    return None


def _whole(value: object, lo: int, hi: int) -> bool:
    return (isinstance(value, int | np.integer) and not isinstance(value, bool)
            and lo <= value <= hi)


@dataclass(frozen=True, slots=True)
class QueryAnswer:
    """The answer to one request: per query vector, ids best first and their scores."""

    ids: list[list[str]]
    scores: list[list[float]]
    metadata: list[list[dict | None]] | None = None
    offsets: dict[int, int] = field(default_factory=dict)  # per partition: rows below are reflected
    timings_ms: dict[str, float] = field(default_factory=dict)
    # How a filtered request was searched (docs/protocol.md 7.2): rows accepted, sources per plan.
    filter: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class FoundRow:
    """One live row of a get: its vector and metadata as stored, and where it was written."""

    id: str
    vector: np.ndarray  # float32 (dim,)
    metadata: dict | None
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class GetAnswer:
    """The answer to a get: the live rows among the ids asked (absent ids are left out)."""

    rows: list[FoundRow]
    offsets: dict[int, int] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CountAnswer:
    """The answer to a count: the live rows the request's filter accepts (all, without one)."""

    count: int
    offsets: dict[int, int] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)


# What a searcher answers a request with, by its op.
Answer = QueryAnswer | GetAnswer | CountAnswer
