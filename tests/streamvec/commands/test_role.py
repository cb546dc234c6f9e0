"""Real searcher, indexer and monitor processes answer /readyz, /healthz and /metrics."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from ingest import admin
from ingest.spec import CollectionSpec
from streamvec import __version__
from streamvec.commands.errors import ExitCode
from streamvec.devstack.ports import LOOPBACK, free_port
from streamvec.devstack.redis import RedisServer
from tests.support.polling import wait_until
from tests.support.roles import READY_TIMEOUT_S, RoleProcess, answer, get

pytestmark = pytest.mark.integration


def build_info(text: str) -> list[dict[str, str]]:
    """The label sets of the streamvec_build_info samples of a /metrics page."""
    return [s.labels for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == "streamvec_build_info" and s.value == 1]


@pytest.fixture
def start(settings, collection_name, tmp_path) -> Iterator:
    """Start role processes of one small collection; stop them all after the test."""
    admin.create_collection(settings, CollectionSpec(collection_name, dim=8, partitions=2,
                                                     index="Flat", seal_rows=100))
    started: list[RoleProcess] = []

    def start_role(role: str) -> RoleProcess:
        started.append(RoleProcess(settings, role, collection_name, tmp_path))
        return started[-1]

    try:
        yield start_role
    finally:
        codes = {r.role: r.stop() for r in started}
        assert codes == {r.role: 0 for r in started}, "\n".join(r.tail() for r in started)


def test_every_role_turns_ready_and_serves_health_and_metrics(start, collection_name):
    searcher = start("searcher")
    body = searcher.wait_ready()
    assert body == {"component": "searcher", "status": "ok",
                    "reason": f"serving {collection_name}"}
    assert answer(searcher.port, "/healthz") == (
        200, {"component": "searcher", "status": "ok", "reason": "alive"})
    status, ctype, text = get(searcher.port, "/metrics")
    assert (status, ctype) == (200, "text/plain; version=0.0.4; charset=utf-8")
    assert "# TYPE streamvec_searcher_queries_total counter\n" in text
    assert [(b["role"], b["version"]) for b in build_info(text)] == [("searcher", __version__)]

    # The monitor's canary needs a serving searcher to finish its first pass.
    indexer, monitor = start("indexer"), start("monitor")
    assert indexer.wait_ready() == {"component": "indexer", "status": "ok",
                                    "reason": f"indexing {collection_name}"}
    assert monitor.wait_ready() == {"component": "monitor", "status": "ok",
                                    "reason": f"watching {collection_name}"}
    for role, prefix in ((indexer, "streamvec_indexer_"), (monitor, "streamvec_monitor_")):
        status, _, text = get(role.port, "/metrics")
        assert status == 200 and f"# TYPE {prefix}" in text, role.role
        assert [b["role"] for b in build_info(text)] == [role.role]
        assert answer(role.port, "/healthz") == (
            200, {"component": role.role, "status": "ok", "reason": "alive"})
    assert get(searcher.port, "/nowhere")[0] == 404


def test_an_indexer_started_before_redis_waits_not_ready_then_starts(
        settings, collection_name, tmp_path):
    # The collection is written first and kept in the server's AOF, so that the worker
    # cannot meet a Redis that answers without the spec: that is a missing collection.
    server = RedisServer(tmp_path / "redis", free_port())
    own = settings.model_copy(update={"redis": SecretStr(server.url)})
    server.start(die_with_parent=True)
    indexer = None
    try:
        server.wait_healthy(30)
        admin.create_collection(own, CollectionSpec(collection_name, dim=8, partitions=2,
                                                    index="Flat", seal_rows=100))
        server.stop()
        indexer = RoleProcess(own, "indexer", collection_name, tmp_path)

        def waiting():
            assert indexer.proc.poll() is None, indexer.tail()
            got = answer(indexer.port, "/readyz")
            return got is not None and got[0] == 503 and got[1]

        body = wait_until(waiting, timeout=READY_TIMEOUT_S, what="indexer /readyz to be 503")
        assert body["component"] == "indexer"
        assert body["reason"].startswith("waiting for Redis at start: Redis unreachable: ")
        assert answer(indexer.port, "/healthz")[0] == 200
        assert indexer.proc.poll() is None, indexer.tail()

        server.start(die_with_parent=True)
        server.wait_healthy(30)
        assert indexer.wait_ready() == {"component": "indexer", "status": "ok",
                                        "reason": f"indexing {collection_name}"}
        assert indexer.stop() == 0, indexer.tail()
    finally:
        if indexer is not None:
            indexer.stop()
        server.stop()


def test_a_role_waiting_for_redis_stops_cleanly_on_sigterm(settings, collection_name, tmp_path):
    own = settings.model_copy(update={"redis": SecretStr(f"redis://{LOOPBACK}:{free_port()}/0")})
    searcher = RoleProcess(own, "searcher", collection_name, tmp_path)
    try:
        wait_until(lambda: (got := answer(searcher.port, "/readyz")) is not None
                   and got[0] == 503 and "waiting for Redis at start" in got[1]["reason"],
                   timeout=READY_TIMEOUT_S, what="searcher /readyz to be 503")
        assert searcher.proc.poll() is None, searcher.tail()
    finally:
        assert searcher.stop() == 0, searcher.tail()


def test_an_indexer_of_a_missing_collection_exits_not_found(settings, collection_name, tmp_path):
    indexer = RoleProcess(settings, "indexer", collection_name, tmp_path)
    try:
        assert indexer.proc.wait(READY_TIMEOUT_S) == ExitCode.NOT_FOUND, indexer.tail()
    finally:
        indexer.stop()
