"""Segment folders: round trip, atomic publication, idempotent rewrites, corruption detection."""

from __future__ import annotations

import hashlib
import json
import mmap as mmap_module
import os
from pathlib import Path
from unittest import mock

import faiss
import numpy as np
import pytest

from indexer import segfolder
from indexer.errors import CorruptSegment, RebuildError
from indexer.segment import SealedRows, parse_segment_id, segment_id
from indexer.store import SegmentStore, coverage_chain, is_registered
from streamvec import files

DIM = 8
COLLECTION = "docs@v2"
GRAPH = "HNSW4"


def make_sealed(partition: int = 1, start: int = 100, end: int = 120, rows: int = 12,
                seed: int = 7) -> SealedRows:
    """Seeded rows of one offset range: every third row has metadata, two ids were deleted."""
    rng = np.random.default_rng(seed)
    offsets = np.sort(rng.choice(np.arange(start, end), size=rows, replace=False)).astype(np.int64)
    metadata = [json.dumps({"n": i, "tag": "é"}).encode() if i % 3 == 0 else b""
                for i in range(rows)]
    return SealedRows(
        partition=partition, start_offset=start, end_offset=end,
        ids=np.array([f"id-{start}-{i}".encode() for i in range(rows)]),
        vectors=rng.standard_normal((rows, DIM)).astype(np.float32),
        offsets=offsets, event_time_ms=offsets * 10 + 5, metadata=metadata,
        deleted_ids=np.array([b"gone-1", b"gone-22"]))


def flat_index(sealed: SealedRows) -> faiss.Index:
    index = faiss.IndexFlatL2(DIM)
    index.add(sealed.vectors)
    return index


def graph_index(sealed: SealedRows) -> faiss.Index:
    index = faiss.index_factory(DIM, GRAPH)
    index.add(sealed.vectors)
    return index


def write(root: Path, sealed: SealedRows, hides: dict | None = None,
          factory: str = "Flat") -> segfolder.SegmentManifest:
    index = flat_index(sealed) if factory == "Flat" else graph_index(sealed)
    return SegmentStore(root).write(COLLECTION, 0, sealed, index, factory, "l2", hides or {})


def owner(array: np.ndarray) -> object:
    """What finally holds an array's memory: the end of its chain of bases."""
    while isinstance(array, np.ndarray) and array.base is not None:
        array = array.base
    return array.obj if isinstance(array, memoryview) else array


def sealed_id(sealed: SealedRows) -> str:
    return segment_id(sealed.partition, sealed.start_offset, sealed.end_offset)


def folder(root: Path, sealed: SealedRows) -> Path:
    return SegmentStore(root).segment_path(COLLECTION, 0, sealed.partition, sealed_id(sealed))


def test_segment_id_is_canonical_and_parses_back() -> None:
    assert segment_id(3, 100, 200) == "p0003-000000000100-000000000200"
    assert parse_segment_id("p0003-000000000100-000000000200") == (3, 100, 200)
    for bad in ("p03-000000000100-000000000200", "p0003-0000000000100-000000000200",
                "p0003-000000000200-000000000100", ".tmp-p0003-000000000100-000000000200"):
        with pytest.raises(ValueError, match="is not a segment id"):
            parse_segment_id(bad)
    assert SegmentStore("/r").segment_path("c", 2, 3, "x") == Path("/r/c/g0002/p0003/x")


