"""Drift windows: ring-buffer order, first rows, what a window takes, where reading starts."""

from __future__ import annotations

import numpy as np
import pytest

from ingest import record
from monitor.windows import FirstRows, SlidingWindow, start_offset, window_mask, window_rows
from searcher.execute import CANARY_PREFIX


def rows(start: int, n: int, dim: int = 3) -> np.ndarray:
    """Rows whose every value is the row's number, so order is visible."""
    return np.repeat(np.arange(start, start + n, dtype=np.float32)[:, None], dim, axis=1)


def test_sliding_window_keeps_the_last_rows_oldest_first() -> None:
    window = SlidingWindow(5)
    assert window.snapshot().shape == (0, 0) and len(window) == 0
    window.extend(rows(0, 3))
    assert window.snapshot()[:, 0].tolist() == [0, 1, 2]
    window.extend(rows(3, 4))
    assert window.snapshot()[:, 0].tolist() == [2, 3, 4, 5, 6]
    window.extend(rows(7, 1))
    assert window.snapshot()[:, 0].tolist() == [3, 4, 5, 6, 7]
    window.extend(rows(8, 12))  # more than the capacity at once
    assert window.snapshot()[:, 0].tolist() == [15, 16, 17, 18, 19]
    window.extend(np.zeros((0, 3), np.float32))
    assert len(window) == 5 and window.seen == 20


def test_sliding_window_wraps_exactly_at_the_end_of_its_buffer() -> None:
    window = SlidingWindow(4)
    window.extend(rows(0, 4))
    window.extend(rows(4, 4))
    assert window.snapshot()[:, 0].tolist() == [4, 5, 6, 7]
    window.extend(rows(8, 2))
    assert window.snapshot()[:, 0].tolist() == [6, 7, 8, 9]


def test_snapshot_is_a_copy() -> None:
    window = SlidingWindow(3)
    window.extend(rows(0, 2))
    snap = window.snapshot()
    snap[:] = -1
    assert window.snapshot()[:, 0].tolist() == [0, 1]


def test_first_rows_keep_the_first_and_ignore_the_rest() -> None:
    first = FirstRows(4)
    first.extend(rows(0, 3))
    assert not first.full
    first.extend(rows(3, 3))
    first.extend(rows(6, 2))
    assert first.full and len(first) == 4
    assert first.snapshot()[:, 0].tolist() == [0, 1, 2, 3]


def test_windows_refuse_a_bad_capacity_or_shape() -> None:
    with pytest.raises(ValueError, match="capacity"):
        SlidingWindow(0)
    with pytest.raises(ValueError, match="capacity"):
        FirstRows(0)
    with pytest.raises(ValueError, match="2-D"):
        SlidingWindow(3).extend(np.zeros(3, np.float32))


def test_a_window_takes_upserts_but_not_deletes_or_canary_rows() -> None:
    ids = ["a", CANARY_PREFIX + "host", "b", "c"]
    vectors = rows(0, 4)
    payload = record.encode(ids, vectors, ops=[record.OP_UPSERT, record.OP_UPSERT,
                                               record.OP_DELETE, record.OP_UPSERT])
    batch = record.decode_valid(payload, dim=3, model_version="")
    assert window_mask(batch).tolist() == [True, False, False, True]
    taken = window_rows(batch)
    assert taken.dtype == np.float32 and taken[:, 0].tolist() == [0, 3]


@pytest.mark.parametrize(("low", "high", "committed", "span", "want"), [
    (0, 100, -1001, 10, 90),   # no commit: the last span messages
    (0, 5, -1001, 10, 0),      # a short log: from its start
    (50, 100, -1001, 80, 50),  # never below the log start
    (0, 100, 95, 10, 95),      # a later commit wins: nothing read twice
    (0, 100, 20, 10, 90),      # an old commit is skipped past: only the window matters
    (0, 100, 120, 10, 100),    # never past the log end
    (7, 7, -1001, 10, 7),      # an empty log
])
def test_reading_starts_at_most_a_window_before_the_log_end(low, high, committed, span,
                                                            want) -> None:
    assert start_offset(low, high, committed, span) == want
