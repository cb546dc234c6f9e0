"""Partition-sharded searchers over real Kafka and Redis: a shard count change, equal answers,
a silent shard, a killed replica.

One collection of 8 partitions is shared by the module. It is first served whole by one
searcher, whose answers are the reference; then 2 shards x 2 replicas start and the shard map
switches to them while clients query. Vectors hold small integers, so every distance is exact
in float32 whatever the summation order: answers compare exactly, and duplicated vectors make
equal scores across shards that the tie rule (by id) must order alike.
"""

from __future__ import annotations

import json
import signal
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from indexer.registry import Registry
from ingest import admin
from ingest.partition import partition_of
from ingest.producer import Producer
from ingest.spec import CollectionSpec
from lifecycle import shards as lifecycle_shards
from lifecycle.errors import ShardMapMoved
from searcher import protocol, shards
from searcher.client import Client, SearchResult
from searcher.engine import Engine
from searcher.errors import ShardTimeout
from searcher.metrics import SearcherMetrics
from searcher.query import Consistency, QueryRequest
from searcher.server import Server
from searcher.shards import Shard, ShardMap
from streamvec.commands import main
from streamvec.commands.errors import ExitCode
from streamvec.redisconn import connect
from streamvec.settings import Settings
from tests.support.cli import argv
from tests.support.polling import wait_until
from tests.support.roles import RoleProcess
from tests.support.stack import IndexerThread, Running
from tests.support.standin import DEADLINE_S, assert_answer
from tests.support.standin import DIM as STANDIN_DIM

pytestmark = pytest.mark.integration

DIM, PARTITIONS, ROWS, DUPLICATES, K = 8, 8, 1600, 40, 10
COLORS = ("red", "blue", "green")
CASES = ("eventual", "session", "bounded", "strong", "filter")
SETTLE_S = 120.0


@dataclass
class Switch:
    """What happened to the queries sent while the shard map switched."""

    answered: int = 0
    after: int = 0  # answered once the switch returned
    failures: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)


@dataclass
class Stack:
    """The module's collection, its data, its searchers and the reference answers."""

    settings: Settings
    spec: CollectionSpec
    ids: list[str]
    vectors: np.ndarray
    metadata: list[dict]
    offsets: dict[int, int]
    queries: np.ndarray
    reference: dict[str, SearchResult]
    whole: RoleProcess
    shards: dict[str, list[RoleProcess]]
    switch: Switch
    client: Client
    redis: Any

    @property
    def name(self) -> str:
        return self.spec.name


def search(client: Client, name: str, queries: np.ndarray, case: str,
           offsets: dict[int, int], **kw: Any) -> SearchResult:
    """One search of a reference case: a consistency level, or a filter with metadata."""
    level: Any = {"eventual": "eventual", "session": {"session": offsets},
                  "bounded": {"bounded_ms": 60_000}, "strong": "strong",
                  "filter": "eventual"}[case]
    return client.search(name, queries, k=K, consistency=level, timeout=20,
                         filter={"color": "red"} if case == "filter" else None,
                         with_metadata=case == "filter", **kw)


def exact(stack_ids: list[str], vectors: np.ndarray, queries: np.ndarray, k: int,
          keep: Callable[[int], bool] = lambda i: True) -> list[list[str]]:
    """The k nearest ids of each query, equal distances by id: what every answer must be."""
    d2 = ((queries[:, None, :] - vectors[None, :, :]) ** 2).sum(axis=2)
    out = []
    for row in d2:
        ranked = sorted((float(row[i]), stack_ids[i]) for i in range(len(stack_ids)) if keep(i))
        out.append([i for _, i in ranked[:k]])
    return out


