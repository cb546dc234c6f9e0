"""Segment folders written straight to a store, for tests of what reads and removes them."""

from __future__ import annotations

import numpy as np

from indexer import publish
from indexer.registry import SegmentRecord
from indexer.segment import SealedRows
from indexer.store import SegmentStore

DIM = 4


def write_offsets(store: SegmentStore, name: str, generation: int, start: int, end: int,
                  ) -> SegmentRecord:
    """Write a Flat segment folder of partition 0 holding one seeded row per offset."""
    rows = end - start
    sealed = SealedRows(
        0, start, end, np.array([f"id-{o}".encode() for o in range(start, end)]),
        np.random.default_rng(start).standard_normal((rows, DIM)).astype(np.float32),
        np.arange(start, end, dtype=np.int64), np.zeros(rows, dtype=np.int64),
        [b""] * rows, np.array([], dtype="S1"))
    return publish.write(store, name, generation, sealed, metric="l2", index="Flat").record
