"""bench/peers.py and its helpers: corpus rows, ground truth, the peer table, failing peers."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pytest

from bench import _corpus_vectors as cv
from bench import _render, peers
from bench._peer_client import row_number
from bench.common import Result
from streamvec import corpus


def test_texts_are_distinct_deterministic_and_reach_past_the_balanced_corpus() -> None:
    smallest = min(corpus.capacity(t) for t in corpus.topics())
    n = 10 * smallest + 500  # more than corpus.sentences can balance over ten topics
    got = cv.texts(n, seed=3)
    assert len(got) == n and len(set(got)) == n
    assert got == cv.texts(n, seed=3)
    assert cv.texts(50, seed=3) != cv.texts(50, seed=4)


def test_texts_refuse_more_than_the_corpus_holds() -> None:
    total = cv.available()
    assert total == sum(corpus.capacity(t) for t in corpus.topics())
    assert len(cv.texts(total)) == total
    with pytest.raises(ValueError, match=f"holds {total} distinct sentences, asked for "
                                         f"{total + 1}"):
        cv.texts(total + 1)


def test_capacity_names_an_unknown_topic() -> None:
    with pytest.raises(ValueError, match="unknown topic 'knitting'"):
        corpus.capacity("knitting")


def test_the_cache_round_trips_and_ignores_other_shapes(tmp_path: Path) -> None:
    path = cv.cache_path(3, seed=2, folder=tmp_path)
    assert path.name == f"corpus-{cv.MODEL_KEY}-seed2-3.npy"
    assert cv.load_cached(path, 3) is None
    vectors = np.arange(3 * cv.DIM, dtype=np.float32).reshape(3, cv.DIM)
    cv.save_cached(path, vectors)
    assert np.array_equal(cv.load_cached(path, 3), vectors)
    assert cv.load_cached(path, 4) is None
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind
    np.save(path, vectors.astype(np.float64))
    assert cv.load_cached(path, 3) is None


def test_exact_top_k_ranks_by_cosine_and_breaks_ties_by_row() -> None:
    data = np.array([[1, 0], [0, 1], [2, 0], [1, 1], [-1, 0]], dtype=np.float32)
    queries = np.array([[3, 0], [0, 5]], dtype=np.float32)
    # Rows 0 and 2 point the same way: equal cosine, the lower row first.
    assert cv.exact_top_k(data, queries, 3).tolist() == [[0, 2, 3], [1, 3, 0]]
    with pytest.raises(ValueError, match="k must be 1..5"):
        cv.exact_top_k(data, queries, 6)


def test_recall_counts_true_rows_among_the_first_k() -> None:
    truth = np.array([[0, 1], [2, 3]])
    assert cv.recall_at_k([[1, 9, 0], [3, 2]], truth) == 0.75
    assert cv.recall_at_k([], truth) == 0.0
    with pytest.raises(ValueError, match="3 answers for 2 queries"):
        cv.recall_at_k([[0], [0], [0]], truth)


def test_row_numbers_come_from_loaded_ids_only() -> None:
    assert [row_number(i) for i in ("r0", "r1234", "probe-3", "rx", "", None)] == [
        0, 1234, -1, -1, -1, -1]


def test_batches_cover_every_row_and_stop_past_the_deadline() -> None:
    assert list(peers.batches(25, time.perf_counter() + 60, 10)) == [(0, 10), (10, 20),
                                                                      (20, 25)]
    done = []
    with pytest.raises(peers.OverBudget) as over:
        for lo, hi in peers.batches(25, time.perf_counter() - 1, 10):
            done.append((lo, hi))
    assert done == [(0, 10)] and over.value.rows == 10


def test_probe_rows_repeat_the_queries_when_too_few() -> None:
    queries = np.arange(6, dtype=np.float32).reshape(3, 2)
    assert peers.probe_rows(queries, 4).tolist() == [[0, 1], [2, 3], [4, 5], [0, 1]]


def outcome(system: str, insert: float | None, points: list[tuple[str, float, float]],
            fresh: list[float]) -> peers.Outcome:
    return peers.Outcome(system, "setup", insert, insert, [peers.Point(k, q, r, 100)
                                                            for k, q, r in points], fresh)


def test_each_target_takes_the_first_setting_that_reaches_it() -> None:
    got = outcome("hnswlib", 500.0, [("ef 10", 900.0, 0.9), ("ef 16", 800.0, 0.96),
                                     ("ef 32", 600.0, 0.995)], [1.0, 2.0, 3.0, 4.0])
    row = got.row()
    assert (row["qps_at_95"], row["knob_at_95"]) == (800.0, "ef 16")
    assert (row["qps_at_99"], row["knob_at_99"]) == (600.0, "ef 32")
    assert row["max_recall"] == 0.995
    assert (row["fresh_p50_ms"], row["fresh_p99_ms"], row["fresh_samples"]) == (2.0, 4.0, 4)
    short = outcome("chroma", 10.0, [("ef_search 10", 50.0, 0.97)], []).row()
    assert (short["qps_at_99"], short["knob_at_99"]) == (None, "not reached")
    assert short["fresh_p50_ms"] is None


def test_the_best_peer_leaves_out_streamvec_faiss_and_missing_values() -> None:
    rows = [{"system": "streamvec", "q": 9000.0}, {"system": "faiss", "q": 8000.0},
            {"system": "hnswlib", "q": 700.0}, {"system": "chroma", "q": 900.0},
            {"system": "qdrant", "q": None}]
    assert peers.best_peer(rows, "q", higher=True) == ("chroma", 900.0)
    assert peers.best_peer(rows, "q", higher=False) == ("hnswlib", 700.0)
    assert peers.best_peer(rows[:2], "q", higher=True) is None


def _args(tmp_path: Path) -> argparse.Namespace:
    return argparse.Namespace(rows=100, queries=10, fresh_samples=4, point_seconds=1.0,
                              fresh_seconds=1.0, insert_seconds=5.0, results_dir=tmp_path,
                              scale="small", scale_modified=[])


def test_the_record_holds_ratios_to_the_best_peer_and_to_faiss(tmp_path: Path) -> None:
    outcomes = [
        outcome("faiss", 1000.0, [("efSearch 10", 4000.0, 0.99)], [0.1, 0.2]),
        outcome("streamvec", 2000.0, [("efSearch 10", 400.0, 0.995)], [20.0, 40.0]),
        outcome("hnswlib", 500.0, [("ef 10", 5000.0, 0.95), ("ef 16", 2500.0, 0.99)],
                [0.3, 0.5]),
        peers.Outcome("qdrant", status="skipped: qdrant_client is not installed"),
    ]
    result = Result("peers", "t", _args(tmp_path))
    peers.record(result, outcomes, _args(tmp_path), "cache")
    by_key = {c["key"]: c for c in result.comparisons}
    assert by_key["qps_at_95_vs_best_peer"]["baseline"] == 5000.0
    assert by_key["qps_at_95_vs_best_peer"]["ratio"] == 0.08
    assert by_key["qps_at_99_vs_best_peer"]["baseline"] == 2500.0
    assert by_key["qps_at_95_vs_faiss"]["ratio"] == 0.1
    assert by_key["insert_rows_s_vs_best_peer"]["ratio"] == 4.0
    assert by_key["fresh_p99_ms_vs_best_peer"]["baseline"] == 0.5
    assert result.summary == list(peers.SUMMARY)
    systems = [r["system"] for r in result.samples["peers"]]
    assert systems == ["faiss", "streamvec", "hnswlib", "qdrant"]
    assert result.samples["peers"][3]["status"] == "skipped: qdrant_client is not installed"
    assert len(result.samples["sweep"]) == 4


def test_results_md_shows_the_peer_table_with_skipped_rows(tmp_path: Path) -> None:
    outcomes = [outcome("streamvec", 2000.0, [("efSearch 10", 400.0, 0.995)], [20.0]),
                peers.Outcome("lancedb", status="failed at index: RuntimeError: boom")]
    result = Result("peers", "Peers", _args(tmp_path))
    peers.record(result, outcomes, _args(tmp_path), "cache")
    text = "\n".join(_render.section(json.loads(json.dumps(
        {"name": "peers", "samples": result.samples, "notes": result.notes})), {}))
    assert "| system | insert_rows_s | indexed_rows_s | qps_at_95 | knob_at_95 |" in text
    assert "| lancedb | n/a | n/a | n/a | n/a |" in text
    assert "failed at index: RuntimeError: boom |" in text


class _Broken(peers.System):
    name = "hnswlib"
    setup = "broken on purpose"

    def __init__(self, fail_in: str) -> None:
        self.fail_in, self.closed = fail_in, False

    def insert(self, vectors: np.ndarray, deadline: float) -> None:
        if self.fail_in == "import":
            import streamvec_no_such_package  # noqa: F401
        if self.fail_in == "insert":
            raise RuntimeError("disk   full\nsorry")
        if self.fail_in == "slow":
            for _ in peers.batches(len(vectors), deadline - 10, 2):
                pass

    def knobs(self) -> list[peers.Knob]:
        return [("ef 10", 10)]

    def query(self, vector: np.ndarray) -> list[int]:
        raise ValueError("no index")

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize(("fail_in", "status"), [
    ("import", "skipped: streamvec_no_such_package is not installed"),
    ("insert", "failed at insert: RuntimeError: disk full sorry"),
    ("slow", "stopped: insert passed its 5 s budget after 2 of 6 rows"),
    ("search", "failed at search: ValueError: no index"),
])
def test_a_failing_system_is_recorded_not_raised(tmp_path: Path, fail_in: str,
                                                 status: str) -> None:
    system = _Broken(fail_in)
    data = np.ones((6, 2), dtype=np.float32)
    got = peers.measure(system, data, data[:2], np.zeros((2, 2), dtype=np.int64), data[:2],
                        _args(tmp_path))
    assert got.status == status
    assert system.closed
    assert got.setup == "broken on purpose"
    assert (got.insert_rows_s is None) == (fail_in in ("import", "insert"))


@pytest.mark.parametrize(("argv", "message"), [
    (["--systems", "faiss,foo"], "--systems: unknown foo; choose from faiss, streamvec"),
    (["--rows", str(cv.available()), "--queries", "1"],
     f"the corpus holds {cv.available()} distinct sentences"),
    (["--rows", "5"], "need --rows >= 10"),
])
def test_bad_flags_stop_before_any_work(argv: list[str], message: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        peers.main(["--scale", "small", *argv])
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err


class _Forgetful(peers.System):
    """Takes every write and never returns it: each probe past the first is missed."""

    name = "qdrant"

    def write_probe(self, key: int, vector: np.ndarray) -> None:
        pass

    def query(self, vector: np.ndarray) -> list[int]:
        return [0]


def test_a_probe_never_found_counts_as_missed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peers, "PROBE_TIMEOUT_S", 0.01)
    probes = np.ones((3, 2), dtype=np.float32)
    assert _Forgetful().freshness(probes, 100, seconds=60) == ([], 2)