def under_queries(client_settings: Settings, name: str, queries: np.ndarray,
                  expected: list[list[str]], action: Callable[[], object],
                  clients: int = 2) -> Switch:
    """Run `action` while `clients` threads search without pause; count what they got."""
    done, stop = Switch(), threading.Event()
    acted = threading.Event()
    lock = threading.Lock()

    def loop(seed: int) -> None:
        client = Client(settings=client_settings)
        i = seed
        try:
            while not stop.is_set():
                pick = i % len(queries)
                i += 1
                try:
                    got = client.search(name, queries[pick], k=K, timeout=20)
                except Exception as exc:  # collected and asserted on the test thread
                    with lock:
                        done.failures.append(repr(exc))
                    continue
                with lock:
                    done.answered += 1
                    done.after += acted.is_set()
                    if got.ids[0].tolist() != expected[pick]:
                        done.wrong.append(f"query {pick}: {got.ids[0].tolist()}")
        finally:
            client.close()

    threads = [threading.Thread(target=loop, args=(s,)) for s in range(clients)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: done.answered >= 20, timeout=SETTLE_S, what="queries before the action")
        action()
        acted.set()
        wait_until(lambda: done.after >= 40, timeout=SETTLE_S, what="queries after the action")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    return done


def spawn(settings: Settings, name: str, log_dir: Path, tag: str, *args: str) -> RoleProcess:
    """A searcher process (its log in `log_dir`)."""
    return RoleProcess(settings, "searcher", name, log_dir, tag, "--replica", tag, *args)


@pytest.fixture(scope="module")
def stack(kafka_server, redis_server, tmp_path_factory) -> Iterator[Stack]:
    """Index the data, take reference answers from a whole searcher, then switch to 2 shards."""
    tmp = tmp_path_factory.mktemp("shards")
    settings = Settings(kafka=kafka_server.bootstrap, redis=redis_server.url,
                        store=tmp / "snapshots", kafka_options={}, home=tmp / "home")
    spec = CollectionSpec(f"t-{uuid.uuid4().hex[:8]}", dim=DIM, partitions=PARTITIONS,
                          index="Flat", seal_rows=120, seal_seconds=1.0)
    admin.create_collection(settings, spec)
    indexer = IndexerThread(settings, spec.name)
    processes: list[RoleProcess] = []
    client = Client(settings=settings)
    redis_client = connect(settings.redis_url)
    try:
        rng = np.random.default_rng(11)
        base = rng.integers(-20, 21, (ROWS, DIM)).astype(np.float32)
        vectors = np.vstack([base, base[:DUPLICATES]])  # equal scores under other ids
        ids = [f"v{i}" for i in range(ROWS)] + [f"dup{i}" for i in range(DUPLICATES)]
        metadata = [{"color": COLORS[i % 3], "i": i} for i in range(len(ids))]
        with Producer(spec.name, settings=settings) as producer:
            for lo in range(0, len(ids), 100):  # many messages: several segments per partition
                producer.upsert(ids[lo:lo + 100], vectors[lo:lo + 100], metadata[lo:lo + 100])
            offsets = producer.flush()
        registry = Registry(redis_client, spec.name)
        # Everything sealed: every row is scored by the same segment in every searcher.
        wait_until(lambda: all(registry.checkpoint(p) > o for p, o in offsets.items()),
                   timeout=SETTLE_S, what="every row sealed")
        whole = spawn(settings, spec.name, tmp, "whole")
        processes.append(whole)
        whole.wait_ready()
        queries = np.vstack([base[:6], rng.integers(-20, 21, (6, DIM))]).astype(np.float32)
        reference = {case: search(client, spec.name, queries, case, offsets) for case in CASES}
        groups = {}
        for index, label in ((1, "0-3"), (2, "4-7")):
            groups[label] = [spawn(settings, spec.name, tmp, f"s{index}{r}", "--shard",
                                   f"{index}/2") for r in "ab"]
            processes.extend(groups[label])
        for proc in processes[1:]:
            proc.wait_ready()
        expected = [row for row in reference["eventual"].ids.tolist()]
        switch = under_queries(settings, spec.name, queries, expected,
                               lambda: lifecycle_shards.reshard(settings, spec.name, 2,
                                                                wait_s=SETTLE_S))
        yield Stack(settings, spec, ids, vectors, metadata, offsets, queries, reference, whole,
                    groups, switch, client, redis_client)
    finally:
        for proc in processes:
            if proc.alive():
                proc.proc.send_signal(signal.SIGCONT)
                proc.stop()
        client.close()
        indexer.stop()
        redis_client.close()


