"""What machine and software a benchmark ran on: CPU, cores, memory, OS and library versions."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any

import numpy as np

from streamvec.settings import LOCAL_KAFKA_PORT


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as meminfo:
            kib = int(next(line for line in meminfo if line.startswith("MemTotal")).split()[1])
        return round(kib / 2**20, 1)
    except (OSError, StopIteration, ValueError):
        return None


def _version(*distributions: str) -> str:
    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "not installed"


def _kafka_broker(settings: Any) -> str:
    """The broker's version where it is the local dev stack (pinned in its pom); else unknown."""
    if settings is None:
        return "not used"
    if settings.kafka != f"127.0.0.1:{LOCAL_KAFKA_PORT}":
        return f"external ({settings.kafka})"
    try:
        from streamvec.devstack.jars import kafka_version

        return f"{kafka_version()} (local KRaft stack)"
    except Exception:  # a missing pom must not lose the measurements
        return "local stack, version unknown"


def _redis_server(settings: Any) -> str:
    if settings is None:
        return "not used"
    try:
        client = settings.redis_client()
        try:
            return str(client.info("server").get("redis_version", "unknown"))
        finally:
            client.close()
    except Exception:  # an unreachable Redis must not lose the measurements
        return "unknown"


def machine_facts(settings: Any = None) -> dict[str, Any]:
    """CPU, cores, memory, OS, Python and library versions; Kafka and Redis when `settings`."""
    import confluent_kafka

    cores = os.cpu_count() or 0
    # A container or taskset may allow fewer cores than the machine has.
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    return {
        "cpu": _cpu_model(), "cores": cores, "usable_cores": usable,
        "memory_gib": _memory_gib(), "os": platform.platform(),
        "python": platform.python_version(), "numpy": np.__version__,
        "faiss": _version("faiss-cpu", "faiss-gpu", "faiss"),
        "confluent_kafka": _version("confluent-kafka"),
        "librdkafka": confluent_kafka.libversion()[0],
        "kafka_broker": _kafka_broker(settings), "redis_server": _redis_server(settings),
    }


def machine_line(facts: dict[str, Any]) -> str:
    """The facts as one line: CPU, cores (usable), memory | OS | Python, numpy, faiss, Kafka."""
    memory = facts.get("memory_gib")
    line = (f"{facts.get('cpu')}, {facts.get('cores')} cores "
            f"({facts.get('usable_cores', facts.get('cores'))} usable), "
            f"{'unknown' if memory is None else memory} GiB memory | {facts.get('os')} | "
            f"Python {facts.get('python')} | numpy {facts.get('numpy')} | "
            f"faiss {facts.get('faiss')}")
    broker = facts.get("kafka_broker")
    if broker and broker != "not used":
        line += f" | Kafka {broker}, librdkafka {facts.get('librdkafka')}"
    return line
