"""Segments plus tail under one lock: hides, swaps without gaps or doubles, release, loading."""

from __future__ import annotations

import dataclasses
import errno
import threading
from pathlib import Path

import numpy as np
import pytest

from indexer import publish, segfolder
from indexer.build import build_index
from indexer.errors import CorruptSegment
from indexer.idmap import IdMap
from indexer.registry import SegmentRecord
from indexer.segment import GrowingSegment, segment_id
from indexer.store import SegmentStore
from indexer.view import hidden_rows
from ingest import record
from lifecycle import rewrite
from searcher import execute, segments
from searcher import state as state_module
from searcher.metrics import SearcherMetrics
from searcher.query import QueryRequest
from searcher.state import ServingState, View
from searcher.tail import TailMessage
from tests.support.searcher_metrics import sample

DIM = 4
COLLECTION = "unit"


class Chain:
    """One partition's log and the indexer's view of it: messages, seals, hides."""

    def __init__(self, root: Path, partition: int, rng: np.random.Generator) -> None:
        self.root, self.partition, self.rng = root, partition, rng
        self.store = SegmentStore(root)
        self.growing = GrowingSegment(partition, 0, DIM, 0.0)
        self.idmap = IdMap()
        self.log: list[TailMessage] = []
        self.expected: dict[str, np.ndarray | None] = {}
        self.written_at: dict[str, int] = {}

    def send(self, ids: list[str], delete: bool = False) -> TailMessage:
        vectors = self.rng.standard_normal((len(ids), DIM)).astype(np.float32)
        payload = (record.encode_deletes(ids, dim=DIM) if delete
                   else record.encode(ids, vectors))
        batch = record.decode(payload)
        msg = TailMessage(self.partition, len(self.log), batch)
        self.log.append(msg)
        self.growing.append(batch, msg.offset)
        for i, key in enumerate(ids):
            self.expected[key] = None if delete else vectors[i]
            self.written_at[key] = msg.offset
        return msg

    def seal(self) -> tuple[SegmentRecord, segfolder.LoadedSegment]:
        sealed = self.growing.seal()
        sid = segment_id(self.partition, sealed.start_offset, sealed.end_offset)
        hides = self.idmap.hides_for(sealed)
        self.idmap.apply(sid, sealed)
        index, factory = build_index(sealed.vectors, metric="l2", index="Flat")
        manifest = self.store.write(COLLECTION, 0, sealed, index, factory, "l2", hides)
        path = self.store.segment_path(COLLECTION, 0, self.partition, sid)
        rec = SegmentRecord.from_manifest(manifest, path.relative_to(self.root))
        self.growing = GrowingSegment(self.partition, sealed.end_offset, DIM, 0.0)
        return rec, segments.load(self.store, rec)

    def live(self, since: int = 0) -> dict[str, np.ndarray]:
        return {k: v for k, v in self.expected.items()
                if v is not None and self.written_at[k] >= since}


def visible(state: ServingState | View) -> dict[str, np.ndarray]:
    """Every row a search can return now (or from a view), by id; fails on an id seen twice."""
    view = state if isinstance(state, View) else state.view()
    out: dict[str, np.ndarray] = {}
    for item in view.searchables:
        hidden = item.source.hidden
        for row in range(item.source.rows):
            if hidden is None or not hidden[row]:
                key = item.id_of(row)
                assert key not in out, f"{key} visible twice"
                out[key] = np.array(item.source.vectors[row])
    return out


def assert_serves(state: ServingState, *chains: Chain) -> None:
    assert_state(state, {k: v for c in chains for k, v in c.live().items()})


@pytest.fixture
def state(metrics: SearcherMetrics) -> ServingState:
    st = ServingState(DIM, [0, 1], metrics)
    st.reassigned(st.start_offsets()[1])
    return st


