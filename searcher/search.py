"""Query execution over row sources: FAISS fan-out with hidden rows, exact scans, k-way merge."""

# Pure functions over numpy arrays and FAISS indexes; nothing here does I/O or takes a lock.
#
# Scores are float32 throughout. A source is exact when its index computes true distances on
# the raw vectors (Flat, HNSW over Flat, IVF over Flat) or when it has no index (a float32 scan,
# one BLAS pass over the raw vectors, in blocks of rows): its own scores are the answer's. A
# lossy source (PQ, scalar quantizers, anything else) ranks on compressed codes, so it is asked
# for MARGIN more candidates and these are rescored from the raw vectors; so are l2 candidates
# of every source (see `trusted`: float32 l2 expansions cancel). Ties between equal
# scores go to the smaller key (the earlier source, then the earlier row), so an answer never
# depends on the order in which sources were searched.
#
# Rows hidden by later writes are handled in one of two ways per segment with an index:
#
# - over-fetch (the default): ask FAISS for k + hidden rows and drop hidden ones. It works for
#   every index type (IndexPQ refuses search parameters) and, with few hidden rows, costs what
#   a plain search costs; a selector measured up to ~30% slower on Flat batches of 256 queries
#   (faiss 1.15, 100k rows, 2 threads).
# - an IDSelectorBitmap over visible rows, once hidden rows outnumber SELECTOR_MIN_HIDDEN and
#   the batch's k several times: over-fetching would then make FAISS keep heaps and result
#   arrays as large as the hidden set (k = 10,010 on 100k rows took 3x a k = 10 search).
#   Index types that refuse selectors fall back to over-fetching.
#
# Search breadth (HNSW efSearch, IVF nprobe) goes to FAISS as search parameters of each call,
# never set on the index: several threads may search one index at once.

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np

from indexer.build import normalize, prepare
from searcher.errors import SearcherError

# A lossy index ranks on approximate distances: rows whose approximate and exact order differ
# sit near each other, so fetching this many rows beyond what is needed keeps the exact top-k
# among the candidates that are rescored.
MARGIN = 8
SELECTOR_MIN_HIDDEN = 256
SELECTOR_K_FACTOR = 4
# HNSW efSearch when neither the request nor the collection names one. On 200k sentence
# embeddings of 384 dims in 4 HNSW32 segments (bench/RESULTS.md, "search") recall@10 was 0.9988
# at 128 and 0.9932 at the build's 64; unclustered random vectors need far more.
DEFAULT_EF = 128
# Filtered searches grow the fetch at least this much per round (and by the observed rate).
GROWTH = 4
# Sources with at most this many visible rows are gathered into one exact scan per batch: a
# FAISS call costs ~20 us single-threaded and over 1 ms when OpenMP meets busy cores, which
# made a batch over 1000 small segments take 2 s; their visible rows scan in milliseconds.
SCAN_MAX_VISIBLE = 4096
# (query, row) pairs scored per block of an exact scan: 16 MiB of float32 costs, so a scan over
# a large segment (the recall probe's ground truth) takes bounded memory.
SCAN_BLOCK_PAIRS = 1 << 22
# Candidate values (candidates x dim) rescored per block: 16 MiB of float32 copies at a time.
RESCORE_BLOCK_VALUES = 1 << 22

Accept = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True, slots=True)
class SearchParams:
    """How wide approximate indexes search: HNSW efSearch and IVF nprobe (None: the default)."""

    ef: int | None = None
    nprobe: int | None = None

    def over(self, defaults: SearchParams) -> SearchParams:
        """These parameters, with `defaults` filling the ones not given."""
        return SearchParams(self.ef if self.ef is not None else defaults.ef,
                            self.nprobe if self.nprobe is not None else defaults.nprobe)


# Every parameter left to its default.
DEFAULTS = SearchParams()
_NONE = object()  # a cache miss, where None is a value


def exact_index(index: Any) -> bool:
    """True when the index's distances are exact: Flat, HNSW over Flat, IVF over Flat."""
    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexHNSW):
        return isinstance(faiss.downcast_index(inner.storage), faiss.IndexFlat)
    if isinstance(inner, faiss.IndexIVF):
        return isinstance(inner, faiss.IndexIVFFlat)
    return isinstance(inner, faiss.IndexFlat)


