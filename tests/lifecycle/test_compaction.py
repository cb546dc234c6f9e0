"""The compaction policy's plan and target, and the swap's same-coverage rule."""

from __future__ import annotations

import pytest

from indexer.registry import SegmentRecord, check_same_coverage
from indexer.store import segment_id
from lifecycle.compaction import CompactionPolicy


def rec(partition: int, start: int, end: int, rows: int, generation: int = 0) -> SegmentRecord:
    sid = segment_id(partition, start, end)
    return SegmentRecord(sid, partition, start, end, rows, generation,
                         f"c/g{generation:04d}/p{partition:04d}/{sid}", "Flat", 0.0)


def chain(partition: int, sizes: list[int], step: int = 10) -> list[SegmentRecord]:
    return [rec(partition, i * step, (i + 1) * step, rows) for i, rows in enumerate(sizes)]


def test_plan_merges_consecutive_runs_up_to_max_rows() -> None:
    records = chain(0, [10, 10, 10, 10, 10, 10, 10])
    groups = CompactionPolicy(max_rows=30, max_segments=2).plan(records)
    assert [[r.start_offset for r in g] for g in groups] == [[0, 10, 20], [30, 40, 50]]
    assert CompactionPolicy(max_rows=30, max_segments=2).target(records) == {0: 3}


def test_partitions_at_or_below_max_segments_are_left_alone() -> None:
    records = chain(0, [1, 1, 1]) + chain(1, [1, 1, 1, 1, 1])
    policy = CompactionPolicy(max_rows=100, max_segments=3)
    assert {g[0].partition for g in policy.plan(records)} == {1}
    assert policy.target(records) == {0: 3, 1: 1}


def test_a_segment_larger_than_max_rows_stays_alone_and_splits_runs() -> None:
    records = chain(0, [5, 5, 500, 5, 5])
    groups = CompactionPolicy(max_rows=20, max_segments=1).plan(records)
    assert [[r.rows for r in g] for g in groups] == [[5, 5], [5, 5]]


def test_plan_never_merges_across_a_gap() -> None:
    records = [rec(0, 0, 10, 1), rec(0, 10, 20, 1), rec(0, 30, 40, 1), rec(0, 40, 50, 1)]
    groups = CompactionPolicy(max_rows=100, max_segments=1).plan(records)
    assert [[r.start_offset for r in g] for g in groups] == [[0, 10], [30, 40]]


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="max_rows >= 1"):
        CompactionPolicy(max_rows=0)


def test_swap_coverage_must_match() -> None:
    a, b = rec(0, 0, 10, 5), rec(0, 10, 20, 5)
    check_same_coverage([a, b], [rec(0, 0, 20, 8)])
    check_same_coverage([a, b], [rec(0, 0, 10, 5, generation=1), rec(0, 10, 20, 5, generation=1)])
    with pytest.raises(ValueError, match="same offsets"):
        check_same_coverage([a, b], [rec(0, 0, 10, 5)])
    with pytest.raises(ValueError, match="same offsets"):
        check_same_coverage([a], [rec(1, 0, 10, 5)])
    with pytest.raises(ValueError, match="overlap"):
        check_same_coverage([a], [rec(0, 0, 10, 5), rec(0, 5, 10, 1)])
