"""Query execution over row sources: FAISS fan-out with hidden rows, exact scans, k-way merge."""

# Pure functions over numpy arrays and FAISS indexes; nothing here does I/O or takes a lock.
#
# A search takes candidates from a source, then rescores them exactly (float64, from the raw
# vectors), so scores are exact whatever the index and the merge never depends on float32
# rounding. A source without an index is the exact search: its candidates come from a float32
# scan, one BLAS pass over the raw vectors, in blocks of rows. Rows hidden by later writes are
# handled in one of two ways per segment with an index:
#
# - over-fetch (the default): ask FAISS for k + hidden + margin rows and drop hidden ones. It
#   works for every index type (IndexPQ refuses search parameters) and, with few hidden rows,
#   costs what a plain search costs; a selector measured up to ~30% slower on Flat batches of
#   256 queries (faiss 1.15, 100k rows, 2 threads).
# - an IDSelectorBitmap over visible rows, once hidden rows outnumber SELECTOR_MIN_HIDDEN and
#   the batch's k several times: over-fetching would then make FAISS keep heaps and result
#   arrays as large as the hidden set (k = 10,010 on 100k rows took 3x a k = 10 search).
#   Index types that refuse selectors fall back to over-fetching.

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np

from indexer.build import normalize, prepare
from searcher.errors import SearcherError

# FAISS ranks in float32; rows whose float32 and exact order differ sit next to each other,
# so fetching this many rows beyond what is needed keeps the exact top-k among candidates.
MARGIN = 8
SELECTOR_MIN_HIDDEN = 256
SELECTOR_K_FACTOR = 4
# Filtered searches grow the fetch at least this much per round (and by the observed rate).
GROWTH = 4
# Sources with at most this many visible rows are gathered into one exact scan per batch: a
# FAISS call costs ~20 us single-threaded and over 1 ms when OpenMP meets busy cores, which
# made a batch over 1000 small segments take 2 s; their visible rows scan in milliseconds.
SCAN_MAX_VISIBLE = 4096
# (query, row) pairs scored per block of an exact scan: 16 MiB of float32 costs, so a scan over
# a large segment (the recall probe's ground truth) takes bounded memory.
SCAN_BLOCK_PAIRS = 1 << 22
# Candidate values (candidates x dim) rescored per block: 32 MiB of float64 copies at a time.
RESCORE_BLOCK_VALUES = 1 << 22

Accept = Callable[[np.ndarray], np.ndarray]


@dataclass(slots=True)
class Source:
    """Rows to search: raw vectors, the rows not to return and, for a segment, its index.

    Without an index, a search scans the rows exactly.
    """

    vectors: np.ndarray
    hidden: np.ndarray | None = None
    index: Any = None
    hidden_count: int = field(init=False)
    _visible: np.ndarray | None = field(default=None, init=False, repr=False)
    _gathered: np.ndarray | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.hidden_count = 0 if self.hidden is None else int(np.count_nonzero(self.hidden))

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

    def visible_vectors(self) -> np.ndarray:
        """The visible rows' raw vectors, copied once per source."""
        if self._gathered is None:
            self._gathered = np.ascontiguousarray(self.vectors[self.visible_rows()])
        return self._gathered


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


