"""Seal policies: each names itself and its numbers; select() picks partitions and reasons."""

from __future__ import annotations

import pytest

from indexer import seal
from indexer.seal import SegmentStats
from ingest.spec import CollectionSpec


def stats(rows=0, messages=1, nbytes=0, age_s=0.0):
    return SegmentStats(rows=rows, messages=messages, nbytes=nbytes, age_s=age_s)


def test_full_rows_fires_at_the_limit():
    policy = seal.full_rows(100_000)
    assert policy.name == "full_rows"
    assert policy.reason(stats(rows=99_999)) is None
    assert policy.reason(stats(rows=100_000)) == "full_rows: 100000 >= 100000"
    assert policy.reason(stats(rows=100_007)) == "full_rows: 100007 >= 100000"


def test_full_bytes_fires_at_the_limit():
    policy = seal.full_bytes(4096)
    assert policy.name == "full_bytes"
    assert policy.reason(stats(nbytes=4095)) is None
    assert policy.reason(stats(nbytes=5000)) == "full_bytes: 5000 >= 4096"


def test_stale_fires_at_the_age():
    policy = seal.stale(60)
    assert policy.name == "stale"
    assert policy.reason(stats(age_s=59.999)) is None
    assert policy.reason(stats(age_s=60.0)) == "stale: 60.000s >= 60s"
    assert seal.stale(0.5).reason(stats(age_s=2.25)) == "stale: 2.250s >= 0.5s"


@pytest.mark.parametrize("make, bad", [
    (seal.full_rows, 0), (seal.full_bytes, 0), (seal.stale, 0.0), (seal.stale, -1.0),
])
def test_nonsense_limits_are_refused(make, bad):
    with pytest.raises(ValueError):
        make(bad)


def test_policies_for_reads_the_spec():
    spec = CollectionSpec(name="docs", dim=8, seal_rows=500, seal_bytes=1 << 20, seal_seconds=2.5)
    policies = seal.policies_for(spec)
    assert [p.name for p in policies] == ["full_rows", "full_bytes", "stale"]
    assert policies == (seal.full_rows(500), seal.full_bytes(1 << 20), seal.stale(2.5))


def test_select_gives_the_first_reason_and_skips_untouched_segments():
    policies = (seal.full_rows(10), seal.full_bytes(1000), seal.stale(30))
    by_partition = {
        3: stats(rows=12, nbytes=5000, age_s=99.0),  # all three fire: the first one names it
        0: stats(rows=2, nbytes=1000, age_s=99.0),
        1: stats(rows=0, messages=4, age_s=31.0),  # only dead-lettered messages: still covered
        2: stats(rows=9, nbytes=999, age_s=29.0),
        4: stats(rows=0, messages=0, age_s=1e6),  # saw nothing: no range to seal
    }
    assert seal.select(by_partition, policies) == {
        0: "full_bytes: 1000 >= 1000",
        1: "stale: 31.000s >= 30s",
        3: "full_rows: 12 >= 10",
    }
    assert list(seal.select(by_partition, policies)) == [0, 1, 3]


def test_select_never_seals_a_segment_that_saw_no_message():
    by_partition = {0: stats(rows=5, messages=0), 1: stats(rows=1), 2: stats(rows=2, messages=2)}
    policies = [seal.full_rows(1)]
    assert seal.select(by_partition, policies) == {1: "full_rows: 1 >= 1", 2: "full_rows: 2 >= 1"}
    assert seal.select(by_partition, []) == {}
    assert seal.select({}, policies) == {}