def test_a_shard_count_change_under_queries_fails_none(stack: Stack) -> None:
    switch = stack.switch
    assert (switch.failures, switch.wrong) == ([], [])
    assert switch.after >= 40
    current = shards.read_map(stack.redis, stack.name)
    assert (current.version, [s.label for s in current.shards]) == (1, ["0-3", "4-7"])
    # The whole searcher drained its stream, deleted it and exited cleanly.
    wait_until(lambda: not stack.whole.alive(), timeout=SETTLE_S, what="the old searcher to exit")
    assert stack.whole.proc.returncode == 0, stack.whole.tail()
    assert "drained and deleted" in stack.whole.log.read_text()
    assert not stack.redis.exists(protocol.queue_key(stack.name))
    # The same count again changes nothing.
    again = lifecycle_shards.reshard(stack.settings, stack.name, 2, wait_s=0)
    assert not again.changed and shards.read_map(stack.redis, stack.name).version == 1


@pytest.mark.parametrize("case", CASES)
def test_two_shards_answer_exactly_as_one_searcher_did(stack: Stack, case: str) -> None:
    reference = stack.reference[case]
    keep = (lambda i: stack.metadata[i]["color"] == "red") if case == "filter" else (
        lambda i: True)
    assert reference.ids.tolist() == exact(stack.ids, stack.vectors, stack.queries, K, keep)
    got = search(stack.client, stack.name, stack.queries, case, stack.offsets)
    assert got.ids.tolist() == reference.ids.tolist()
    assert np.array_equal(got.scores, reference.scores)
    assert got.metadata == reference.metadata
    assert (got.partial, got.missing) == (False, ())
    assert set(got.offsets) == set(range(PARTITIONS))


def test_each_shard_searcher_holds_only_its_partitions_segments(stack: Stack) -> None:
    registry = Registry(stack.redis, stack.name)
    per_partition: dict[int, int] = {}
    for record in registry.segments():
        per_partition[record.partition] = per_partition.get(record.partition, 0) + 1

    def active() -> list[shards.Advert] | None:
        found = [a for a in shards.read_adverts(stack.redis, stack.name)
                 if a.state == shards.ACTIVE]
        return found if len(found) == 4 else None

    # Adverts are refreshed every second: the ones of the map switch come in within that.
    adverts = wait_until(active, timeout=SETTLE_S, what="four active adverts")
    assert sorted((a.shard, a.replica) for a in adverts) == [
        ("0-3", "s1a"), ("0-3", "s1b"), ("4-7", "s2a"), ("4-7", "s2b")]
    assert min(per_partition.values()) >= 2 and len(per_partition) == PARTITIONS
    for advert in adverts:
        own = tuple(shards.parse_partitions(advert.shard))
        assert advert.partitions == own and advert.ready and advert.map_version == 1
        assert advert.segments == {p: per_partition.get(p, 0) for p in own}
        assert set(advert.positions) == set(own)


def test_the_command_line_shows_the_map_and_switches_only_to_served_shards(
        stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv(stack.settings, "collection", "shards", stack.name, "--json")) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["version"], shown["shards"]) == (1, ["0-3", "4-7"])
    assert {s["replica"] for s in shown["searchers"]} >= {"s1a", "s2a"}
    # Nobody serves shards of three: refused, named, and nothing changes.
    assert main(argv(stack.settings, "collection", "reshard", stack.name, "--shards", "3",
                     "--wait", "0")) == ExitCode.UNAVAILABLE
    err = capsys.readouterr().err
    assert "no live, caught-up searcher serves 3 of the 3 new shard(s)" in err
    assert f"`streamvec searcher --collection {stack.name} --shard 2/3`" in err
    assert main(argv(stack.settings, "collection", "reshard", stack.name, "--shards", "9")) \
        == ExitCode.USAGE
    assert "9 shards need 1..8 of them" in capsys.readouterr().err
    assert shards.read_map(stack.redis, stack.name).version == 1


