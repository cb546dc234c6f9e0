"""Generation switches, rollback, compaction and aliases: no query fails, answers stay exact."""

# Stable rows are loaded and sealed first; client threads then query near them without pause
# while ingest churns other rows placed far away, so every answer under load has one known
# exact value: the stable rows' top-k. A switch that served half a segment set, lost a
# segment for an instant or counted one twice would answer something else. Between switches
# ingest is paused and probes near both regions are compared with brute force over the
# expected latest state, churned rows included.

from __future__ import annotations

import threading

import numpy as np
import pytest

from indexer import publish
from indexer.rebuild import plan_rebuild
from indexer.registry import Registry
from indexer.store import SegmentStore
from indexer.view import hidden_rows, load_registered
from ingest.producer import Producer
from ingest.spec import CollectionSpec
from lifecycle import aliases, compaction, generations
from searcher.client import Client
from tests.support.polling import wait_until
from tests.support.stack import SearcherThread, exact_top_k, served
from tests.support.switchload import (
    DIM,
    INDEX_TIMEOUT_S,
    LOAD_STEP,
    SEAL_ROWS,
    SWITCH_TIMEOUT_S,
    Churn,
    K,
    QueryLoad,
    assert_exact,
    load_queries,
    load_sealed,
    near,
    spec_for,
    stable_rows,
)
from tests.support.workers import live_rows, wait_fully_indexed

pytestmark = pytest.mark.integration

def test_generation_switch_rollback_and_compaction_under_load_fail_no_query(
        settings, collection_name):
    spec = spec_for(collection_name)
    stable = stable_rows()
    registry = Registry(settings.redis_client(), spec.name)
    with served(settings, spec) as running:
        load_sealed(settings, spec, stable)
        churn = Churn(settings, [spec.name])
        churn.start()

        def serve_generation(report) -> bool:
            paths = served_paths(running.searchers)[0].values()
            return all(f"/g{report.generation:04d}/" in path for path in paths)

        def serve_merged(report) -> bool:
            ids = set(served_paths(running.searchers)[0])
            merged = {sid for group in report.merged for sid in group}
            return set(report.written) <= ids and not merged & ids

        try:
            with QueryLoad(settings, spec.name, *load_queries(stable)) as load:
                switched = load.switch("reindex", lambda: generations.reindex(settings, spec.name,
                                                                          "Flat"),
                                       settled=serve_generation)
                assert (switched.outcome.generation, switched.outcome.previous) == (1, 0)
                [offsets] = churn.pause()
                assert_exact(settings, spec.name, churn, stable, offsets)
                churn.start()

                back = load.switch("rollback", lambda: generations.rollback(settings, spec.name),
                                   settled=serve_generation)
                assert (back.outcome.generation, back.outcome.previous) == (0, 1)
                assert back.outcome.reused > 0  # the stable rows' folders of generation 0
                [offsets] = churn.pause()
                assert_exact(settings, spec.name, churn, stable, offsets)
                churn.start()

                policy = compaction.CompactionPolicy(max_rows=8 * SEAL_ROWS, max_segments=4)
                merged = load.switch("compaction",
                                     lambda: compaction.compact(settings, spec.name, policy),
                                     settled=serve_merged)
                report = merged.outcome
                assert report.written and report.segments_after < report.segments_before
                [offsets] = churn.pause()
                assert_exact(settings, spec.name, churn, stable, offsets)
        finally:
            churn.close()
    assert registry.active_generation() == 0
    assert {r.generation for r in registry.segments()} == {0}  # none left behind a switch
    assert churn.sent > 0
    load.check()


def test_alias_switch_and_rollback_under_load_fail_no_query(settings, collection_name):
    alias = collection_name
    v1, v2 = spec_for(f"{alias}@v1"), spec_for(f"{alias}@v2")
    stable = stable_rows()
    client = settings.redis_client()
    with served(settings, v1), served(settings, v2):
        load_sealed(settings, v1, stable)
        load_sealed(settings, v2, stable)
        aliases.set_alias(client, alias, v1.name, "test")
        churn = Churn(settings, [v1.name, v2.name])
        churn.start()
        try:
            with QueryLoad(settings, alias, *load_queries(stable)) as load:
                switched = load.switch("alias switch", lambda: aliases.set_alias(
                    client, alias, v2.name, "test"), served_by=v2.name)
                assert switched.outcome == v1.name
                assert load.sent_after(switched.returned) == {v2.name}
                offsets = churn.pause()
                assert_exact(settings, alias, churn, stable, offsets[1])
                churn.start()

                rolled = load.switch("alias rollback",
                                     lambda: aliases.rollback(client, alias, "test"),
                                     served_by=v1.name)
                assert rolled.outcome == (v2.name, v1.name)
                assert load.sent_after(rolled.returned) == {v1.name}
                offsets = churn.pause()
                assert_exact(settings, alias, churn, stable, offsets[0])
        finally:
            churn.close()
    load.check()