def rescore(vectors: np.ndarray, rows: np.ndarray, queries: np.ndarray, metric: str) -> np.ndarray:
    """Exact scores of candidate `rows` (nq, m; -1 = none) for each query; none -> worst."""
    # The float64 copies of the candidates are made a block at a time: 1024 queries x 1000
    # candidates x 384 dims at once would take 3 GiB, twice over for the differences.
    scores = np.zeros(rows.shape, dtype=np.float64)
    if rows.size == 0:
        return scores
    nq, m = rows.shape
    dim = vectors.shape[1] if vectors.ndim == 2 else 1
    q_step = max(1, RESCORE_BLOCK_VALUES // max(m * dim, 1))
    c_step = m if q_step > 1 else max(1, RESCORE_BLOCK_VALUES // max(dim, 1))
    for qlo in range(0, nq, q_step):
        qhi = min(nq, qlo + q_step)
        q = np.asarray(queries[qlo:qhi], dtype=np.float64)[:, None, :]
        for clo in range(0, m, c_step):
            chi = min(m, clo + c_step)
            scores[qlo:qhi, clo:chi] = _exact(vectors, rows[qlo:qhi, clo:chi], q, metric)
    scores[rows < 0] = worst(metric)
    return scores


def _exact(vectors: np.ndarray, rows: np.ndarray, q: np.ndarray, metric: str) -> np.ndarray:
    """Exact float64 scores of one block of candidates against its queries (nq, 1, dim)."""
    picked = np.asarray(vectors[np.maximum(rows, 0).ravel()], dtype=np.float64)
    picked = picked.reshape(*rows.shape, -1)
    if metric == "l2":
        return ((picked - q) ** 2).sum(axis=2)
    if metric == "ip":
        return (picked * q).sum(axis=2)
    return (normalize(picked) * normalize(q)).sum(axis=2)


def top_k(scores: np.ndarray, keys: np.ndarray, k: int,
          metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k best (score, key) pairs, best first; missing slots are (worst, -1)."""
    nq, m = scores.shape
    if m < k:
        scores = np.hstack([scores, np.full((nq, k - m), worst(metric))])
        keys = np.hstack([keys, np.full((nq, k - m), -1, dtype=np.int64)])
    order_cost = np.where(keys < 0, math.inf, cost(scores, metric))
    if order_cost.shape[1] > 2 * k:  # a long exact scan: partition first, sort only k
        picked = np.argpartition(order_cost, k - 1, axis=1)[:, :k]
        inner = np.argsort(np.take_along_axis(order_cost, picked, 1), axis=1, kind="stable")
        order = np.take_along_axis(picked, inner, 1)
    else:
        order = np.argsort(order_cost, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(keys, order, 1)


def merge(parts: Sequence[tuple[np.ndarray, np.ndarray]], nq: int, k: int,
          metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-source top-k lists whose keys are already shifted by each source's base."""
    if not parts:
        return np.full((nq, k), worst(metric)), np.full((nq, k), -1, dtype=np.int64)
    scores = np.hstack([s for s, _ in parts])
    keys = np.hstack([np.asarray(r, dtype=np.int64) for _, r in parts])
    return top_k(scores, keys, k, metric)


def search(src: Source, queries: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """The k best visible rows of `src` per query: (exact scores, rows), -1 padded."""
    rows, _ = candidates(src, prepare(queries, metric), metric, k + MARGIN)
    return top_k(rescore(src.vectors, rows, queries, metric), rows, k, metric)


def candidates(src: Source, prepared: np.ndarray, metric: str,
               want: int) -> tuple[np.ndarray, bool]:
    """Up to `want` visible rows per query, best first: (rows, -1 = none; complete).

    `prepared` holds the queries through `indexer.build.prepare`. The order is the index's, or
    a float32 scan's without one. complete: every visible row was a candidate, so an exact
    ranking gave an exact answer.
    """
    nq = prepared.shape[0]
    if src.visible <= 0 or want <= 0:
        return np.full((nq, 0), -1, dtype=np.int64), True
    if src.index is None:
        return _scan(src, prepared, metric, want), want >= src.visible
    if src.hidden_count >= max(SELECTOR_MIN_HIDDEN, SELECTOR_K_FACTOR * want):
        k = min(src.visible, want)
        rows = _search_selected(src, prepared, k)
        if rows is not None:
            return rows, k == src.visible
    k = min(src.rows, want + src.hidden_count)
    _, rows = src.index.search(prepared, k)
    return _hide(rows.astype(np.int64, copy=False), src.hidden), k == src.rows


def search_filtered(src: Source, queries: np.ndarray, k: int, metric: str, accept: Accept,
                    max_examined: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The k best visible rows that `accept` admits, per query, growing the fetch as needed.

    `accept` is called on at most `max_examined` distinct rows: past that, ScanBudgetExceeded.
    """
    # A query stops once k accepted rows are among its certain candidates (all but the last
    # MARGIN) or every visible row was a candidate: it returns k rows whenever k exist.
    memo = _Memo(accept, max_examined)
    prepared = prepare(queries, metric)
    nq = len(queries)
    out_scores = np.full((nq, k), worst(metric))
    out_rows = np.full((nq, k), -1, dtype=np.int64)
    active = np.arange(nq)
    want = min(GROWTH * k + MARGIN, max(src.visible, 1))
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
            rows, complete = candidates(src, prepared[block], metric, want)
            for j, i in enumerate(block, start=lo):
                cand = rows[j - lo][rows[j - lo] >= 0]
                ok = memo(cand)
                certain = len(cand) if complete else max(0, len(cand) - MARGIN)
                found[j] = np.count_nonzero(ok[:certain])
                if complete or found[j] >= k:
                    done[j] = True
                    hits = cand[ok][None, :]
                    scores = rescore(src.vectors, hits, queries[i : i + 1], metric)
                    best_scores, best_rows = top_k(scores, hits, k, metric)
                    out_scores[i], out_rows[i] = best_scores[0], best_rows[0]
        if not done.all():
            rate = max(int(found[~done].min()), 1) / want
            # Past every visible row a fetch is complete: asking for more only costs memory.
            want = min(max(want * GROWTH, math.ceil((k + MARGIN) / rate * 1.5)), src.visible)
        active = active[~done]
    return out_scores, out_rows


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


def _hide(rows: np.ndarray, hidden: np.ndarray | None) -> np.ndarray:
    """Rows with hidden ones replaced by -1 (a copy when anything changes)."""
    if hidden is None or not hidden.any():
        return rows
    out = np.array(rows, dtype=np.int64)
    present = out >= 0
    out[present & hidden[np.maximum(out, 0)]] = -1
    return out


def _search_selected(src: Source, prepared: np.ndarray, k: int) -> np.ndarray | None:
    """Search only visible rows through an IDSelector; None if the index type refuses it."""
    bits = np.packbits(~src.hidden, bitorder="little")
    selector = faiss.IDSelectorBitmap(src.rows, faiss.swig_ptr(bits))
    ivf = faiss.try_extract_index_ivf(src.index)
    params = (faiss.SearchParametersIVF(sel=selector, nprobe=ivf.nprobe) if ivf is not None
              else faiss.SearchParameters(sel=selector))
    try:
        _, rows = src.index.search(prepared, k, params=params)
    except RuntimeError:
        return None
    return rows.astype(np.int64, copy=False)


def _scan(src: Source, prepared: np.ndarray, metric: str, want: int) -> np.ndarray:
    """The `want` best visible rows per query by float32 cost, best first (-1 = none).

    One sgemm per block of rows over the raw vectors replaces a float64 copy of every row per
    batch; the caller rescores these candidates exactly, and a margin in `want` absorbs float32
    rounding. Each block's best rows are merged into the best so far, as a heap would.
    """
    nq, m = prepared.shape[0], min(src.rows, want)
    step = max(m, SCAN_BLOCK_PAIRS // max(nq, 1))
    kept_costs = np.zeros((nq, 0), dtype=np.float32)
    kept_rows = np.zeros((nq, 0), dtype=np.int64)
    for lo in range(0, src.rows, step):
        costs = _costs(src, prepared, metric, lo, min(src.rows, lo + step))
        best = _lowest(costs, m)
        kept_costs = np.hstack([kept_costs, np.take_along_axis(costs, best, 1)])
        kept_rows = np.hstack([kept_rows, best + lo])
        best = _lowest(kept_costs, m)
        kept_costs = np.take_along_axis(kept_costs, best, 1)
        kept_rows = np.take_along_axis(kept_rows, best, 1)
    order = np.lexsort((kept_rows, kept_costs), axis=1)  # ties: the earlier row first
    rows = np.take_along_axis(kept_rows, order, 1)
    rows[np.take_along_axis(kept_costs, order, 1) == math.inf] = -1
    return rows


def _costs(src: Source, prepared: np.ndarray, metric: str, lo: int, hi: int) -> np.ndarray:
    """Ascending float32 costs of every (query, row) pair for rows lo..hi-1; hidden: +inf."""
    # Only the order within a query's row matters, so the query's own norm is left out.
    v = np.asarray(src.vectors[lo:hi], dtype=np.float32)
    dots = prepared @ v.T
    if metric == "ip":
        costs = np.negative(dots, out=dots)
    elif metric == "cosine":
        norms = np.sqrt(np.einsum("ij,ij->i", v, v))
        dots /= np.maximum(norms, np.finfo(np.float32).tiny)[None, :]
        costs = np.negative(dots, out=dots)
    else:
        costs = dots
        costs *= -2.0
        costs += np.einsum("ij,ij->i", v, v)[None, :]
    if src.hidden is not None:
        costs[:, src.hidden[lo:hi]] = math.inf
    return costs


def _lowest(costs: np.ndarray, m: int) -> np.ndarray:
    """Column indices of each row's `m` lowest costs, in no order (every column if <= m)."""
    nq, n = costs.shape
    if n <= m:
        return np.broadcast_to(np.arange(n, dtype=np.int64), (nq, n))
    return np.argpartition(costs, m - 1, axis=1)[:, :m]