def faiss_params(index: Any, params: SearchParams, selector: Any = None) -> Any:
    """The FAISS search parameters of one call on `index`, or None when it needs none."""
    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexPreTransform):
        sub = faiss_params(inner.index, params, selector)
        return None if sub is None else faiss.SearchParametersPreTransform(index_params=sub)
    extra = {} if selector is None else {"sel": selector}
    if isinstance(inner, faiss.IndexHNSW):
        return faiss.SearchParametersHNSW(efSearch=params.ef or DEFAULT_EF, **extra)
    ivf = faiss.try_extract_index_ivf(inner)
    if ivf is not None:
        return faiss.SearchParametersIVF(nprobe=params.nprobe or ivf.nprobe, **extra)
    return faiss.SearchParameters(**extra) if extra else None


@dataclass(slots=True)
class Source:
    """Rows to search: raw vectors, the rows not to return and, for a segment, its index.

    Without an index, a search scans the rows exactly. `exact` says whether the index's scores
    can be returned as they are (worked out from the index when not given).
    """

    vectors: np.ndarray
    hidden: np.ndarray | None = None
    index: Any = None
    exact: bool | None = None
    # Each row's squared norm (float32), kept by an owner that scans the rows often (the tail,
    # a Flat segment): a scan then reads it instead of working it out from the rows per query,
    # which cost as much as the scan's matrix product.
    sqnorms: np.ndarray | None = None
    hidden_count: int = field(init=False)
    _visible: np.ndarray | None = field(default=None, init=False, repr=False)
    _gathered: np.ndarray | None = field(default=None, init=False, repr=False)
    # FAISS parameters of plain searches (no selector), made once per SearchParams: FAISS only
    # reads them, and one source is searched by one thread at a time.
    _params: dict[SearchParams, Any] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.hidden_count = 0 if self.hidden is None else int(np.count_nonzero(self.hidden))
        if self.exact is None:
            self.exact = self.index is None or exact_index(self.index)

    @property
    def rows(self) -> int:
        """Rows in the source, hidden ones included."""
        return int(self.vectors.shape[0])

    @property
    def visible(self) -> int:
        """Rows a search may return."""
        return self.rows - self.hidden_count

    def visible_rows(self) -> np.ndarray:
        """Indices of the visible rows, ascending (computed once per source)."""
        if self._visible is None:
            self._visible = (np.arange(self.rows, dtype=np.int64) if self.hidden is None
                             else np.flatnonzero(~self.hidden).astype(np.int64))
        return self._visible

    def faiss_params(self, params: SearchParams) -> Any:
        """The FAISS search parameters of a search of this source's index without a selector."""
        made = self._params.get(params, _NONE)
        if made is _NONE:
            made = self._params[params] = faiss_params(self.index, params)
        return made

    def visible_vectors(self) -> np.ndarray:
        """The visible rows' raw vectors, copied once per source."""
        if self._gathered is None:
            self._gathered = np.ascontiguousarray(self.vectors[self.visible_rows()])
        return self._gathered


def trusted(src: Source, metric: str) -> bool:
    """Whether the source's own scores are the answer's: an exact source, for ip and cosine.

    FAISS computes l2 distances as |x|^2 + |q|^2 - 2 x.q in float32, which cancels badly when
    the distance is small against the norms (0.039 for a true 0.042 at norms near 15), so l2
    candidates are fetched with the margin and rescored from the raw vectors like a lossy
    source's; inner products carry no such cancellation.
    """
    return bool(src.exact) and metric != "l2"


def gather(sources: Sequence[Source], bases: Sequence[int]) -> tuple[Source, np.ndarray]:
    """One exact source over the visible rows of many, and each of its rows' global key."""
    blocks = [s.visible_vectors() for s in sources]
    keys = [s.visible_rows() + base for s, base in zip(sources, bases, strict=True)]
    if not blocks:
        return Source(np.zeros((0, 0), np.float32)), np.zeros(0, np.int64)
    return Source(np.concatenate(blocks)), np.concatenate(keys)


def worst(metric: str) -> float:
    """The score that sorts after every real one: +inf for l2, -inf for ip and cosine."""
    return math.inf if metric == "l2" else -math.inf