def rounds(chain: Chain, n: int, id_space: int = 40) -> list[TailMessage]:
    """Messages of upserts over a small id space, with deletes and re-upserts mixed in."""
    out = []
    for i in range(n):
        ids = sorted({f"p{chain.partition}-{j}" for j in chain.rng.integers(0, id_space, 5)})
        out.append(chain.send(ids, delete=i % 4 == 3))
    return out


def state_after(chain: Chain, upto: int) -> dict[str, np.ndarray]:
    """The latest state implied by the first `upto` messages of a chain."""
    latest: dict[str, np.ndarray | None] = {}
    for msg in chain.log[:upto]:
        deleted = (msg.batch.ops == record.OP_DELETE).tolist()
        for i, key in enumerate(raw.decode() for raw in msg.batch.ids.tolist()):
            latest[key] = None if deleted[i] else np.array(msg.batch.vectors[i])
    return {k: v for k, v in latest.items() if v is not None}


def assert_state(state: ServingState | View, expected: dict[str, np.ndarray]) -> None:
    got = visible(state)
    assert sorted(got) == sorted(expected)
    for key, vector in expected.items():
        assert np.array_equal(got[key], vector), key


def test_tail_ops_hide_sealed_rows_and_every_swap_keeps_the_state(tmp_path, state) -> None:
    chain = Chain(tmp_path, 0, np.random.default_rng(1))
    other = Chain(tmp_path, 1, np.random.default_rng(2))
    state.apply(rounds(other, 5))
    others = state_after(other, 5)
    applied = covered = 0
    for step in range(6):
        rounds(chain, 6)
        rec, seg = chain.seal()
        rounds(chain, 6)
        # The tail is ahead of the new segment on odd steps, behind it on even ones.
        target = rec.end_offset + (3 if step % 2 else -2)
        state.apply(chain.log[applied:target])
        applied = target
        assert_state(state, {**others, **state_after(chain, max(applied, covered))})
        state.replace(set(), [(rec, seg)])
        covered = rec.end_offset
        assert_state(state, {**others, **state_after(chain, max(applied, covered))})
        state.apply(chain.log[applied:])
        applied = len(chain.log)
        assert_state(state, {**others, **state_after(chain, applied)})
        assert state.positions() == {0: applied, 1: 5}
    state.replace(set(), [chain.seal()])
    assert_state(state, {**others, **state_after(chain, applied)})
    assert state.tail.row_count() == sum(len(m.batch) for m in other.log)


def test_a_lagging_tail_skips_what_segments_already_cover(tmp_path, state, registry) -> None:
    chain = Chain(tmp_path, 0, np.random.default_rng(3))
    msgs = rounds(chain, 10)
    rec, seg = chain.seal()
    later = rounds(chain, 3)
    state.replace(set(), [(rec, seg)])
    assert state.positions()[0] == 10
    state.apply(msgs + later)  # the reader started below the checkpoint
    assert_serves(state, chain)
    assert state.tail.row_count() == sum(len(m.batch) for m in later)
    assert sample(registry, "loaded_segments") == 1
    assert sample(registry, "loaded_rows") == seg.manifest.rows
    assert sample(registry, "tail_rows") == state.tail.row_count()
    assert sample(registry, "swaps_total") == 1


def test_released_segment_rewinds_the_tail_to_the_new_coverage(tmp_path, state) -> None:
    chain = Chain(tmp_path, 0, np.random.default_rng(4))
    rewinds = []
    state.on_rewind = lambda: rewinds.append(True)
    first = rounds(chain, 8)
    rec1, seg1 = chain.seal()
    second = rounds(chain, 8)
    rec2, seg2 = chain.seal()
    state.replace(set(), [(rec1, seg1)])
    state.replace(set(), [(rec2, seg2)])
    state.replace({rec2.segment_id}, [])
    assert rewinds == [True] and state.positions()[0] == 8
    state.apply(second)  # fetched before the re-assignment: discarded
    assert state.tail.row_count() == 0
    offsets, generation = state.start_offsets()
    assert offsets == {0: 8, 1: 0}
    state.reassigned(generation)
    state.apply(first + second)
    assert_serves(state, chain)
    assert state.positions()[0] == 16


