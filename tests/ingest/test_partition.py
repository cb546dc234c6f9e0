"""Unit tests of the id -> partition hash: pinned values, vectorized == reference, spread."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.partition import _finalize, hash_id, murmur2, partition_of, partitions_for

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


# Kafka's murmur2, as org.apache.kafka.common.utils.Utils.murmur2 returns it (a signed Java
# int): these were printed by that method, run on the broker's own kafka-clients jar.
JAVA_MURMUR2 = {
    "": 275646681,
    "a": -1563381124,
    "user-42": 1459644460,
    "21": -973932308,
    "foobar": -790332482,
    "商品-7": 2076954301,
    "a\0": -1853091852,
}


@pytest.mark.parametrize(("key", "java"), JAVA_MURMUR2.items())
def test_murmur2_matches_the_java_client(key, java):
    assert murmur2(key) == java & 0xFFFFFFFF
    assert murmur2(key.encode("utf-8")) == java & 0xFFFFFFFF
    # Kafka's toPositive(murmur2(key)) % partitions
    assert partition_of(key, 8, "kafka") == (java & 0x7FFFFFFF) % 8


def test_murmur2_test_vectors_in_the_docs():
    assert [murmur2(k) for k in (b"", b"a", b"user-42")] == [0x106E08D9, 0xA2D0B27C, 0x5700682C]
    assert partitions_for(["", "a", "21", "foobar", "user-42", "商品-7"], 8, "kafka").tolist() == [
        1, 4, 4, 6, 4, 5]


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(st.lists(st.binary(max_size=23), max_size=30), st.integers(1, 1000))
def test_vectorized_murmur2_equals_the_reference_at_every_length(keys, partitions):
    result = partitions_for(keys, partitions, "kafka")
    assert result.dtype == np.int32
    assert result.tolist() == [partition_of(k, partitions, "kafka") for k in keys]


def test_the_two_partitioners_differ_and_streamvec_stays_the_default():
    ids = [f"user-{i}" for i in range(200)]
    assert partitions_for(ids, 16).tolist() == partitions_for(ids, 16, "streamvec").tolist()
    assert partitions_for(ids, 16, "kafka").tolist() != partitions_for(ids, 16).tolist()
    assert partition_of("user-42", 8) == hash_id("user-42") % 8
    assert partitions_for([], 4, "kafka").shape == (0,)
    counts = np.bincount(partitions_for([f"user-{i}" for i in range(100_000)], 8, "kafka"),
                         minlength=8)
    assert ((counts - 12_500) ** 2 / 12_500).sum() < 24.32  # chi-square 0.999, as above


def test_an_unknown_partitioner_is_refused():
    with pytest.raises(ValueError, match="partitioner must be one of kafka, streamvec, not 'crc'"):
        partitions_for(["a"], 4, "crc")
    with pytest.raises(ValueError, match="partitioner must be one of"):
        partition_of("a", 4, "crc")
