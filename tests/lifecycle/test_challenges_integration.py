"""Champion-challenger with real Kafka, Redis, indexers and searchers: shadows, the report."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from indexer.store import SegmentStore
from ingest import admin, audit
from ingest.names import CollectionName
from ingest.producer import Producer
from ingest.spec import CollectionSpec
from lifecycle import aliases, challenges
from lifecycle.evaluation import ChallengeWatch
from monitor.metrics import ChallengeMetrics
from searcher import routing
from searcher.client import SHADOW_MARGIN_S, Client
from searcher.shadow import decode_record
from streamvec.commands import main
from tests.support.cli import argv as cli
from tests.support.polling import wait_until
from tests.support.stack import IndexerThread, SearcherThread, exact_top_k
from tests.support.workers import wait_fully_indexed

pytestmark = pytest.mark.integration

# The searcher scans segments of up to 4096 rows exactly; 5000 rows in one segment let the
# challenger's IVF index (one probe) answer approximately, so its recall is below 1.
ROWS, QUERIES, K = 5000, 30, 10
DIM3, DIM4 = 8, 12  # two embedding models of the same items


def embeddings(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Model v3 and model v4 vectors of n items; v4 sees the same items a little differently."""
    rng = np.random.default_rng(seed)
    v3 = rng.standard_normal((n, DIM3)).astype(np.float32)
    v4 = np.hstack([v3 + 0.4 * rng.standard_normal((n, DIM3)),
                    0.5 * rng.standard_normal((n, DIM4 - DIM3))]).astype(np.float32)
    return v3, v4


@contextmanager
def collection(settings, name: str, dim: int, vectors: np.ndarray | None, *,
               index: str = "Flat", searcher: bool = True) -> Iterator[None]:
    """A collection with `vectors` as rows item-0.., indexed, and (optionally) a searcher
    that serves every row from sealed segments, so its answers no longer change; without
    vectors, an empty collection that nobody serves."""
    admin.create_collection(settings, CollectionSpec(name, dim=dim, partitions=1, index=index,
                                                     seal_rows=ROWS, seal_seconds=0.3))
    with ExitStack() as stack:
        if vectors is not None:
            with Producer(name, settings=settings) as producer:
                producer.upsert([f"item-{i}" for i in range(len(vectors))], vectors)
            indexer = IndexerThread(settings, name)
            stack.callback(indexer.stop)
            wait_fully_indexed(settings, name, CollectionName(name).topic, timeout=60)
        if searcher and vectors is not None:
            serving = SearcherThread(settings, name)
            stack.callback(serving.stop)
            rows = len(vectors)
            labels = {"collection": name}
            wait_until(lambda: serving.registry.get_sample_value(
                "streamvec_searcher_loaded_rows", labels) == rows and serving.registry.
                get_sample_value("streamvec_searcher_tail_rows", labels) == 0,
                timeout=60, what=f"{name} serving all {rows} rows from segments")
        yield


def rows_of(vectors: np.ndarray) -> dict[str, np.ndarray]:
    return {f"item-{i}": v for i, v in enumerate(vectors)}


def overlap(a: list[list[str]], b: list[list[str]]) -> float:
    return float(np.mean([len(set(x[:K]) & set(y[:K])) / K for x, y in zip(a, b, strict=True)]))


def log_records(redis_client, alias: str) -> list:
    return [decode_record(f) for _, f in redis_client.xrange(routing.log_key(alias))]


def report(settings, capsys, alias: str) -> dict:
    capsys.readouterr()
    assert main(cli(settings, "challenge", "report", alias, "--json")) == 0
    return json.loads(capsys.readouterr().out)