def test_segments_registered_again_out_of_order_are_replayed_in_offset_order(tmp_path,
                                                                           state) -> None:
    chain = Chain(tmp_path, 0, np.random.default_rng(5))
    installed = []
    for _ in range(3):
        rounds(chain, 6)
        installed.append(chain.seal())
    for rec, seg in installed:
        state.replace(set(), [(rec, seg)])
    assert_serves(state, chain)
    state.replace({installed[0][0].segment_id, installed[1][0].segment_id}, [])
    only_last = state_after(chain, 18)
    only_last = {k: v for k, v in only_last.items() if chain.written_at[k] >= 12}
    assert_state(state, only_last)
    assert state.positions()[0] == 18  # the last segment still covers up to its end
    for rec, seg in installed[:2]:  # older than what is served: the partition is replayed
        state.replace(set(), [(rec, seg)])
    assert_serves(state, chain)


def test_a_corrupt_segment_is_refused_by_load_and_an_io_error_is_not_corruption(
        tmp_path, monkeypatch) -> None:
    chain = Chain(tmp_path, 0, np.random.default_rng(6))
    rounds(chain, 5)
    rec, _ = chain.seal()
    vectors = tmp_path / rec.path / "vectors.npy"
    good = vectors.read_bytes()
    vectors.write_bytes(good[:-4] + b"\x00\x00\x80\x7f")
    with pytest.raises(CorruptSegment, match="vectors.npy: sha256 does not match"):
        segments.load(chain.store, rec)
    vectors.write_bytes(good)

    def no_more_maps(*args, **kwargs):
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    monkeypatch.setattr(segfolder.mmap_module, "mmap", no_more_maps)
    with pytest.raises(segments.SegmentUnavailable, match="Cannot allocate memory"):
        segments.load(chain.store, rec)
    monkeypatch.undo()
    moved = dataclasses.replace(rec, path=f"{rec.path}-moved")
    with pytest.raises(segments.SegmentUnavailable, match="no folder"):
        segments.load(chain.store, moved)
    assert segments.load(chain.store, rec).manifest.segment_id == rec.segment_id
    manifest = tmp_path / rec.path / "manifest.json"
    manifest.rename(tmp_path / "manifest.json")  # a copy of the folder still under way
    with pytest.raises(segments.SegmentUnavailable, match="manifest.json: missing"):
        segments.load(chain.store, rec)


def test_observe_records_when_each_partition_was_at_the_log_end(state) -> None:
    state.observe({0: 0, 1: 5}, now=10.0)
    assert state.caught_up_at() == {0: 10.0}


def test_replacing_segments_by_a_merge_is_one_swap_without_rewind(tmp_path, state) -> None:
    chain = Chain(tmp_path, 0, np.random.default_rng(7))
    rewinds = []
    state.on_rewind = lambda: rewinds.append(True)
    installed = []
    for _ in range(3):
        rounds(chain, 6)
        installed.append(chain.seal())
    tail = rounds(chain, 4)
    state.replace(set(), installed)
    state.apply(tail)
    assert_serves(state, chain)
    segs = [seg for _, seg in installed]
    sealed = rewrite.rows_of(segs, hidden_rows(segs))
    assert sealed.rows == len(state_after(chain, 18))  # only the visible rows are kept
    merged = publish.write(chain.store, COLLECTION, 0, sealed, metric="l2", index="Flat")
    state.replace({rec.segment_id for rec, _ in installed},
                  [(merged.record, segments.load(chain.store, merged.record))])
    assert_serves(state, chain)
    assert rewinds == [] and state.positions()[0] == 22
    assert state.served() == {merged.record.segment_id: merged.record.path}
    # A generation switch keeps the ids and moves the paths: the swap follows the path.
    moved = publish.write(chain.store, COLLECTION, 1, sealed, metric="l2", index="HNSW8")
    state.replace({merged.record.segment_id}, [(moved.record, segments.load(chain.store,
                                                                           moved.record))])
    assert_serves(state, chain)
    assert state.served() == {moved.record.segment_id: moved.record.path}