def cost(scores: np.ndarray, metric: str) -> np.ndarray:
    """Scores as ascending costs: l2 distances as they are, similarities negated."""
    return scores if metric == "l2" else -scores


def rescore(vectors: np.ndarray, rows: np.ndarray, prepared: np.ndarray,
            metric: str) -> np.ndarray:
    """Exact float32 scores of candidate `rows` (nq, m; -1 = none) per query; none -> worst.

    `prepared` holds the queries through `indexer.build.prepare` (unit length for cosine).
    """
    # Candidates are copied a block at a time: 1024 queries x 1000 candidates x 384 dims at
    # once would take 1.5 GiB, twice over for the differences.
    scores = np.zeros(rows.shape, dtype=np.float32)
    if rows.size == 0:
        return scores
    nq, m = rows.shape
    dim = vectors.shape[1] if vectors.ndim == 2 else 1
    q_step = max(1, RESCORE_BLOCK_VALUES // max(m * dim, 1))
    c_step = m if q_step > 1 else max(1, RESCORE_BLOCK_VALUES // max(dim, 1))
    for qlo in range(0, nq, q_step):
        qhi = min(nq, qlo + q_step)
        q = np.asarray(prepared[qlo:qhi], dtype=np.float32)[:, None, :]
        for clo in range(0, m, c_step):
            chi = min(m, clo + c_step)
            scores[qlo:qhi, clo:chi] = _exact(vectors, rows[qlo:qhi, clo:chi], q, metric)
    scores[rows < 0] = worst(metric)
    return scores


def _exact(vectors: np.ndarray, rows: np.ndarray, q: np.ndarray, metric: str) -> np.ndarray:
    """Float32 scores of one block of candidates against its prepared queries (nq, 1, dim)."""
    # Element-wise products summed per pair: each score is the same whatever the block shape.
    picked = np.asarray(vectors[np.maximum(rows, 0).ravel()], dtype=np.float32)
    picked = picked.reshape(*rows.shape, -1)
    if metric == "l2":
        # Differences in float32 are exact to one rounding; squares summed in float64.
        diff = (picked - q).astype(np.float64)
        return np.einsum("ijk,ijk->ij", diff, diff).astype(np.float32)
    if metric == "ip":
        return (picked * q).sum(axis=2)
    return (normalize(picked) * q).sum(axis=2)


def top_k(scores: np.ndarray, keys: np.ndarray, k: int,
          metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k best (score, key) pairs, best first, ties to the smaller key; missing slots
    are (worst, -1)."""
    nq, m = scores.shape
    if m < k:
        scores = np.hstack([scores, np.full((nq, k - m), worst(metric), dtype=scores.dtype)])
        keys = np.hstack([keys, np.full((nq, k - m), -1, dtype=np.int64)])
    order_cost = np.where(keys < 0, math.inf, cost(scores, metric))
    if order_cost.shape[1] > 2 * k:  # a long list: partition first, sort only k
        picked = np.argpartition(order_cost, k - 1, axis=1)[:, :k]
        kth = np.take_along_axis(order_cost, picked, 1).max(axis=1)
        # The partition picks any of the rows tied at the k-th cost: the smaller key must win.
        tied = np.flatnonzero((order_cost <= kth[:, None]).sum(axis=1) > k)
        if len(tied):
            picked[tied] = np.lexsort((keys[tied], order_cost[tied]), axis=1)[:, :k]
        sub_keys = np.take_along_axis(keys, picked, 1)
        inner = np.lexsort((sub_keys, np.take_along_axis(order_cost, picked, 1)), axis=1)
        order = np.take_along_axis(picked, inner, 1)
    else:
        order = np.lexsort((keys, order_cost), axis=1)[:, :k]
    best_scores = np.take_along_axis(scores, order, 1)
    best_keys = np.take_along_axis(keys, order, 1)
    best_scores[best_keys < 0] = worst(metric)
    return best_scores, best_keys


def merge(parts: Sequence[tuple[np.ndarray, np.ndarray]], nq: int, k: int,
          metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-source candidate lists whose keys are already shifted by each source's base.

    One selection over all the parts side by side; each part may hold any number of columns
    in any order.
    """
    if not parts:
        return (np.full((nq, k), worst(metric), dtype=np.float32),
                np.full((nq, k), -1, dtype=np.int64))
    scores = np.hstack([s for s, _ in parts])
    keys = np.hstack([np.asarray(r, dtype=np.int64) for _, r in parts])
    return top_k(scores, keys, k, metric)


def search(src: Source, queries: np.ndarray, k: int, metric: str,
           params: SearchParams = DEFAULTS) -> tuple[np.ndarray, np.ndarray]:
    """The k best visible rows of `src` per query: (scores, rows), best first, -1 padded."""
    scores, rows = best(src, prepare(queries, metric), k, metric, params)
    return top_k(scores, rows, k, metric)


def best(src: Source, prepared: np.ndarray, k: int, metric: str,
         params: SearchParams = DEFAULTS) -> tuple[np.ndarray, np.ndarray]:
    """(scores, rows) holding the k best visible rows of `src` per query, in no set order.

    `prepared` holds the queries through `indexer.build.prepare`. There may be more than k
    columns (hidden rows dropped, a lossy index's margin); empty slots are (worst, -1).
    """
    margin = 0 if trusted(src, metric) else MARGIN
    scores, rows, _ = candidates(src, prepared, metric, k + margin, params)
    if not trusted(src, metric):
        scores = rescore(src.vectors, rows, prepared, metric)
    return scores, rows


def candidates(src: Source, prepared: np.ndarray, metric: str, want: int,
               params: SearchParams = DEFAULTS) -> tuple[np.ndarray, np.ndarray, bool]:
    """Up to `want` visible rows per query: (scores, rows, -1 = none; complete).

    The scores are the index's (the metric's scores when `src.exact`; empty slots are worst).
    Rows come best first by the index's order, except from an exact scan. complete: every
    visible row was a candidate, so an exact ranking gave an exact answer.
    """
    nq = prepared.shape[0]
    if src.visible <= 0 or want <= 0:
        return (np.zeros((nq, 0), dtype=np.float32), np.full((nq, 0), -1, dtype=np.int64),
                True)
    if src.index is None:
        scores, rows = _scan(src, prepared, metric, want)
        return scores, rows, want >= src.visible
    if src.hidden_count >= max(SELECTOR_MIN_HIDDEN, SELECTOR_K_FACTOR * want):
        k = min(src.visible, want)
        found = _search_selected(src, prepared, k, params)
        if found is not None:
            return _scores_of(*found, metric), found[1], k == src.visible
    k = min(src.rows, want + src.hidden_count)
    scores, rows = src.index.search(prepared, k, params=src.faiss_params(params))
    if src.hidden_count:
        rows = _hide(rows.astype(np.int64, copy=False), src.hidden)
    return _scores_of(scores, rows, metric), rows, k == src.rows


def search_filtered(src: Source, queries: np.ndarray, k: int, metric: str, accept: Accept,
                    max_examined: int | None = None, params: SearchParams = DEFAULTS,
                    prepared: np.ndarray | None = None,
                    rate: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The k best visible rows that `accept` admits, per query, growing the fetch as needed.

    `accept` is called on at most `max_examined` distinct rows: past that, ScanBudgetExceeded.
    `prepared`, when given, is `queries` through `indexer.build.prepare` already. `rate`, the
    share of visible rows `accept` admits when it is known, sizes the first fetch.
    """
    # A query stops once k accepted rows are among its certain candidates (all of an exact
    # source's; all but the last MARGIN of a lossy one's) or every visible row was a
    # candidate: it returns k rows whenever k exist.
    memo = _Memo(accept, max_examined)
    if prepared is None:
        prepared = prepare(queries, metric)
    margin = 0 if trusted(src, metric) else MARGIN
    nq = len(prepared)
    out_scores = np.full((nq, k), worst(metric), dtype=np.float32)
    out_rows = np.full((nq, k), -1, dtype=np.int64)
    active = np.arange(nq)
    want = GROWTH * k + margin
    if rate is not None and rate > 0:
        want = max(want, math.ceil((k + margin) / rate * 1.5))
    want = min(want, max(src.visible, 1))
    while len(active):
        if max_examined is not None and want > max_examined:
            # One query's candidates are distinct rows, each one examined.
            raise ScanBudgetExceeded(max(want, len(memo.known)))
        found = np.zeros(len(active), dtype=np.int64)
        done = np.zeros(len(active), dtype=bool)
        # Candidate arrays are (queries x want): taken a block of queries at a time.
        step = max(1, SCAN_BLOCK_PAIRS // want)
        for lo in range(0, len(active), step):
            block = active[lo:lo + step]
            scores, rows, complete = candidates(src, prepared[block], metric, want, params)
            for j, i in enumerate(block, start=lo):
                present = rows[j - lo] >= 0
                cand = rows[j - lo][present]
                ok = memo(cand)
                certain = len(cand) if complete else max(0, len(cand) - margin)
                found[j] = np.count_nonzero(ok[:certain])
                if complete or found[j] >= k:
                    done[j] = True
                    hits = cand[ok][None, :]
                    hit_scores = (scores[j - lo][present][ok][None, :] if trusted(src, metric)
                                  else rescore(src.vectors, hits, prepared[i:i + 1], metric))
                    best_scores, best_rows = top_k(hit_scores, hits, k, metric)
                    out_scores[i], out_rows[i] = best_scores[0], best_rows[0]
        if not done.all():
            rate = max(int(found[~done].min()), 1) / want
            # Past every visible row a fetch is complete: asking for more only costs memory.
            want = min(max(want * GROWTH, math.ceil((k + margin) / rate * 1.5)), src.visible)
        active = active[~done]
    return out_scores, out_rows


def search_selected(src: Source, chosen: np.ndarray, prepared: np.ndarray, k: int, metric: str,
                    params: SearchParams = DEFAULTS) -> tuple[np.ndarray, np.ndarray] | None:
    """The k best of the `chosen` rows (bool per row, hidden ones left out) through the
    source's index and an IDSelectorBitmap: (scores, rows), -1 padded.

    None when the index type refuses a selector, or when a query got fewer rows than k (or
    than are chosen): a graph walk meets few chosen rows when they are rare.
    """
    count = int(np.count_nonzero(chosen))
    want = min(count, k + (0 if trusted(src, metric) else MARGIN))
    bits = np.packbits(chosen, bitorder="little")
    selector = faiss.IDSelectorBitmap(src.rows, faiss.swig_ptr(bits))
    try:
        distances, rows = src.index.search(prepared, want,
                                           params=faiss_params(src.index, params, selector))
    except RuntimeError:
        return None
    rows = rows.astype(np.int64, copy=False)
    if bool((rows < 0).any()):
        return None
    if trusted(src, metric):
        return _scores_of(distances, rows, metric), rows
    return top_k(rescore(src.vectors, rows, prepared, metric), rows, k, metric)


class ScanBudgetExceeded(SearcherError):
    """A filtered search that would examine more rows than its budget allows."""

    def __init__(self, examined: int) -> None:
        super().__init__(f"the filter would examine {examined} rows")
        self.examined = examined


class _Memo:
    """`accept` evaluated at most once per row within one search, on at most `limit` rows."""

    def __init__(self, accept: Accept, limit: int | None = None) -> None:
        self.accept = accept
        self.limit = limit
        self.known: dict[int, bool] = {}

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        new = [r for r in dict.fromkeys(rows.tolist()) if r not in self.known]
        if new:
            if self.limit is not None and len(self.known) + len(new) > self.limit:
                raise ScanBudgetExceeded(len(self.known) + len(new))
            verdicts = self.accept(np.asarray(new, dtype=np.int64))
            self.known.update(zip(new, np.asarray(verdicts, dtype=bool).tolist(), strict=True))
        return np.fromiter((self.known[r] for r in rows.tolist()), dtype=bool, count=len(rows))


def _scores_of(distances: np.ndarray, rows: np.ndarray, metric: str) -> np.ndarray:
    """FAISS's distances as the metric's scores (both are squared L2 or inner products), with
    empty and hidden slots set to the worst score."""
    scores = np.asarray(distances, dtype=np.float32)
    scores[rows < 0] = worst(metric)
    return scores


def _hide(rows: np.ndarray, hidden: np.ndarray | None) -> np.ndarray:
    """Rows with hidden ones replaced by -1 (a copy when anything changes)."""
    if hidden is None or not hidden.any():
        return rows
    out = np.array(rows, dtype=np.int64)
    present = out >= 0
    out[present & hidden[np.maximum(out, 0)]] = -1
    return out


def _search_selected(src: Source, prepared: np.ndarray, k: int,
                     params: SearchParams) -> tuple[np.ndarray, np.ndarray] | None:
    """Search only visible rows through an IDSelector: (distances, rows), or None if the index
    type refuses it."""
    bits = np.packbits(~src.hidden, bitorder="little")
    selector = faiss.IDSelectorBitmap(src.rows, faiss.swig_ptr(bits))
    try:
        distances, rows = src.index.search(prepared, k,
                                           params=faiss_params(src.index, params, selector))
    except RuntimeError:
        return None
    return distances, rows.astype(np.int64, copy=False)


def _scan(src: Source, prepared: np.ndarray, metric: str,
          want: int) -> tuple[np.ndarray, np.ndarray]:
    """The `want` best visible rows per query by a float32 scan: (scores, rows), -1 = none.

    One sgemm per block of rows over the raw vectors; each block's best rows are merged into
    the best so far, as a heap would. Rows come in no set order.
    """
    nq, m = prepared.shape[0], min(src.rows, want)
    step = max(m, SCAN_BLOCK_PAIRS // max(nq, 1))
    kept_costs = np.zeros((nq, 0), dtype=np.float32)
    kept_rows = np.zeros((nq, 0), dtype=np.int64)
    for lo in range(0, src.rows, step):
        costs = _costs(src, prepared, metric, lo, min(src.rows, lo + step))
        best_cols = _lowest(costs, m)
        if kept_rows.shape[1]:
            kept_costs = np.hstack([kept_costs, np.take_along_axis(costs, best_cols, 1)])
            kept_rows = np.hstack([kept_rows, best_cols + lo])
            best_cols = _lowest(kept_costs, m)
            kept_costs = np.take_along_axis(kept_costs, best_cols, 1)
            kept_rows = np.take_along_axis(kept_rows, best_cols, 1)
        else:
            kept_costs = np.take_along_axis(costs, best_cols, 1)
            kept_rows = best_cols + lo
    empty = kept_costs == math.inf
    rows = np.where(empty, -1, kept_rows)
    if metric == "l2":  # the costs left out the query's own norm
        scores = kept_costs + np.einsum("ij,ij->i", prepared, prepared)[:, None]
        np.maximum(scores, 0.0, out=scores)  # rounding can take a distance below zero
    else:
        scores = -kept_costs
    scores[empty] = worst(metric)
    return scores, rows


def _costs(src: Source, prepared: np.ndarray, metric: str, lo: int, hi: int) -> np.ndarray:
    """Ascending float32 costs of every (query, row) pair for rows lo..hi-1; hidden: +inf.

    l2 costs leave out the query's own norm, which does not change a query's order.
    """
    v = np.asarray(src.vectors[lo:hi], dtype=np.float32)
    dots = prepared @ v.T
    if metric == "ip":
        costs = np.negative(dots, out=dots)
        sq = None
    else:
        sq = src.sqnorms[lo:hi] if src.sqnorms is not None else squared_norms(v)
    if metric == "cosine":
        dots /= np.maximum(np.sqrt(sq), np.finfo(np.float32).tiny)[None, :]
        costs = np.negative(dots, out=dots)
    elif metric == "l2":
        costs = dots
        costs *= -2.0
        costs += sq[None, :]
    if src.hidden is not None:
        costs[:, src.hidden[lo:hi]] = math.inf
    return costs


def squared_norms(vectors: np.ndarray) -> np.ndarray:
    """Each row's squared L2 norm as float32, in blocks: a memory-mapped file is never copied."""
    n, dim = vectors.shape
    out = np.empty(n, dtype=np.float32)
    step = max(1, SCAN_BLOCK_PAIRS // dim)
    for lo in range(0, n, step):
        v = np.asarray(vectors[lo:lo + step], dtype=np.float32)
        out[lo:lo + len(v)] = np.einsum("ij,ij->i", v, v)
    return out


def _lowest(costs: np.ndarray, m: int) -> np.ndarray:
    """Column indices of each row's `m` lowest costs, in no order (every column if <= m)."""
    nq, n = costs.shape
    if n <= m:
        return np.broadcast_to(np.arange(n, dtype=np.int64), (nq, n))
    return np.argpartition(costs, m - 1, axis=1)[:, :m]