@pytest.mark.parametrize("mmap", [True, False])
def test_round_trip(tmp_path: Path, mmap: bool) -> None:
    sealed = make_sealed()
    hides = {"p0001-000000000000-000000000050": [4, 2, 2], "p0001-000000000050-000000000100": []}
    manifest = write(tmp_path, sealed, hides)
    seg = segfolder.load_segment(folder(tmp_path, sealed), mmap=mmap)
    assert seg.manifest == manifest and manifest.segment_id == sealed_id(sealed)
    assert manifest.fingerprint == {"dim": DIM, "metric": "l2", "factory": "Flat", "rows": 12,
                                    "start_offset": 100, "end_offset": 120}
    # A Flat folder holds no index: its search scans the vectors, which are all it needs.
    # Format 3 adds the metadata columns (indexer/columns.py).
    assert set(manifest.files) == segfolder.DATA_FILES | segfolder.COLUMN_FILES
    assert manifest.format == 3
    assert sorted(os.listdir(folder(tmp_path, sealed))) == sorted(
        segfolder.DATA_FILES | segfolder.COLUMN_FILES | {segfolder.MANIFEST})
    assert seg.index is None
    assert isinstance(owner(seg.vectors), mmap_module.mmap) is mmap  # a view, never a copy
    assert not seg.vectors.flags.writeable and not seg.ids.flags.writeable
    # The files are plain .npy files, as np.save writes them.
    plain = np.load(folder(tmp_path, sealed) / "vectors.npy", allow_pickle=False)
    assert plain.tobytes() == sealed.vectors.tobytes()
    assert seg.ids.tolist() == sealed.ids.tolist()
    assert seg.vectors.dtype == np.float32 and seg.vectors.tobytes() == sealed.vectors.tobytes()
    assert seg.offsets.tolist() == sealed.offsets.tolist()
    assert seg.event_time_ms.tolist() == sealed.event_time_ms.tolist()
    assert seg.deleted_ids.tolist() == [b"gone-1", b"gone-22"]
    assert {k: v.tolist() for k, v in seg.hides.items()} == {
        "p0001-000000000000-000000000050": [2, 4], "p0001-000000000050-000000000100": []}
    assert [seg.metadata(i) for i in range(4)] == [{"n": 0, "tag": "é"}, None, None,
                                                   {"n": 3, "tag": "é"}]
    with pytest.raises(IndexError):
        seg.metadata(12)


def test_a_segment_with_an_index_keeps_it(tmp_path: Path) -> None:
    sealed = make_sealed()
    manifest = write(tmp_path, sealed, factory=GRAPH)
    assert set(manifest.files) == segfolder.FILES and manifest.factory == GRAPH
    seg = segfolder.load_segment(folder(tmp_path, sealed))
    queries = np.random.default_rng(1).standard_normal((5, DIM)).astype(np.float32)
    want_d, want_i = graph_index(sealed).search(queries, 4)
    got_d, got_i = seg.index.search(queries, 4)
    assert np.array_equal(got_i, want_i) and np.array_equal(got_d, want_d)
    assert seg.vectors.tobytes() == sealed.vectors.tobytes()


def test_segment_of_deletes_only(tmp_path: Path) -> None:
    sealed = SealedRows(0, 5, 9, np.array([], dtype="S1"), np.zeros((0, DIM), np.float32),
                        np.array([], np.int64), np.array([], np.int64), [], np.array([b"x"]))
    manifest = write(tmp_path, sealed)
    seg = segfolder.load_segment(folder(tmp_path, sealed))
    assert (manifest.rows, seg.index, seg.deleted_ids.tolist()) == (0, None, [b"x"])
    assert seg.vectors.shape == (0, DIM) and len(seg.meta_blob) == 0


def as_format_1(path: Path, index: faiss.Index) -> None:
    """Turn a Flat folder into what format 1 wrote: the data files plus an index.faiss."""
    faiss.write_index(index, str(path / segfolder.INDEX_FILE))
    data = (path / segfolder.INDEX_FILE).read_bytes()
    entry = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    for name in segfolder.COLUMN_FILES:
        (path / name).unlink()

    def older(body: dict) -> None:
        body.update(format=1)
        body["files"] = {n: e for n, e in body["files"].items() if n not in segfolder.COLUMN_FILES}
        body["files"]["index.faiss"] = entry
    edit_manifest(path, older, reseal=True)


