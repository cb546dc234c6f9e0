"""Query execution: fan-out over segments with hidden rows and the tail vs brute force, filters."""

from __future__ import annotations

import numpy as np
import pytest

from indexer.build import build_index
from searcher import search
from searcher.errors import QueryError
from searcher.execute import Searchable, execute, fan_out, validate
from searcher.query import MAX_K, Filter, QueryAnswer, QueryRequest
from searcher.search import Source
from tests.support.oracle import exact_scores

DIM = 8
METRICS = ("l2", "ip", "cosine")


def make_sources(metric: str, rng: np.random.Generator, hidden_share: float = 0.2,
                 sizes: tuple[int, ...] = (400, 250, 600)) -> list[Searchable]:
    """Flat segments (one per size) and an exact tail, each with a share of hidden rows."""
    items = []
    for number, rows in enumerate((*sizes, 150)):
        vectors = rng.standard_normal((rows, DIM)).astype(np.float32)
        hidden = rng.random(rows) < hidden_share
        index = None if number == len(sizes) else build_index(vectors, metric=metric,
                                                              index="Flat")[0]
        tags = ["hit" if r % 50 == 7 else "miss" for r in range(rows)]
        items.append(Searchable(Source(vectors, hidden, index), _id_of(number),
                                lambda r, tags=tags: {"tag": tags[r], "row": r}))
    return items


def _id_of(number: int):
    return lambda row: f"s{number}-{row}"


def brute_force(items: list[Searchable], queries: np.ndarray, k: int, metric: str,
                accept=lambda item, row: True) -> list[list[tuple[str, float]]]:
    """The expected answer: every visible (and accepted) row scored exactly, best k per query."""
    out = []
    for q in queries:
        scored = []
        for item in items:
            scores = exact_scores(item.source.vectors, q[None, :], metric)[0]
            for row in item.source.visible_rows():
                if accept(item, int(row)):
                    scored.append((item.id_of(int(row)), float(scores[row])))
        scored.sort(key=lambda p: p[1] if metric == "l2" else -p[1])
        out.append(scored[:k])
    return out


def assert_matches(answer: QueryAnswer, expected: list[list[tuple[str, float]]]) -> None:
    assert len(answer.ids) == len(expected)
    for ids, scores, want in zip(answer.ids, answer.scores, expected, strict=True):
        assert ids == [i for i, _ in want]
        np.testing.assert_allclose(scores, [s for _, s in want], rtol=0, atol=1e-5)


def request(vectors: np.ndarray, k: int, **kw) -> QueryRequest:
    return QueryRequest("r", "c", vectors, k, **kw)


@pytest.fixture(params=["faiss", "scan"])
def route(request, monkeypatch) -> str:
    """Run a test with segments searched through FAISS, then gathered into one exact scan."""
    if request.param == "faiss":
        monkeypatch.setattr(search, "SCAN_MAX_VISIBLE", 0)
    return request.param


@pytest.mark.parametrize("metric", METRICS)
def test_batch_merge_equals_brute_force_over_segments_and_tail(metric: str, route: str) -> None:
    rng = np.random.default_rng(11)
    items = make_sources(metric, rng)
    queries = rng.standard_normal((7, DIM)).astype(np.float32)
    reqs = [request(queries[:3], 5), request(queries[3:4], 40), request(queries[4:], 1)]
    answers = execute(reqs, [validate(r, DIM) for r in reqs], items, metric, {0: 12})
    for req, answer in zip(reqs, answers, strict=True):
        assert_matches(answer, brute_force(items, req.vectors, req.k, metric))
        assert answer.offsets == {0: 12}


@pytest.mark.parametrize("metric", METRICS)
def test_mostly_hidden_segments_use_a_selector_and_stay_exact(metric: str, monkeypatch) -> None:
    monkeypatch.setattr(search, "SCAN_MAX_VISIBLE", 0)
    rng = np.random.default_rng(12)
    items = make_sources(metric, rng, hidden_share=0.9, sizes=(3000, 800))
    assert items[0].source.hidden_count >= search.SELECTOR_MIN_HIDDEN
    queries = rng.standard_normal((4, DIM)).astype(np.float32)
    scores, keys = fan_out(items, queries, 10, metric)
    answer = execute([request(queries, 10)], [queries], items, metric, {})[0]
    assert_matches(answer, brute_force(items, queries, 10, metric))
    assert (keys >= 0).all() and scores.shape == (4, 10)


