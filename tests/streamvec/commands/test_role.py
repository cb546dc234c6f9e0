"""Real searcher, indexer and monitor processes answer /readyz, /healthz and /metrics."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest import admin
from ingest.spec import CollectionSpec
from streamvec.devstack.ports import LOOPBACK, free_port
from streamvec.settings import Settings
from tests.support.polling import wait_until

pytestmark = pytest.mark.integration

# Processes import numpy and FAISS, load segments and join consumer groups on a busy machine.
READY_TIMEOUT_S = 90.0


def get(port: int, path: str) -> tuple[int, str, str]:
    """GET a path of a local health server: status, content type and body."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type"), response.read().decode()
    finally:
        conn.close()


def answer(port: int, path: str) -> tuple[int, dict] | None:
    """Status and JSON body of a health path; None while nothing listens yet."""
    try:
        status, _, body = get(port, path)
    except OSError:
        return None
    return status, json.loads(body)


class Role:
    """One `streamvec ROLE --metrics-port P` process with its log."""

    def __init__(self, settings: Settings, role: str, collection: str, log_dir: Path) -> None:
        self.role, self.port, self.log = role, free_port(), log_dir / f"{role}.log"
        argv = [sys.executable, "-m", "streamvec", role, "--collection", collection,
                "--metrics-port", str(self.port)]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                         env=settings.child_env())

    def wait_ready(self) -> dict:
        """Poll /readyz until it answers 200; return its body."""
        def ready():
            assert self.proc.poll() is None, self.tail()
            got = answer(self.port, "/readyz")
            return got is not None and got[0] == 200 and got[1]

        return wait_until(ready, timeout=READY_TIMEOUT_S, what=f"{self.role} /readyz to be 200")

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


@pytest.fixture
def start(settings, collection_name, tmp_path) -> Iterator:
    """Start role processes of one small collection; stop them all after the test."""
    admin.create_collection(settings, CollectionSpec(collection_name, dim=8, partitions=2,
                                                     index="Flat", seal_rows=100))
    started: list[Role] = []

    def start_role(role: str) -> Role:
        started.append(Role(settings, role, collection_name, tmp_path))
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

    # The monitor's canary needs a serving searcher to finish its first pass.
    indexer, monitor = start("indexer"), start("monitor")
    assert indexer.wait_ready() == {"component": "indexer", "status": "ok",
                                    "reason": f"indexing {collection_name}"}
    assert monitor.wait_ready() == {"component": "monitor", "status": "ok",
                                    "reason": f"watching {collection_name}"}
    for role, prefix in ((indexer, "streamvec_indexer_"), (monitor, "streamvec_monitor_")):
        status, _, text = get(role.port, "/metrics")
        assert status == 200 and f"# TYPE {prefix}" in text, role.role
        assert answer(role.port, "/healthz") == (
            200, {"component": role.role, "status": "ok", "reason": "alive"})
    assert get(searcher.port, "/nowhere")[0] == 404
