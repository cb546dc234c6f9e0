"""The health state machine, and its HTTP server over real sockets on a free port."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_TYPE

from ingest import admin
from ingest.spec import CollectionSpec
from streamvec import probe
from streamvec.errors import ListenError
from streamvec.health import Health, HealthServer, KafkaProbe, Verdict, redis_check, serve
from streamvec.settings import Settings
from tests.support.silent import silent_server


class FakeClock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def get(port: int, path: str, *, method: str = "GET",
        headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request to the local server: status, headers and body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def verdict_body(status: int, body: bytes) -> tuple[int, dict]:
    return status, json.loads(body)


@pytest.fixture
def registry() -> CollectorRegistry:
    """A fresh registry holding one counter at 3."""
    made = CollectorRegistry()
    Counter("sv_test_rows", "rows seen", registry=made).inc(3)
    return made


@pytest.fixture
def served(registry) -> Iterator[tuple[Health, HealthServer]]:
    """A searcher's Health served on a free loopback port."""
    health = Health("searcher")
    server = serve(health, 0, host="127.0.0.1", registry=registry)
    assert server is not None
    try:
        yield health, server
    finally:
        server.close()


def test_a_new_process_is_alive_but_not_ready_until_it_says_so():
    health = Health("indexer")
    assert health.liveness() == Verdict(True, "alive")
    assert health.readiness() == Verdict(False, "starting")
    health.ready("indexing products")
    assert health.readiness() == Verdict(True, "indexing products")
    health.not_ready("stopping")
    assert health.readiness() == Verdict(False, "stopping")
    assert health.liveness() == Verdict(True, "alive")


def test_readiness_waits_for_a_first_turn_of_every_registered_loop():
    health = Health("monitor")
    drift = health.turns("drift")
    canary = health.turns("canary")
    health.ready("watching products")
    assert health.readiness() == Verdict(False, "waiting for a first canary, drift turn")
    with drift:
        assert health.readiness() == Verdict(False, "waiting for a first canary, drift turn")
    assert health.readiness() == Verdict(False, "waiting for a first canary turn")
    with canary:
        pass
    assert health.readiness() == Verdict(True, "watching products")


def test_a_turn_that_raises_still_ran_and_the_error_reaches_the_loop():
    health = Health("searcher")

    turn = health.turns("serve")
    health.ready("serving products")
    with pytest.raises(ConnectionError, match="redis went away"), turn:
        raise ConnectionError("redis went away")
    assert health.readiness() == Verdict(True, "serving products")
    assert health.liveness() == Verdict(True, "alive")


def test_a_turn_running_past_the_stall_limit_fails_liveness_and_readiness():
    clock = FakeClock()
    health = Health("indexer", stall_after_s=30, clock=clock)
    seen: list[tuple[Verdict, Verdict]] = []

    turns = health.turns("consume")

    def step(seconds: float) -> None:
        with turns:
            clock.now += seconds
            seen.append((health.liveness(), health.readiness()))

    health.ready("indexing products")
    step(0)
    step(30)  # at the limit is not past it
    step(31)
    ready = (Verdict(True, "alive"), Verdict(True, "indexing products"))
    stuck = Verdict(False, "stuck: a consume turn has run for 31 s (limit 30 s)")
    assert seen == [(Verdict(True, "alive"), Verdict(False, "waiting for a first consume turn")),
                    ready, (stuck, stuck)]
    assert health.liveness() == Verdict(True, "alive")  # the turn is over: the loop moves


def test_failed_is_final_and_keeps_its_first_reason():
    health = Health("indexer")
    health.ready("indexing products")
    health.failed("partition 0: the next offset to index is no longer in the log")
    health.failed("a later consequence")
    health.ready("indexing products")
    expected = Verdict(False, "partition 0: the next offset to index is no longer in the log")
    assert health.liveness() == expected
    assert health.readiness() == expected


def test_a_check_that_complains_or_raises_makes_the_process_not_ready():
    health = Health("searcher")
    problems: list[str | None] = [None]
    health.add_check(lambda: problems[0])
    health.ready("serving products")
    assert health.readiness() == Verdict(True, "serving products")
    problems[0] = "Redis unreachable: connection refused"
    assert health.readiness() == Verdict(False, "Redis unreachable: connection refused")

    def broken() -> str | None:
        raise KeyError("segments")

    problems[0] = None
    health.add_check(broken)
    assert health.readiness() == Verdict(False, "KeyError: 'segments'")
    assert health.liveness() == Verdict(True, "alive")


def test_redis_check_names_the_problem_when_redis_is_unreachable(settings):
    problem = redis_check(settings)()
    assert problem is not None and problem.startswith("Redis unreachable: ")
    assert "127.0.0.1:1" in problem


def test_kafka_probe_calls_a_frozen_broker_unavailable():
    changes: list[str | None] = []
    with silent_server() as port:
        kafka = KafkaProbe({"bootstrap.servers": f"127.0.0.1:{port}"}, "sv.products",
                           timeout_s=0.5, on_change=changes.append)
        assert kafka.problem() is None  # nothing known yet: not held against the role
        assert kafka.probe() is False
    assert kafka.problem() is not None
    assert kafka.problem().startswith("Kafka unreachable: no metadata of sv.products within ")
    assert changes == [kafka.problem()]


