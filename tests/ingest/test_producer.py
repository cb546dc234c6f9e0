"""How the producer cuts a partition's rows into messages under the size bound."""

from __future__ import annotations

import time

import numpy as np
import pytest

from ingest.errors import SpecUnavailable
from ingest.producer import Producer, _split
from streamvec.devstack.ports import LOOPBACK
from streamvec.settings import Settings
from tests.support.silent import silent_server


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


def test_a_frozen_redis_fails_the_spec_read_in_time():
    with silent_server() as port:
        settings = Settings(redis=f"redis://{LOOPBACK}:{port}/0", kafka=f"{LOOPBACK}:1")
        started = time.monotonic()
        with pytest.raises(SpecUnavailable, match="cannot read the spec of collection "
                                                  "'products' from Redis within 0.5s"):
            Producer("products", settings=settings, spec_timeout=0.5)
        assert time.monotonic() - started < 0.5 + 5.0  # room for a busy machine
