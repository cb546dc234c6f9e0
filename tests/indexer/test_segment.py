"""Growing segments: offsets, growth, and the last-op-wins deduplication of a seal."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from indexer.errors import IndexerError, InvalidStoredOffset, WrongDimension
from indexer.segment import GrowingSegment
from ingest import record

DIM = 3
UP, DEL = record.OP_UPSERT, record.OP_DELETE


def message(ids, ops=None, *, metadata=None, t0=1000, vectors=None, dim=DIM):
    """A decoded one-message batch; row r's vector is [base+r, ...] unless given."""
    n = len(ids)
    if vectors is None:
        vectors = np.arange(n * dim, dtype=np.float32).reshape(n, dim) + t0
    payload = record.encode(ids, vectors, ops=ops, metadata=metadata,
                            event_time_ms=np.arange(t0, t0 + n, dtype=np.int64))
    return record.decode(payload)


def test_new_segment_is_empty_and_seals_to_nothing():
    seg = GrowingSegment(2, 40, DIM, created_at=5.0)
    assert (seg.partition, seg.start_offset, seg.end_offset) == (2, 40, 40)
    assert (seg.rows, seg.messages) == (0, 0)
    sealed = seg.seal()
    assert (sealed.partition, sealed.start_offset, sealed.end_offset) == (2, 40, 40)
    assert sealed.rows == 0 and sealed.dim == DIM
    assert sealed.vectors.shape == (0, DIM) and sealed.vectors.dtype == np.float32
    assert sealed.ids.dtype == np.dtype("S1") and sealed.deleted_ids.shape == (0,)
    assert sealed.offsets.dtype == np.int64 and sealed.metadata == []


def test_skip_advances_end_offset_only():
    seg = GrowingSegment(0, 10, DIM, created_at=0.0)
    seg.skip(10)
    seg.skip(14)
    assert (seg.end_offset, seg.messages, seg.skipped, seg.rows) == (15, 2, 2, 0)
    sealed = seg.seal()
    assert (sealed.start_offset, sealed.end_offset) == (10, 15)
    assert (sealed.rows, len(sealed.deleted_ids)) == (0, 0)


def test_offsets_may_jump_forward_but_never_back():
    seg = GrowingSegment(0, 100, DIM, created_at=0.0)
    with pytest.raises(InvalidStoredOffset):
        seg.append(message(["a"]), 99)
    seg.append(message(["a"]), 100)
    seg.append(message(["b"]), 105)  # transaction markers and compaction leave gaps
    assert seg.end_offset == 106
    for offset in (105, 104, 100):
        with pytest.raises(InvalidStoredOffset, match=f'offset="{offset}"'):
            seg.append(message(["c"]), offset)
    with pytest.raises(InvalidStoredOffset):
        seg.skip(105)
    assert issubclass(InvalidStoredOffset, IndexerError)
    assert (seg.rows, seg.messages, seg.end_offset) == (2, 2, 106)
    assert seg.seal().ids.tolist() == [b"a", b"b"]


def test_wrong_dimension_is_refused_before_any_change():
    seg = GrowingSegment(0, 0, DIM, created_at=0.0)
    with pytest.raises(WrongDimension):
        seg.append(message(["a"], dim=DIM + 1), 0)
    assert (seg.rows, seg.messages, seg.end_offset) == (0, 0, 0)


def test_last_op_per_id_wins():
    seg = GrowingSegment(1, 10, DIM, created_at=0.0)
    seg.append(message(["a", "b", "c"], t0=100), 10)      # rows a0 b0 c0
    seg.append(message(["a", "b"], [UP, DEL], t0=200), 11)  # a upserted again, b deleted
    seg.skip(12)
    seg.append(message(["c", "d", "b"], [DEL, UP, UP], t0=300), 13)  # c deleted, b back
    seg.append(message(["e", "e", "e", "x"], [UP, DEL, UP, DEL], t0=400), 15)
    sealed = seg.seal()
    assert (sealed.start_offset, sealed.end_offset) == (10, 16)
    assert sealed.ids.tolist() == [b"a", b"d", b"b", b"e"]
    assert sealed.offsets.tolist() == [11, 13, 13, 15]
    assert sealed.event_time_ms.tolist() == [200, 301, 302, 402]
    assert sealed.vectors[:, 0].tolist() == [200.0, 303.0, 306.0, 406.0]
    assert sealed.deleted_ids.tolist() == [b"c", b"x"]
    assert sealed.vectors.flags.c_contiguous and sealed.vectors.dtype == np.float32
    assert sealed.metadata == [b""] * 4
    assert seg.rows == 12  # the buffer keeps every op; only the seal deduplicates


def test_sealed_rows_are_read_only_and_later_appends_leave_them_as_sealed():
    seg = GrowingSegment(0, 0, DIM, created_at=0.0)
    seg.append(message(["a"]), 0)
    first = seg.seal()
    with pytest.raises(ValueError, match="read-only"):
        first.vectors[0, 0] = -1.0
    assert seg.seal().vectors[0, 0] == 1000.0
    for offset in range(1, 200):  # past the buffer's first capacity: it is reallocated
        seg.append(message(["a"], t0=50), offset)
    second = seg.seal()
    assert (first.end_offset, second.end_offset) == (1, 200)
    assert first.vectors.tolist() == [[1000.0, 1001.0, 1002.0]]
    assert second.vectors.tolist() == [[50.0, 51.0, 52.0]] and not second.vectors.flags.writeable