def test_a_silent_shard_is_named_and_partial_returns_the_others_hits(stack: Stack) -> None:
    silent = stack.shards["4-7"]
    for proc in silent:
        proc.proc.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(ShardTimeout) as failed:
            stack.client.search(stack.name, stack.queries, k=K, timeout=0.5)
        assert failed.value.shard == "4-7"
        assert "shard 4-7 of " in str(failed.value)
        got = stack.client.search(stack.name, stack.queries, k=K, timeout=0.5, partial=True)
    finally:
        for proc in silent:
            proc.proc.send_signal(signal.SIGCONT)
    assert (got.partial, got.missing) == (True, ("4-7",))
    first = lambda i: partition_of(stack.ids[i], PARTITIONS, stack.spec.partitioner) < 4  # noqa: E731
    assert got.ids.tolist() == exact(stack.ids, stack.vectors, stack.queries, K, first)
    assert set(got.offsets) == {0, 1, 2, 3}


def test_a_killed_shard_replica_loses_no_request_and_answers_none_twice(stack: Stack) -> None:
    victim = stack.shards["0-3"][1]
    expected = stack.reference["eventual"].ids.tolist()
    done = under_queries(stack.settings, stack.name, stack.queries, expected,
                         lambda: victim.proc.send_signal(signal.SIGKILL), clients=3)
    assert (done.failures, done.wrong) == ([], [])
    assert not victim.alive()
    # A second reply to a request would stay unread on its reply list.
    leftovers = [k for k in stack.redis.scan_iter(match=f"sv:{{{stack.name}~0-3}}:r:*")
                 if stack.redis.llen(k)]
    assert leftovers == [], "a request got a second reply"


def test_a_retired_shard_answers_what_its_stream_holds_then_deletes_it_and_stops(
        redis_settings, engine, redis_client) -> None:
    """Redis only: a shard server's states as the map moves, with a stand-in engine."""
    name, first = engine.spec.name, Shard((0, 1), 4)
    server = Server(redis_settings, name, engine, consumer="r1", shard=first,
                    metrics=SearcherMetrics(CollectorRegistry(), name))
    server.ensure_group()
    replica = Running(server.run, server.stop, "shard-0-1", stop_timeout=DEADLINE_S)
    try:
        wait_until(lambda: server.state == shards.STANDBY and server.map_version == 0,
                   timeout=DEADLINE_S, what="standby without a map")
        lifecycle_shards.write_map(redis_client, name, ShardMap.plan(4, 2, 1), 0)
        wait_until(lambda: server.state == shards.ACTIVE, timeout=DEADLINE_S, what="active")
        # A request that waits (strong is never reached) is on the stream at the switch.
        engine.blocked = {"strong"}
        held = QueryRequest("held", name, np.ones((1, STANDIN_DIM), np.float32), 3,
                            consistency=Consistency("strong"), timeout_ms=30_000)
        stream = protocol.queue_key(name, "0-1")
        redis_client.xadd(stream, protocol.encode_request(held, "0-1"))
        wait_until(lambda: engine.checks >= 1, timeout=DEADLINE_S, what="the request held")
        with pytest.raises(ShardMapMoved, match="moved to version 1"):
            lifecycle_shards.write_map(redis_client, name, ShardMap.plan(4, 1, 2), 0)
        lifecycle_shards.write_map(redis_client, name, ShardMap.plan(4, 1, 2), 1)
        wait_until(lambda: server.state == shards.DRAINING, timeout=DEADLINE_S, what="draining")
        checks = engine.checks
        wait_until(lambda: engine.checks >= checks + 20, timeout=DEADLINE_S, what="turns")
        assert redis_client.exists(stream) and replica.thread.is_alive()
        engine.blocked.clear()
        _, body = redis_client.blpop([protocol.reply_key(name, "held", "0-1")], DEADLINE_S)
        assert_answer(body, "held", np.ones((1, STANDIN_DIM)), 3)
        replica.thread.join(DEADLINE_S)
        assert not replica.thread.is_alive()  # it stopped on its own
        assert not redis_client.exists(stream)
        # A client still following map 1 finds no stream to add to, and reads the map again.
        assert redis_client.xadd(stream, {"v": "1"}, nomkstream=True) is None
    finally:
        replica.stop()


