"""The id map: which rows of earlier segments a new segment hides, and rebuilding it."""

from __future__ import annotations

import numpy as np

from indexer.idmap import IdMap
from indexer.segment import SealedRows


def id_array(ids):
    return np.array([i.encode() for i in ids], dtype="S8") if ids else np.zeros(0, "S1")


def sealed(ids, deleted=(), *, partition=0, start=0):
    """A sealed range holding upserts of `ids` (row i = ids[i]) and deletes of `deleted`."""
    n = len(ids)
    return SealedRows(
        partition=partition, start_offset=start, end_offset=start + n + len(deleted),
        ids=id_array(ids),
        vectors=np.zeros((n, 2), np.float32), offsets=np.arange(start, start + n, dtype=np.int64),
        event_time_ms=np.zeros(n, np.int64), metadata=[b""] * n,
        deleted_ids=id_array(deleted),
    )


SEGMENTS = [  # three segments of partition 0, in offset order
    ("s1", sealed(["a", "b", "c", "d"], start=0)),
    ("s2", sealed(["b", "e"], ["c", "z"], start=10)),  # b again, c deleted, z never existed
    ("s3", sealed(["c", "a", "b"], ["e"], start=20)),  # c comes back, e deleted
]


def as_lists(hides):
    return {segment: rows.tolist() for segment, rows in hides.items()}


def test_hides_across_three_segments_with_deletes_and_re_upserts():
    idmap = IdMap()
    assert idmap.hides_for(SEGMENTS[0][1]) == {}
    idmap.apply(*SEGMENTS[0])
    assert as_lists(idmap.hides_for(SEGMENTS[1][1])) == {"s1": [1, 2]}
    idmap.apply(*SEGMENTS[1])
    assert len(idmap) == 4  # a, b, d, e: c's delete removed it
    hides = idmap.hides_for(SEGMENTS[2][1])
    assert as_lists(hides) == {"s1": [0], "s2": [0, 1]}
    assert all(rows.dtype == np.int32 for rows in hides.values())
    idmap.apply(*SEGMENTS[2])
    assert len(idmap) == 4
    assert [idmap.locate(0, i) for i in "abcdez"] == [
        ("s3", 1), ("s3", 2), ("s3", 0), ("s1", 3), None, None,
    ]


def test_hidden_rows_come_back_sorted_per_segment():
    idmap = IdMap()
    idmap.apply("s1", sealed(["a", "b", "c", "d", "e"]))
    idmap.apply("s2", sealed(["f", "g"]))
    hides = idmap.hides_for(sealed(["g", "e"], ["c", "a", "f"]))
    assert as_lists(hides) == {"s1": [0, 2, 4], "s2": [0, 1]}


def test_load_rebuilds_the_same_map_as_apply():
    applied, loaded = IdMap(), IdMap()
    for segment_id, rows in SEGMENTS:
        applied.apply(segment_id, rows)
        loaded.load(segment_id, rows.ids, rows.deleted_ids, partition=0)
    nxt = sealed(["a", "b", "c", "d"], ["q"], start=30)
    assert as_lists(loaded.hides_for(nxt)) == as_lists(applied.hides_for(nxt)) == {
        "s1": [3], "s3": [0, 1, 2],
    }
    assert len(loaded) == len(applied) == 4
    listed = IdMap()
    listed.load("s1", [b"a", "b"], [], partition=0)
    listed.load("s2", [], ["a"], partition=0)
    assert (listed.locate(0, "a"), listed.locate(0, b"b")) == (None, ("s1", 1))


def test_partitions_are_separate_and_can_be_dropped():
    idmap = IdMap()
    idmap.apply("p0-a", sealed(["a", "b"], partition=0))
    idmap.apply("p1-a", sealed(["a"], partition=1))
    assert as_lists(idmap.hides_for(sealed(["a"], partition=1, start=5))) == {"p1-a": [0]}
    assert idmap.partitions == [0, 1] and len(idmap) == 3
    idmap.drop_partition(0)
    idmap.drop_partition(7)
    assert idmap.partitions == [1] and len(idmap) == 1
    assert idmap.hides_for(sealed(["a", "b"], partition=0, start=9)) == {}
    assert idmap.locate(1, "a") == ("p1-a", 0)
