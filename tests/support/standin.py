"""Helpers for the query server tests: a stand-in engine, replicas on threads, raw requests."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import redis
from prometheus_client import CollectorRegistry

from ingest import catalog
from ingest.spec import CollectionSpec
from searcher import Client, protocol
from searcher.errors import QueryError
from searcher.metrics import SearcherMetrics
from searcher.query import Consistency, QueryAnswer, QueryRequest
from searcher.server import GROUP, Server
from streamvec.devstack.ports import LOOPBACK
from streamvec.devstack.redis import RedisServer
from streamvec.settings import Settings
from tests.support.stack import Running

DIM = 4
HITS = 5  # the stand-in engine finds this many rows, so k > HITS shows the padding
DEADLINE_S = 30.0


def expected_hits(query: np.ndarray, k: int) -> tuple[list[str], list[float], list[dict]]:
    """The stand-in engine's answer to one query: a pure function of the vector and k."""
    n = min(k, HITS)
    base = int(round(float(query.sum())))
    return ([f"h{base}-{j}" for j in range(n)], [float(query[0]) + j for j in range(n)],
            [{"rank": j, "base": base} for j in range(n)])


class StandIn:
    """A deterministic in-process engine with a controllable `reached` and failure switch."""

    def __init__(self, name: str, positions: dict[int, int] | None = None) -> None:
        self.spec = CollectionSpec(name, dim=DIM)
        self.blocked: set[str] = set()  # consistency levels that are never reached
        self.failing = False
        self.gate: threading.Event | None = None  # when set up, search_batch waits for it
        self.searched = threading.Event()
        self.requests: list[QueryRequest] = []
        self.now = positions if positions is not None else {0: 37, 1: 5}
        self.checks = 0  # calls of `reached`: the server re-checks waiting requests every step

    def arrival_state(self, consistency: Consistency) -> object:
        return {0: 50, 1: 5} if consistency.level == "strong" else None

    def reached(self, consistency: Consistency, state: object) -> bool:
        self.checks += 1
        return consistency.level not in self.blocked

    def positions(self) -> dict[int, int]:
        return dict(self.now)

    def search_batch(self, requests: list[QueryRequest]) -> list[QueryAnswer | QueryError]:
        self.searched.set()
        if self.gate is not None:
            self.gate.wait(DEADLINE_S)
        if self.failing:
            raise RuntimeError("index on fire")
        self.requests.extend(requests)
        answers = []
        for r in requests:
            hits = [expected_hits(q, r.k) for q in r.vectors]
            answers.append(QueryAnswer([h[0] for h in hits], [h[1] for h in hits],
                                       [h[2] for h in hits] if r.with_metadata else None,
                                       self.positions(), {"engine": 0.5}))
        return answers


@pytest.fixture
def redis_settings(redis_server: RedisServer, tmp_path: Path) -> Settings:
    """Settings that reach the session's Redis and no Kafka (these tests need none)."""
    return Settings(kafka=f"{LOOPBACK}:1", redis=redis_server.url, store=tmp_path / "s",
                    kafka_options={}, home=tmp_path / "h")


@pytest.fixture
def engine(redis_client: redis.Redis, collection_name: str) -> StandIn:
    """A stand-in engine for a collection registered in the catalog."""
    stand_in = StandIn(collection_name)
    catalog.claim_spec(redis_client, stand_in.spec)
    return stand_in


@pytest.fixture
def client(redis_settings: Settings) -> Iterator[Client]:
    """A query client of the session's Redis."""
    with Client(settings=redis_settings) as c:
        yield c


@contextmanager
def serving(settings: Settings, engine: StandIn, *, consumer: str = "r1",
            server_class: type[Server] = Server, **options) -> Iterator[tuple[Server, Metrics]]:
    """Run a replica on a thread; stop it and re-raise anything it raised when the block ends."""
    registry = CollectorRegistry()
    server = server_class(settings, engine.spec.name, engine, consumer=consumer,
                          metrics=SearcherMetrics(registry, engine.spec.name), **options)
    server.ensure_group()  # so that a test can look at the group as soon as the block starts
    replica = Running(server.run, server.stop, f"server-{consumer}", stop_timeout=DEADLINE_S)
    try:
        yield server, Metrics(registry, engine.spec.name)
    finally:
        replica.stop()


class Metrics:
    """Reads one replica's searcher metrics."""

    def __init__(self, registry: CollectorRegistry, name: str) -> None:
        self.registry, self.name = registry, name

    def get(self, metric: str, **labels: str) -> float:
        value = self.registry.get_sample_value(f"streamvec_searcher_{metric}",
                                               {"collection": self.name, **labels})
        return 0.0 if value is None else value


def raw_request(name: str, rid: str, vectors: np.ndarray, k: int = 3, **kw) -> dict[str, bytes]:
    """Stream fields of a request built without the client."""
    return protocol.encode_request(QueryRequest(rid, name, np.asarray(vectors, np.float32), k,
                                                **kw))


def add_all(r: redis.Redis, name: str, requests: list[dict]) -> None:
    pipe = r.pipeline(transaction=False)
    for fields in requests:
        pipe.xadd(protocol.queue_key(name), fields)
    pipe.execute()


def replies(r: redis.Redis, name: str, rids: list[str]) -> dict[str, list[bytes]]:
    """Every element of every reply list, by request id."""
    pipe = r.pipeline(transaction=False)
    for rid in rids:
        pipe.lrange(protocol.reply_key(name, rid), 0, -1)
    return dict(zip(rids, pipe.execute(), strict=True))


def drained(r: redis.Redis, name: str) -> bool:
    """True once every request was answered: the stream is empty and nothing is pending."""
    stream = protocol.queue_key(name)
    return r.xlen(stream) == 0 and r.xpending(stream, GROUP)["pending"] == 0


def assert_answer(body: bytes, rid: str, vectors: np.ndarray, k: int, offsets=None) -> None:
    """A reply is the stand-in's answer to these queries, exactly."""
    got_id, answer = protocol.decode_reply(body)
    assert got_id == rid and isinstance(answer, QueryAnswer)
    hits = [expected_hits(q, k) for q in np.asarray(vectors, np.float32).reshape(-1, DIM)]
    assert (answer.ids, answer.scores) == ([h[0] for h in hits], [h[1] for h in hits])
    assert answer.offsets == (offsets if offsets is not None else {0: 37, 1: 5})