def test_sealed_rows_count_the_whole_buffer_their_vectors_keep():
    seg = GrowingSegment(0, 0, DIM, created_at=0.0)
    seg.append(message(["a", "b"]), 0)
    view = seg.seal()  # every row live: the first rows of a 64-row buffer
    assert view.vectors.nbytes == 2 * DIM * 4 and view.held_bytes == 64 * DIM * 4
    seg.append(message(["a"]), 1)
    copied = seg.seal()  # "a" written twice: its last row only, copied out
    assert copied.held_bytes == copied.vectors.nbytes == 2 * DIM * 4


def test_metadata_stays_the_raw_bytes_of_the_payload():
    seg = GrowingSegment(0, 0, DIM, created_at=0.0)
    seg.append(message(["a", "b", "c"], metadata=[{"k": "é", "n": 1}, None, {"z": [1, 2]}]), 0)
    seg.append(message(["d"]), 1)
    seg.append(message(["e", "a"], metadata=[{"e": True}, {"a": 2}]), 2)
    sealed = seg.seal()
    assert sealed.ids.tolist() == [b"b", b"c", b"d", b"e", b"a"]
    assert sealed.metadata == [b"", b'{"z":[1,2]}', b"", b'{"e":true}', b'{"a":2}']
    assert seg.nbytes >= len(b'{"k":"\xc3\xa9","n":1}{"z":[1,2]}{"e":true}{"a":2}')


def test_growth_keeps_every_row_bit_identical():
    rng = np.random.default_rng(7)
    seg = GrowingSegment(3, 0, 5, created_at=0.0)
    expected, ids, offsets, sizes = [], [], [], []
    offset = 0
    for m in range(300):
        n = int(rng.integers(1, 12))
        names = [f"id-{m}-{r}" + "x" * int(rng.integers(0, 40)) for r in range(n)]
        vectors = rng.standard_normal((n, 5)).astype(np.float32)
        seg.append(message(names, vectors=vectors, dim=5), offset)
        expected.append(vectors)
        ids += [s.encode() for s in names]
        offsets += [offset] * n
        sizes.append(seg.nbytes)
        offset += int(rng.integers(1, 3))
    sealed = seg.seal()
    want = np.concatenate(expected)
    assert sealed.rows == seg.rows == len(want)
    assert np.array_equal(sealed.vectors.view(np.uint32), want.view(np.uint32))
    assert sealed.ids.tolist() == ids
    assert sealed.ids.dtype.itemsize == max(map(len, ids))
    assert sealed.offsets.tolist() == offsets
    assert sizes == sorted(sizes) and seg.nbytes >= want.nbytes


def test_stats_measure_age_from_created_at():
    seg = GrowingSegment(0, 0, DIM, created_at=100.0)
    seg.append(message(["a", "b"]), 0)
    stats = seg.stats(now=130.5)
    assert (stats.rows, stats.messages, stats.nbytes, stats.age_s) == (2, 1, seg.nbytes, 30.5)
    assert seg.stats(now=90.0).age_s == 0.0


row_strategy = st.tuples(st.sampled_from("abcdef"), st.sampled_from([UP, DEL]))
ops_strategy = st.lists(st.lists(row_strategy, min_size=1, max_size=5), max_size=12)


@settings(max_examples=60, deadline=None)
@given(ops_strategy)
def test_seal_matches_a_dictionary_replay(messages):
    seg = GrowingSegment(0, 0, 2, created_at=0.0)
    last: dict[bytes, tuple[int, int, int]] = {}  # id -> (op, offset, row within message)
    for offset, rows in enumerate(messages):
        ids = [i for i, _ in rows]
        vectors = np.full((len(rows), 2), offset, np.float32)
        vectors[:, 1] = np.arange(len(rows))
        seg.append(message(ids, [op for _, op in rows], vectors=vectors, dim=2), offset)
        for r, (i, op) in enumerate(rows):
            last.pop(i.encode(), None)  # re-insert so dict order is last-write order
            last[i.encode()] = (op, offset, r)
    sealed = seg.seal()
    upserts = [(k, off, r) for k, (op, off, r) in last.items() if op == UP]
    assert sealed.ids.tolist() == [k for k, _, _ in upserts]
    assert sealed.vectors.tolist() == [[float(off), float(r)] for _, off, r in upserts]
    assert sealed.deleted_ids.tolist() == [k for k, (op, _, _) in last.items() if op == DEL]
    assert sealed.end_offset == len(messages)


class ParsedOnlyBatch:
    """A batch offering metadata only parsed, as a reader without the raw section would."""

    def __init__(self, batch, parsed):
        self.ids, self.ops, self.vectors = batch.ids, batch.ops, batch.vectors
        self.event_time_ms = batch.event_time_ms
        self._parsed = parsed

    def __len__(self):
        return len(self._parsed)

    def metadata(self, i):
        return self._parsed[i]


def test_metadata_is_reserialised_compactly_without_a_raw_section():
    parsed = [{"b": [1, 2], "a": "é"}, None]
    seg = GrowingSegment(0, 0, DIM, created_at=0.0)
    seg.append(ParsedOnlyBatch(message(["a", "b"]), parsed), 0)
    seg.append(message(["c"], metadata=[{"c": 1}]), 1)
    assert seg.seal().metadata == ['{"b":[1,2],"a":"é"}'.encode(), b"", b'{"c":1}']
