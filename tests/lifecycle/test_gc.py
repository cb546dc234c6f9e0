"""The garbage collector's pure rules and its walk of a store folder, without servers."""

from __future__ import annotations

import os
import time

import pytest

from indexer.store import SegmentStore
from lifecycle import gc
from lifecycle.gc import MARKER, OTHER, SEGMENT, TEMP, Entry, GcReport, Rules

SEG = "c/g0002/p0001/p0001-000000000100-000000000200"
LIVE = Rules(True, 600.0, active_generation=2, kept_generations=frozenset({0, 1, 2}),
             checkpoints={1: 150})
DROPPED = Rules(False, 600.0)


def seg(age: float = 3600.0, gen: int = 2, start: int = 100, path: str = SEG) -> Entry:
    return Entry(path, SEGMENT, age, gen, 1, start)


@pytest.mark.parametrize(("entry", "referenced", "rules", "expected"), [
    (seg(), {SEG}, LIVE, (True, "referenced")),
    (seg(age=5.0), set(), LIVE, (True, "young")),
    (seg(start=150), set(), LIVE, (True, "pending")),
    (seg(start=200), set(), LIVE, (True, "pending")),
    (seg(start=100), set(), LIVE, (False, "unreferenced")),  # e.g. a compacted input
    (seg(gen=1), set(), LIVE, (True, "generation")),
    (seg(gen=0, start=500), set(), LIVE, (True, "generation")),
    (seg(gen=7), set(), LIVE, (False, "unreferenced")),
    (seg(), {SEG}, DROPPED, (True, "referenced")),
    (seg(age=5.0), set(), DROPPED, (True, "young")),
    (seg(start=500), set(), DROPPED, (False, "dropped")),
    (Entry("c/g0002/p0001/.tmp-x", TEMP, 5.0), set(), LIVE, (True, "young")),
    (Entry("c/g0002/p0001/.tmp-x", TEMP, 601.0), set(), LIVE, (False, "temp")),
    (Entry("c/g0002/p0001/x.registered", MARKER, 601.0), set(), LIVE,
     (False, "orphan-marker")),
    (Entry("c/notes.txt", OTHER, 1e6), set(), LIVE, (True, "unknown")),
    (Entry("c/notes.txt", OTHER, 1e6), set(), DROPPED, (False, "dropped")),
    (Entry("c/notes.txt", OTHER, 1.0), set(), DROPPED, (True, "young")),
])
def test_decide(entry, referenced, rules, expected):
    assert gc.decide(entry, referenced, rules) == expected


def test_the_active_partition_without_a_checkpoint_keeps_everything_pending():
    rules = Rules(True, 0.0, active_generation=2, kept_generations=frozenset({2}))
    assert gc.decide(seg(start=0), set(), rules) == (True, "pending")


def test_grace_zero_removes_even_the_newest():
    rules = Rules(False, 0.0)
    assert gc.decide(seg(age=0.0), set(), rules) == (False, "dropped")


@pytest.mark.parametrize(("active", "known", "keep", "expected"), [
    (0, [], 3, {0}),
    (4, [1, 2, 3, 4, 5], 3, {3, 4, 5}),
    (1, [1, 2, 3, 4, 5], 3, {1, 3, 4, 5}),
    (5, [1, 2, 3, 4, 5], 0, {5}),
    (2, [2, 0, 1], 10, {0, 1, 2}),
])
def test_kept_generations(active, known, keep, expected):
    assert gc.kept_generations(active, known, keep) == frozenset(expected)


def test_scan_classifies_a_collection_folder(tmp_path):
    part = tmp_path / "c" / "g0001" / "p0003"
    part.mkdir(parents=True)
    marked = part / "p0003-000000000000-000000000010"
    unmarked = part / "p0003-000000000010-000000000020"
    for folder in (marked, unmarked):
        folder.mkdir()
        (folder / "index.faiss").write_bytes(b"1234")
    (part / (marked.name + ".registered")).write_text("{}")
    (part / "p0003-000000000020-000000000030.registered").write_text("{}")  # no folder
    (part / ".tmp-p0003-x-1-ab").mkdir()
    (part / "p3-0-1").mkdir()  # not a canonical segment id
    (tmp_path / "c" / "g0001" / "junk").write_text("x")
    (tmp_path / "c" / "README").write_text("x")
    old = time.time() - 100
    os.utime(unmarked, (old, old))

    found = {e.path: e for e in gc.scan(SegmentStore(tmp_path), "c", time.time())}
    base = "c/g0001/p0003/"
    assert {p: e.kind for p, e in found.items()} == {
        base + marked.name: SEGMENT, base + unmarked.name: SEGMENT,
        base + "p0003-000000000020-000000000030.registered": MARKER,
        base + ".tmp-p0003-x-1-ab": TEMP, base + "p3-0-1": OTHER,
        "c/g0001/junk": OTHER, "c/README": OTHER}
    first = found[base + marked.name]
    assert (first.generation, first.partition, first.start, first.marker) == (
        1, 3, 0, base + marked.name + ".registered")
    assert found[base + unmarked.name].marker is None
    assert 99 < found[base + unmarked.name].age_s < 200
    assert found[base + marked.name].age_s < 50
    assert gc.scan(SegmentStore(tmp_path), "absent", time.time()) == []


def test_a_temp_folder_being_filled_counts_as_young(tmp_path):
    tmp = tmp_path / "c" / "g0000" / "p0000" / ".tmp-seg"
    tmp.mkdir(parents=True)
    (tmp / "vectors.npy").write_bytes(b"x")
    old = time.time() - 1000
    os.utime(tmp, (old, old))
    [entry] = gc.scan(SegmentStore(tmp_path), "c", time.time())
    assert entry.age_s < 50


def test_report_summary_and_json():
    report = GcReport(dry_run=True, collections=["a", "b"], removed=["a/x", "b/y"],
                      bytes_freed=10)
    report.kept.update({"young": 2, "referenced": 1})
    report.removed_by.update({"temp": 1, "dropped": 1})
    assert report.summary() == {
        "collections": 2, "removed": 2, "bytes_freed": 10, "dry_run": True, "skipped": [],
        "kept": {"referenced": 1, "young": 2}, "removed_by": {"dropped": 1, "temp": 1}}
    assert report.to_json()["paths"] == ["a/x", "b/y"]
    assert report.to_json()["collections"] == ["a", "b"]
