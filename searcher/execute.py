"""One batch of query requests over the served sources: validation, fan-out, answers."""

# Requests without a filter share one query matrix, so each source is searched once per batch
# with the batch's largest k; each filtered request is searched on its own, since over-fetching
# depends on how rare its matches are. Runs under the engine's lock; does no I/O itself.

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from searcher import search
from searcher.budgets import Budgets
from searcher.errors import QueryError
from searcher.query import MAX_K, Filter, QueryAnswer, QueryRequest
from searcher.search import ScanBudgetExceeded, Source

log = logging.getLogger(__name__)

# Rows of the monitor's freshness canary (docs/protocol.md 7.7): ids with this prefix never
# reach an answer unless the request's filter names the metadata field CANARY_FIELD.
CANARY_PREFIX = "__sv_canary__"
CANARY_FIELD = "__sv_canary__"
# Extra rows fetched so that dropping canary rows still leaves k: one live canary row per
# running monitor at most, so this covers that many monitors near one query.
CANARY_SLACK = 8


@dataclass(frozen=True, slots=True)
class Searchable:
    """A source plus what turns its rows into an answer: ids and metadata."""

    source: Source
    id_of: Callable[[int], str]
    metadata_of: Callable[[int], dict | None]


def validate(request: QueryRequest, dim: int) -> np.ndarray | QueryError:
    """The request's query vectors as float32 (n, dim), or the error it must get."""
    try:
        with np.errstate(over="ignore"):  # a float64 beyond float32 becomes Inf: not_finite
            vectors = np.asarray(request.vectors, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        return QueryError("malformed", f"query vectors are not numbers: {exc}")
    if vectors.ndim == 1:
        vectors = vectors[None, :]
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        return QueryError("wrong_dim", f"query vectors have shape {vectors.shape}, "
                                       f"the collection's dim is {dim}")
    if vectors.shape[0] == 0:
        return QueryError("malformed", "a request needs at least one query vector")
    if not np.isfinite(vectors).all():
        row = int(np.argmax(~np.isfinite(vectors).all(axis=1)))
        return QueryError("not_finite", f"query vector {row} holds NaN or Inf")
    k = request.k
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= MAX_K:
        return QueryError("bad_k", f"k is {k!r}, it must be an integer in 1..{MAX_K}")
    return vectors


def execute(requests: Sequence[QueryRequest], queries: Sequence[np.ndarray | QueryError],
            sources: Sequence[Searchable], metric: str, offsets: dict[int, int],
            budgets: Budgets | None = None) -> list[QueryAnswer | QueryError]:
    """Answer every valid request; a request that fails gets its error, the others still run."""
    budgets = budgets or Budgets()
    gathered = _Gathered(budgets)  # metadata bytes of the whole batch
    answers: list[QueryAnswer | QueryError | None] = list(
        q if isinstance(q, QueryError) else None for q in queries)
    ends = np.cumsum([s.source.rows for s in sources], dtype=np.int64)  # global key bounds
    plain = [i for i, q in enumerate(queries)
             if not isinstance(q, QueryError) and not _filtered(requests[i])]
    if plain:
        _answer_plain(requests, queries, plain, sources, ends, metric, offsets, answers, gathered)
    for i, q in enumerate(queries):
        if answers[i] is None:
            try:
                scores, keys = fan_out(sources, q, _fetch_k(requests[i]), metric,
                                       requests[i].filter, budgets.filter_rows)
                answers[i] = _answer(requests[i], scores, keys, sources, ends, offsets, gathered)
            except ScanBudgetExceeded as exc:
                answers[i] = budgets.filter_exhausted(exc.examined)
            except Exception as exc:  # one request's failure must not fail the batch
                log.exception("request %s failed", requests[i].request_id)
                answers[i] = QueryError("internal", f"{type(exc).__name__}: {exc}")
    return answers  # type: ignore[return-value]  # every slot is filled by now


def fan_out(sources: Sequence[Searchable], queries: np.ndarray, k: int, metric: str,
            flt: Filter | None = None,
            max_examined: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Search every source and merge: (scores, keys), keys = source base + row, -1 = none.

    A filter examines at most `max_examined` rows over all sources (ScanBudgetExceeded).
    """
    nq = len(queries)
    ends = np.cumsum([s.source.rows for s in sources], dtype=np.int64)
    bases = (ends - [s.source.rows for s in sources]).tolist()
    small = [i for i, s in enumerate(sources) if 0 < s.source.visible <= search.SCAN_MAX_VISIBLE]
    large = [i for i, s in enumerate(sources) if s.source.visible > search.SCAN_MAX_VISIBLE]
    examined = _Examined(max_examined)
    # Each source's (nq, k) result is merged into the best so far at once: holding every
    # source's result until one final merge would take memory in proportion to the sources.
    best: tuple[np.ndarray, np.ndarray] | None = None
    for i in large:
        accept = _accept(lambda rows, i=i: (np.full(len(rows), i), rows), sources, flt, examined)
        scores, rows = _search(sources[i].source, queries, k, metric, accept, examined.left())
        part = (scores, np.where(rows >= 0, rows + bases[i], -1))
        best = part if best is None else search.merge([best, part], nq, k, metric)
    if small:
        block, keys = search.gather([sources[i].source for i in small], [bases[i] for i in small])
        accept = _accept(lambda rows: _locate(keys[rows], ends), sources, flt, examined)
        scores, rows = _search(block, queries, k, metric, accept, examined.left())
        part = (scores, np.where(rows >= 0, keys[np.maximum(rows, 0)], -1))
        best = part if best is None else search.merge([best, part], nq, k, metric)
    return search.merge([] if best is None else [best], nq, k, metric)


class _Gathered:
    """Bytes of metadata JSON gathered for one batch's replies, against the reply budget."""

    def __init__(self, budgets: Budgets) -> None:
        self.budgets, self.size = budgets, 0

    def add(self, row: list[dict | None]) -> QueryError | None:
        """Count one query's metadata; the too_large error once the batch is past its budget."""
        self.size += sum(len(json.dumps(m, separators=(",", ":"))) for m in row
                         if m is not None)
        return self.budgets.reply_exhausted(self.size) if self.size > self.budgets.reply_bytes \
            else None


class _Examined:
    """Rows a filter has examined in one request, over every source, against its budget."""

    def __init__(self, limit: int | None) -> None:
        self.limit, self.count = limit, 0

    def add(self, rows: int) -> None:
        """Count rows about to be examined; ScanBudgetExceeded when they pass the budget."""
        self.count += rows
        if self.limit is not None and self.count > self.limit:
            raise ScanBudgetExceeded(self.count)

    def left(self) -> int | None:
        """Rows still allowed (None: no budget)."""
        return None if self.limit is None else max(0, self.limit - self.count)


def _search(src: Source, queries: np.ndarray, k: int, metric: str,
            accept: Callable[[np.ndarray], np.ndarray] | None,
            max_examined: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    if accept is None:
        return search.search(src, queries, k, metric)
    return search.search_filtered(src, queries, k, metric, accept, max_examined)


def _locate(keys: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Global keys as (source index, row in that source)."""
    which = np.searchsorted(ends, keys, side="right")
    return which, keys - np.concatenate([[0], ends])[which]


def _answer_plain(requests: Sequence[QueryRequest], queries: Sequence, plain: list[int],
                  sources: Sequence[Searchable], ends: np.ndarray, metric: str,
                  offsets: dict[int, int], answers: list, gathered: _Gathered) -> None:
    """Search every unfiltered request with one query matrix and split the result."""
    try:
        matrix = np.vstack([queries[i] for i in plain])
        scores, keys = fan_out(sources, matrix, max(_fetch_k(requests[i]) for i in plain), metric)
    except Exception as exc:
        log.exception("batch of %d requests failed", len(plain))
        for i in plain:
            answers[i] = QueryError("internal", f"{type(exc).__name__}: {exc}")
        return
    start = 0
    for i in plain:
        n, k = len(queries[i]), _fetch_k(requests[i])
        answers[i] = _answer(requests[i], scores[start:start + n, :k], keys[start:start + n, :k],
                             sources, ends, offsets, gathered)
        start += n


def _answer(request: QueryRequest, scores: np.ndarray, keys: np.ndarray,
            sources: Sequence[Searchable], ends: np.ndarray, offsets: dict[int, int],
            gathered: _Gathered | None = None) -> QueryAnswer | QueryError:
    """Turn merged keys into the request's k ids (and metadata), dropping empty slots.

    Metadata is gathered up to the batch's reply budget; past it the request gets too_large.
    """
    gathered = gathered or _Gathered(Budgets())
    canary = wants_canary(request)
    ids, out_scores, metadata = [], [], []
    for row_scores, row_keys in zip(scores, keys, strict=True):
        present = np.flatnonzero(row_keys >= 0)
        which, local = _locate(row_keys[present], ends)
        found = [(sources[s].id_of(r), s, r, j) for s, r, j in
                 zip(which.tolist(), local.tolist(), present.tolist(), strict=True)]
        kept = [f for f in found if canary or not f[0].startswith(CANARY_PREFIX)][:request.k]
        pairs = [(s, r) for _, s, r, _ in kept]
        ids.append([f[0] for f in kept])
        out_scores.append(row_scores[[f[3] for f in kept]].tolist())
        if request.with_metadata:
            row_meta = [_metadata(sources[s], r) for s, r in pairs]
            refused = gathered.add(row_meta)
            if refused is not None:
                return refused
            metadata.append(row_meta)
    return QueryAnswer(ids, out_scores, metadata if request.with_metadata else None,
                       dict(offsets))


def wants_canary(request: QueryRequest) -> bool:
    """True when the request may see canary rows: its filter has a CANARY_FIELD clause."""
    return request.filter is not None and CANARY_FIELD in request.filter.allowed


def _fetch_k(request: QueryRequest) -> int:
    """Rows to fetch for a request: its k, plus room for the canary rows dropped later."""
    return request.k if wants_canary(request) else request.k + CANARY_SLACK


def _filtered(request: QueryRequest) -> bool:
    return request.filter is not None and bool(request.filter.allowed)


def _accept(locate: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
            sources: Sequence[Searchable], flt: Filter | None, examined: _Examined | None = None):
    """The filter as a predicate over a searched source's rows (None without a filter)."""
    if flt is None or not flt.allowed:
        return None

    def accept(rows: np.ndarray) -> np.ndarray:
        """True for each row whose metadata passes the filter; unreadable metadata fails."""
        if examined is not None:  # every row costs a JSON parse under the serving lock
            examined.add(len(rows))
        which, local = locate(rows)
        return np.fromiter((flt.matches(_metadata(sources[s], r))
                            for s, r in zip(which.tolist(), local.tolist(), strict=True)),
                           dtype=bool, count=len(rows))
    return accept


def _metadata(item: Searchable, row: int) -> dict | None:
    try:
        return item.metadata_of(row)
    except ValueError:  # invalid JSON (json.JSONDecodeError is a ValueError)
        return None
