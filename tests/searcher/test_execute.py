"""The canary rule of query answers: canary rows appear only to a filter on their field."""

from __future__ import annotations

import numpy as np
import pytest

from indexer.build import build_index
from searcher import search
from searcher.execute import CANARY_FIELD, CANARY_PREFIX, Searchable, execute, validate
from searcher.query import Filter, QueryRequest
from searcher.search import Source

DIM = 4
CANARY = CANARY_PREFIX + "host-a"


def sources(with_index: bool) -> tuple[list[Searchable], np.ndarray]:
    """A segment of 20 rows whose row 0 is the canary, and a tail with a second canary."""
    rng = np.random.default_rng(5)
    seg = rng.standard_normal((20, DIM)).astype(np.float32)
    seg[0] = 0.0  # the canary sits exactly on the query
    seg_ids = [CANARY] + [f"row-{r}" for r in range(1, 20)]
    seg_meta = [{CANARY_FIELD: True, "token": "t1"}] + [{"color": "red"}] * 19
    tail = rng.standard_normal((3, DIM)).astype(np.float32) + 5.0
    tail_ids = [CANARY_PREFIX + "host-b", "tail-1", "tail-2"]
    tail_meta = [{CANARY_FIELD: True}, None, None]
    index = build_index(seg, metric="l2", index="Flat")[0] if with_index else None
    items = [Searchable(Source(seg, None, index), seg_ids.__getitem__, seg_meta.__getitem__),
             Searchable(Source(tail, None, None), tail_ids.__getitem__, tail_meta.__getitem__)]
    return items, np.zeros((1, DIM), np.float32)


def answer(items, query, k, flt=None, with_metadata=False):
    req = QueryRequest("r", "c", query, k, filter=flt, with_metadata=with_metadata)
    return execute([req], [validate(req, DIM)], items, "l2", {})[0]


@pytest.fixture(params=["faiss", "scan"])
def with_index(request, monkeypatch) -> bool:
    """Search the segment through FAISS, then as an exact scan."""
    if request.param == "faiss":
        monkeypatch.setattr(search, "SCAN_MAX_VISIBLE", 0)
    return request.param == "faiss"


def test_plain_queries_never_see_canary_rows_and_still_get_k(with_index: bool) -> None:
    items, query = sources(with_index)
    got = answer(items, query, 22, with_metadata=True)
    assert len(got.ids[0]) == 21  # 23 rows, 2 of them canaries
    assert not [i for i in got.ids[0] if i.startswith(CANARY_PREFIX)]
    assert len(got.scores[0]) == len(got.metadata[0]) == 21
    top = answer(items, query, 1)
    assert top.ids[0] != [CANARY] and len(top.ids[0]) == 1


def test_a_filter_on_other_fields_never_sees_canary_rows(with_index: bool) -> None:
    items, query = sources(with_index)
    got = answer(items, query, 30, Filter({"color": ("red",)}))
    assert len(got.ids[0]) == 19
    assert got.scores[0] == sorted(got.scores[0])
    assert all(i.startswith("row-") for i in got.ids[0])


def test_a_filter_on_the_canary_field_sees_canary_rows(with_index: bool) -> None:
    items, query = sources(with_index)
    got = answer(items, query, 1, Filter({CANARY_FIELD: (True,)}), with_metadata=True)
    assert got.ids == [[CANARY]]
    assert got.metadata == [[{CANARY_FIELD: True, "token": "t1"}]]
    both = answer(items, query, 5, Filter({CANARY_FIELD: (True,)}))
    assert both.ids == [[CANARY, CANARY_PREFIX + "host-b"]]


def test_an_unfiltered_k_equal_to_the_rows_keeps_its_order_and_scores(with_index: bool) -> None:
    items, query = sources(with_index)
    got = answer(items, query, 5)
    assert got.scores[0] == sorted(got.scores[0])
    expected = answer(items, query, 30).ids[0][:5]
    assert got.ids[0] == expected
