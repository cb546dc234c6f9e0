"""A real Prometheus scrapes real indexer, searcher and monitor processes and runs the alerts."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Producer as KafkaProducer

from ingest import admin, record
from ingest.producer import Producer
from ingest.spec import CollectionSpec
from searcher.client import Client
from streamvec.devstack.ports import LOOPBACK, free_port, free_ports
from streamvec.errors import DevStackError
from streamvec.settings import Settings
from tests.support.polling import wait_until
from tests.support.promserver import PrometheusServer

pytestmark = pytest.mark.integration

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "rules.yml"
ROLES = ("indexer", "searcher", "monitor")
DIM = 8
ROWS = 600
QUERIES = 5
# Processes import numpy and FAISS and join consumer groups; Prometheus adds its first
# scrape about 5 s after start, as its target discovery batches updates.
DEADLINE_S = 90.0
START_ATTEMPTS = 3


class Roles:
    """`streamvec <role> --metrics-port P` processes of one collection, with their logs."""

    def __init__(self, settings: Settings, collection: str, log_dir: Path) -> None:
        self.settings = settings
        self.collection = collection
        self.log_dir = log_dir
        self.ports = dict(zip(ROLES, free_ports(len(ROLES)), strict=True))
        self.procs: dict[str, subprocess.Popen] = {}

    def target(self, role: str) -> str:
        """The role's /metrics address as Prometheus scrapes it."""
        return f"{LOOPBACK}:{self.ports[role]}"

    def start(self, role: str, *options: str) -> None:
        """Start one role's process with extra `options`; its output goes to `<role>.log`."""
        env = self.settings.child_env()
        env["STREAMVEC_HOME"] = str(self.log_dir / "home")
        argv = [sys.executable, "-m", "streamvec", role, "--collection", self.collection,
                "--metrics-port", str(self.ports[role]), *options]
        with open(self.log_dir / f"{role}.log", "wb") as log:
            self.procs[role] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                                env=env)

    def stop(self) -> dict[str, int]:
        """SIGTERM every process, SIGKILL what outlives 60 s; return the exit codes."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = {}
        for role, proc in self.procs.items():
            try:
                codes[role] = proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[role] = proc.wait(30)
        return codes

    def logs(self) -> str:
        """The tail of every role's log, for a failure message."""
        return "\n".join(f"--- {role}\n" + "\n".join(
            (self.log_dir / f"{role}.log").read_text(errors="replace").splitlines()[-20:])
            for role in self.procs)


@pytest.fixture
def spec(settings, collection_name) -> CollectionSpec:
    """A small collection that seals often."""
    made = CollectionSpec(collection_name, dim=DIM, partitions=2, index="Flat", seal_rows=200,
                          seal_seconds=0.5)
    admin.create_collection(settings, made)
    return made


@pytest.fixture
def roles(settings, spec, tmp_path) -> Iterator[Roles]:
    """The indexer and the searcher running; the test starts the monitor when it wants."""
    running = Roles(settings, spec.name, tmp_path)
    running.start("indexer")
    running.start("searcher")
    try:
        yield running
    finally:
        codes = running.stop()
    assert codes == {role: 0 for role in running.procs}, running.logs()


@pytest.fixture
def start_prometheus(tmp_path) -> Iterator[Callable[[dict[str, list[str]]], PrometheusServer]]:
    """Start Prometheus servers with the repository's alert rules; stop them after the test."""
    started: list[PrometheusServer] = []

    def start(targets: dict[str, list[str]]) -> PrometheusServer:
        attempt = 1
        while True:
            server = PrometheusServer(tmp_path / f"prometheus-{len(started)}", free_port(),
                                      targets, (RULES,))
            started.append(server)
            try:
                server.start(die_with_parent=True)
                server.wait_healthy(30.0)
                return server
            except DevStackError:
                # Another process can take the free port before Prometheus binds it.
                lost_race = "address already in use" in server.log_tail(50)
                if not lost_race or attempt >= START_ATTEMPTS:
                    raise
                attempt += 1

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def prometheus(roles, start_prometheus) -> PrometheusServer:
    """Prometheus scraping the three roles every second."""
    return start_prometheus({f"streamvec-{role}": [roles.target(role)] for role in ROLES})


def _eventually(prom: PrometheusServer, expr: str, expected, roles: Roles):
    """Wait until `expr` evaluates to `expected` ({labels: value}) in Prometheus."""
    try:
        return wait_until(lambda: prom.query(expr) == expected, timeout=DEADLINE_S,
                          what=f"{expr} == {expected}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nlast: {prom.query(expr)}\n{roles.logs()}") from None


UP = 'sum by (job) (up{job=~"streamvec-.*"})'


def _up(**states: int) -> dict:
    """The expected result of UP: 1 for a role Prometheus scrapes, 0 for one it cannot."""
    return {(("job", f"streamvec-{role}"),): float(value) for role, value in states.items()}


