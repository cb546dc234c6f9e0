"""Unit tests of the id -> partition hash: pinned values, vectorized == reference, spread."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.partition import _finalize, hash_id, partitions_for

# Values of the reference implementation, pinned so that a change to the hash is caught:
# every producer in every language must keep computing exactly these.
PINNED = {
    "": 0xF52A15E9A9B5E89B,
    "a": 0x02C0BDBF481420F8,
    "foobar": 0x404DA9E3B74078C2,
    "user-42": 0x7A1596F0E94B5793,
    "商品-7": 0x7BCA22E221EC4E3F,
    "a\0": 0xD0137A57D0EF408F,
}


@pytest.mark.parametrize(("vector_id", "expected"), PINNED.items())
def test_hash_id_matches_pinned_values_for_str_and_bytes(vector_id, expected):
    assert hash_id(vector_id) == expected
    assert hash_id(vector_id.encode("utf-8")) == expected


def test_hash_is_standard_fnv1a_then_standard_splitmix64():
    # Published FNV-1a 64 values of "", "a" and "foobar", fed to the finalizer.
    assert hash_id("") == _finalize(0xCBF29CE484222325)
    assert hash_id("a") == _finalize(0xAF63DC4C8601EC8C)
    assert hash_id("foobar") == _finalize(0x85944171F73967E8)
    # The first output of SplitMix64 seeded with 0 is the finalizer of its first state.
    assert _finalize(0x9E3779B97F4A7C15) == 0xE220A8397B1DCDAF


def test_partitions_for_matches_the_pinned_partitions():
    ids = list(PINNED)
    assert partitions_for(ids, 8).tolist() == [3, 0, 2, 3, 7, 7]
    assert partitions_for(ids, 12).tolist() == [3, 4, 6, 7, 11, 7]


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(st.lists(st.text(st.characters(exclude_categories=("Cs",)), max_size=20), max_size=30),
       st.integers(1, 1000))
def test_vectorized_equals_reference_on_unicode_ids(ids, partitions):
    result = partitions_for(ids, partitions)
    assert result.dtype == np.int32
    assert result.tolist() == [hash_id(i) % partitions for i in ids]


def test_numpy_byte_and_unicode_arrays_hash_like_their_values():
    ids = ["user-1", "ü", "a-much-longer-identifier-0001", "x"]
    expected = [hash_id(i) % 7 for i in ids]
    assert partitions_for(np.array(ids), 7).tolist() == expected
    assert partitions_for(np.array([i.encode() for i in ids]), 7).tolist() == expected
    assert partitions_for(np.array([[b"ab", b"c"]]), 5).tolist() == [
        hash_id("ab") % 5, hash_id("c") % 5]


def test_partitions_stay_in_range_and_one_partition_takes_all():
    ids = [f"id-{i}" for i in range(1000)]
    result = partitions_for(ids, 3)
    assert result.min() == 0 and result.max() == 2
    assert not partitions_for(ids, 1).any()
    assert partitions_for([], 4).shape == (0,)


@pytest.mark.parametrize(("partitions", "chi2_limit"), [(8, 24.32), (12, 31.26)])
def test_spread_is_uniform(partitions, chi2_limit):
    # The limits are the chi-square 0.999 quantiles for partitions - 1 degrees of freedom.
    ids = [f"user-{i}" for i in range(100_000)]
    counts = np.bincount(partitions_for(ids, partitions), minlength=partitions)
    expected = len(ids) / partitions
    assert ((counts - expected) ** 2 / expected).sum() < chi2_limit


@pytest.mark.parametrize("partitions", [0, -1, 2**31])
def test_partition_count_out_of_range_is_refused(partitions):
    with pytest.raises(ValueError, match=f"partitions must be in 1..2147483647, not {partitions}"):
        partitions_for(["a"], partitions)


def test_partition_count_must_be_an_integer():
    with pytest.raises(TypeError):
        partitions_for(["a"], 2.0)
