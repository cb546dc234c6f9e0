"""The search benchmark's pieces: flags, the raw baseline, fold accounting, recall, ef sweep."""

from __future__ import annotations

import numpy as np
import pytest

from bench import search
from bench._load import recall
from bench._stack import clustered
from ingest.spec import MAX_EF


def test_parse_sweep_sorts_and_dedupes_ef_values() -> None:
    assert search.parse_sweep("64, 16,64,,256") == [16, 64, 256]


@pytest.mark.parametrize(("text", "message"), [
    ("8,64", "'8' is not an integer in 10..4096 (ef >= k = 10)"),
    (f"{MAX_EF + 1}", f"'{MAX_EF + 1}' is not an integer in 10..4096"),
    ("16,x", "'x' is not an integer in 10..4096"),
    ("-16", "'-16' is not an integer in 10..4096"),
    (" , ", "no ef value given"),
])
def test_parse_sweep_refuses_what_a_search_would(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        search.parse_sweep(text)


@pytest.mark.parametrize(("index", "hnsw"), [
    ("auto", True), ("AUTO", True), ("HNSW32", True), ("HNSW16,Flat", True),
    ("Flat", False), ("IVF64,Flat", False), ("HNSW32,PQ16", False),
])
def test_only_hnsw_indexes_can_be_swept_over_ef(index: str, hnsw: bool) -> None:
    assert search.hnsw_index(index) is hnsw


def test_bad_flags_end_with_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit):
        search.parse_args(["--scale", "small", "--index", "IVF64,Flat"])
    assert "--index 'IVF64,Flat': the sweep is over HNSW efSearch" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        search.parse_args(["--scale", "small", "--sweep", "4"])
    assert "--sweep: '4' is not an integer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        search.parse_args(["--scale", "small", "--rows", "10000000"])
    assert "the corpus holds" in capsys.readouterr().err


def test_scales_parse_to_their_sweeps() -> None:
    small = search.parse_args(["--scale", "small"])
    assert search.parse_sweep(small.sweep) == [16, 32, 64, 128, 256]
    assert (small.rows, small.queries, small.index, small.fold) == (10_000, 200, "auto", True)
    full = search.parse_args(["--scale", "full"])
    assert search.parse_sweep(full.sweep) == [16, 32, 48, 64, 96, 128, 256]
    assert (full.rows, full.queries) == (80_000, 1_000)


def test_searcher_flags_pass_fold_and_search_threads() -> None:
    args = search.parse_args(["--scale", "small", "--no-fold", "--search-threads", "1"])
    assert search.searcher_flags(args) == ["--no-fold", "--search-threads", "1"]
    assert search.searcher_flags(search.parse_args(["--scale", "small"])) == ["--fold"]


def test_expected_folded_counts_graph_groups_of_at_least_min_segments() -> None:
    factories = [(f, 100) for f in ["HNSW32", "HNSW32 ", "Flat", "HNSW16", "HNSW32", "IVF8,Flat"]]
    assert search.expected_folded(factories, fold=True) == 3  # the lone HNSW16 is not folded
    assert search.expected_folded(factories, fold=True, min_segments=4) == 0
    assert search.expected_folded(factories, fold=False) == 0
    assert search.expected_folded([("HNSW16", 5), ("HNSW16", 5)], fold=True) == 2
    assert search.expected_folded([("HNSW16", 5), ("HNSW16", 0)], fold=True) == 0


def test_expected_folded_in_an_auto_collection_folds_flat_from_the_crossover() -> None:
    small = [("Flat", 400), ("Flat", 598), ("HNSW32", 1)]
    assert search.expected_folded(small, fold=True, auto=True) == 0  # 999 rows: below the crossover
    assert search.expected_folded([*small, ("Flat", 1)], fold=True, auto=True) == 4
    assert search.expected_folded([("Flat", 5_000)], fold=True, auto=True) == 1
    assert search.expected_folded([("Flat", 5_000)], fold=True) == 0  # Flat asked for: exact