def served_paths(searchers: list[SearcherThread]) -> list[dict[str, str]]:
    """Segment id -> registered path that each searcher serves now."""
    return [s.engine.state.served() for s in searchers]


def wait_serving(searchers: list[SearcherThread], registry: Registry, what: str) -> None:
    """Poll until every searcher serves exactly the registry's segments, at their paths."""
    def same() -> bool:
        want = {r.segment_id: r.path for r in registry.segments()}
        return all(paths == want for paths in served_paths(searchers))

    wait_until(same, timeout=SWITCH_TIMEOUT_S, what=f"the searchers to serve {what}")


def search_all(settings, name: str, queries: np.ndarray,
               offsets: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Ids and scores of every query, read after `offsets`."""
    with Client(settings=settings) as client:
        got = client.search(name, queries, k=K, consistency={"session": offsets}, timeout=30)
    return got.ids, got.scores


def overwrite_and_delete(settings, spec: CollectionSpec, rows: dict[str, np.ndarray],
                         again: list[str], gone: list[str], seed: int) -> dict[int, int]:
    """Upsert `again` with new vectors and delete `gone`, in `rows` too; return the offsets."""
    rng = np.random.default_rng(seed)
    with Producer(spec.name, settings=settings) as producer:
        for lo in range(0, len(again), LOAD_STEP):
            keys = again[lo:lo + LOAD_STEP]
            vectors = rng.standard_normal((len(keys), DIM)).astype(np.float32)
            producer.upsert(keys, vectors)
            rows.update(zip(keys, vectors, strict=True))
        producer.delete(gone)
        for key in gone:
            del rows[key]
        offsets = producer.flush()
    wait_fully_indexed(settings, spec.name, spec.collection.topic, INDEX_TIMEOUT_S)
    return offsets


def spans(records) -> dict[int, list[tuple[int, int]]]:
    """Per partition, the (start, end) offsets of each segment, in order."""
    out: dict[int, list[tuple[int, int]]] = {}
    for rec in sorted(records, key=lambda r: (r.partition, r.start_offset)):
        out.setdefault(rec.partition, []).append((rec.start_offset, rec.end_offset))
    return out


def test_rollback_after_a_reindex_restores_identical_answers(settings, collection_name):
    # Segments above searcher.search.SCAN_MAX_VISIBLE rows are searched through their index,
    # so the HNSW generation really answers from HNSW graphs.
    spec = spec_for(collection_name, seal_rows=5000, seal_seconds=0.5)
    rows = stable_rows() | {f"more-{i}": v for i, v in enumerate(np.random.default_rng(
        2).standard_normal((10_000, DIM)).astype(np.float32))}
    queries = near(rows, 64, seed=4)
    registry = Registry(settings.redis_client(), spec.name)
    with served(settings, spec) as running:
        searchers = running.searchers
        load_sealed(settings, spec, rows)
        offsets = overwrite_and_delete(settings, spec, rows, [f"more-{i}" for i in range(800)],
                                       [f"stable-{i}" for i in range(300)], seed=6)
        wait_serving(searchers, registry, "generation 0")
        before_ids, before_scores = search_all(settings, spec.name, queries, offsets)
        want_ids, _ = exact_top_k(rows, queries, K)
        assert [list(r) for r in before_ids] == want_ids
        assert max(r.rows for r in registry.segments()) > 4096

        report = generations.reindex(settings, spec.name, "HNSW16")
        assert (report.generation, report.built, report.reused) == (1, len(registry.segments()),
                                                                    0)
        assert {r.factory for r in registry.segments()} == {"HNSW16"}
        wait_serving(searchers, registry, "generation 1")
        hnsw_ids, _ = search_all(settings, spec.name, queries, offsets)
        assert all(len(set(row)) == K for row in hnsw_ids.tolist())

        back = generations.rollback(settings, spec.name)
        assert (back.generation, back.built, back.reused) == (0, 0, report.built)
        wait_serving(searchers, registry, "generation 0 again")
        after_ids, after_scores = search_all(settings, spec.name, queries, offsets)
    assert np.array_equal(after_ids, before_ids)
    assert np.array_equal(after_scores, before_scores)
    assert {g: i.state for g, i in registry.generations().items()} == {0: "active",
                                                                       1: "retired"}


def test_compaction_reaches_the_target_purges_hidden_rows_and_rebuilds_from_the_store(
        settings, collection_name):
    spec = spec_for(collection_name, seal_seconds=0.5)
    rows = stable_rows()
    queries = near(rows, 64, seed=7)
    registry = Registry(settings.redis_client(), spec.name)
    store = SegmentStore.from_settings(settings)
    with served(settings, spec) as running:
        searchers = running.searchers
        load_sealed(settings, spec, rows)
        offsets = overwrite_and_delete(settings, spec, rows, [f"stable-{i}" for i in range(500)],
                                       [f"stable-{i}" for i in range(500, 600)], seed=8)
        wait_serving(searchers, registry, "the loaded segments")
        records = registry.segments()
        checkpoints = registry.checkpoints()
        segments = load_registered(registry, store)
        hidden, visible = hidden_rows(segments), live_rows(segments)
        before_ids, before_scores = search_all(settings, spec.name, queries, offsets)
        assert [list(r) for r in before_ids] == exact_top_k(rows, queries, K)[0]
        policy = compaction.CompactionPolicy(max_rows=4 * SEAL_ROWS, max_segments=4)
        target = policy.target(records)
        assert min(len(s) for s in spans(records).values()) >= 8
        assert sum(target.values()) < len(records)

        report = compaction.compact(settings, spec.name, policy)

        after = registry.segments()
        assert {p: len(s) for p, s in spans(after).items()} == target
        assert (report.segments_before, report.segments_after) == (len(records), len(after))
        purged = sum(len(hidden.get(sid, ())) for group in report.merged for sid in group)
        assert report.rows_in - report.rows_out == purged > 0
        assert registry.checkpoints() == checkpoints
        now_visible = live_rows(load_registered(registry, store))
        assert sorted(now_visible) == sorted(visible) == sorted(rows)
        assert all(np.array_equal(now_visible[k].vector, rows[k]) and
                   now_visible[k].offset == visible[k].offset for k in rows)
        wait_serving(searchers, registry, "the compacted segments")
        after_ids, after_scores = search_all(settings, spec.name, queries, offsets)
        assert np.array_equal(after_ids, before_ids)
        assert np.array_equal(after_scores, before_scores)
        rebuilt = plan_rebuild(store, spec.name, registry.active_generation())
        assert spans(rebuilt.records) == spans(after) and rebuilt.checkpoints == checkpoints

        assert generations.reindex(settings, spec.name, "Flat").generation == 1
        rebuilt = plan_rebuild(store, spec.name, registry.active_generation())
        assert spans(rebuilt.records) == spans(after) and rebuilt.checkpoints == checkpoints
        assert {r.segment_id for r in rebuilt.records} == {r.segment_id for r in after}


def test_a_segment_sealed_just_before_a_switch_is_indexed_into_the_new_generation(
        settings, collection_name, monkeypatch):
    spec = spec_for(collection_name, partitions=1, seal_seconds=0.5)
    rows = stable_rows()
    registry = Registry(settings.redis_client(), spec.name)
    building, release = threading.Event(), threading.Event()
    real = publish.write

    def held(*args, **kwargs):
        # Only the worker's builder thread waits; the reindex writes on this thread at once.
        if threading.current_thread() is not threading.main_thread() and not release.is_set():
            building.set()
            release.wait(SWITCH_TIMEOUT_S)
        return real(*args, **kwargs)

    with served(settings, spec) as running:
        first = {f"stable-{i}": rows[f"stable-{i}"] for i in range(1000)}
        late = {f"stable-{i}": rows[f"stable-{i}"] for i in range(1000, 1000 + SEAL_ROWS)}
        load_sealed(settings, spec, first)
        monkeypatch.setattr(publish, "write", held)
        with Producer(spec.name, settings=settings) as producer:
            producer.upsert(list(late), np.stack(list(late.values())))
            offsets = producer.flush()
        wait_until(building.is_set, timeout=INDEX_TIMEOUT_S, what="a build of generation 0")

        assert generations.reindex(settings, spec.name, "Flat").generation == 1
        release.set()  # the worker now registers a segment built for generation 0: refused

        wait_fully_indexed(settings, spec.name, spec.collection.topic, INDEX_TIMEOUT_S)
        assert running.indexer.sample("streamvec_indexer_registrations_total",
                                      collection=spec.name, status="stale_generation") == 1
        assert {r.generation for r in registry.segments()} == {1}
        rebuilt = plan_rebuild(SegmentStore(settings.store), spec.name, 1)
        assert spans(rebuilt.records) == spans(registry.segments())
        assert rebuilt.checkpoints == registry.checkpoints()
        expected = first | late
        queries = near(expected, 16, seed=9)
        ids, _ = search_all(settings, spec.name, queries, offsets)
        assert [list(r) for r in ids] == exact_top_k(expected, queries, K)[0]