def test_a_format_1_flat_folder_with_its_index_still_loads_and_is_checked(tmp_path: Path) -> None:
    sealed = make_sealed()
    write(tmp_path, sealed)
    path = folder(tmp_path, sealed)
    as_format_1(path, flat_index(sealed))
    seg = segfolder.load_segment(path)
    assert (seg.manifest.format, set(seg.manifest.files)) == (
        1, segfolder.DATA_FILES | {segfolder.INDEX_FILE})
    # Served by the same exact scan as a format 2 folder: the index is checked, never loaded.
    assert seg.index is None and seg.vectors.tobytes() == sealed.vectors.tobytes()
    data = bytearray((path / segfolder.INDEX_FILE).read_bytes())
    data[len(data) // 2] ^= 0x01
    (path / segfolder.INDEX_FILE).write_bytes(bytes(data))
    assert expect_corrupt(path, segfolder.INDEX_FILE).reason == (
        "sha256 does not match the manifest")
    (path / segfolder.INDEX_FILE).unlink()
    assert expect_corrupt(path, segfolder.INDEX_FILE).reason == "missing"


def test_a_file_list_that_does_not_fit_the_format_and_factory_is_refused(tmp_path: Path) -> None:
    flat = make_sealed()
    write(tmp_path, flat)
    path = folder(tmp_path, flat)
    # A format 2 Flat folder that claims an index, and one of format 1 without it.
    edit_manifest(path, lambda b: b["files"].update({"index.faiss": b["files"]["ids.npy"]}),
                  reseal=True)
    assert "file list" in expect_corrupt(path, segfolder.MANIFEST).reason
    edit_manifest(path, lambda b: (b.update(format=1), b["files"].pop("index.faiss")),
                  reseal=True)
    assert "file list" in expect_corrupt(path, segfolder.MANIFEST).reason
    graph = make_sealed(start=120, end=140)
    write(tmp_path, graph, factory=GRAPH)
    path = folder(tmp_path, graph)
    edit_manifest(path, lambda b: b["files"].pop("index.faiss"), reseal=True)
    assert "file list" in expect_corrupt(path, segfolder.MANIFEST).reason


def test_an_npy_file_of_objects_or_with_a_wrong_length_is_refused(tmp_path: Path) -> None:
    sealed = make_sealed()
    write(tmp_path, sealed)
    path = folder(tmp_path, sealed)
    np.save(path / "ids.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    np.save(path / "offsets.npy", np.zeros(3, np.int64))
    for name in ("ids.npy", "offsets.npy"):
        data = (path / name).read_bytes()
        entry = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        edit_manifest(path, lambda b, n=name, e=entry: b["files"].update({n: e}), reseal=True)
    with pytest.raises(CorruptSegment) as info:
        segfolder.load_segment(path)
    assert (info.value.file, info.value.reason) == (
        "ids.npy", "unreadable (an .npy file of Python objects is refused)")
    np.save(path / "ids.npy", sealed.ids)
    data = (path / "ids.npy").read_bytes()
    (path / "ids.npy").write_bytes(data[:-1])  # one byte short of its header's shape
    entry = {"sha256": hashlib.sha256(data[:-1]).hexdigest(), "bytes": len(data) - 1}
    edit_manifest(path, lambda b: b["files"].update({"ids.npy": entry}), reseal=True)
    with pytest.raises(CorruptSegment, match=r"ids.npy: unreadable \(\d+ data bytes for shape"):
        segfolder.load_segment(path)


def test_rewrite_of_a_valid_segment_keeps_it(tmp_path: Path) -> None:
    sealed = make_sealed()
    first = write(tmp_path, sealed)
    inode = (folder(tmp_path, sealed) / "vectors.npy").stat().st_ino
    again = write(tmp_path, sealed)
    assert again == first  # same created_at: the existing folder was kept, not rewritten
    assert (folder(tmp_path, sealed) / "vectors.npy").stat().st_ino == inode
    assert os.listdir(folder(tmp_path, sealed).parent) == [first.segment_id]


def test_rewrite_replaces_a_corrupt_segment(tmp_path: Path) -> None:
    sealed = make_sealed()
    write(tmp_path, sealed)
    path = folder(tmp_path, sealed)
    (path / "offsets.npy").write_bytes(b"garbage")
    write(tmp_path, sealed)
    assert segfolder.verify(path).segment_id == path.name
    assert os.listdir(path.parent) == [path.name]


def test_a_writer_that_loses_the_race_returns_the_winner(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    sealed = make_sealed()
    real = segfolder._write_files
    winner: list[segfolder.SegmentManifest] = []

    def write_then_lose(*args):
        files = real(*args)
        monkeypatch.setattr(segfolder, "_write_files", real)
        winner.append(write(tmp_path, sealed))  # another owner publishes the same range now
        return files

    monkeypatch.setattr(segfolder, "_write_files", write_then_lose)
    assert write(tmp_path, sealed) == winner[0]
    assert os.listdir(folder(tmp_path, sealed).parent) == [winner[0].segment_id]


@pytest.mark.parametrize("factory", ["Flat", GRAPH])
def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     factory: str) -> None:
    sealed = make_sealed()
    monkeypatch.setattr(faiss, "serialize_index",
                        mock.Mock(side_effect=RuntimeError("disk full")))
    monkeypatch.setattr(files, "fsync_file", mock.Mock(side_effect=OSError("disk full")))
    with pytest.raises((RuntimeError, OSError), match="disk full"):
        write(tmp_path, sealed, factory=factory)
    assert os.listdir(folder(tmp_path, sealed).parent) == []


def test_temp_folders_are_never_listed_and_are_swept(tmp_path: Path) -> None:
    sealed, later = make_sealed(), make_sealed(start=120, end=140)
    write(tmp_path, sealed)
    write(tmp_path, later)
    parent = folder(tmp_path, sealed).parent
    crashed = files.temp_path(parent / "p0001-000000000140-000000000160")
    crashed.mkdir()
    (crashed / "vectors.npy").write_bytes(b"half")  # a writer died before the rename
    store = SegmentStore(tmp_path)
    assert store.list_segments(COLLECTION) == [folder(tmp_path, sealed), folder(tmp_path, later)]
    assert store.list_segments(COLLECTION, generation=1) == []
    assert store.remove_orphans(COLLECTION, 0, 1, min_start=140) == [crashed]
    assert sorted(os.listdir(parent)) == [sealed_id(sealed), sealed_id(later)]


def test_remove_orphans_keeps_registered_and_earlier_folders(tmp_path: Path) -> None:
    early, registered, orphan = (make_sealed(start=0, end=100), make_sealed(start=100, end=120),
                                 make_sealed(start=120, end=140))
    for sealed in (early, registered, orphan):
        write(tmp_path, sealed)
    store = SegmentStore(tmp_path)
    marker = store.mark_registered(folder(tmp_path, registered).relative_to(tmp_path))
    assert marker.name == sealed_id(registered) + ".registered"
    assert is_registered(folder(tmp_path, registered))
    assert not is_registered(folder(tmp_path, orphan))
    assert store.remove_orphans(COLLECTION, 0, 1, 100) == [folder(tmp_path, orphan)]
    assert store.list_segments(COLLECTION) == [folder(tmp_path, early),
                                               folder(tmp_path, registered)]
    assert store.remove_orphans(COLLECTION, 0, 7, 0) == []


def test_write_rejects_inconsistent_input(tmp_path: Path) -> None:
    sealed = make_sealed()
    with pytest.raises(ValueError, match="hides may name only earlier segments of partition 1"):
        write(tmp_path, sealed, {"p0001-000000000110-000000000130": [0]})
    with pytest.raises(ValueError, match="hides may name only earlier"):
        write(tmp_path, sealed, {"p0002-000000000000-000000000010": [0]})
    short = faiss.IndexFlatL2(DIM)
    short.add(sealed.vectors[:3])
    with pytest.raises(ValueError, match="index has 3 rows of dim 8, rows are 12 of dim 8"):
        SegmentStore(tmp_path).write(COLLECTION, 0, sealed, short, "Flat", "l2", {})
    with pytest.raises(ValueError, match="metric must be one of"):
        SegmentStore(tmp_path).write(COLLECTION, 0, sealed, flat_index(sealed), "Flat",
                                     "hamming", {})
    with pytest.raises(ValueError, match="a 'HNSW4' segment needs its built index"):
        SegmentStore(tmp_path).write(COLLECTION, 0, sealed, None, GRAPH, "l2", {})
    assert SegmentStore(tmp_path).list_segments(COLLECTION) == []


ALL_FILES = sorted(segfolder.DATA_FILES | {segfolder.MANIFEST})


def corrupted(tmp_path: Path) -> Path:
    """A fresh valid segment folder, about to be damaged."""
    write(tmp_path, make_sealed())
    return folder(tmp_path, make_sealed())


def expect_corrupt(path: Path, name: str) -> CorruptSegment:
    with pytest.raises(CorruptSegment) as info:
        segfolder.verify(path)
    assert info.value.file == name
    assert f"{path} is corrupt: {name}: " in str(info.value)
    return info.value


@pytest.mark.parametrize("name", ALL_FILES)
def test_flipped_byte_is_detected(tmp_path: Path, name: str) -> None:
    path = corrupted(tmp_path)
    data = bytearray((path / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (path / name).write_bytes(bytes(data))
    expect_corrupt(path, name)


@pytest.mark.parametrize("name", ALL_FILES)
def test_truncated_file_is_detected(tmp_path: Path, name: str) -> None:
    path = corrupted(tmp_path)
    data = (path / name).read_bytes()
    (path / name).write_bytes(data[:-1])
    error = expect_corrupt(path, name)
    if name != segfolder.MANIFEST:  # a cut manifest is not JSON any more
        assert error.reason == f"{len(data) - 1} bytes, the manifest says {len(data)}"


@pytest.mark.parametrize("name", ALL_FILES)
def test_missing_file_is_detected(tmp_path: Path, name: str) -> None:
    path = corrupted(tmp_path)
    (path / name).unlink()
    assert expect_corrupt(path, name).reason == "missing"


def edit_manifest(path: Path, edit, reseal: bool) -> None:
    body = json.loads((path / segfolder.MANIFEST).read_bytes())
    edit(body)
    if reseal:  # a forger who also recomputes the manifest checksum
        del body["checksum"]
        body["checksum"] = segfolder._digest(body)
    (path / segfolder.MANIFEST).write_text(json.dumps(body))


def test_edited_fingerprint_is_detected(tmp_path: Path) -> None:
    path = corrupted(tmp_path)
    edit_manifest(path, lambda b: b["fingerprint"].update(dim=16), reseal=False)
    assert expect_corrupt(path, segfolder.MANIFEST).reason == (
        "checksum does not match the manifest's fields")
    edit_manifest(path, lambda b: b["fingerprint"].update(dim=16), reseal=True)
    assert "contradicts the manifest" in expect_corrupt(path, segfolder.MANIFEST).reason


def test_fingerprint_is_checked_against_the_arrays(tmp_path: Path) -> None:
    path = corrupted(tmp_path)
    edit_manifest(path, lambda b: (b.update(dim=16), b["fingerprint"].update(dim=16)), True)
    assert "does not match the fingerprint" in expect_corrupt(path, "vectors.npy").reason
    path = corrupted(tmp_path / "again")
    edit_manifest(path, lambda b: (b.update(rows=11), b["fingerprint"].update(rows=11)), True)
    expect_corrupt(path, "vectors.npy")


def test_load_without_verify_skips_checksums_but_not_the_fingerprint(tmp_path: Path) -> None:
    path = corrupted(tmp_path)
    data = bytearray((path / "vectors.npy").read_bytes())
    data[-1] ^= 0x01
    (path / "vectors.npy").write_bytes(bytes(data))
    assert segfolder.load_segment(path, verify=False).manifest.rows == 12
    expect_corrupt(path, "vectors.npy")


def chain_folders(tmp_path: Path, spans: list[tuple[int, int, bool]]) -> list[Path]:
    paths = []
    for start, end, marked in spans:
        path = tmp_path / segment_id(0, start, end)
        path.mkdir()
        if marked:
            SegmentStore(tmp_path).mark_registered(path.name)
        paths.append(path)
    return paths


def test_coverage_chain_prefers_registered_and_bridges_unmarked_holes(tmp_path: Path) -> None:
    a, orphan, b, c, tail = chain_folders(
        tmp_path, [(0, 10, True), (10, 30, False), (10, 20, False), (20, 30, True),
                   (30, 40, False)])
    assert coverage_chain(0, [a, orphan, b, c, tail]) == [a, b, c]
    assert coverage_chain(0, [a, b, tail]) == [a]  # nothing proves b was registered


def test_coverage_chain_reports_gaps_and_ambiguity(tmp_path: Path) -> None:
    a, b, c, d = chain_folders(tmp_path, [(0, 10, True), (20, 30, True), (10, 15, False),
                                          (10, 20, False)])
    with pytest.raises(RebuildError, match=r"partition 0: gap in the registered segments: "
                                           r"offsets \[10, 20\) are covered by no segment"):
        coverage_chain(0, [a, b, c])
    (e,) = chain_folders(tmp_path, [(15, 20, False)])
    with pytest.raises(RebuildError, match=r"\[10, 20\) are covered by more than one set"):
        coverage_chain(0, [a, b, c, d, e])