class ShardThread(Running):
    """A shard's searcher (engine and server) on a thread of the test."""

    def __init__(self, settings: Settings, name: str, selection: shards.Selection,
                 replica: str) -> None:
        metrics = SearcherMetrics(CollectorRegistry(), name)
        self.engine = Engine(settings, name, metrics=metrics, selection=selection)
        self.engine.start()
        self.server = Server(settings, name, self.engine, consumer=replica, metrics=metrics,
                             shard=self.engine.shard)
        super().__init__(self.server.run, self._halt, f"searcher-{replica}")

    def _halt(self) -> None:
        self.server.stop()
        self.engine.stop()


@pytest.mark.redis_cluster
def test_sharded_read_your_writes_on_a_redis_cluster(settings, collection_name) -> None:
    """Shards on other slots than their collection: the client scatters over the cluster."""
    assert settings.redis_url.startswith("redis+cluster://")
    spec = CollectionSpec(collection_name, dim=4, partitions=4, index="Flat", seal_rows=50)
    admin.create_collection(settings, spec)
    indexer = IndexerThread(settings, spec.name)
    searchers = [ShardThread(settings, spec.name, shards.Selection(i, 2), f"c{i}")
                 for i in (1, 2)]
    client = Client(settings=settings)
    try:
        assert lifecycle_shards.reshard(settings, spec.name, 2, wait_s=SETTLE_S).changed
        rng = np.random.default_rng(5)
        rows = rng.integers(-9, 10, (120, 4)).astype(np.float32)
        ids = [f"c{i}" for i in range(len(rows))]
        with Producer(spec.name, settings=settings) as producer:
            producer.upsert(ids, rows)
            offsets = producer.flush()
            got = client.search(spec.name, rows[:8], k=5, consistency={"session": offsets})
            assert got.ids.tolist() == exact(ids, rows, rows[:8], 5)
            for trial in range(20):
                vector = np.array([30 + trial, 30, 30, 30], np.float32)  # nearest to itself
                producer.upsert([f"new-{trial}"], vector[None, :])
                found = client.search(spec.name, vector, k=1,
                                      consistency={"session": producer.flush()})
                assert found.ids[0][0] == f"new-{trial}", trial
    finally:
        client.close()
        for searcher in searchers:
            searcher.stop()
        indexer.stop()


def test_forgetting_a_collections_shards_deletes_their_keys_only(redis_client,
                                                                 collection_name) -> None:
    name = collection_name
    mine = [protocol.queue_key(name, "0-3"), protocol.reply_key(name, "x", "4-7")]
    others = [f"sv:{{{name}}}:spec", protocol.queue_key(f"{name}-b", "0-3"),
              protocol.queue_key(f"{name}@v2", "0-3")]
    for key in mine + others:
        redis_client.set(key, "1")
    assert lifecycle_shards.forget_shards(redis_client, name) == 2
    assert [redis_client.exists(k) for k in mine + others] == [0, 0, 1, 1, 1]
    redis_client.delete(*others)


def test_a_shard_without_a_stream_is_named_and_partial_leaves_it_out(
        redis_settings, engine, redis_client, client) -> None:
    """Redis only: the map names a shard no searcher ever served, so it has no stream."""
    name = engine.spec.name
    lifecycle_shards.write_map(redis_client, name, ShardMap.plan(4, 2, 1), 0)
    server = Server(redis_settings, name, engine, consumer="r1", shard=Shard((0, 1), 4),
                    metrics=SearcherMetrics(CollectorRegistry(), name))
    server.ensure_group()
    replica = Running(server.run, server.stop, "shard-0-1", stop_timeout=DEADLINE_S)
    try:
        query = np.ones((1, STANDIN_DIM), np.float32)
        with pytest.raises(ShardTimeout, match=r"shard 2-3 of '.*' has no request stream "
                                               r"\(sv:\{.*~2-3\}:q\): no searcher serves it"):
            client.search(name, query, k=3)
        got = client.search(name, query, k=3, partial=True)
        assert (got.partial, got.missing) == (True, ("2-3",))
        assert got.ids.tolist() == [["h4-0", "h4-1", "h4-2"]]
    finally:
        replica.stop()
