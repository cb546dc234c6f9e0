"""How the producer cuts a partition's rows into messages under the size bound."""

from __future__ import annotations

import numpy as np

from ingest.producer import _split


def test_rows_are_cut_in_order_under_the_bound():
    rows = np.arange(100) * 2
    chunks = list(_split(rows, row_bytes=100, extra=None, limit=4096 + 1000))
    assert [len(c) for c in chunks] == [10] * 10
    assert np.array_equal(np.concatenate(chunks), rows)


def test_metadata_sizes_count_and_an_oversized_row_still_goes_alone():
    rows = np.arange(5)
    extra = np.array([0, 5000, 0, 0, 0])
    chunks = list(_split(rows, row_bytes=100, extra=extra, limit=4096 + 1000))
    assert [c.tolist() for c in chunks] == [[0], [1], [2, 3, 4]]
