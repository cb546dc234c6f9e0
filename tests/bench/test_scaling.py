"""The scaling benchmark's pieces: flags, /proc readings, the memory fit, answer checks, plans."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench import scaling
from bench.budgets import KAFKA_BYTES, TAIL_ROW_BYTES
from indexer.registry import SegmentRecord

STATUS = """Name:\tpython
VmPeak:\t 2000000 kB
VmHWM:\t  367432 kB
VmRSS:\t  323600 kB
RssAnon:\t  224000 kB
RssFile:\t   99000 kB
RssShmem:\t     600 kB
Threads:\t12
"""


def test_parse_status_reads_the_four_memory_figures_in_bytes() -> None:
    assert scaling.parse_status(STATUS) == {"VmHWM": 367432 * 1024, "VmRSS": 323600 * 1024,
                                            "RssAnon": 224000 * 1024, "RssFile": 99000 * 1024}


def test_parse_status_names_what_is_missing() -> None:
    with pytest.raises(ValueError, match=r"^/proc status without RssAnon, RssFile$"):
        scaling.parse_status("VmHWM:\t 1 kB\nVmRSS:\t 1 kB\n")


def test_parse_cpu_adds_user_and_system_time_after_a_name_with_spaces() -> None:
    # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
    stat = "4242 (py (a) b) S 1 4242 4242 0 -1 4194560 900 0 3 0 250 50 0 0 20 0 12 0"
    assert scaling.parse_cpu(stat, ticks_per_s=100) == 3.0


def test_fit_line_recovers_fixed_cost_and_bytes_per_row() -> None:
    points = [(40_000, 100e6 + 40_000 * 5_000), (20_000, 100e6 + 20_000 * 5_000),
              (10_000, 100e6 + 10_000 * 5_000), (10_000, 100e6 + 10_000 * 5_000)]
    fixed, slope = scaling.fit_line(points)
    assert math.isclose(fixed, 100e6) and math.isclose(slope, 5_000)


def test_fit_line_needs_two_different_row_counts() -> None:
    with pytest.raises(ValueError, match="two different x"):
        scaling.fit_line([(10, 1.0), (10, 2.0)])


def test_mismatches_count_queries_whose_ids_or_order_differ() -> None:
    reference = {0: ["a", "b"], 1: ["c", "d"], 2: ["e"], 3: ["f"]}
    got = {0: ["a", "b"], 1: ["d", "c"], 2: ["e", "x"]}  # 3 missing
    assert scaling.mismatches(reference, got) == 3
    assert scaling.mismatches(reference, dict(reference)) == 0


def test_recall_of_counts_true_rows_among_the_first_k_ids() -> None:
    truth = np.array([[1, 2], [3, 4]])
    assert scaling.recall_of({0: ["r1", "r9", "r2"], 1: ["r4", "r3"]}, truth) == 0.75
    with pytest.raises(ValueError, match="recall of no answers"):
        scaling.recall_of({}, truth)


def test_shards_split_eight_partitions_as_the_searcher_flag_does() -> None:
    assert scaling.shard_partitions(1) == [tuple(range(8))]
    assert scaling.shard_partitions(2) == [(0, 1, 2, 3), (4, 5, 6, 7)]
    assert scaling.shard_partitions(4) == [(0, 1), (2, 3), (4, 5), (6, 7)]


def test_served_keeps_the_shards_segments_that_hold_rows() -> None:
    def rec(segment: str, partition: int, rows: int) -> SegmentRecord:
        return SegmentRecord(segment, partition, 0, rows, rows, 0, f"p/{segment}", "HNSW32", 0.0)

    records = [rec("a", 0, 10), rec("b", 1, 0), rec("c", 2, 5), rec("d", 5, 7)]
    assert [r.segment_id for r in scaling.served(records, (0, 1, 2, 3))] == ["a", "c"]


def test_a_searcher_of_every_partition_has_no_label() -> None:
    def searcher(partitions: tuple[int, ...]) -> scaling.Searcher:
        return scaling.Searcher(None, 0, partitions, 0, 0, 0)

    assert searcher(tuple(range(8))).label is None
    assert searcher((4, 5, 6, 7)).label == "4-7"


def test_scales_and_flags() -> None:
    small = scaling.parse_args(["--scale", "small"])
    assert (small.rows, small.hnsw_rows, small.queries, small.clients) == (40_000, 40_000, 200, 4)
    full = scaling.parse_args(["--scale", "full", "--hnsw-rows", "0"])
    assert (full.rows, full.hnsw_rows, full.scale_modified) == (200_000, 0, ["hnsw_rows"])


@pytest.mark.parametrize(("flags", "message"), [
    (["--rows", "39000"], "--rows must be 0 (skip) or at least 39322: each of 8 partitions "
                          "must hold more than the 4096 rows that a searcher gathers"),
    (["--rows", "0", "--hnsw-rows", "0"], "--rows and --hnsw-rows are both 0"),
    (["--clients", "0"], "need --queries >= 1 and --clients >= 1"),
    (["--seconds", "0"], "--seconds and --latency-seconds must be positive"),
])
def test_bad_flags_end_with_a_usage_error(capsys, flags: list[str], message: str) -> None:
    with pytest.raises(SystemExit):
        scaling.parse_args(["--scale", "small", *flags])
    assert message in capsys.readouterr().err


def test_split_rows_holds_out_the_last_vectors_as_queries() -> None:
    rows, queries = scaling.split_rows(np.arange(10, dtype=np.float32).reshape(5, 2), 2)
    assert rows.tolist() == [[0, 1], [2, 3], [4, 5]] and queries.tolist() == [[6, 7], [8, 9]]


def test_per_row_figures_move_to_another_dim() -> None:
    assert scaling.per_row_at(1552, 384, 768, copies=1) == 1552 + 1536
    assert scaling.per_row_at(3375, 384, 768, copies=2) == 3375 + 3072
    assert scaling.per_row_at(5600, 384, 768) == 11200
    assert (scaling.store_copies("Flat"), scaling.store_copies("HNSW32")) == (1, 2)


COSTS = scaling.Costs(index="HNSW32", dim=384, fixed_bytes=100 * 2**20, row_bytes=5_000.0,
                      cpu_ms=1.0, cpu_rows=1024, record_bytes=1_552.0, store_bytes=3_400.0,
                      request_bytes=1_700.0, reply_bytes=300.0, redis_bytes_per_segment=400.0,
                      done_marker_bytes=120.0)


def test_searcher_bytes_settled_and_at_the_peak() -> None:
    settled = scaling.searcher_bytes(COSTS, 1_000_000, 768)
    assert settled == 100 * 2**20 + 1_000_000 * 10_000
    fold = 1_000_000 * (4 * 768 + 8 * 32 + 40)  # the fold's copy while it is extended
    tail = 1_000 * (8 * 768 + TAIL_ROW_BYTES)
    assert scaling.searcher_bytes(COSTS, 1_000_000, 768, peak=True, tail_rows=1_000) == (
        settled + fold + tail + KAFKA_BYTES)
    flat = scaling.Costs(**{**COSTS.__dict__, "index": "Flat"})
    assert scaling.searcher_bytes(flat, 1_000_000, 768, peak=True, tail_rows=0) == (
        settled + KAFKA_BYTES)


def test_cpu_per_query_grows_with_log_rows_for_a_graph_and_rows_for_a_scan() -> None:
    assert scaling.cpu_ms_at(COSTS, 2**20, 768) == 1.0 * (20 / 10) * 2
    flat = scaling.Costs(**{**COSTS.__dict__, "index": "Flat"})
    assert scaling.cpu_ms_at(flat, 4096, 384) == 4.0


def test_plan_takes_the_fewest_shards_that_fit_and_replicas_for_the_qps() -> None:
    got = scaling.plan(COSTS, 100_000_000, 768, 1_000)
    fixed = scaling.searcher_bytes(COSTS, 0, 768, peak=True)
    per_row = 10_000 + 4 * 768 + 8 * 32 + 40
    assert got.shards == math.ceil(100_000_000 * per_row / (scaling.SEARCHER_MEMORY - fixed))
    assert got.shards == 21
    assert got.partitions == 128  # 4 x 21 = 84, up to a power of two
    assert got.searcher_peak_gib <= scaling.SEARCHER_MEMORY / 2**30
    cpu = 1.0 * math.log2(100_000_000 / 21) / 10 * 2
    assert math.isclose(got.cpu_ms, cpu)
    assert got.replicas == math.ceil(1_000 * cpu / 1000 / scaling.UTILISATION)
    assert got.searchers == got.shards * got.replicas
    assert math.isclose(got.kafka_load_gib, 100_000_000 * (1_552 + 1_536) / 2**30)
    assert math.isclose(got.redis_mb_s, 1_000 * 21 * (1_700 + 1_536 + 300) / 1e6)
    assert math.isclose(got.redis_markers_gib, 1_000 * 21 * 600 * 120 / 2**30)
    assert math.isclose(got.redis_registry_mib, 1_000 * 400 / 2**20)  # 1,000 segments
    assert math.isclose(got.store_tib, 100_000_000 * (3_400 + 3_072) / 2**40)
    assert math.isclose(got.store_kept_tib, 3 * got.store_tib)


def test_plan_keeps_two_replicas_and_eight_partitions_at_least() -> None:
    got = scaling.plan(COSTS, 1_000, 768, 1)
    assert (got.shards, got.partitions, got.replicas) == (1, 8, 2)


def test_plan_refuses_what_cannot_fit() -> None:
    with pytest.raises(ValueError, match="cannot hold a row"):
        scaling.plan(COSTS, 1_000, 768, 1, memory=2**30)
    with pytest.raises(ValueError, match="over the limit of 1024"):
        scaling.plan(COSTS, 10**12, 768, 1)
    with pytest.raises(ValueError, match="rows >= 1 and qps >= 1"):
        scaling.plan(COSTS, 0, 768, 1)
