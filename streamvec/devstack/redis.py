"""The local Redis server: the Debian package, installed on demand, run on a loopback port."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from streamvec.devstack.ports import LOOPBACK
from streamvec.devstack.process import ServerProcess
from streamvec.errors import DevStackError

log = logging.getLogger(__name__)

APT_PACKAGE = "redis-server"


def redis_server_executable(install: bool = True) -> str:
    """Return the path of `redis-server`, installing the Debian package first when we are root."""
    found = shutil.which("redis-server")
    if found:
        return found
    if not install or os.geteuid() != 0 or not shutil.which("apt-get"):
        raise DevStackError(
            "redis-server not found: install it (Debian: sudo apt-get install -y redis-server) "
            "or point STREAMVEC_REDIS at an existing Redis"
        )
    log.info("redis-server not found; installing the %s package with apt-get", APT_PACKAGE)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update"], ["apt-get", "install", "-y", APT_PACKAGE]):
        proc = subprocess.run(  # noqa: S603 - fixed argv, no shell
            argv, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False
        )
        if proc.returncode != 0:
            output = (proc.stdout + proc.stderr).strip()[-2000:]
            raise DevStackError(f"`{' '.join(argv)}` failed:\n{output}")
    found = shutil.which("redis-server")
    if not found:
        raise DevStackError(f"{APT_PACKAGE} was installed but redis-server is still not on PATH")
    return found


class RedisServer(ServerProcess):
    """One redis-server bound to loopback, with its data, AOF and log in `data_dir`."""

    name = "redis"

    def __init__(self, data_dir: Path, port: int) -> None:
        super().__init__(data_dir)
        self.port = port

    @property
    def url(self) -> str:
        """The redis:// URL that clients use (database 0)."""
        return f"redis://{LOOPBACK}:{self.port}/0"

    def owns(self, command: str) -> bool:
        """Tell whether a command line is this server (redis shows `redis-server host:port`)."""
        return "redis-server" in command and f":{self.port}" in command

    def argv(self, executable: str) -> list[str]:
        """Return the command line: every setting as a flag, so no config file can drift."""
        return [
            executable,
            "--bind",
            LOOPBACK,
            "--port",
            str(self.port),
            # Bound to loopback only, so the no-password guard has nothing left to protect.
            "--protected-mode",
            "no",
            "--dir",
            str(self.data_dir),
            "--appendonly",
            "yes",
            # The AOF is the durability; periodic RDB forks would only slow a small machine.
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            "",
            "--loglevel",
            "notice",
        ]

    def start(self, die_with_parent: bool = False) -> None:
        """Launch redis-server detached unless it is already running."""
        if self.running():
            return
        self.spawn(self.argv(redis_server_executable()), die_with_parent=die_with_parent)
        log.debug("redis starting: pid=%s url=%s", self.pid, self.url)

    def client(self, timeout: float = 1.0) -> redis.Redis:
        """Open a client to this server."""
        # No retries: a health probe must answer now, and SHUTDOWN must not be resent.
        return redis.Redis(
            host=LOOPBACK,
            port=self.port,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )

    def healthy(self, timeout: float = 1.0) -> bool:
        """Tell whether the server answers PING."""
        try:
            with self.client(timeout) as conn:
                return bool(conn.ping())
        except (redis.RedisError, OSError):
            return False

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Block until PING answers; raise with the log tail if it dies or time runs out."""
        self.wait_until(self.healthy, timeout, f"answering PING on {LOOPBACK}:{self.port}")

    def stop(self, timeout: float = 30.0) -> None:
        """Stop with SHUTDOWN NOSAVE (the AOF is still flushed), falling back to signals."""
        if self.running():
            try:
                with self.client() as conn:
                    conn.shutdown(nosave=True)
            except (redis.RedisError, OSError):
                # SHUTDOWN closes the connection before it can reply, or the server hangs;
                # either way the signal path below finishes the job.
                pass
        super().stop(timeout)
