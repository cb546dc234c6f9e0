"""One batch of query requests over the served sources: validation, fan-out, answers."""

# Requests without a filter that share search parameters share one query matrix, so each source
# is searched once per group with the group's largest k; each filtered request is searched on
# its own, since over-fetching depends on how rare its matches are. The queries are prepared
# (float32, unit length for cosine) once per search, not once per source. Sources with an
# index may be searched on a pool of threads: FAISS releases the GIL while it searches. Runs
# under the engine's lock; does no I/O itself.

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import faiss
import numpy as np

from indexer.build import prepare
from searcher import filters, search
from searcher.budgets import Budgets
from searcher.errors import QueryError
from searcher.query import MAX_K, Filter, QueryAnswer, QueryRequest, check_params
from searcher.search import ScanBudgetExceeded, SearchParams, Source

log = logging.getLogger(__name__)

# Rows of the monitor's freshness canary (docs/protocol.md 7.7): ids with this prefix never
# reach an answer unless the request's filter names the metadata field CANARY_FIELD.
CANARY_PREFIX = "__sv_canary__"
CANARY_FIELD = "__sv_canary__"
# Extra rows fetched so that dropping canary rows still leaves k: one live canary row per
# running monitor at most, so this covers that many monitors near one query.
CANARY_SLACK = 8
# Per-source results held at once before they are merged, in result slots (queries x k):
# 2M slots are 24 MiB of scores and keys; between 2 and MERGE_MAX_SOURCES sources at a time.
MERGE_BLOCK_SLOTS = 1 << 21
MERGE_MAX_SOURCES = 64
# Filter plans (_fan_out_filtered), from bench/filters.py (HNSW32 segments, 384-d, one
# thread, a 2-core machine): with 50k-row segments an exact scan of 1,000 accepted rows per
# segment took 2.4 ms a query where the graphs took 19-22 ms at a recall@10 of 0.99 (25 ms at
# 0.31 for 50 rows); at 2,500 rows (5%) the scan took 6.0 ms and the graphs 4.8-5.0 ms, exact;
# with 5k-row segments the scan of 500 rows per segment matched the graphs. So a source's
# accepted rows are scanned when their values (rows x dim) are at most FILTER_SCAN_VALUES
# (1,365 rows at 384-d; gathered with other sources', a block of that size at a time), or
# when they are under FILTER_SCAN_FRACTION of its visible rows, where a graph walk meets so
# few of them that it is both slow and lossy. Above that, an IDSelector below
# FILTER_SELECT_FRACTION (it matched or beat post-filtering from 5% to 30%), else a growing
# fetch with rejected rows dropped.
FILTER_SCAN_VALUES = 1 << 19
FILTER_SCAN_FRACTION = 0.02
FILTER_SELECT_FRACTION = 0.3
# Search threads when the setting says 0 (auto).
AUTO_THREADS_MAX = 4
# The rows a count leaves out unless its filter names CANARY_FIELD: the canary's own.
_CANARY = filters.parse({CANARY_FIELD: {"exists": True}})


@dataclass(frozen=True, slots=True)
class Searchable:
    """A source plus what turns its rows into an answer: ids and metadata."""

    source: Source
    id_of: Callable[[int], str]
    metadata_of: Callable[[int], dict | None]
    # Which of the source's rows (hidden ones included) a filter expression accepts, from
    # metadata columns (searcher/filters.py); None: metadata is parsed row by row.
    accepts: Callable[[filters.Expr], np.ndarray] | None = None


def search_threads(setting: int) -> int:
    """Threads that search sources in parallel: the setting, or min(4, CPUs) for 0."""
    return setting if setting > 0 else min(AUTO_THREADS_MAX, os.cpu_count() or 1)


