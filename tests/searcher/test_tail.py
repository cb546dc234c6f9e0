"""The live tail buffer: latest op per id, deletes, trimming, metadata, search sources."""

from __future__ import annotations

import numpy as np

from ingest import record
from searcher.tail import TailBuffer

DIM = 4


def upserts(ids: list[str], value: float, metadata=None) -> record.Batch:
    vectors = np.full((len(ids), DIM), value, np.float32)
    return record.decode(record.encode(ids, vectors, metadata=metadata))


def deletes(ids: list[str]) -> record.Batch:
    return record.decode(record.encode_deletes(ids, dim=DIM))


def visible(tail: TailBuffer) -> dict[str, float]:
    """id -> first vector component of every alive row, over all partitions."""
    out = {}
    for rows in tail.sources():
        for row in np.flatnonzero(~rows.source.hidden):
            key = rows.id_of(int(row))
            assert key not in out, f"{key} visible twice"
            out[key] = float(rows.source.vectors[row, 0])
    return out


def test_latest_upsert_wins_and_fresh_ids_are_reported_once() -> None:
    tail = TailBuffer(DIM)
    assert tail.append(0, 10, upserts(["a", "b"], 1.0)) == [b"a", b"b"]
    assert tail.append(0, 11, upserts(["a", "c"], 2.0)) == [b"c"]
    assert visible(tail) == {"a": 2.0, "b": 1.0, "c": 2.0}
    assert tail.latest(0, b"a") == (11, True)
    assert tail.row_count() == 4


def test_repeated_id_within_one_message_keeps_the_last_row() -> None:
    tail = TailBuffer(DIM)
    batch = record.decode(record.encode(["x", "x"], np.array([[1] * DIM, [5] * DIM], np.float32)))
    assert tail.append(2, 0, batch) == [b"x"]
    assert visible(tail) == {"x": 5.0}


def test_delete_shows_nothing_but_is_remembered_until_trimmed() -> None:
    tail = TailBuffer(DIM)
    tail.append(1, 5, upserts(["a", "b"], 1.0))
    assert tail.append(1, 6, deletes(["a", "z"])) == [b"z"]
    assert visible(tail) == {"b": 1.0}
    assert tail.latest(1, b"a") == (6, False)
    assert sorted(tail.ids(1)) == [b"a", b"b", b"z"]
    tail.append(1, 7, upserts(["a"], 3.0))
    assert visible(tail) == {"a": 3.0, "b": 1.0}


def test_trim_drops_covered_rows_and_rebuilds_latest() -> None:
    tail = TailBuffer(DIM)
    tail.append(0, 100, upserts(["a", "b"], 1.0))
    tail.append(0, 101, deletes(["b"]))
    tail.append(0, 102, upserts(["a", "c"], 2.0))
    tail.append(3, 50, upserts(["q"], 9.0))
    tail.trim(0, 102)
    assert visible(tail) == {"a": 2.0, "c": 2.0, "q": 9.0}
    assert sorted(tail.ids(0)) == [b"a", b"c"]
    assert tail.latest(0, b"b") is None
    tail.trim(0, 103)
    assert visible(tail) == {"q": 9.0} and tail.ids(0) == []
    assert tail.row_count() == 1


def test_trim_below_every_row_keeps_everything_and_clear_drops_a_partition() -> None:
    tail = TailBuffer(DIM)
    tail.append(0, 100, upserts(["a"], 1.0))
    tail.trim(0, 100)
    tail.trim(7, 1000)  # a partition the tail never saw
    assert visible(tail) == {"a": 1.0}
    tail.clear(0)
    assert visible(tail) == {} and tail.row_count() == 0


def test_growth_keeps_rows_and_metadata_in_order() -> None:
    tail = TailBuffer(DIM)
    for offset in range(200):
        meta = [{"n": offset}] if offset % 2 else None
        tail.append(0, offset, upserts([f"id-{offset}"], float(offset), metadata=meta))
    (rows,) = list(tail.sources())
    assert rows.source.rows == 200
    assert rows.id_of(150) == "id-150" and rows.source.vectors[150, 0] == 150.0
    assert rows.metadata(151) == {"n": 151} and rows.metadata(150) is None
    tail.trim(0, 190)
    (rows,) = list(tail.sources())
    assert rows.id_of(1) == "id-191" and rows.metadata(1) == {"n": 191}
    # The norms kept for scans follow the rows through growth and trims.
    np.testing.assert_allclose(rows.source.sqnorms,
                               (rows.source.vectors.astype(np.float64) ** 2).sum(axis=1),
                               rtol=1e-6)


def snapshot(tail: TailBuffer) -> list[tuple[int, list[tuple[str, float, bool]]]]:
    """Every source's rows as (id, first component, hidden), read now."""
    return [(rows.partition, [(rows.id_of(r), float(rows.source.vectors[r, 0]),
                               bool(rows.source.hidden[r])) for r in range(rows.source.rows)])
            for rows in tail.sources()]


def test_sources_handed_out_stay_as_they_were_while_the_tail_moves_on() -> None:
    tail = TailBuffer(DIM)
    for offset in range(40):
        tail.append(0, offset, upserts([f"a{offset % 7}", f"b{offset}"], float(offset)))
    handed = list(tail.sources())
    before = snapshot(tail)
    assert tail.sources().__next__() is handed[0]  # nothing changed: the same source again
    # Overwrites, deletes, trims and growth past the arrays' capacity all happen after it.
    tail.append(0, 40, deletes(["a1", "b39"]))
    tail.trim(0, 30)
    for offset in range(41, 200):
        tail.append(0, offset, upserts([f"a{offset % 7}", f"b{offset}"], float(offset)))
        if offset % 50 == 0:
            tail.trim(0, offset - 20)
    assert [(rows.partition, [(rows.id_of(r), float(rows.source.vectors[r, 0]),
                               bool(rows.source.hidden[r])) for r in range(rows.source.rows)])
            for rows in handed] == before
    # The last trim was at offset 150 and kept offsets 130 and up.
    assert visible(tail) == {**{f"a{o % 7}": float(o) for o in range(193, 200)},
                             **{f"b{o}": float(o) for o in range(130, 200)}}


def test_trims_and_growth_keep_the_latest_op_of_every_id() -> None:
    tail = TailBuffer(DIM)
    latest: dict[str, tuple[int, bool]] = {}
    for offset in range(300):
        key = f"k{offset % 23}"
        if offset % 5 == 4:
            tail.append(2, offset, deletes([key]))
        else:
            tail.append(2, offset, upserts([key], float(offset)))
        latest[key] = (offset, offset % 5 != 4)
        if offset % 40 == 39:
            below = offset - 15
            tail.trim(2, below)
            latest = {k: v for k, v in latest.items() if v[0] >= below}
    assert {k.decode(): tail.latest(2, k) for k in tail.ids(2)} == latest
    assert tail.row_count() == 300 - 264  # the last trim kept offsets 264..299
    assert visible(tail) == {k: float(o) for k, (o, alive) in latest.items() if alive}
