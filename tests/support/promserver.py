"""A real Prometheus server for integration tests: free loopback port, generated config."""

from __future__ import annotations

import http.client
import json
import shutil
import urllib.parse
from pathlib import Path

from streamvec.devstack.ports import LOOPBACK
from streamvec.devstack.process import ServerProcess

SCRAPE_INTERVAL = "1s"


def prometheus_executable() -> str:
    """Path of the `prometheus` binary, which `make deps` installs with the Debian package."""
    found = shutil.which("prometheus")
    assert found, "prometheus not on PATH: run `make prometheus` (Debian package prometheus)"
    return found


class PrometheusServer(ServerProcess):
    """One Prometheus scraping `targets` ({job: ["host:port", ...]}) every second."""

    name = "prometheus"

    def __init__(self, data_dir: Path, port: int, targets: dict[str, list[str]],
                 rule_files: tuple[Path, ...] = ()) -> None:
        super().__init__(data_dir)
        self.port = port
        self.targets = targets
        self.rule_files = rule_files

    @property
    def url(self) -> str:
        """Base URL of the web UI and HTTP API."""
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def config_path(self) -> Path:
        """The generated configuration file."""
        return self.data_dir / "prometheus.yml"

    def config(self) -> dict:
        """The configuration: one static job per role, scraped and evaluated every second."""
        return {
            "global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": SCRAPE_INTERVAL,
                       "evaluation_interval": SCRAPE_INTERVAL},
            "rule_files": [str(path) for path in self.rule_files],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets}]}
                               for job, targets in self.targets.items()],
        }

    def owns(self, command: str) -> bool:
        """Tell whether a command line is this server."""
        return "prometheus" in command and f"{LOOPBACK}:{self.port}" in command

    def start(self, die_with_parent: bool = False) -> None:
        """Write the config (JSON is YAML) and launch Prometheus unless it runs."""
        if self.running():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config(), indent=2))
        self.spawn([prometheus_executable(), f"--config.file={self.config_path}",
                    f"--storage.tsdb.path={self.data_dir / 'tsdb'}",
                    f"--web.listen-address={LOOPBACK}:{self.port}"],
                   die_with_parent=die_with_parent)

    def get(self, path: str) -> tuple[int, bytes]:
        """GET a path of the server; its status and body."""
        conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=5.0)
        try:
            conn.request("GET", path)
            reply = conn.getresponse()
            return reply.status, reply.read()
        finally:
            conn.close()

    def healthy(self) -> bool:
        """Tell whether the server reports itself ready to serve queries (503 until then)."""
        try:
            return self.get("/-/ready")[0] == 200
        except (OSError, http.client.HTTPException):  # not listening yet
            return False

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Block until ready; raise with the log tail if it dies or time runs out."""
        self.wait_until(self.healthy, timeout, f"ready on {self.url}")

    def api(self, path: str, **params: str) -> dict | list:
        """GET an /api/v1 endpoint and return its `data`; fail on an error status."""
        status, body = self.get(f"/api/v1/{path}?{urllib.parse.urlencode(params)}")
        reply = json.loads(body)
        assert (status, reply["status"]) == (200, "success"), reply
        return reply["data"]

    def query(self, expr: str) -> dict[tuple[tuple[str, str], ...], float]:
        """Evaluate an instant PromQL query: {sorted label pairs: value} per series."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        return {tuple(sorted(s["metric"].items())): float(s["value"][1])
                for s in data["result"]}

    def scalar(self, expr: str) -> float | None:
        """Evaluate a query that yields at most one series; its value, or None if none."""
        result = self.query(expr)
        assert len(result) <= 1, f"{expr} gave {len(result)} series"
        return next(iter(result.values()), None)
