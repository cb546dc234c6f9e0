"""FAISS builds: factory choice, metrics, cosine normalisation, recall and training fallbacks."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from indexer import build
from indexer.errors import BuildError
from searcher import search
from streamvec.synthetic import Clusters


def dataset(rows, dim, *, seed=1338, clusters=0):
    """Seeded vectors (and 50 queries); with clusters, points sit around that many centres."""
    if not clusters:
        rng = np.random.default_rng(seed)
        return (rng.standard_normal((rows, dim)).astype(np.float32),
                rng.standard_normal((50, dim)).astype(np.float32))
    points = Clusters(dim, clusters, seed, scale=4.0)
    return points.draw(rows)[0], points.draw(50)[0]


def exact_rows(base, queries, k, metric):
    """Each query's k nearest rows by exact search (a source without an index)."""
    return search.search(search.Source(base), queries, k, metric)[1]


def recall(found, truth):
    """Mean fraction of each query's true neighbours that were found."""
    return np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found.tolist(), truth.tolist(),
                                                                  strict=True)])


def test_auto_writes_flat_below_the_threshold_then_hnsw_whatever_the_dim():
    assert build.AUTO_WRITTEN_GRAPH_MIN_ROWS == 20_000
    assert build.resolve_factory("auto", 0, 8) == "Flat"
    for dim in (8, 128, 384, 1536):
        assert build.resolve_factory("auto", 19_999, dim) == "Flat"
        assert build.resolve_factory("auto", 20_000, dim) == "HNSW32"
    assert build.resolve_factory(" AUTO ", 50_000, 8) == "HNSW32"
    assert build.is_auto(" Auto ") and not build.is_auto("HNSW32")
    assert build.resolve_factory(" IVF64,PQ8 ", 10, 8) == "IVF64,PQ8"
    with pytest.raises(ValueError):
        build.resolve_factory("auto", 10, 0)


def test_metrics_map_to_faiss_constants():
    assert build.faiss_metric("l2") == faiss.METRIC_L2
    assert build.faiss_metric("ip") == faiss.METRIC_INNER_PRODUCT
    assert build.faiss_metric("cosine") == faiss.METRIC_INNER_PRODUCT
    with pytest.raises(ValueError, match="hamming"):
        build.faiss_metric("hamming")


def test_prepare_normalises_a_copy_for_cosine_only():
    raw = np.array([[3.0, 4.0], [0.0, 0.0], [0.0, -2.0]], dtype=np.float64)
    out = build.prepare(raw, "cosine")
    assert out.dtype == np.float32 and out.flags.c_contiguous
    assert out.tolist() == [[0.6000000238418579, 0.800000011920929], [0.0, 0.0], [0.0, -1.0]]
    assert raw[0].tolist() == [3.0, 4.0]
    strided = np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2]
    same = build.prepare(strided, "l2")
    assert same.flags.c_contiguous and same.tolist() == strided.tolist()
    with pytest.raises(ValueError):
        build.prepare(np.zeros(3, np.float32), "l2")


def test_normalize_scales_rows_along_the_last_axis_and_keeps_zero_rows():
    raw = np.array([[[3.0, 4.0], [0.0, 0.0]]], dtype=np.float64)
    out = build.normalize(raw)
    assert out.dtype == np.float64 and out.tolist() == [[[0.6, 0.8], [0.0, 0.0]]]
    assert raw.tolist() == [[[3.0, 4.0], [0.0, 0.0]]]


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_flat_is_exact(metric):
    base, queries = dataset(build.AUTO_GRAPH_MIN_ROWS - 1, 16)
    index, factory = build.build_index(base, metric=metric, index="auto")
    assert factory == "Flat" and index.ntotal == build.AUTO_GRAPH_MIN_ROWS - 1
    assert index.metric_type == build.faiss_metric(metric)
    _, found = index.search(queries, 10)
    truth = exact_rows(base, queries, 10, metric)
    assert recall(found, truth) == 1.0


def test_row_i_is_id_i():
    base, _ = dataset(300, 8)
    index, _ = build.build_index(base, metric="l2", index="Flat")
    _, found = index.search(base, 1)
    assert found[:, 0].tolist() == list(range(300))


def test_cosine_matches_brute_force_cosine():
    base, queries = dataset(1000, 12)
    base *= np.random.default_rng(3).uniform(0.1, 50, (1000, 1)).astype(np.float32)
    index, _ = build.build_index(base, metric="cosine", index="Flat")
    scores, found = index.search(build.prepare(queries, "cosine"), 5)
    norms = np.outer(np.linalg.norm(queries, axis=1), np.linalg.norm(base, axis=1))
    cos = (queries @ base.T) / norms
    assert found.tolist() == np.argsort(-cos, axis=1)[:, :5].tolist()
    np.testing.assert_allclose(scores, -np.sort(-cos, axis=1)[:, :5], rtol=1e-5, atol=1e-5)
    assert exact_rows(base, queries, 5, "cosine").tolist() == found.tolist()


def test_hnsw_recall_on_clustered_data():
    base, queries = dataset(4000, 32, clusters=40)
    index, factory = build.build_index(base, metric="l2", index="HNSW32")
    assert factory == "HNSW32"
    graph = faiss.downcast_index(index)
    assert (graph.hnsw.efConstruction, graph.hnsw.efSearch) == (80, 64)
    _, found = index.search(queries, 10)
    truth = exact_rows(base, queries, 10, "l2")
    assert recall(found, truth) >= 0.9


def test_ivf_trains_when_there_are_enough_rows():
    base, _ = dataset(2000, 8)
    index, factory = build.build_index(base, metric="l2", index="IVF16,Flat")
    assert factory == "IVF16,Flat" and index.is_trained and index.ntotal == 2000
    assert faiss.extract_index_ivf(index).nlist == 16


@pytest.mark.parametrize("spec", ["IVF256,Flat", "PQ4", "IVF4,PQ4"])
def test_too_few_rows_to_train_falls_back_to_flat(spec):
    base, queries = dataset(100, 8)
    index, factory = build.build_index(base, metric="ip", index=spec)
    assert factory == "Flat"
    assert isinstance(faiss.downcast_index(index), faiss.IndexFlat) and index.ntotal == 100
    assert index.metric_type == faiss.METRIC_INNER_PRODUCT
    _, found = index.search(queries, 5)
    assert found.tolist() == exact_rows(base, queries, 5, "ip").tolist()


def test_zero_rows_build_an_empty_flat_index():
    empty = np.zeros((0, 6), np.float32)
    index, factory = build.build_index(empty, metric="cosine", index="HNSW32")
    assert factory == "Flat" and index.ntotal == 0 and index.d == 6


def test_a_factory_faiss_cannot_parse_is_a_build_error():
    base, _ = dataset(10, 8)
    with pytest.raises(BuildError, match="Bogus"):
        build.build_index(base, metric="l2", index="Bogus")


def test_training_uses_a_seeded_sample_of_at_most_train_max_rows(monkeypatch):
    monkeypatch.setattr(build, "TRAIN_MAX_ROWS", 64)
    base, _ = dataset(500, 4)
    sample = build._training_sample(base)
    assert sample.shape == (64, 4) and np.array_equal(sample, build._training_sample(base))
    assert {row.tobytes() for row in sample} <= {row.tobytes() for row in base}
    first, _ = build.build_index(base, metric="l2", index="IVF8,Flat")
    second, _ = build.build_index(base, metric="l2", index="IVF8,Flat")
    centroids = [faiss.extract_index_ivf(i).quantizer.reconstruct_n(0, 8) for i in (first, second)]
    assert np.array_equal(centroids[0], centroids[1])
