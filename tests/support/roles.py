"""Role processes as tests run them: `streamvec ROLE --metrics-port P`, its health and its log."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
from pathlib import Path

from streamvec.devstack.ports import LOOPBACK, free_port
from streamvec.settings import Settings
from tests.support.polling import wait_until

# Processes import numpy and FAISS, load segments and join consumer groups on a busy machine.
READY_TIMEOUT_S = 120.0


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
    """Status and JSON body of a health path; None while nothing answers."""
    try:
        status, _, body = get(port, path)
        return status, json.loads(body)
    except (OSError, ValueError):
        return None


class RoleProcess:
    """One `streamvec ROLE --collection NAME --metrics-port P [ARGS]` process and its log."""

    def __init__(self, settings: Settings, role: str, collection: str, log_dir: Path,
                 tag: str = "", *args: str) -> None:
        self.settings, self.role, self.collection = settings, role, collection
        self.log = log_dir / (f"{role}-{tag}.log" if tag else f"{role}.log")
        self.port = free_port()
        argv = [sys.executable, "-m", "streamvec", role, "--collection", collection,
                "--metrics-port", str(self.port), *args]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                         env=settings.child_env())

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc.poll() is None

    def readiness(self) -> tuple[int, dict] | None:
        """The /readyz status and body, or None while nothing answers."""
        return answer(self.port, "/readyz")

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> dict:
        """Poll /readyz until 200 and return its body; fail at once if the process exits."""
        def ready() -> dict | None:
            assert self.alive(), f"{self.role} exited with {self.proc.poll()}:\n{self.tail()}"
            got = self.readiness()
            return got[1] if got is not None and got[0] == 200 else None

        return wait_until(ready, timeout=timeout, what=f"{self.role} /readyz to be 200",
                          interval=0.25)

    def peak_rss_mb(self) -> float:
        """The process's peak resident memory (VmHWM) in MiB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise AssertionError(f"no VmHWM for pid {self.proc.pid}")

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM the process and return its exit status (SIGKILL after `timeout`)."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(30)

    def tail(self, chars: int = 4000) -> str:
        """The end of the process's log, for a failure message."""
        return self.log.read_text(errors="replace")[-chars:]
