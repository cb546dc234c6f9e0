"""The monitor process rides out a Redis restart: not ready while Redis is down, ready after."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from ingest import admin
from ingest.spec import CollectionSpec
from streamvec.devstack.ports import LOOPBACK, free_port
from streamvec.devstack.redis import RedisServer
from streamvec.settings import Settings
from tests.support.polling import wait_until

pytestmark = pytest.mark.integration

DIM = 8
PARTITIONS = 2
# The process imports numpy and FAISS and joins a consumer group on a busy machine.
READY_TIMEOUT_S = 90.0
# How long Redis stays down after the monitor's tasks have failed on it: they retry meanwhile.
OUTAGE_S = 3.0


def get(port: int, path: str) -> tuple[int, str] | None:
    """Status and body of a GET on the monitor's health server; None while nothing answers."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    except OSError:
        return None
    finally:
        conn.close()


class MonitorProcess:
    """One `streamvec monitor --collection NAME --metrics-port P` process and its log."""

    def __init__(self, settings: Settings, collection: str, log_dir: Path) -> None:
        self.port, self.log = free_port(), log_dir / "monitor.log"
        # Short cycles so that every task meets the outage; no canary, which needs a searcher.
        argv = [sys.executable, "-m", "streamvec", "monitor", "--collection", collection,
                "--metrics-port", str(self.port), "--drift-every", "0.5",
                "--canary-every", "0", "--recall-every", "1"]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                         env=settings.child_env())

    def readiness(self) -> int:
        """The /readyz status; fails the test at once if the process has exited."""
        assert self.proc.poll() is None, self.tail()
        got = get(self.port, "/readyz")
        return 0 if got is None else got[0]

    def readiness_reason(self) -> str:
        """The reason /readyz gives now."""
        got = get(self.port, "/readyz")
        assert got is not None, self.tail()
        return json.loads(got[1])["reason"]

    def segment_figures(self, collection: str) -> dict[tuple[str, str], float] | None:
        """The scrape-time registry figures of the collection; None while a scrape fails."""
        assert self.proc.poll() is None, self.tail()
        got = get(self.port, "/metrics")
        if got is None or got[0] != 200:
            return None
        figures: dict[tuple[str, str], float] = {}
        for family in text_string_to_metric_families(got[1]):
            for sample in family.samples:
                if sample.labels.get("collection") == collection:
                    figures[(sample.name, sample.labels.get("partition", ""))] = sample.value
        return figures

    def stop(self) -> int:
        """SIGTERM the process and return its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(30)

    def tail(self) -> str:
        """The end of the process's log, for a failure message."""
        return self.log.read_text(errors="replace")[-3000:]


def test_the_monitor_is_not_ready_while_redis_is_down_and_recovers_after_a_restart(
        settings, collection_name, tmp_path):
    server = RedisServer(tmp_path / "redis", free_port())
    server.start(die_with_parent=True)
    monitor = None
    try:
        server.wait_healthy(30)
        own = settings.model_copy(update={"redis": SecretStr(server.url)})
        admin.create_collection(own, CollectionSpec(collection_name, dim=DIM,
                                                    partitions=PARTITIONS, index="Flat",
                                                    seal_rows=100))
        monitor = MonitorProcess(own, collection_name, tmp_path)
        wait_until(lambda: monitor.readiness() == 200, timeout=READY_TIMEOUT_S,
                   what="monitor /readyz to be 200")
        assert monitor.readiness_reason() == f"watching {collection_name}"
        lag = "streamvec_monitor_checkpoint_lag_messages"
        expected = {(lag, str(p)): 0.0 for p in range(PARTITIONS)}
        expected[("streamvec_monitor_segments", "")] = 0.0
        before = wait_until(lambda: monitor.segment_figures(collection_name),
                            timeout=30, what="the monitor's registry figures")
        assert {k: before.get(k) for k in expected} == expected

        os.kill(server.pid, signal.SIGKILL)
        wait_until(lambda: not server.running(), timeout=10, what="Redis gone")
        wait_until(lambda: monitor.readiness() == 503, timeout=30,
                   what="monitor /readyz to be 503")
        assert monitor.readiness_reason().startswith("Redis unreachable: ")
        # Down until the Redis tasks have failed a turn (their client retries for a few
        # seconds first) and a while more; the process stays up and not ready throughout.
        failed = [f"monitor task {collection_name}-{task} failed" for task in ("drift", "recall")]

        def tasks_failed() -> bool:
            assert monitor.readiness() == 503, monitor.tail()
            text = monitor.log.read_text(errors="replace")
            return all(line in text for line in failed)

        wait_until(tasks_failed, timeout=30, what="the monitor's tasks to meet the outage")
        deadline = time.monotonic() + OUTAGE_S
        while time.monotonic() < deadline:
            assert monitor.readiness() == 503, monitor.tail()
            time.sleep(0.2)

        server.start(die_with_parent=True)
        server.wait_healthy(30)
        wait_until(lambda: monitor.readiness() == 200, timeout=30,
                   what="monitor /readyz to be 200 again")
        assert monitor.readiness_reason() == f"watching {collection_name}"
        # The collection survived in the AOF, so the figures read from Redis come back as before.
        after = wait_until(lambda: monitor.segment_figures(collection_name),
                           timeout=30, what="the monitor's registry figures again")
        assert {k: after.get(k) for k in expected} == expected
        assert monitor.proc.poll() is None, monitor.tail()
        assert monitor.stop() == 0, monitor.tail()
    finally:
        if monitor is not None:
            monitor.stop()
        server.stop()
