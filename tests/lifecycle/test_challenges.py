"""Champion-challenger pure parts: sampling, per-version vectors, the log record, the figures."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from lifecycle import evaluation
from searcher import shadow
from searcher.routing import Challenge
from searcher.shadow import ShadowRecord
from streamvec.commands.challenge import _parse_words
from streamvec.commands.errors import CommandError

CONFIG = Challenge("c1", "products", "products@v3", "products@v4", 1.0, 0.0, "alice")


def test_overlap_at_k_counts_shared_ids_in_each_top_k():
    assert evaluation.overlap_at_k(["a", "b", "c"], ["c", "a", "x"], 3) == pytest.approx(2 / 3)
    assert evaluation.overlap_at_k(["a", "b", "c", "d"], ["d", "x"], 2) == 0.0
    assert evaluation.overlap_at_k(["a"], ["a"], 4) == 0.25  # missing hits count as misses
    with pytest.raises(ValueError, match="k must be >= 1"):
        evaluation.overlap_at_k([], [], 0)


def test_sampling_is_exact_at_the_ends_and_stable_per_request():
    ids = [uuid.uuid4().hex for _ in range(20_000)]
    assert all(shadow.sampled(i, 1.0) for i in ids)
    assert not any(shadow.sampled(i, 0.0) for i in ids)
    picked = [i for i in ids if shadow.sampled(i, 0.1)]
    assert 0.09 < len(picked) / len(ids) < 0.11
    assert picked == [i for i in ids if shadow.sampled(i, 0.1)]
    assert set(picked) <= {i for i in ids if shadow.sampled(i, 0.2)}  # nested shares


def test_vectors_keyed_by_model_version_pick_the_collections_own():
    q3, q4 = np.zeros(3), np.ones(5)
    assert shadow.pick_vectors({"v3": q3, "v4": q4}, "v4", "products@v4") is q4
    assert shadow.pick_vectors(q3, "v4", "products@v4") is q3  # one array: used as given
    with pytest.raises(ValueError, match=r"no query vectors for model version 'v5' of "
                                         r"collection 'products@v5'; got versions \['v3', 'v4'\]"):
        shadow.pick_vectors({"v3": q3, "v4": q4}, "v5", "products@v5")
    with pytest.raises(ValueError, match="collection 'plain' has no model version"):
        shadow.pick_vectors({"v3": q3}, "", "plain")


def record(**changes) -> ShadowRecord:
    base = dict(challenge="c1", request="r1", at_ms=1.5, k=3, champion="products@v3",
                challenger="products@v4",
                champion_vectors=np.arange(6, dtype=np.float32).reshape(2, 3),
                challenger_vectors=np.arange(8, dtype=np.float32).reshape(2, 4),
                champion_ids=[["a", "b", "c"], ["d"]], challenger_ids=[["c", "a", "x"], []],
                champion_ms=1.25, challenger_ms=7.5, error="")
    return ShadowRecord(**{**base, **changes})


def assert_same(a: ShadowRecord, b: ShadowRecord) -> None:
    for name in ShadowRecord.__slots__:
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype == np.float32 and np.array_equal(x, y), name
        else:
            assert x == y, name


def test_a_record_round_trips_through_stream_fields_as_raw_float32():
    full = record()
    fields = shadow.encode_record(full)
    assert fields["champion_vectors"] == full.champion_vectors.astype("<f4").tobytes()
    assert_same(shadow.decode_record(fields), full)
    failed = record(challenger_vectors=None, challenger_ids=None, challenger_ms=None,
                    error="SearchTimeout: no searcher answered")
    assert_same(shadow.decode_record(shadow.encode_record(failed)), failed)


def test_a_broken_record_is_a_value_error_that_names_the_problem():
    fields = shadow.encode_record(record())
    with pytest.raises(ValueError, match="record lacks field 'k'"):
        shadow.decode_record({k: v for k, v in fields.items() if k != "k"})
    with pytest.raises(ValueError, match=r"champion_vectors: 20 bytes is not rows of 3"):
        shadow.decode_record({**fields, "champion_vectors": b"\0" * 20})
    with pytest.raises(ValueError, match="unknown record version"):
        shadow.decode_record({**fields, "v": b"9"})


class StubTruth:
    """Recall per row from a table, as if exact search had been run."""

    def __init__(self, table: dict[str, list[float | None]]) -> None:
        self.table = table
        self.asked: list[tuple[str, tuple[int, ...]]] = []

    def recalls(self, collection, queries, got, k):
        self.asked.append((collection, queries.shape))
        return self.table[collection]


def test_judging_a_record_sums_overlap_and_each_roles_recall():
    truth = StubTruth({"products@v3": [1.0, None], "products@v4": [0.5, 1.0]})
    verdict = evaluation.judge(record(), truth)
    assert truth.asked == [("products@v3", (2, 3)), ("products@v4", (2, 4))]
    assert verdict.increments() == {
        "searches": 1, "queries": 2, "compared": 2, "errors": 0,
        "overlap_sum": pytest.approx(2 / 3), "champion_recall_sum": 1.0,
        "champion_recall_n": 1, "challenger_recall_sum": 1.5, "challenger_recall_n": 2}


def test_a_failed_shadow_counts_an_error_and_judges_only_the_champion():
    truth = StubTruth({"products@v3": [1.0, 0.5]})
    verdict = evaluation.judge(record(challenger_ids=None, challenger_ms=None, error="boom"),
                              truth)
    assert [c for c, _ in truth.asked] == ["products@v3"]
    assert verdict.increments() == {
        "searches": 1, "queries": 2, "compared": 0, "errors": 1, "overlap_sum": 0.0,
        "champion_recall_sum": 1.5, "champion_recall_n": 2, "challenger_recall_sum": 0.0,
        "challenger_recall_n": 0}


def test_a_shadow_job_turns_any_challenger_failure_into_a_counted_error():
    def refuse(_vectors):
        raise TimeoutError("no answer within 1s")

    job = shadow.Ask(CONFIG, "r1", 3, "products@v3", np.zeros((1, 3), np.float32), [["a"]], 2.0,
                     lambda: np.ones((1, 4), np.float32), refuse)
    out = shadow.compare(job)
    assert (out.error, out.challenger_ids, out.challenger_ms) == (
        "TimeoutError: no answer within 1s", None, None)
    assert out.challenger_vectors.shape == (1, 4)
    ok = shadow.compare(shadow.Ask(CONFIG, "r2", 3, "products@v3", np.zeros((1, 3), np.float32),
                                   [["a"]], 2.0, lambda: np.ones((1, 4), np.float32),
                                   lambda v: [["b"]]))
    assert (ok.error, ok.challenger_ids, ok.champion, ok.challenger) == (
        "", [["b"]], "products@v3", "products@v4")
    assert ok.challenger_ms is not None and ok.challenger_ms >= 0


def test_challenge_words_name_a_verb_and_an_alias():
    assert _parse_words(["products"]) == ("start", "products")
    assert _parse_words(["report", "products"]) == ("report", "products")
    assert _parse_words(["stop", "products"]) == ("stop", "products")
    with pytest.raises(CommandError, match=r"expected `challenge \[start\|report\|stop\] "
                                           r"ALIAS`, got 'report'"):
        _parse_words(["report"])


def test_per_query_recall_against_brute_force_sets_tail_hits_aside():
    rng = np.random.default_rng(5)
    data = rng.standard_normal((50, 4)).astype(np.float32)
    ids = np.array([f"r{i}" for i in range(50)])
    queries = rng.standard_normal((3, 4)).astype(np.float32)
    d2 = ((queries[:, None, :] - data[None, :, :]) ** 2).sum(axis=2)
    exact = [list(ids[np.argsort(row, kind="stable")[:5]]) for row in d2]
    sealed = np.sort(ids.astype(bytes))
    got = [exact[0],  # all five right
           exact[1][:3] + ["r-miss", "r-miss2"],  # r-miss* are not sealed: tail rows
           [exact[2][0], exact[2][4], *[i for i in ids if i not in exact[2]][:3]]]
    assert evaluation.per_query_recall(got, exact, sealed, 5) == [1.0, 1.0, 0.4]
    assert evaluation.per_query_recall([["t1", "t2"]], [[]], sealed, 2) == [None]