EXPOSITION = """\
# HELP streamvec_searcher_folded_segments Served segments searched through a fold.
# TYPE streamvec_searcher_folded_segments gauge
streamvec_searcher_folded_segments{collection="other"} 7.0
streamvec_searcher_folded_segments{collection="bench-search-1a2b3c"} 4.0
streamvec_searcher_loaded_segments{collection="bench-search-1a2b3c"} 5.0
"""


def test_gauge_reads_the_collections_value() -> None:
    name = "bench-search-1a2b3c"
    assert search.gauge(EXPOSITION, search.FOLDED, name) == 4.0
    assert search.gauge(EXPOSITION, search.LOADED, name) == 5.0
    assert search.gauge(EXPOSITION, search.FOLDED, "other") == 7.0
    assert search.gauge(EXPOSITION, search.LOADED, "other") is None
    assert search.gauge("", search.FOLDED, name) is None


def test_cheapest_is_the_lowest_ef_reaching_the_target() -> None:
    points = [{"value": ef, "streamvec_recall": r, "raw_recall": raw}
              for ef, r, raw in [(64, 0.991, 0.985), (16, 0.95, 0.96), (128, 0.999, 0.993),
                                 (32, 0.98, 0.99)]]
    assert search.cheapest(points, "streamvec")["value"] == 64
    assert search.cheapest(points, "raw")["value"] == 32
    assert search.cheapest(points, "streamvec", target=0.9995) is None


def test_recall_counts_true_ids_among_the_first_k() -> None:
    truth = np.array([[0, 1], [2, 3]])
    answers = [(0, ["r1", "r0", "r9"]), (1, ["r3", "r8"]), (0, ["r5", "r0"])]
    assert recall(answers, truth) == 4 / 6
    with pytest.raises(ValueError, match="recall of no answers"):
        recall([], truth)


def test_raw_run_answers_each_query_once_with_row_ids() -> None:
    vectors = clustered(600, 16)
    data, queries = vectors[:560], vectors[560:]
    index = search.raw_index(data)
    assert index.ntotal == 560
    _, answers = search.raw_run(index, queries, ef=200, seconds=0.01)
    truth = search.corpus_vectors.exact_top_k(data, queries, search.K)
    assert [q for q, _ in answers] == list(range(40))
    assert all(len(ids) == search.K and ids[0].startswith("r") for _, ids in answers)
    assert recall(answers, truth) >= 0.95  # an HNSW at ef 200 over 560 rows is near exact


@pytest.mark.integration
def test_a_served_fold_is_waited_for_and_clients_search_at_the_given_ef(settings) -> None:
    from bench._clients import query_load
    from bench._stack import sealed
    from indexer.registry import Registry

    data = clustered(2000, 16)
    with sealed(settings, "bench-t", data, partitions=2, index="HNSW32", metric="cosine",
                seal_rows=2000, seal_seconds=0.2) as (loaded, spec, tmp):
        records = Registry(loaded.redis_client(), spec.name).segments()
        folded = search.expected_folded([(r.factory, r.rows) for r in records], fold=True)
        assert folded == len(records) == 2  # one HNSW32 segment per partition
        searcher, port = search.start_searcher(loaded, spec.name, tmp, ["--fold"])
        try:
            search.wait_served(searcher, port, spec.name, len(records), folded, timeout=120)
            assert f"fold HNSW32 installed: {folded} segments, 2000 rows" in searcher.log_text()
            load = query_load(loaded, spec.name, data[:5], clients=1, seconds=0.3, ef=64)
            assert load.answers
            assert {ids[0] for _, ids in load.answers} <= {f"r{q}" for q in range(5)}
            assert all(ids[0] == f"r{q}" for q, ids in load.answers)
            with pytest.raises(RuntimeError, match="1 query client.s. failed: .*ef must be an "
                               r"integer in 1\.\.4096 and at least k \(10\), got 5"):
                query_load(loaded, spec.name, data[:5], clients=1, seconds=0.3, ef=5)
        finally:
            searcher.stop()