def _send_bad_message(settings: Settings, topic: str) -> None:
    """Produce a valid record of the wrong dimension, which the indexer dead-letters."""
    producer = KafkaProducer(settings.kafka_config())
    producer.produce(topic, record.encode(["bad"], np.zeros((1, DIM // 2), np.float32)),
                     key=b"bad", partition=0)
    assert producer.flush(30) == 0


def _ingest_and_query(settings: Settings, spec: CollectionSpec, prom: PrometheusServer,
                      roles: Roles) -> None:
    """Index ROWS rows and send QUERIES queries; Prometheus sees exactly those counts."""
    where = f'collection="{spec.name}"'
    vectors = np.random.default_rng(7).standard_normal((ROWS, DIM)).astype(np.float32)
    with Producer(spec.name, settings=settings) as producer:
        producer.upsert([f"row-{i}" for i in range(ROWS)], vectors)
        offsets = producer.flush()
    client = Client(settings=settings)
    for i in range(QUERIES):
        found = client.search(spec.name, vectors[i * 100], k=3, consistency={"session": offsets})
        assert found.ids[0][0] == f"row-{i * 100}"
    _eventually(prom, f"sum(streamvec_indexer_consumed_rows_total{{{where}}})",
                {(): float(ROWS)}, roles)
    # Exact while the monitor is down: its canary and probe also query the searcher.
    _eventually(prom, f"sum(streamvec_searcher_queries_total{{{where}}})",
                {(): float(QUERIES)}, roles)


def _fire_dead_letter_alert(settings: Settings, spec: CollectionSpec, prom: PrometheusServer,
                            roles: Roles) -> None:
    """Two dead letters, then the repository's StreamvecDeadLetters rule fires."""
    where = f'collection="{spec.name}"'
    # The first dead letter creates the series; the rule needs a second to see a rate.
    dlq = f'sum(streamvec_indexer_dlq_messages_total{{{where}, reason="wrong_dim"}})'
    for count in (1, 2):
        _send_bad_message(settings, spec.collection.topic)
        _eventually(prom, dlq, {(): float(count)}, roles)
    alert = (("__name__", "ALERTS"), ("alertname", "StreamvecDeadLetters"),
             ("alertstate", "firing"), ("collection", spec.name), ("reason", "wrong_dim"),
             ("severity", "warning"))
    _eventually(prom, f'ALERTS{{alertname="StreamvecDeadLetters", {where}}}', {alert: 1.0},
                roles)


def _watch_with_the_monitor(spec: CollectionSpec, prom: PrometheusServer, roles: Roles) -> None:
    """Start the monitor; its collectors, canary and recall probe show up in Prometheus."""
    where = f'collection="{spec.name}"'
    # The first recall probe can find the drift window still empty; retry it within seconds.
    roles.start("monitor", "--recall-every", "2")
    _eventually(prom, UP, _up(indexer=1, searcher=1, monitor=1), roles)
    _eventually(prom, f"count(streamvec_monitor_checkpoint_lag_messages{{{where}}})",
                {(): float(spec.partitions)}, roles)
    _eventually(prom, f"streamvec_monitor_segments{{{where}}} > bool 0",
                {(("collection", spec.name), ("instance", roles.target("monitor")),
                  ("job", "streamvec-monitor")): 1.0}, roles)
    # The canary and the recall probe query through the real searcher.
    _eventually(prom, f"sum(streamvec_monitor_freshness_seconds_count{{{where}}}) > bool 0",
                {(): 1.0}, roles)
    _eventually(prom, f"count by (k) (streamvec_monitor_recall{{{where}}})",
                {(("k", "10"),): 1.0}, roles)
    _eventually(prom, f"sum(streamvec_searcher_queries_total{{{where}}}) > bool {QUERIES}",
                {(): 1.0}, roles)


def test_prometheus_scrapes_every_role_and_fires_the_dead_letter_alert(
        settings, spec, roles, prometheus):
    _eventually(prometheus, UP, _up(indexer=1, searcher=1, monitor=0), roles)
    _ingest_and_query(settings, spec, prometheus, roles)
    _fire_dead_letter_alert(settings, spec, prometheus, roles)
    _watch_with_the_monitor(spec, prometheus, roles)


def test_every_alert_rule_loads_and_evaluates_cleanly(start_prometheus):
    # Nothing listens on these ports: the rules must evaluate on missing series too.
    prometheus = start_prometheus({f"streamvec-{role}": [f"{LOOPBACK}:{port}"]
                                   for role, port in zip(ROLES, free_ports(3), strict=True)})

    def health() -> dict[str, str]:
        groups = prometheus.api("rules")["groups"]
        return {rule["name"]: rule["health"] for g in groups for rule in g["rules"]}

    rules = wait_until(lambda: (h := health()) and set(h.values()) == {"ok"} and h,
                       timeout=DEADLINE_S, what="every rule evaluated")
    assert sorted(rules) == sorted([
        "StreamvecTargetDown", "StreamvecCheckpointLagGrowing", "StreamvecFreshnessSlow",
        "StreamvecRecallLow", "StreamvecEmbeddingDrift", "StreamvecDeadLetters",
        "StreamvecRetentionHeadroomLow", "StreamvecCheckpointOutOfRange",
        "StreamvecSearcherErrors", "StreamvecCanaryFailures",
        "StreamvecIndexerDependencyUnavailable", "StreamvecSearcherDependencyUnavailable",
        "StreamvecSegmentCorrupt", "StreamvecSegmentUnavailable"])
