"""The lean search path: exact index scores as they are, lossy ones rescored, one vectorised
merge, per-request search parameters and the search threads."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from indexer.build import build_index
from searcher import execute as execute_module
from searcher import protocol, search
from searcher.errors import QueryError
from searcher.execute import Searchable, Workers, execute, fan_out, validate
from searcher.query import Filter, QueryAnswer, QueryRequest, check_params
from searcher.search import SearchParams, Source
from tests.support.oracle import exact_scores

DIM = 16
METRICS = ("l2", "ip", "cosine")


def brute_force(items: list[Searchable], queries: np.ndarray, k: int,
                metric: str) -> list[list[tuple[str, float]]]:
    """Every visible row scored in float64, the best k per query (ties: the earlier row)."""
    out = []
    for q in queries:
        scored = []
        for item in items:
            scores = exact_scores(item.source.vectors, q[None, :], metric)[0]
            scored += [(item.id_of(int(r)), float(scores[r])) for r in item.source.visible_rows()]
        scored.sort(key=lambda p: p[1] if metric == "l2" else -p[1])
        out.append(scored[:k])
    return out


def assert_matches(answer: QueryAnswer, expected: list[list[tuple[str, float]]]) -> None:
    assert isinstance(answer, QueryAnswer), answer
    for ids, scores, want in zip(answer.ids, answer.scores, expected, strict=True):
        assert ids == [i for i, _ in want]
        np.testing.assert_allclose(scores, [s for _, s in want], rtol=0, atol=1e-5)


def segment(vectors: np.ndarray, factory: str, metric: str, number: int,
            hidden: np.ndarray | None = None) -> Searchable:
    index = build_index(vectors, metric=metric, index=factory)[0]
    return Searchable(Source(vectors, hidden, index), lambda r, n=number: f"s{number}-{r}",
                      lambda r: None)


def tail(vectors: np.ndarray, number: int) -> Searchable:
    return Searchable(Source(vectors), lambda r, n=number: f"t{number}-{r}", lambda r: None)


def recall(answer: QueryAnswer, expected: list[list[tuple[str, float]]]) -> float:
    found = [len(set(ids) & {i for i, _ in want}) for ids, want in
             zip(answer.ids, expected, strict=True)]
    return sum(found) / sum(len(w) for w in expected)


def ask(items, queries, k, metric, *, workers=None, defaults=search.DEFAULTS, **kw):
    req = QueryRequest("r", "c", queries, k, **kw)
    extra = {} if workers is None else {"workers": workers}
    return execute([req], [validate(req, queries.shape[1])], items, metric, {},
                   defaults=defaults, **extra)[0]


@pytest.fixture
def through_faiss(monkeypatch) -> None:
    """Search every segment through its index, however few rows it has."""
    monkeypatch.setattr(search, "SCAN_MAX_VISIBLE", 0)


@pytest.mark.parametrize(("factory", "exact"), [
    ("Flat", True), ("HNSW32", True), ("HNSW32,Flat", True), ("IVF4,Flat", True),
    ("SQ8", False), ("PQ4x4", False), ("HNSW32_SQ8", False), ("IVF4,PQ4x4", False),
    ("PCA8,HNSW32", False),
])
def test_sources_know_whether_their_index_scores_are_exact(factory: str, exact: bool) -> None:
    vectors = np.random.default_rng(1).standard_normal((400, DIM)).astype(np.float32)
    index = build_index(vectors, metric="l2", index=factory)[0]
    assert Source(vectors, None, index).exact is exact
    assert Source(vectors).exact is True
    assert Source(vectors, None, index, exact=False).exact is False


@pytest.mark.usefixtures("through_faiss")
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF4,Flat"])
def test_exact_indexes_give_brute_force_answers_without_rescoring(metric, factory,
                                                                  monkeypatch) -> None:
    rng = np.random.default_rng(2)
    items = [segment(rng.standard_normal((500, DIM)).astype(np.float32), factory, metric, n,
                     rng.random(500) < 0.1) for n in range(2)]
    items.append(tail(rng.standard_normal((60, DIM)).astype(np.float32), 2))
    queries = rng.standard_normal((5, DIM)).astype(np.float32)
    # Wide enough to visit every row: the graph and the lists give exact answers.
    wide = {"ef": 4096, "nprobe": 4}

    def refuse(*args, **kwargs):
        raise AssertionError("an exact source was rescored")

    if metric != "l2":  # l2 is rescored on purpose: FAISS's float32 expansion cancels
        monkeypatch.setattr(search, "rescore", refuse)
    assert_matches(ask(items, queries, 10, metric, **wide),
                   brute_force(items, queries, 10, metric))


@pytest.mark.usefixtures("through_faiss")
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("factory", ["SQ8", "PQ8x4", "HNSW32_SQ8"])
def test_lossy_indexes_are_rescored_from_the_raw_vectors(metric, factory) -> None:
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((600, DIM)).astype(np.float32)
    item = segment(vectors, factory, metric, 0)
    queries = rng.standard_normal((4, DIM)).astype(np.float32)
    answer = ask([item], queries, 10, metric, ef=4096)
    # Every returned score is the row's exact one, though the index ranks on its codes.
    rows = np.array([[int(i.split("-")[1]) for i in ids] for ids in answer.ids])
    exact = [exact_scores(vectors, q[None, :], metric)[0, r] for q, r in zip(queries, rows,
                                                                          strict=True)]
    np.testing.assert_allclose(answer.scores, exact, rtol=0, atol=1e-5)
    own, own_rows = item.source.index.search(search.prepare(queries, metric), 10)
    own_exact = [exact_scores(vectors, q[None, :], metric)[0, r] for q, r in zip(
        queries, own_rows, strict=True)]
    assert not np.allclose(own, own_exact, atol=1e-5)
    if factory != "PQ8x4":  # the finer codes keep the exact top 10 within the margin
        assert_matches(answer, brute_force([item], queries, 10, metric))


@pytest.mark.usefixtures("through_faiss")
def test_a_filtered_search_on_a_lossy_index_rescores_its_hits() -> None:
    rng = np.random.default_rng(4)
    vectors = rng.standard_normal((800, DIM)).astype(np.float32)
    index = build_index(vectors, metric="l2", index="SQ8")[0]
    tags = ["hit" if r % 9 == 0 else "miss" for r in range(800)]
    item = Searchable(Source(vectors, None, index), lambda r: f"s0-{r}",
                      lambda r: {"tag": tags[r]})
    queries = rng.standard_normal((3, DIM)).astype(np.float32)
    answer = ask([item], queries, 7, "l2", filter=Filter({"tag": ("hit",)}))
    hits = Searchable(Source(vectors[::9]), lambda r: f"s0-{r * 9}", lambda r: None)
    assert_matches(answer, brute_force([hits], queries, 7, "l2"))


def test_ties_go_to_the_earlier_key_whatever_the_order_of_the_parts() -> None:
    scores = np.array([[1.0, 2.0, 1.0, 1.0, 3.0, 1.0, 1.0]], np.float32)
    keys = np.array([[40, 5, 30, 7, -1, 12, 9]])
    for k in (2, 3):  # 3 = 7 columns > 2k: the partition path
        _, best = search.top_k(scores, keys, k, "l2")
        assert best.tolist() == [[7, 9, 12][:k]]
    _, best = search.merge([(scores[:, 3:], keys[:, 3:]), (scores[:, :3], keys[:, :3])], 1, 4,
                           "ip")
    assert best.tolist() == [[5, 7, 9, 12]]  # the -1 slot is empty, whatever its score


def test_ties_in_a_long_list_at_the_kth_place_keep_the_smaller_keys() -> None:
    scores = np.zeros((2, 50), np.float32)
    keys = np.arange(100, 0, -2).reshape(1, 50).repeat(2, axis=0)
    scores[1, 10:] = 1.0  # row 1: ten rows cost 0, forty tie after them
    _, best = search.top_k(scores, keys, 12, "l2")
    assert best[0].tolist() == sorted(keys[0].tolist())[:12]
    assert best[1].tolist() == sorted(keys[1, :10].tolist()) + sorted(keys[1, 10:].tolist())[:2]


def merged_pairwise(parts, nq, k, metric):
    """The earlier merge: each part folded into the best so far, two at a time."""
    best = None
    for part in parts:
        best = part if best is None else search.merge([best, part], nq, k, metric)
    return search.merge([] if best is None else [best], nq, k, metric)


def merged_by_hand(parts, nq, k, metric):
    """Per query, every (score, key) pair sorted by cost then key, the first k."""
    out_scores = np.full((nq, k), search.worst(metric))
    out_keys = np.full((nq, k), -1)
    for q in range(nq):
        pairs = sorted((search.cost(float(s), metric), int(key), float(s))
                       for scores, keys in parts for s, key in zip(scores[q], keys[q], strict=True)
                       if key >= 0)[:k]
        out_keys[q, :len(pairs)] = [p[1] for p in pairs]
        out_scores[q, :len(pairs)] = [p[2] for p in pairs]
    return out_scores, out_keys


@settings(max_examples=150, deadline=None)
@given(data=st.data(), nq=st.integers(1, 3), k=st.integers(1, 12),
       sources=st.integers(0, 9), metric=st.sampled_from(METRICS))
def test_one_merge_equals_merging_source_by_source(data, nq, k, sources, metric) -> None:
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    parts, base = [], 0
    for _ in range(sources):
        width = data.draw(st.integers(0, 2 * k + 3))
        # Few distinct scores: ties are common, and decided by key.
        scores = rng.integers(0, 5, size=(nq, width)).astype(np.float32)
        keys = base + np.stack([rng.permutation(width + 4)[:width] for _ in range(nq)])
        keys[rng.random((nq, width)) < 0.2] = -1
        parts.append((scores, keys.astype(np.int64)))
        base += width + 4
    one = search.merge(parts, nq, k, metric)
    pairwise = merged_pairwise(parts, nq, k, metric)
    by_hand = merged_by_hand(parts, nq, k, metric)
    assert one[1].tolist() == pairwise[1].tolist() == by_hand[1].tolist()
    np.testing.assert_array_equal(one[0], by_hand[0])
    np.testing.assert_array_equal(one[0], pairwise[0])


@pytest.mark.parametrize("metric", METRICS)
def test_merging_in_blocks_of_sources_gives_the_same_answer(metric, monkeypatch) -> None:
    rng = np.random.default_rng(5)
    items = [segment(rng.standard_normal((300, DIM)).astype(np.float32), "Flat", metric, n)
             for n in range(7)]
    queries = rng.standard_normal((3, DIM)).astype(np.float32)
    monkeypatch.setattr(search, "SCAN_MAX_VISIBLE", 0)
    whole = fan_out(items, queries, 9, metric)
    monkeypatch.setattr(execute_module, "MERGE_BLOCK_SLOTS", 1)  # two sources at a time
    blocks = fan_out(items, queries, 9, metric)
    assert blocks[1].tolist() == whole[1].tolist()
    np.testing.assert_array_equal(blocks[0], whole[0])


@pytest.fixture(scope="module")
def graph() -> tuple[np.ndarray, object]:
    """An HNSW32 segment of 6000 rows, too large to scan, and its vectors."""
    vectors = np.random.default_rng(6).standard_normal((6000, DIM)).astype(np.float32)
    return vectors, build_index(vectors, metric="l2", index="HNSW32")[0]


def test_ef_per_request_changes_recall_and_leaves_the_index_alone(graph) -> None:
    vectors, index = graph
    item = Searchable(Source(vectors, None, index), lambda r: f"s0-{r}", lambda r: None)
    queries = np.random.default_rng(7).standard_normal((40, DIM)).astype(np.float32)
    expected = brute_force([item], queries, 10, "l2")
    before = faiss.downcast_index(index).hnsw.efSearch
    narrow = recall(ask([item], queries, 10, "l2", ef=10), expected)
    wide = recall(ask([item], queries, 10, "l2", ef=400), expected)
    default = recall(ask([item], queries, 10, "l2"), expected)
    assert narrow < 0.97 <= default <= wide == 1.0
    # The collection's default applies where the request names none; the request wins.
    assert recall(ask([item], queries, 10, "l2", defaults=SearchParams(ef=10)),
                  expected) == narrow
    assert recall(ask([item], queries, 10, "l2", defaults=SearchParams(ef=10), ef=400),
                  expected) == wide
    assert faiss.downcast_index(index).hnsw.efSearch == before


@pytest.mark.usefixtures("through_faiss")
def test_ef_applies_with_the_selector_of_a_mostly_hidden_graph(graph, monkeypatch) -> None:
    vectors, index = graph
    hidden = np.ones(len(vectors), bool)
    hidden[::3] = False  # 4000 hidden rows: the selector path
    source = Source(vectors, hidden, index)
    assert source.hidden_count >= search.SELECTOR_MIN_HIDDEN
    item = Searchable(source, lambda r: f"s0-{r}", lambda r: None)
    queries = np.random.default_rng(8).standard_normal((30, DIM)).astype(np.float32)
    expected = brute_force([item], queries, 10, "l2")
    calls = []
    real = search._search_selected

    def spy(*args):
        calls.append(args[-1])
        return real(*args)

    monkeypatch.setattr(search, "_search_selected", spy)
    narrow = recall(ask([item], queries, 10, "l2", ef=10), expected)
    wide = ask([item], queries, 10, "l2", ef=1000)
    assert [c.ef for c in calls] == [10, 1000]
    assert narrow < 1.0
    assert_matches(wide, expected)


@pytest.mark.usefixtures("through_faiss")
def test_nprobe_per_request_reaches_every_list() -> None:
    rng = np.random.default_rng(9)
    vectors = rng.standard_normal((3000, DIM)).astype(np.float32)
    item = segment(vectors, "IVF32,Flat", "l2", 0)
    assert faiss.extract_index_ivf(item.source.index).nprobe == 1
    queries = rng.standard_normal((20, DIM)).astype(np.float32)
    expected = brute_force([item], queries, 10, "l2")
    assert recall(ask([item], queries, 10, "l2"), expected) < 0.9
    assert_matches(ask([item], queries, 10, "l2", nprobe=32), expected)
    assert_matches(ask([item], queries, 10, "l2", nprobe=65536), expected)
    assert_matches(ask([item], queries, 10, "l2", defaults=SearchParams(nprobe=32)), expected)
    assert faiss.extract_index_ivf(item.source.index).nprobe == 1


@pytest.mark.parametrize(("fields", "message"), [
    ({"ef": 0}, "ef must be an integer in 1..4096 and at least k (10), got 0"),
    ({"ef": 4097}, "ef must be an integer in 1..4096 and at least k (10), got 4097"),
    ({"ef": 9}, "ef must be an integer in 1..4096 and at least k (10), got 9"),
    ({"ef": True}, "ef must be an integer in 1..4096 and at least k (10), got True"),
    ({"ef": 12.0}, "ef must be an integer in 1..4096 and at least k (10), got 12.0"),
    ({"nprobe": 0}, "nprobe must be an integer in 1..65536, got 0"),
    ({"nprobe": 65537}, "nprobe must be an integer in 1..65536, got 65537"),
])
def test_search_parameters_out_of_bounds_get_bad_params(fields, message) -> None:
    item = tail(np.eye(DIM, dtype=np.float32), 0)
    query = np.ones((1, DIM), np.float32)
    good = QueryRequest("ok", "c", query, 3, ef=10, nprobe=65536)
    bad = QueryRequest("r", "c", query, 10, **fields)
    answers = execute([bad, good], [validate(bad, DIM), validate(good, DIM)], [item], "ip", {})
    assert isinstance(answers[0], QueryError)
    assert (answers[0].code, answers[0].message) == ("bad_params", message)
    assert len(answers[1].ids[0]) == 3
    assert check_params(10, 10, 1) is None and check_params(1, None, None) is None


def test_the_protocol_carries_search_parameters_and_refuses_bad_ones() -> None:
    query = np.ones((2, DIM), np.float32)
    req = QueryRequest("r1", "c", query, 5, ef=64, nprobe=8)
    fields = protocol.encode_request(req)
    assert (fields["ef"], fields["nprobe"]) == (b"64", b"8")
    back = protocol.decode_request("c", fields, dim=DIM)
    assert (back.ef, back.nprobe) == (64, 8)
    plain = protocol.encode_request(QueryRequest("r2", "c", query, 5))
    assert "ef" not in plain and "nprobe" not in plain  # what an older client sends
    back = protocol.decode_request("c", plain, dim=DIM)
    assert (back.ef, back.nprobe) == (None, None)
    for name, raw, code in [("ef", b"4", "bad_params"), ("ef", b"5000", "bad_params"),
                            ("nprobe", b"0", "bad_params"), ("ef", b"many", "malformed"),
                            ("nprobe", b"", "malformed")]:
        with pytest.raises(QueryError) as caught:
            protocol.decode_request("c", {**fields, name: raw}, dim=DIM)
        assert caught.value.code == code, (name, raw)


@pytest.mark.usefixtures("through_faiss")
def test_requests_sharing_parameters_share_one_search_per_source(monkeypatch) -> None:
    rng = np.random.default_rng(10)
    items = [segment(rng.standard_normal((400, DIM)).astype(np.float32), "HNSW32", "l2", n)
             for n in range(3)]
    calls: list[int] = []
    real = search.candidates

    def counting(src, prepared, *args, **kwargs):
        calls.append(len(prepared))
        return real(src, prepared, *args, **kwargs)

    monkeypatch.setattr(search, "candidates", counting)
    queries = rng.standard_normal((6, DIM)).astype(np.float32)
    reqs = [QueryRequest(f"r{i}", "c", queries[i:i + 1], 5 + i) for i in range(4)]
    reqs += [QueryRequest("w", "c", queries[4:], 5, ef=300)]
    answers = execute(reqs, [validate(r, DIM) for r in reqs], items, "l2", {})
    # One call per source for the four default requests (4 queries), one for the wide one.
    assert sorted(calls) == [2, 2, 2, 4, 4, 4]
    alone = [ask(items, r.vectors, r.k, "l2", ef=r.ef) for r in reqs]
    assert [a.ids for a in answers] == [a.ids for a in alone]


@pytest.mark.parametrize("metric", METRICS)
def test_search_threads_change_nothing_in_the_answers(metric) -> None:
    rng = np.random.default_rng(11)
    items = [segment(rng.standard_normal((5000, DIM)).astype(np.float32), factory, metric, n,
                     rng.random(5000) < 0.05)
             for n, factory in enumerate(["HNSW32", "Flat", "SQ8", "IVF8,Flat"])]
    items += [tail(rng.standard_normal((50, DIM)).astype(np.float32), 9)]
    queries = rng.standard_normal((25, DIM)).astype(np.float32)
    inline = ask(items, queries, 20, metric)
    pool = Workers(4)
    try:
        threaded = [ask(items, queries, 20, metric, workers=pool) for _ in range(3)]
    finally:
        pool.close()
    after = ask(items, queries, 20, metric, workers=pool)  # closed: searches run inline
    for answer in [*threaded, after]:
        assert answer.ids == inline.ids
        assert answer.scores == inline.scores


def test_workers_raise_a_job_failure_and_run_one_job_inline() -> None:
    import threading

    pool = Workers(3)
    try:
        assert pool.map([lambda: threading.current_thread().name]) == [
            threading.current_thread().name]
        names = pool.map([lambda: threading.current_thread().name] * 4)
        assert all(n.startswith("sv-search") for n in names)

        def fail():
            raise ValueError("boom")

        with pytest.raises(ValueError, match="boom"):
            pool.map([lambda: 1, fail])
    finally:
        pool.close()


def test_small_l2_distances_against_large_norms_are_exact() -> None:
    # |x|^2 + |q|^2 - 2 x.q in float32 loses the small distance between two long vectors.
    rng = np.random.default_rng(9)
    base = np.full((1, DIM), 15.0, dtype=np.float32)
    vectors = (base + rng.standard_normal((300, DIM)).astype(np.float32) * 0.05)
    queries = vectors[:3] + np.float32(0.01)
    for factory in ("Flat", "HNSW32"):
        item = segment(vectors, factory, "l2", 0)
        got = ask([item], queries, 5, "l2", ef=4096)
        want = brute_force([item], queries, 5, "l2")
        assert_matches(got, want)
