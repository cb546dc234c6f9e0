"""Metadata columns: built at seal, stored checksummed, built later for old folders and tails."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from indexer import columns, segfolder
from indexer.errors import CorruptSegment
from indexer.segment import SealedRows
from indexer.store import SegmentStore
from searcher import filters

DIM = 4
ROWS = 40


def meta_of(i: int) -> dict | None:
    if i % 10 == 9:
        return None
    row: dict = {"n": i, "word": f"w{i % 7}", "even": i % 2 == 0}
    if i % 5 == 0:
        row["gone"] = None
    if i % 8 == 0:
        row["deep"] = {"x": [1, 2]}
    return row


def sealed(rows: int = ROWS, meta=meta_of) -> SealedRows:
    raws = [b"" if meta(i) is None else json.dumps(meta(i)).encode() for i in range(rows)]
    return SealedRows(0, 0, rows, np.array([f"id-{i}".encode() for i in range(rows)]),
                      np.random.default_rng(1).standard_normal((rows, DIM)).astype(np.float32),
                      np.arange(rows, dtype=np.int64), np.zeros(rows, np.int64), raws,
                      np.array([], dtype="S1"))


def written(root: Path, rows: SealedRows) -> Path:
    store = SegmentStore(root)
    store.write("cols", 0, rows, None, "Flat", "l2", {})
    (path,) = (root / "cols" / "g0000" / "p0000").iterdir()
    return path


CASES = [{"n": {"gte": 10, "lt": 20}}, {"word": {"in": ["w1", "w3"]}}, {"even": False},
         {"gone": None}, {"deep": {"exists": True}}, {"word": {"gt": "w4"}},
         {"or": [{"n": 3}, {"not": {"even": {"exists": True}}}]}]


def accepted(table: columns.Columns, obj: dict) -> list[int]:
    return np.flatnonzero(filters.evaluate(filters.parse(obj), table)).tolist()


def reference(rows: SealedRows, obj: dict) -> list[int]:
    expr = filters.parse(obj)
    return [i for i, raw in enumerate(rows.metadata)
            if filters.matches(expr, columns.parse_row(raw))]


def test_a_sealed_segment_stores_columns_that_answer_as_its_json(tmp_path) -> None:
    rows = sealed()
    path = written(tmp_path, rows)
    segment = segfolder.load_segment(path)
    assert segment.manifest.format == 3 and segment.columns is not None
    assert segment.columns.complete and set(segment.columns.fields) == {
        "n", "word", "even", "gone", "deep"}
    assert columns.of_segment(segment) is segment.columns
    for obj in CASES:
        assert accepted(segment.columns, obj) == reference(rows, obj), obj
    # The arrays are views of the verified files, not copies.
    word = segment.columns.fields["word"]
    assert not word.codes.flags.writeable and list(word.vocab) == [f"w{i}" for i in range(7)]


@pytest.mark.parametrize("name", sorted(segfolder.COLUMN_FILES))
def test_a_damaged_column_file_is_refused(tmp_path, name: str) -> None:
    path = written(tmp_path, sealed())
    data = bytearray((path / name).read_bytes())
    if not data:
        data = bytearray(b"x")  # an empty file (no vocabulary) gains a byte instead
    else:
        data[len(data) // 2] ^= 0x01
    (path / name).write_bytes(bytes(data))
    with pytest.raises(CorruptSegment) as info:
        segfolder.verify(path)
    assert info.value.file == name


def test_columns_that_contradict_their_rows_are_refused() -> None:
    arrays, blobs = columns.to_files(columns.build([b'{"a": 1}', b'{"a": "x"}']))
    with pytest.raises(ValueError, match="columns index is not version 1 over 3 rows"):
        columns.from_files(arrays, blobs, 3)
    short = dict(arrays, **{"col_num.npy": arrays["col_num.npy"][:, :1]})
    with pytest.raises(ValueError, match=r"col_num.npy has shape \(1, 1\)"):
        columns.from_files(short, blobs, 2)
    lying = dict(blobs, **{"col_vocab.bin": b"xy"})
    with pytest.raises(ValueError, match="col_vocab_offsets.npy does not fit col_vocab.bin"):
        columns.from_files(arrays, lying, 2)
    doc = json.loads(blobs[columns.INDEX_FILE])
    doc["fields"][0]["num"] = 5
    with pytest.raises(ValueError, match="columns index entry 0: num 5 out of range"):
        columns.from_files(arrays, dict(blobs, **{columns.INDEX_FILE: json.dumps(doc).encode()}), 2)


def as_format_2(path: Path) -> None:
    """What format 2 wrote: the same folder without the column files."""
    body = json.loads((path / segfolder.MANIFEST).read_bytes())
    for name in segfolder.COLUMN_FILES:
        (path / name).unlink()
        del body["files"][name]
    body["format"] = 2
    del body["checksum"]
    body["checksum"] = segfolder._digest(body)
    (path / segfolder.MANIFEST).write_text(json.dumps(body))


def test_an_older_segment_gets_its_columns_built_once_on_first_use(tmp_path) -> None:
    rows = sealed()
    path = written(tmp_path, rows)
    as_format_2(path)
    segment = segfolder.load_segment(path)
    assert segment.manifest.format == 2 and segment.columns is None
    table = columns.of_segment(segment)
    assert columns.of_segment(segment) is table is segment.columns
    for obj in CASES:
        assert accepted(table, obj) == reference(rows, obj), obj


def test_fields_past_the_stored_ones_are_built_from_the_json_when_asked(tmp_path,
                                                                        monkeypatch) -> None:
    def wide(i: int) -> dict:
        return {f"f{j}": i * j for j in range(i % 5 + 1)} | {"n": i}
    monkeypatch.setattr(columns, "MAX_FIELDS", 2)
    rows = sealed(meta=wide)
    segment = segfolder.load_segment(written(tmp_path, rows))
    table = segment.columns
    assert not table.complete and set(table.fields) == {"f0", "n"}  # the most frequent two
    for obj in ({"f3": {"gt": 30}}, {"f4": {"exists": False}}, {"nope": {"exists": False}},
                {"and": [{"f2": {"lt": 40}}, {"n": {"ne": 7}}]}):
        assert accepted(table, obj) == reference(rows, obj), obj
    assert table.column("f3") is table.column("f3")  # built once, then kept


def test_tail_columns_keep_few_blocks_as_rows_arrive_one_at_a_time() -> None:
    raws: list[bytes] = []
    tail = columns.TailColumns(raws)
    expr = filters.parse({"n": {"gte": 50}})
    for i in range(200):
        raws.append(json.dumps({"n": i % 100}).encode())
        got = filters.evaluate_pieces(expr, tail.pieces(i // 2, i + 1), i + 1 - i // 2)
        assert got.tolist() == [j % 100 >= 50 for j in range(i // 2, i + 1)]
        assert len(tail._blocks) <= math.log2(i + 1) + 1
