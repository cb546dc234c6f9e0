"""The monitor process rides out a Redis restart: not ready while Redis is down, ready after."""

from __future__ import annotations

import os
import signal
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from ingest import admin
from ingest.spec import CollectionSpec
from streamvec.devstack.ports import free_port
from streamvec.devstack.redis import RedisServer
from tests.support.polling import wait_until
from tests.support.roles import RoleProcess, get

pytestmark = pytest.mark.integration

DIM = 8
PARTITIONS = 2
# How long Redis stays down after the monitor's tasks have failed on it: they retry meanwhile.
OUTAGE_S = 3.0


def status(monitor: RoleProcess) -> int:
    """The /readyz status (0 while nothing answers); fails the test at once if it exited."""
    assert monitor.alive(), monitor.tail()
    got = monitor.readiness()
    return 0 if got is None else got[0]


def reason(monitor: RoleProcess) -> str:
    """The reason /readyz gives now."""
    got = monitor.readiness()
    assert got is not None, monitor.tail()
    return got[1]["reason"]


def registry_figures(monitor: RoleProcess) -> dict[tuple[str, str], float] | None:
    """The scrape-time registry figures of the monitor's collection; None while a scrape fails."""
    assert monitor.alive(), monitor.tail()
    try:
        code, _, text = get(monitor.port, "/metrics")
    except OSError:
        return None
    if code != 200:
        return None
    figures: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("collection") == monitor.collection:
                figures[(sample.name, sample.labels.get("partition", ""))] = sample.value
    return figures


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
        # Short cycles so that every task meets the outage; no canary, which needs a searcher.
        monitor = RoleProcess(own, "monitor", collection_name, tmp_path, "", "--drift-every",
                              "0.5", "--canary-every", "0", "--recall-every", "1")
        monitor.wait_ready()
        assert reason(monitor) == f"watching {collection_name}"
        lag = "streamvec_monitor_checkpoint_lag_messages"
        expected = {(lag, str(p)): 0.0 for p in range(PARTITIONS)}
        expected[("streamvec_monitor_segments", "")] = 0.0
        before = wait_until(lambda: registry_figures(monitor),
                            timeout=30, what="the monitor's registry figures")
        assert {k: before.get(k) for k in expected} == expected

        os.kill(server.pid, signal.SIGKILL)
        wait_until(lambda: not server.running(), timeout=10, what="Redis gone")
        wait_until(lambda: status(monitor) == 503, timeout=30,
                   what="monitor /readyz to be 503")
        assert reason(monitor).startswith("Redis unreachable: ")
        # Down until the Redis tasks have failed a turn (their client retries for a few
        # seconds first) and a while more; the process stays up and not ready throughout.
        failed = [f"monitor task {collection_name}-{task} failed" for task in ("drift", "recall")]

        def tasks_failed() -> bool:
            assert status(monitor) == 503, monitor.tail()
            text = monitor.log.read_text(errors="replace")
            return all(line in text for line in failed)

        wait_until(tasks_failed, timeout=30, what="the monitor's tasks to meet the outage")
        deadline = time.monotonic() + OUTAGE_S
        while time.monotonic() < deadline:
            assert status(monitor) == 503, monitor.tail()
            time.sleep(0.2)

        server.start(die_with_parent=True)
        server.wait_healthy(30)
        wait_until(lambda: status(monitor) == 200, timeout=30,
                   what="monitor /readyz to be 200 again")
        assert reason(monitor) == f"watching {collection_name}"
        # The collection survived in the AOF, so the figures read from Redis come back as before.
        after = wait_until(lambda: registry_figures(monitor),
                           timeout=30, what="the monitor's registry figures again")
        assert {k: after.get(k) for k in expected} == expected
        assert monitor.proc.poll() is None, monitor.tail()
        assert monitor.stop() == 0, monitor.tail()
    finally:
        if monitor is not None:
            monitor.stop()
        server.stop()
