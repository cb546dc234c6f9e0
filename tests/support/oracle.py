"""Exact scores straight from each metric's definition: what tests check searches against."""

from __future__ import annotations

import numpy as np


def exact_scores(vectors: np.ndarray, queries: np.ndarray, metric: str) -> np.ndarray:
    """Every (query, row) score in float64: squared L2, inner product or cosine similarity."""
    v = np.asarray(vectors, dtype=np.float64)
    q = np.asarray(queries, dtype=np.float64)
    if metric == "l2":
        return ((q[:, None, :] - v[None, :, :]) ** 2).sum(axis=2)
    if metric == "cosine":
        v = v / np.linalg.norm(v, axis=1, keepdims=True)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
    return q @ v.T