def test_kafka_probe_keeps_a_reported_outage_until_the_brokers_answer():
    changes: list[str | None] = []
    kafka = KafkaProbe({"bootstrap.servers": "127.0.0.1:1"}, "sv.products", timeout_s=0.5,
                       on_change=changes.append)
    kafka.report("1/1 brokers are down")
    kafka.report("1/1 brokers are down")
    assert kafka.problem() == "Kafka unreachable: 1/1 brokers are down"
    assert changes == ["Kafka unreachable: 1/1 brokers are down"]  # told once per change


@pytest.mark.integration
def test_kafka_probe_says_kafka_is_back_when_the_brokers_answer(settings, collection_name):
    spec = CollectionSpec(collection_name, dim=4, partitions=1)
    admin.create_collection(settings, spec)
    changes: list[str | None] = []
    kafka = KafkaProbe(settings.kafka_config(), spec.collection.topic, on_change=changes.append)
    kafka.report("1/1 brokers are down")
    assert kafka.probe() is True
    assert kafka.problem() is None
    assert changes == ["Kafka unreachable: 1/1 brokers are down", None]
    kafka.start()
    kafka.stop()
    assert kafka.problem() is None


def test_metrics_are_the_registry_in_the_prometheus_text_format(served):
    _, server = served
    status, headers, body = get(server.port, "/metrics")
    assert status == 200
    # Without an Accept header: the classic text format, which every Prometheus parses.
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "sv_test_rows_total 3.0\n" in body.decode()
    assert int(headers["Content-Length"]) == len(body)


def test_metrics_speak_openmetrics_to_a_scraper_that_asks_for_it(served):
    _, server = served
    status, headers, body = get(server.port, "/metrics",
                                headers={"Accept": "application/openmetrics-text"})
    assert status == 200
    assert headers["Content-Type"] == OPENMETRICS_TYPE
    assert body.decode().endswith("# EOF\n")


def test_healthz_and_readyz_answer_with_status_and_reason(served):
    health, server = served
    assert verdict_body(*get(server.port, "/healthz")[::2]) == (
        200, {"component": "searcher", "status": "ok", "reason": "alive"})
    assert verdict_body(*get(server.port, "/readyz")[::2]) == (
        503, {"component": "searcher", "status": "fail", "reason": "starting"})
    health.ready("serving products")
    assert verdict_body(*get(server.port, "/readyz?verbose=1")[::2]) == (
        200, {"component": "searcher", "status": "ok", "reason": "serving products"})
    health.failed("engine crashed")
    assert verdict_body(*get(server.port, "/healthz")[::2]) == (
        503, {"component": "searcher", "status": "fail", "reason": "engine crashed"})


def test_head_answers_the_status_without_a_body(served):
    _, server = served
    status, headers, body = get(server.port, "/readyz", method="HEAD")
    assert (status, body, headers["Content-Type"]) == (503, b"", "application/json")


def test_an_unknown_path_is_404_and_lists_the_paths(served):
    _, server = served
    status, _, body = get(server.port, "/")
    assert status == 404
    assert json.loads(body) == {"error": "no such path: /",
                                "paths": ["/metrics", "/healthz", "/readyz"]}


def test_a_failing_collector_fails_the_scrape_but_not_the_server(served, registry):
    _, server = served

    class Broken:
        def collect(self):
            raise RuntimeError("redis went away")

    registry.register(Broken())
    status, _, body = get(server.port, "/metrics")
    assert (status, body) == (500, b"collecting metrics failed: RuntimeError: redis went away\n")
    assert get(server.port, "/healthz")[0] == 200


def test_no_port_serves_nothing_and_a_busy_port_is_a_clear_error():
    assert serve(Health("indexer"), None) is None
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ListenError) as err:
            serve(Health("indexer"), port, host="127.0.0.1")
    assert str(err.value) == (f"cannot serve /metrics and health on 127.0.0.1:{port}: "
                              "Address already in use")


def test_probe_exits_0_on_200_and_1_otherwise(served, capsys):
    health, server = served
    assert probe.main(["--port", str(server.port)]) == 0
    assert capsys.readouterr().out == (
        '200 {"component": "searcher", "reason": "alive", "status": "ok"}\n')
    assert probe.main(["/readyz", "--port", str(server.port)]) == 1
    assert capsys.readouterr().out == (
        '503 {"component": "searcher", "reason": "starting", "status": "fail"}\n')


def test_probe_passes_without_an_endpoint_and_fails_when_none_listens(monkeypatch, capsys):
    monkeypatch.delenv("STREAMVEC_METRICS_PORT", raising=False)
    assert probe.main([]) == 0
    assert capsys.readouterr().out == (
        "streamvec probe: no health endpoint configured; nothing to check\n")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: connections are refused
        monkeypatch.setenv("STREAMVEC_METRICS_PORT", str(port))
        assert probe.main(["--timeout", "5"]) == 1
    assert f"127.0.0.1:{port}/healthz: " in capsys.readouterr().err


def test_the_server_binds_the_metrics_host_and_the_probe_finds_it(monkeypatch, capsys):
    monkeypatch.setenv("STREAMVEC_METRICS_HOST", "127.0.0.1")
    settings = Settings()
    server = serve(Health("monitor"), 0, host=settings.metrics_host)
    assert server is not None
    try:
        assert server.server_address[0] == "127.0.0.1"
        monkeypatch.setenv("STREAMVEC_METRICS_PORT", str(server.port))
        assert probe.main([]) == 0
        # Bound to every interface, the server is probed on the loopback one.
        monkeypatch.setenv("STREAMVEC_METRICS_HOST", "0.0.0.0")  # noqa: S104
        assert probe.main([]) == 0
    finally:
        server.close()
    assert capsys.readouterr().out.count('"component": "monitor"') == 2