def test_a_view_stays_as_published_while_messages_and_swaps_go_on(tmp_path, state) -> None:
    chain = Chain(tmp_path, 0, np.random.default_rng(8))
    first = rounds(chain, 10)
    state.replace(set(), [chain.seal()])
    state.apply(first + rounds(chain, 6))  # a tail over sealed rows, some of them rewritten
    old = state.view()
    assert old.positions == {0: 16, 1: 0}
    expected = state_after(chain, 16)
    later = rounds(chain, 30)  # rewrites and deletes of the same ids; the tail grows and trims
    state.apply(later[:20])
    state.replace(set(), [chain.seal()])
    state.apply(later[20:])
    assert_state(old, expected)
    assert old.positions == {0: 16, 1: 0}
    assert_serves(state, chain)
    assert state.view().positions == {0: 46, 1: 0}


def test_a_search_completes_while_a_swap_holds_the_lock(tmp_path, state) -> None:
    chain = Chain(tmp_path, 0, np.random.default_rng(9))
    state.apply(rounds(chain, 12))
    rec, seg = chain.seal()
    expected = state_after(chain, 12)
    inside, release = threading.Event(), threading.Event()
    swap_segments = state.segments.replace

    def held_swap(gone, loaded):  # the swap stops here, the serving lock held
        inside.set()
        release.wait(30)
        return swap_segments(gone, loaded)

    state.segments.replace = held_swap
    swap = threading.Thread(target=state.replace, args=(set(), [(rec, seg)]))
    swap.start()
    try:
        assert inside.wait(30)
        ids = sorted(expected)
        query = expected[ids[0]]
        view = state.view()
        (answer,) = execute.execute([QueryRequest("q", COLLECTION, query[None, :], 3)],
                                    [query[None, :]], view.searchables, "l2", view.positions)
        assert state.lock.locked() and swap.is_alive()  # answered while the swap was held
    finally:
        release.set()
        swap.join(30)
    truth = sorted(ids, key=lambda key: (float(((expected[key] - query) ** 2).sum()), key))
    assert answer.ids == [truth[:3]] and answer.offsets == {0: 12, 1: 0}
    assert state.tail.row_count() == 0 and state.positions() == {0: 12, 1: 0}
    assert_serves(state, chain)


def test_a_long_catch_up_is_published_in_steps_between_holds_of_the_lock(
        tmp_path, state, monkeypatch) -> None:
    monkeypatch.setattr(state_module, "APPLY_ROWS", 10)
    chain = Chain(tmp_path, 1, np.random.default_rng(10))
    msgs = rounds(chain, 12)
    steps: list[tuple[bool, int]] = []
    notify = state.progress.notify

    def noted() -> None:
        steps.append((state.lock.locked(), state.positions()[1]))
        notify()

    monkeypatch.setattr(state.progress, "notify", noted)
    state.apply(msgs)
    ends, rows = [], 0  # where each step ends: after the message that brings 10 rows or more
    for msg in msgs:
        rows += len(msg.batch)
        if rows >= 10 or msg is msgs[-1]:
            ends.append(msg.offset + 1)
            rows = 0
    assert steps == [(False, end) for end in ends] and len(ends) > 1
    assert_serves(state, chain)


def test_every_change_a_waiting_request_may_need_moves_the_progress(tmp_path, state) -> None:
    chain = Chain(tmp_path, 0, np.random.default_rng(11))
    msgs = rounds(chain, 4)
    versions = [state.progress.version]
    state.apply(msgs)
    versions.append(state.progress.version)
    state.replace(set(), [chain.seal()])
    versions.append(state.progress.version)
    state.observe({0: 4, 1: 0}, now=5.0)  # both partitions at their log ends
    versions.append(state.progress.version)
    state.observe({0: 9}, now=6.0)  # behind the log end: nothing a request waits for moved
    versions.append(state.progress.version)
    assert versions == [0, 1, 2, 3, 3]