def test_ivf_segment_with_every_list_probed_is_exact_through_the_selector(monkeypatch) -> None:
    monkeypatch.setattr(search, "SCAN_MAX_VISIBLE", 0)
    rng = np.random.default_rng(13)
    vectors = rng.standard_normal((2000, DIM)).astype(np.float32)
    index, factory = build_index(vectors, metric="l2", index="IVF8,Flat")
    assert factory == "IVF8,Flat"
    index.nprobe = 8
    hidden = rng.random(2000) < 0.8
    items = [Searchable(Source(vectors, hidden, index), _id_of(0), lambda r: None)]
    queries = rng.standard_normal((3, DIM)).astype(np.float32)
    answer = execute([request(queries, 20)], [queries], items, "l2", {})[0]
    assert_matches(answer, brute_force(items, queries, 20, "l2"))


@pytest.mark.parametrize("metric", METRICS)
def test_rare_filter_matches_still_fill_k(metric: str, route: str) -> None:
    rng = np.random.default_rng(14)
    items = make_sources(metric, rng, sizes=(2000, 1500))
    queries = rng.standard_normal((3, DIM)).astype(np.float32)
    flt = Filter({"tag": ("hit",)})
    answer = execute([request(queries, 10, filter=flt, with_metadata=True)], [queries], items,
                     metric, {})[0]
    expected = brute_force(items, queries, 10, metric,
                           accept=lambda item, row: item.metadata_of(row)["tag"] == "hit")
    assert_matches(answer, expected)
    assert all(len(ids) == 10 for ids in answer.ids)
    assert all(m["tag"] == "hit" for row in answer.metadata for m in row)


def test_filter_with_fewer_matches_than_k_returns_every_match(route: str) -> None:
    rng = np.random.default_rng(15)
    items = make_sources("l2", rng, sizes=(300,))
    queries = rng.standard_normal((2, DIM)).astype(np.float32)
    accept = lambda item, row: item.metadata_of(row)["tag"] == "hit"  # noqa: E731
    total = sum(accept(i, r) for i in items for r in np.flatnonzero(~i.source.hidden))
    answer = execute([request(queries, 50, filter=Filter({"tag": ("hit",)}))], [queries], items,
                     "l2", {})[0]
    assert_matches(answer, brute_force(items, queries, 50, "l2", accept=accept))
    assert all(len(ids) == total for ids in answer.ids)


def test_k_beyond_every_visible_row_returns_them_all(route: str) -> None:
    rng = np.random.default_rng(16)
    items = make_sources("ip", rng, sizes=(30,), hidden_share=0.5)
    queries = rng.standard_normal((1, DIM)).astype(np.float32)
    answer = execute([request(queries, 500)], [queries], items, "ip", {})[0]
    visible = sum(int((~i.source.hidden).sum()) for i in items)
    assert len(answer.ids[0]) == visible
    assert_matches(answer, brute_force(items, queries, 500, "ip"))


def test_no_sources_gives_empty_answers() -> None:
    queries = np.ones((2, DIM), np.float32)
    answer = execute([request(queries, 3)], [queries], [], "l2", {1: 4})[0]
    assert answer.ids == [[], []] and answer.scores == [[], []] and answer.offsets == {1: 4}


def test_bad_requests_get_their_error_and_the_rest_of_the_batch_runs() -> None:
    rng = np.random.default_rng(17)
    items = make_sources("l2", rng, sizes=(50,))
    good = rng.standard_normal((1, DIM)).astype(np.float32)
    nan = good.copy()
    nan[0, 3] = np.nan
    reqs = [request(np.ones((1, DIM + 1), np.float32), 3), request(nan, 3),
            request(good, 0), request(good, MAX_K + 1), request(good, True),
            request(np.full((1, DIM), 1e39), 3), request(good, 4)]
    answers = execute(reqs, [validate(r, DIM) for r in reqs], items, "l2", {})
    codes = [a.code if isinstance(a, QueryError) else None for a in answers]
    assert codes == ["wrong_dim", "not_finite", "bad_k", "bad_k", "bad_k", "not_finite", None]
    assert_matches(answers[-1], brute_force(items, good, 4, "l2"))