def test_a_full_share_shadows_every_search_to_a_model_of_another_dimension(
        settings, collection_name, redis_client, capsys):
    alias, v3, v4 = collection_name, f"{collection_name}@v3", f"{collection_name}@v4"
    data3, data4 = embeddings(7, ROWS)
    q3, q4 = embeddings(8, QUERIES)
    with collection(settings, v3, DIM3, data3), \
            collection(settings, v4, DIM4, data4, index="IVF8,Flat"):
        aliases.set_alias(redis_client, alias, v3, "alice")
        assert main(cli(settings, "--actor", "bob", "challenge", alias, "--challenger", v4,
                        "--share", "1.0")) == 0
        config = challenges.active(redis_client, alias)
        assert (config.champion, config.challenger, config.share) == (v3, v4, 1.0)
        want3 = exact_top_k(rows_of(data3), q3, K)[0]
        with Client(settings=settings) as client:
            for i in range(QUERIES):
                got = client.search(alias, {"v3": q3[i], "v4": q4[i]}, k=K)
                assert got.collection == v3
                assert list(got.ids[0]) == want3[i]
            with pytest.raises(ValueError, match=r"no query vectors for model version 'v3' of "
                                                 rf"collection '{v3}'; got versions \['v4'\]"):
                client.search(alias, {"v4": q4[0]}, k=K)
        # close() waited for every shadow: the log holds one record per search.
        records = log_records(redis_client, alias)
        assert len(records) == QUERIES
        assert {(r.challenge, r.champion, r.challenger, r.error) for r in records} == {
            (config.id, v3, v4, "")}
        # Shadow threads log in any order; each record pairs query i's v3 and v4 vectors.
        order = [int(np.flatnonzero((q3 == r.champion_vectors[0]).all(axis=1))[0])
                 for r in records]
        assert sorted(order) == list(range(QUERIES))
        assert np.array_equal(np.vstack([r.challenger_vectors for r in records]), q4[order])
        assert [r.champion_ids[0] for r in records] == [want3[i] for i in order]

        # Offline: the challenger's own answers, and exact top k of each model's data.
        with Client(settings=settings) as direct:
            answered4 = [list(r) for r in direct.search(v4, q4, k=K).ids]
        exact4 = exact_top_k(rows_of(data4), q4, K)[0]
        recall4 = overlap(answered4, exact4)
        assert recall4 < 1.0  # IVF with one probe misses some neighbours
        expected = {"overlap": overlap(want3, answered4),
                    "recall": {"champion": 1.0, "challenger": recall4}}

        registry = CollectorRegistry()
        watch = ChallengeWatch(redis_client, SegmentStore(settings.store),
                               ChallengeMetrics(registry))
        assert watch.run_once() == QUERIES
        assert watch.run_once() == 0  # each record counts once
        labels = {"alias": alias}
        assert registry.get_sample_value("streamvec_monitor_challenge_queries_total",
                                         labels) == QUERIES
        assert registry.get_sample_value("streamvec_monitor_challenge_overlap_ratio",
                                         labels) == pytest.approx(expected["overlap"])
        for role, value in expected["recall"].items():
            assert registry.get_sample_value("streamvec_monitor_challenge_recall_ratio",
                                             {**labels, "role": role}) == pytest.approx(value)
            assert registry.get_sample_value("streamvec_monitor_challenge_latency_seconds_count",
                                             {**labels, "role": role}) == QUERIES

        out = report(settings, capsys, alias)
        assert (out["searches"], out["queries"], out["compared"], out["errors"]) == (
            QUERIES, QUERIES, QUERIES, 0)
        assert out["overlap"] == pytest.approx(expected["overlap"])
        assert out["recall"] == pytest.approx(expected["recall"])
        assert [out["latency_ms"][r]["samples"] for r in ("champion", "challenger")] == [
            QUERIES, QUERIES]
        assert 0 < out["latency_ms"]["champion"]["p50"] <= out["latency_ms"]["champion"]["p99"]

        capsys.readouterr()
        assert main(cli(settings, "challenge", "report", alias)) == 0
        text = capsys.readouterr().out.splitlines()
        assert text[1] == f"searches {QUERIES}  queries {QUERIES}  compared {QUERIES}  " \
                          "shadow errors 0"
        assert text[-2].split()[-2:] == ["1.0000", f"{recall4:.4f}"]

        assert main(cli(settings, "--actor", "carol", "promote", alias)) == 0
        assert aliases.resolve(redis_client, alias) == v4
        assert challenges.active(redis_client, alias) is None
        assert report(settings, capsys, alias)["active"] is False
        assert main(cli(settings, "--actor", "dave", "rollback", alias)) == 0
        assert aliases.resolve(redis_client, alias) == v3
    assert [(e.action, e.actor) for e in audit.read(redis_client, 10, collection=alias)] == [
        ("alias.set", "alice"), ("challenge.start", "bob"), ("challenge.promote", "carol"),
        ("alias.rollback", "dave")]
    assert [(s.source, s.target, s.action) for s in aliases.history(redis_client, alias)] == [
        (v4, v3, "rollback"), (v3, v4, "promote"), (None, v3, "set")]


def run_error(settings, capsys, *args: str, code: int = 2) -> str:
    """Run a command that must fail with exit status `code`; its one-line error."""
    capsys.readouterr()
    assert main(cli(settings, *args)) == code
    err = capsys.readouterr().err
    assert err.startswith("streamvec: error: ") and err.endswith("\n"), err
    return err[len("streamvec: error: "):-1]