class Workers:
    """A small pool that searches sources in parallel; with one thread, searches run inline."""

    # Each FAISS call runs on one OpenMP thread: the pool is the parallelism, and OpenMP
    # settings are per thread, so the pool's threads set theirs when they start.

    def __init__(self, threads: int) -> None:
        self.threads = max(1, int(threads))
        self._pool = None if self.threads == 1 else ThreadPoolExecutor(
            self.threads, thread_name_prefix="sv-search", initializer=faiss.omp_set_num_threads,
            initargs=(1,))

    def map(self, jobs: Sequence[Callable[[], object]]) -> list:
        """Run the jobs and return their results in order; a job's exception is raised here."""
        if self._pool is None or len(jobs) <= 1:
            return [job() for job in jobs]
        return list(self._pool.map(_call, jobs))

    def close(self) -> None:
        """Stop the threads once running jobs end; later searches run inline."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)


INLINE = Workers(1)


def _call(job: Callable[[], object]) -> object:
    return job()


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
    refused = check_params(k, request.ef, request.nprobe)
    return vectors if refused is None else refused


def execute(requests: Sequence[QueryRequest], queries: Sequence[np.ndarray | QueryError],
            sources: Sequence[Searchable], metric: str, offsets: dict[int, int],
            budgets: Budgets | None = None, *, defaults: SearchParams = search.DEFAULTS,
            workers: Workers = INLINE) -> list[QueryAnswer | QueryError]:
    """Answer every valid request; a request that fails gets its error, the others still run.

    `defaults` fills the search parameters a request leaves out (the collection's); `workers`
    searches the sources of unfiltered requests in parallel.
    """
    budgets = budgets or Budgets()
    gathered = _Gathered(budgets)  # metadata bytes of the whole batch
    answers: list[QueryAnswer | QueryError | None] = list(
        q if isinstance(q, QueryError) else None for q in queries)
    ends = np.cumsum([s.source.rows for s in sources], dtype=np.int64)  # global key bounds
    groups: dict[SearchParams, list[int]] = {}
    for i, q in enumerate(queries):
        if not isinstance(q, QueryError) and not _filtered(requests[i]):
            groups.setdefault(params_of(requests[i], defaults), []).append(i)
    for params, plain in groups.items():
        _answer_plain(requests, queries, plain, sources, ends, metric, offsets, answers,
                      gathered, params, workers)
    for i, q in enumerate(queries):
        if answers[i] is None:
            try:
                report = FilterReport()
                scores, keys = fan_out(sources, q, _fetch_k(requests[i]), metric,
                                       requests[i].filter, budgets.filter_rows,
                                       params_of(requests[i], defaults), report=report)
                answer = _answer(requests[i], scores, keys, sources, ends, offsets, gathered,
                                 metric=metric)
                answers[i] = answer if isinstance(answer, QueryError) else replace(
                    answer, timings_ms={"filter": report.seconds * 1000},
                    filter=report.as_json())
            except ScanBudgetExceeded as exc:
                answers[i] = budgets.filter_exhausted(exc.examined)
            except Exception as exc:  # one request's failure must not fail the batch
                log.exception("request %s failed", requests[i].request_id)
                answers[i] = QueryError("internal", f"{type(exc).__name__}: {exc}")
    return answers  # type: ignore[return-value]  # every slot is filled by now


def count(sources: Sequence[Searchable], flt: Filter | None,
          max_examined: int | None = None) -> int:
    """Live rows over every source that the filter accepts (every live row without one).

    Canary rows (those whose metadata has CANARY_FIELD) are counted only when the filter names
    that field, as they reach answers only then. Sources with columns are counted with numpy;
    a source without them parses its rows' metadata, at most `max_examined` rows in all
    (ScanBudgetExceeded).
    """
    expr = flt.expr if flt else None
    canary = _CANARY if flt is None or CANARY_FIELD not in flt.fields else None
    examined = _Examined(max_examined)
    total = 0
    for item in sources:
        src = item.source
        if src.visible <= 0:
            continue
        if item.accepts is None:
            rows = src.visible_rows()
            examined.add(len(rows))
            metas = [_metadata(item, r) for r in rows.tolist()]
            total += sum(1 for m in metas if filters.matches(expr, m)
                         and (canary is None or not filters.matches(canary, m)))
            continue
        chosen = (np.ones(src.rows, dtype=bool) if expr is None
                  else np.asarray(item.accepts(expr), dtype=bool))
        if canary is not None:
            chosen = chosen & ~np.asarray(item.accepts(canary), dtype=bool)
        if src.hidden is not None:
            chosen = chosen & ~src.hidden
        total += int(np.count_nonzero(chosen))
    return total


def params_of(request: QueryRequest, defaults: SearchParams = search.DEFAULTS) -> SearchParams:
    """The search parameters a request runs with: its own, else the defaults."""
    return SearchParams(request.ef, request.nprobe).over(defaults)


def fan_out(sources: Sequence[Searchable], queries: np.ndarray, k: int, metric: str,
            flt: Filter | None = None, max_examined: int | None = None,
            params: SearchParams = search.DEFAULTS, workers: Workers = INLINE,
            report: FilterReport | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Search every source and merge: (scores, keys), keys = source base + row, -1 = none.

    A filter is searched by `_fan_out_filtered` (its plan goes to `report`); without one the
    sources are searched on `workers`.
    """
    if flt:
        return _fan_out_filtered(sources, queries, k, metric, flt, max_examined, params,
                                 report if report is not None else FilterReport())
    nq = len(queries)
    prepared = prepare(queries, metric)  # once for every source
    sizes = [s.source.rows for s in sources]
    ends = np.cumsum(sizes, dtype=np.int64)
    bases = (ends - sizes).tolist()
    small = [i for i, s in enumerate(sources) if 0 < s.source.visible <= search.SCAN_MAX_VISIBLE]
    large = [i for i, s in enumerate(sources) if s.source.visible > search.SCAN_MAX_VISIBLE]

    def one(i: int) -> tuple[np.ndarray, np.ndarray]:
        scores, rows = search.best(sources[i].source, prepared, k, metric, params)
        return _fit(scores, np.where(rows >= 0, rows + bases[i], -1), k, metric)

    def scan() -> tuple[np.ndarray, np.ndarray]:
        block, keys = search.gather([sources[i].source for i in small], [bases[i] for i in small])
        scores, rows = search.best(block, prepared, k, metric, params)
        return _fit(scores, np.where(rows >= 0, keys[np.maximum(rows, 0)], -1), k, metric)

    jobs: list[Callable[[], tuple[np.ndarray, np.ndarray]]] = [
        (lambda i=i: one(i)) for i in large]
    if small:
        jobs.append(scan)
    return _merged(jobs, nq, k, metric, workers)


def _merged(jobs: Sequence[Callable[[], tuple[np.ndarray, np.ndarray]]], nq: int, k: int,
            metric: str, workers: Workers) -> tuple[np.ndarray, np.ndarray]:
    """Run the jobs (each one source's or scan's candidates) and merge their results."""
    # Results are merged a block of sources at a time: holding every source's result until
    # one final merge would take memory in proportion to the sources.
    step = max(2, min(MERGE_MAX_SOURCES, MERGE_BLOCK_SLOTS // max(nq * k, 1)))
    best: list[tuple[np.ndarray, np.ndarray]] = []
    for lo in range(0, len(jobs), step):
        best = [search.merge(best + workers.map(jobs[lo:lo + step]), nq, k, metric)]
    return best[0] if best else search.merge([], nq, k, metric)


class FilterReport:
    """How one filtered request was searched: rows evaluated and accepted, sources per plan."""

    # Plans: "scan" (an exact scan of the accepted rows), "select" (the index searched through
    # an IDSelector of the accepted rows), "post" (the index searched with a growing fetch,
    # rejected candidates dropped), "empty" (no visible row accepted), "rows" (a source
    # without columns: metadata parsed row by row).

    def __init__(self) -> None:
        self.rows = 0
        self.accepted = 0
        self.seconds = 0.0
        self.plans: dict[str, int] = {}

    def plan(self, name: str) -> None:
        """Count one source searched by the plan `name`."""
        self.plans[name] = self.plans.get(name, 0) + 1

    def as_json(self) -> dict[str, Any]:
        """The reply's `filter` object (docs/protocol.md 7.2)."""
        return {"rows": self.rows, "accepted": self.accepted, "plans": dict(sorted(
            self.plans.items()))}


def _fan_out_filtered(sources: Sequence[Searchable], queries: np.ndarray, k: int, metric: str,
                      flt: Filter, max_examined: int | None, params: SearchParams,
                      report: FilterReport) -> tuple[np.ndarray, np.ndarray]:
    """Search the rows a filter accepts in every source, by the plan each source's count picks.

    A source with columns gets its accepted rows as a mask (no JSON is parsed); few of them
    (at most FILTER_SCAN_VALUES values) are gathered, with those of other sources, into exact
    scans. More are scanned exactly too where the source has no index or they are under
    FILTER_SCAN_FRACTION of its visible rows; else the index is searched, through a selector
    below FILTER_SELECT_FRACTION, else with a growing fetch. A source without columns parses
    candidates' metadata row by row, at most `max_examined` rows in all (ScanBudgetExceeded).
    """
    nq = len(queries)
    prepared = prepare(queries, metric)
    sizes = [s.source.rows for s in sources]
    bases = (np.cumsum(sizes, dtype=np.int64) - sizes).tolist()
    examined = _Examined(max_examined)
    jobs: list[Callable[[], tuple[np.ndarray, np.ndarray]]] = []
    block: list[tuple[np.ndarray, np.ndarray]] = []  # (vectors, accepted rows) of sources
    held = 0

    def scan(parts: list[tuple[np.ndarray, np.ndarray]], bases: list[int]
             ) -> tuple[np.ndarray, np.ndarray]:
        # The rows are copied here, when the job runs: one block's copy at a time.
        keys = np.concatenate([rows + base for (_, rows), base in zip(parts, bases,
                                                                      strict=True)])
        vectors = np.concatenate([np.asarray(v[rows], dtype=np.float32) for v, rows in parts])
        scores, rows = search.best(search.Source(vectors), prepared, k, metric)
        return _fit(scores, np.where(rows >= 0, keys[np.maximum(rows, 0)], -1), k, metric)

    block_bases: list[int] = []
    for i, item in enumerate(sources):
        src = item.source
        if src.visible <= 0:
            continue
        if item.accepts is None:
            report.plan("rows")
            report.rows += src.visible
            accept = _accept(lambda rows, i=i: (np.full(len(rows), i), rows), sources, flt,
                             examined)
            jobs.append(lambda i=i, accept=accept: _keyed(search.search_filtered(
                sources[i].source, prepared, k, metric, accept, examined.left(), params,
                prepared=prepared), bases[i], k, metric))
            continue
        started = time.perf_counter()
        chosen = np.asarray(item.accepts(flt.expr), dtype=bool)
        if chosen.shape != (src.rows,):
            raise ValueError(f"a filter mask of shape {chosen.shape} for {src.rows} rows")
        if src.hidden is not None:
            chosen = chosen & ~src.hidden
        count = int(np.count_nonzero(chosen))
        report.seconds += time.perf_counter() - started
        report.rows += src.visible
        report.accepted += count
        dim = src.vectors.shape[1] if src.vectors.ndim == 2 else 1
        if count == 0:
            report.plan("empty")
        elif count * dim <= FILTER_SCAN_VALUES:
            report.plan("scan")
            block.append((src.vectors, np.flatnonzero(chosen)))
            block_bases.append(bases[i])
            held += count * dim
            if held > FILTER_SCAN_VALUES:
                jobs.append(lambda parts=block, at=block_bases: scan(parts, at))
                block, block_bases, held = [], [], 0
        else:
            fraction = count / src.visible
            plan = ("scan" if src.index is None or fraction < FILTER_SCAN_FRACTION else
                    "select" if fraction < FILTER_SELECT_FRACTION else "post")
            jobs.append(lambda i=i, chosen=chosen, plan=plan: _keyed(_search_accepted(
                sources[i].source, chosen, plan, prepared, k, metric, params, report),
                bases[i], k, metric))
    if block:
        jobs.append(lambda parts=block, at=block_bases: scan(parts, at))
    # One thread: the row budget of sources without columns is counted in order.
    return _merged(jobs, nq, k, metric, INLINE)


def _search_accepted(src: Source, chosen: np.ndarray, plan: str, prepared: np.ndarray, k: int,
                     metric: str, params: SearchParams,
                     report: FilterReport) -> tuple[np.ndarray, np.ndarray]:
    """The k best of a source's `chosen` rows by `plan` (scan, select or post), counted in
    `report` by the plan that answered."""
    count = int(np.count_nonzero(chosen))
    if plan == "scan":
        report.plan("scan")
        return _scan_rows(src.vectors, np.flatnonzero(chosen), prepared, k, metric)
    if plan == "select":
        found = search.search_selected(src, chosen, prepared, k, metric, params)
        if found is not None:
            report.plan("select")
            return found
        # The index refused a selector, or its walk met too few accepted rows: fetch more.
    report.plan("post")
    return search.search_filtered(src, prepared, k, metric, lambda rows: chosen[rows], None,
                                  params, prepared=prepared, rate=count / max(src.visible, 1))


def _scan_rows(vectors: np.ndarray, rows: np.ndarray, prepared: np.ndarray, k: int,
               metric: str) -> tuple[np.ndarray, np.ndarray]:
    """The k best of `rows` by an exact scan, copying FILTER_SCAN_VALUES values at a time:
    (scores, rows), -1 padded."""
    step = max(1, FILTER_SCAN_VALUES // max(vectors.shape[1], 1))
    best: list[tuple[np.ndarray, np.ndarray]] = []
    for lo in range(0, len(rows), step):
        part = rows[lo:lo + step]
        scores, found = search.best(search.Source(np.asarray(vectors[part], dtype=np.float32)),
                                    prepared, k, metric)
        best = [search.merge(best + [(scores, np.where(found >= 0, part[np.maximum(found, 0)],
                                                       -1))], len(prepared), k, metric)]
    return best[0]


def _keyed(found: tuple[np.ndarray, np.ndarray], base: int, k: int,
           metric: str) -> tuple[np.ndarray, np.ndarray]:
    """A source's (scores, rows) with rows turned into global keys, cut to k."""
    scores, rows = found
    return _fit(scores, np.where(rows >= 0, rows + base, -1), k, metric)


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


def _fit(scores: np.ndarray, keys: np.ndarray, k: int,
         metric: str) -> tuple[np.ndarray, np.ndarray]:
    """A source's candidates cut to its k best when it holds more (hidden rows, a margin)."""
    return (scores, keys) if scores.shape[1] <= k else search.top_k(scores, keys, k, metric)


def _locate(keys: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Global keys as (source index, row in that source)."""
    which = np.searchsorted(ends, keys, side="right")
    return which, keys - np.concatenate([[0], ends])[which]


def _answer_plain(requests: Sequence[QueryRequest], queries: Sequence, plain: list[int],
                  sources: Sequence[Searchable], ends: np.ndarray, metric: str,
                  offsets: dict[int, int], answers: list, gathered: _Gathered,
                  params: SearchParams, workers: Workers) -> None:
    """Search unfiltered requests that share parameters with one query matrix; split the result."""
    try:
        matrix = np.vstack([queries[i] for i in plain])
        scores, keys = fan_out(sources, matrix, max(_fetch_k(requests[i]) for i in plain), metric,
                               params=params, workers=workers)
    except Exception as exc:
        log.exception("batch of %d requests failed", len(plain))
        for i in plain:
            answers[i] = QueryError("internal", f"{type(exc).__name__}: {exc}")
        return
    start = 0
    for i in plain:
        n, k = len(queries[i]), _fetch_k(requests[i])
        answers[i] = _answer(requests[i], scores[start:start + n, :k], keys[start:start + n, :k],
                             sources, ends, offsets, gathered, metric=metric)
        start += n


def _answer(request: QueryRequest, scores: np.ndarray, keys: np.ndarray,
            sources: Sequence[Searchable], ends: np.ndarray, offsets: dict[int, int],
            gathered: _Gathered | None = None, *, metric: str = "l2"
            ) -> QueryAnswer | QueryError:
    """Turn merged keys into the request's k ids (and metadata), dropping empty slots.

    Hits past the request's score threshold are dropped here, before ids and metadata are
    looked up. Metadata is gathered up to the batch's reply budget; past it the request gets
    too_large.
    """
    gathered = gathered or _Gathered(Budgets())
    canary = wants_canary(request)
    ids, out_scores, metadata = [], [], []
    for row_scores, row_keys in zip(scores, keys, strict=True):
        present = np.flatnonzero((row_keys >= 0) & within(row_scores, request.score_threshold,
                                                          metric))
        which, local = _locate(row_keys[present], ends)
        found = [(sources[s].id_of(r), s, r, j) for s, r, j in
                 zip(which.tolist(), local.tolist(), present.tolist(), strict=True)]
        kept = [f for f in found if canary or not f[0].startswith(CANARY_PREFIX)]
        kept = _ties_by_id(kept, row_scores)[:request.k]
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


def within(scores: np.ndarray, threshold: float | None, metric: str) -> np.ndarray:
    """Which scores a score threshold keeps: l2 distances at most it, ip or cosine at least it."""
    if threshold is None:
        return np.ones(np.shape(scores), dtype=bool)
    with np.errstate(invalid="ignore"):  # an empty slot's score fails either way
        return scores <= threshold if metric == "l2" else scores >= threshold


def _ties_by_id(found: list, row_scores: np.ndarray) -> list:
    """Hits best first with equal scores ordered by id: the order a merge of shards keeps.

    `found` holds (id, source, row, column) best first; only runs of equal scores move.
    """
    if len(found) < 2:
        return found
    scored = row_scores[[f[3] for f in found]]
    steps = scored[1:] != scored[:-1]
    if steps.all():
        return found
    runs = [0, *np.cumsum(steps).tolist()]
    return [found[i] for i in sorted(range(len(found)), key=lambda i: (runs[i], found[i][0]))]


def wants_canary(request: QueryRequest) -> bool:
    """True when the request may see canary rows: its filter names the field CANARY_FIELD."""
    return request.filter is not None and CANARY_FIELD in request.filter.fields


def _fetch_k(request: QueryRequest) -> int:
    """Rows to fetch for a request: its k, plus room for the canary rows dropped later."""
    return request.k if wants_canary(request) else request.k + CANARY_SLACK


def _filtered(request: QueryRequest) -> bool:
    return request.filter is not None and bool(request.filter)


def _accept(locate: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
            sources: Sequence[Searchable], flt: Filter | None, examined: _Examined | None = None):
    """The filter as a predicate over a searched source's rows (None without a filter)."""
    if not flt:
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
