"""The local dev stack: one Kafka broker and one Redis server, started and stopped on demand."""

from __future__ import annotations

import fcntl
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from streamvec.devstack.jars import cache_dir, ensure_jars
from streamvec.devstack.kafka import KafkaServer
from streamvec.devstack.ports import port_in_use
from streamvec.devstack.process import ServerProcess
from streamvec.devstack.redis import RedisServer
from streamvec.errors import DevStackError
from streamvec.settings import (
    LOCAL_KAFKA_CONTROLLER_PORT,
    LOCAL_KAFKA_PORT,
    LOCAL_REDIS_PORT,
    Settings,
)

__all__ = ["KafkaServer", "RedisServer", "ServerStatus", "StackInfo", "down", "status", "up"]

KAFKA_START_TIMEOUT_S = 120.0
REDIS_START_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class StackInfo:
    """Where the running stack listens, and whether `up` found it running already."""

    kafka: str
    redis: str
    state_dir: Path
    reused: tuple[str, ...] = ()  # "kafka" and/or "redis"

    def exports(self) -> str:
        """Return the shell line that points streamvec at this stack."""
        return f"export STREAMVEC_KAFKA={self.kafka} STREAMVEC_REDIS={self.redis}"


@dataclass(frozen=True, slots=True)
class ServerStatus:
    """One server of the stack as `status` sees it."""

    name: str
    address: str
    pid: int | None
    healthy: bool
    log: Path


def state_dir(settings: Settings) -> Path:
    """Return the folder that holds the stack's data, pid files and logs."""
    return settings.home / "stack"


def fetch(settings: Settings, echo: Callable[[str], None] | None = None) -> Path:
    """Fetch the broker jars into the cache unless they are there; return their folder."""
    return ensure_jars(cache_dir(settings), echo)


def _servers(settings: Settings, libs: Path | None = None) -> tuple[KafkaServer, RedisServer]:
    root = state_dir(settings)
    kafka = KafkaServer(root / "kafka", LOCAL_KAFKA_PORT, LOCAL_KAFKA_CONTROLLER_PORT, libs)
    return kafka, RedisServer(root / "redis", LOCAL_REDIS_PORT)


@contextmanager
def _locked(settings: Settings) -> Iterator[None]:
    """Hold the stack's lock so that two `up`/`down` at once cannot start servers twice."""
    root = state_dir(settings)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _check_ports_free(server: ServerProcess, ports: tuple[int, ...]) -> None:
    for port in ports:
        if port_in_use(port):
            raise DevStackError(
                f"port {port} for the local {server.name} is taken by another process; stop it, "
                "or skip `streamvec dev up` and point STREAMVEC_KAFKA / STREAMVEC_REDIS at "
                "your own servers"
            )


def up(settings: Settings, echo: Callable[[str], None] | None = None) -> StackInfo:
    """Start Kafka and Redis on the LOCAL_* ports, reusing servers that already run."""
    say = echo or (lambda _line: None)
    kafka, redis_server = _servers(settings, fetch(settings, echo))
    reused: list[str] = []
    plan: list[tuple[str, ServerProcess, tuple[int, ...], float]] = [
        ("redis", redis_server, (LOCAL_REDIS_PORT,), REDIS_START_TIMEOUT_S),
        ("kafka", kafka, (LOCAL_KAFKA_PORT, LOCAL_KAFKA_CONTROLLER_PORT), KAFKA_START_TIMEOUT_S),
    ]
    with _locked(settings):
        for label, server, ports, _timeout in plan:
            if server.running():
                reused.append(label)
            else:
                _check_ports_free(server, ports)
                say(f"starting {label} (log: {server.log_path})")
                server.start()
        # Started together, awaited together: Redis is ready long before the JVM is.
        for _label, server, _ports, timeout in plan:
            server.wait_healthy(timeout)
    return StackInfo(kafka.bootstrap, redis_server.url, state_dir(settings), tuple(reused))


def down(settings: Settings, purge: bool = False) -> list[str]:
    """Stop whichever servers of the stack run and return their names; `purge` deletes the data."""
    kafka, redis_server = _servers(settings)
    stopped = []
    with _locked(settings):
        for label, server in (("kafka", kafka), ("redis", redis_server)):
            if server.running():
                server.stop()
                stopped.append(label)
            if purge:
                shutil.rmtree(server.data_dir, ignore_errors=True)
            else:
                server.pid_file.unlink(missing_ok=True)
    return stopped


def status(settings: Settings) -> list[ServerStatus]:
    """Return the state of each server of the stack, without starting anything."""
    kafka, redis_server = _servers(settings)
    return [
        ServerStatus(label, addr, s.pid, s.running() and s.healthy(), s.log_path)
        for label, s, addr in (
            ("kafka", kafka, kafka.bootstrap),
            ("redis", redis_server, redis_server.url),
        )
    ]