def test_unreadable_metadata_matches_no_filter(route: str) -> None:
    vectors = np.eye(DIM, dtype=np.float32)

    def metadata(row: int) -> dict | None:
        if row == 0:
            raise ValueError("not JSON")
        return {"tag": "hit"}

    items = [Searchable(Source(vectors), _id_of(0), metadata)]
    answer = execute([request(vectors[:1], 3, filter=Filter({"tag": ("hit",)}))], [vectors[:1]],
                     items, "ip", {})[0]
    assert set(answer.ids[0]) == {"s0-1", "s0-2", "s0-3"} and "s0-0" not in answer.ids[0]


def test_merge_pads_and_orders_by_metric() -> None:
    parts = [(np.array([[0.9, 0.1]]), np.array([[3, 4]])), (np.array([[0.5]]), np.array([[7]]))]
    scores, keys = search.merge(parts, 1, 4, "ip")
    assert keys.tolist() == [[3, 7, 4, -1]]
    np.testing.assert_allclose(scores[0, :3], [0.9, 0.5, 0.1])
    scores, keys = search.merge(parts, 1, 2, "l2")
    assert keys.tolist() == [[4, 7]]


def test_sources_are_routed_by_their_visible_rows() -> None:
    rng = np.random.default_rng(18)
    big = rng.standard_normal((search.SCAN_MAX_VISIBLE + 500, DIM)).astype(np.float32)
    hidden = np.zeros(len(big), bool)
    hidden[:400] = True
    index = build_index(big, metric="l2", index="Flat")[0]
    small = rng.standard_normal((30, DIM)).astype(np.float32)
    gone = np.ones(30, bool)
    items = [Searchable(Source(big, hidden, index), _id_of(0), lambda r: None),
             Searchable(Source(small), _id_of(1), lambda r: None),
             Searchable(Source(small, gone, build_index(small, metric="l2", index="Flat")[0]),
                        _id_of(2), lambda r: None)]
    assert items[0].source.visible > search.SCAN_MAX_VISIBLE >= items[1].source.visible
    queries = rng.standard_normal((3, DIM)).astype(np.float32)
    answer = execute([request(queries, 25)], [queries], items, "l2", {})[0]
    assert_matches(answer, brute_force(items, queries, 25, "l2"))
    assert not any(i.startswith("s2-") for row in answer.ids for i in row)


def test_a_source_without_an_index_is_searched_exactly_and_padded() -> None:
    base = np.array([[0.0, 0.0], [3.0, 4.0]], np.float32)
    scores, rows = search.search(Source(base), np.array([[3.0, 4.0]], np.float32), 3, "l2")
    assert rows.tolist() == [[1, 0, -1]]
    assert scores[0].tolist() == [0.0, 25.0, np.inf]


@pytest.mark.parametrize("metric", METRICS)
def test_an_exact_scan_in_blocks_finds_what_one_block_finds(metric: str, monkeypatch) -> None:
    rng = np.random.default_rng(19)
    vectors = rng.standard_normal((3000, DIM)).astype(np.float32)
    source = Source(vectors, rng.random(3000) < 0.3)
    queries = rng.standard_normal((5, DIM)).astype(np.float32)
    whole = search.search(source, queries, 20, metric)
    monkeypatch.setattr(search, "SCAN_BLOCK_PAIRS", 5 * 128)
    blocks = search.search(source, queries, 20, metric)
    assert blocks[1].tolist() == whole[1].tolist()
    np.testing.assert_array_equal(blocks[0], whole[0])


@pytest.mark.parametrize("metric", METRICS)
def test_a_scan_with_kept_norms_ranks_as_one_that_works_them_out(metric: str) -> None:
    rng = np.random.default_rng(23)
    vectors = rng.standard_normal((900, DIM)).astype(np.float32) * 4
    hidden = rng.random(900) < 0.2
    queries = rng.standard_normal((4, DIM)).astype(np.float32)
    plain = search.search(Source(vectors, hidden), queries, 15, metric)
    kept = search.search(Source(vectors, hidden, sqnorms=search.squared_norms(vectors)),
                         queries, 15, metric)
    assert kept[1].tolist() == plain[1].tolist()
    np.testing.assert_allclose(kept[0], plain[0], rtol=1e-5, atol=1e-5)


def test_squared_norms_in_blocks_match_numpy(monkeypatch) -> None:
    vectors = np.arange(70 * 6, dtype=np.float32).reshape(70, 6) / 7
    monkeypatch.setattr(search, "SCAN_BLOCK_PAIRS", 6 * 8)  # blocks of 8 rows, the last short
    np.testing.assert_allclose(search.squared_norms(vectors), (vectors ** 2).sum(axis=1),
                               rtol=1e-6)
