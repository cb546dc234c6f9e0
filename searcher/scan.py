"""Exact scans of sources without an index: a float32 BLAS pass ranks, float64 rescoring decides."""

from __future__ import annotations

import math

import numpy as np


def candidates(vectors: np.ndarray, hidden: np.ndarray | None, queries: np.ndarray,
               metric: str, want: int) -> np.ndarray:
    """The `want` best visible rows per query by float32 score (unordered; -1 = none).

    One sgemm over the raw vectors replaces a float64 copy of every row per batch; the caller
    rescores these candidates exactly, and a margin in `want` absorbs float32 rounding.
    """
    n = int(vectors.shape[0])
    nq = int(queries.shape[0])
    if n == 0 or want <= 0:
        return np.full((nq, 0), -1, dtype=np.int64)
    v = np.asarray(vectors, dtype=np.float32)
    q = np.ascontiguousarray(queries, dtype=np.float32)
    costs = _costs(v, q, metric)
    if hidden is not None:
        costs[:, hidden] = math.inf
    m = min(n, want)
    rows = np.argpartition(costs, m - 1, axis=1)[:, :m] if m < n else np.broadcast_to(
        np.arange(n), (nq, n)).copy()
    rows = rows.astype(np.int64, copy=False)
    rows[np.take_along_axis(costs, rows, 1) == math.inf] = -1
    return rows


def _costs(v: np.ndarray, q: np.ndarray, metric: str) -> np.ndarray:
    """Ascending float32 costs of every (query, row) pair."""
    dots = q @ v.T
    if metric == "ip":
        return np.negative(dots, out=dots)
    squares = np.einsum("ij,ij->i", v, v)
    if metric == "cosine":  # the query's own norm orders nothing within its row
        dots /= np.maximum(np.sqrt(squares), np.finfo(np.float32).tiny)[None, :]
        return np.negative(dots, out=dots)
    dots *= -2.0
    dots += squares[None, :]
    return dots