def test_a_zero_share_sends_no_shadow(settings, collection_name, redis_client, capsys):
    alias, v3, v4 = collection_name, f"{collection_name}@v3", f"{collection_name}@v4"
    data3, _ = embeddings(9, 300)
    with collection(settings, v3, DIM3, data3), collection(settings, v4, DIM4, None):
        aliases.set_alias(redis_client, alias, v3, "alice")
        assert run_error(settings, capsys, "challenge", "report", alias, code=3) == (
            f"alias '{alias}' has no challenge, active or ended")
        assert run_error(settings, capsys, "challenge", alias, "--challenger", v3, code=4) == (
            f"'{v3}' is already the champion of alias '{alias}'")
        assert run_error(settings, capsys, "challenge", alias, "--challenger", v4,
                         "--share", "1.5") == "share must be a fraction in [0, 1], got 1.5"
        assert run_error(settings, capsys, "challenge", "nope", "--challenger", v4,
                         code=3) == "alias 'nope' does not exist"
        assert run_error(settings, capsys, "promote", alias, code=3) == (
            f"alias '{alias}' has no active challenge to promote")
        config = challenges.start(redis_client, alias, v4, 0.0, "bob")
        assert run_error(settings, capsys, "challenge", alias, "--challenger", v4, code=4) == (
            f"alias '{alias}' already has an active challenge ({config.id}: {v4}); stop it "
            f"first with `streamvec challenge stop {alias}`")
        assert run_error(settings, capsys, "alias", "delete", alias, code=4) == (
            f"alias '{alias}' has an active challenge; stop it first with "
            f"`streamvec challenge stop {alias}`")
        with Client(settings=settings) as client:
            for q in data3[:20]:
                assert client.search(alias, q, k=3).collection == v3
            assert client._shadow is None  # not even a shadow thread was started
        assert not redis_client.exists(routing.log_key(alias))
        assert not redis_client.exists(f"sv:{{{v4}}}:q")  # the challenger was never asked
        out = report(settings, capsys, alias)
        assert (out["searches"], out["queries"], out["errors"]) == (0, 0, 0)
        assert main(cli(settings, "--actor", "carol", "challenge", "stop", alias)) == 0
        assert challenges.active(redis_client, alias) is None
        assert aliases.resolve(redis_client, alias) == v3
        assert run_error(settings, capsys, "challenge", "stop", alias, code=3) == (
            f"alias '{alias}' has no active challenge")
        assert main(cli(settings, "--actor", "dave", "alias", "delete", alias)) == 0
        assert not redis_client.keys(f"sv:{{{alias}}}:*")  # history, challenge keys: all gone
    assert [(e.action, e.actor) for e in audit.read(redis_client, 10, collection=alias)] == [
        ("alias.set", "alice"), ("challenge.start", "bob"), ("challenge.stop", "carol"),
        ("alias.delete", "dave")]


def test_a_challenger_nobody_serves_never_fails_or_slows_the_caller(
        settings, collection_name, redis_client, capsys):
    alias, v3, v4 = collection_name, f"{collection_name}@v3", f"{collection_name}@v4"
    data3, _ = embeddings(10, 300)
    searches, timeout = 6, 1.0
    with collection(settings, v3, DIM3, data3), collection(settings, v4, DIM4, None):
        aliases.set_alias(redis_client, alias, v3, "alice")
        challenges.start(redis_client, alias, v4, 1.0, "bob")
        want = exact_top_k(rows_of(data3), data3[:searches], 3)[0]
        client = Client(settings=settings, shadow_workers=searches)
        started = time.monotonic()
        for i in range(searches):
            got = client.search(alias, data3[i], k=3, timeout=timeout)
            assert list(got.ids[0]) == want[i]
        callers = time.monotonic() - started
        client.close()  # waits for the shadows to time out and be logged
        waited = time.monotonic() - started
        # Every shadow waited timeout + margin; the callers never did.
        assert waited >= timeout + SHADOW_MARGIN_S > callers
        records = log_records(redis_client, alias)
        assert len(records) == searches
        assert all(r.error.startswith("SearchTimeout: no searcher answered a query on "
                                      f"'{v4}'") and r.challenger_ms is None
                   and r.challenger_ids is None for r in records)
        out = report(settings, capsys, alias)
        assert (out["searches"], out["queries"], out["compared"], out["errors"]) == (
            searches, searches, 0, searches)
        assert out["overlap"] is None and out["recall"] == {"champion": 1.0,
                                                            "challenger": None}
        assert out["latency_ms"]["challenger"] == {"samples": 0, "p50": None, "p99": None}
        assert out["latency_ms"]["champion"]["samples"] == searches
