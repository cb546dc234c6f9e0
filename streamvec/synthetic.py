"""Seeded clustered vectors: structured data for the produce command, the demo, benches, tests."""

from __future__ import annotations

import numpy as np


class Clusters:
    """Points around random centres, drawn batch after batch from one seeded generator.

    Centres are standard normal times `scale`. Each point is a centre picked uniformly plus
    Gaussian noise of `spread` per coordinate. With `unit`, centres and points are scaled to
    unit length instead, as sentence embeddings are. One seed gives one sequence of batches.
    """

    def __init__(self, dim: int, clusters: int = 16, seed: int = 0, *, scale: float = 1.0,
                 spread: float = 1.0, unit: bool = False) -> None:
        if dim < 1 or clusters < 1:
            raise ValueError(f"need dim >= 1 and clusters >= 1, got {dim} and {clusters}")
        self.dim = dim
        self.spread = spread
        self.unit = unit
        self._rng = np.random.default_rng(seed)
        centres = self._rng.standard_normal((clusters, dim))
        self.centres = _unit_rows(centres) if unit else centres * scale

    def draw(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The next `n` points (float32, n x dim) and the cluster each was drawn around."""
        if n < 0:
            raise ValueError(f"need n >= 0, got {n}")
        labels = self._rng.integers(0, len(self.centres), size=n)
        points = self.centres[labels] + self._rng.standard_normal((n, self.dim)) * self.spread
        if self.unit:
            points = _unit_rows(points)
        return points.astype(np.float32), labels


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)
