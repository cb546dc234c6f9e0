"""The local Kafka broker: one KRaft node (broker and controller) run on Java 17."""

from __future__ import annotations

import base64
import logging
import subprocess
import uuid
from pathlib import Path
from typing import Any

from streamvec.devstack.jars import (
    KAFKA,
    default_libs,
    ensure_jars,
    install_resource,
    java_executable,
    resource,
)
from streamvec.devstack.ports import LOOPBACK
from streamvec.devstack.process import ServerProcess, write_properties
from streamvec.errors import DevStackError

__all__ = ["KafkaServer", "cluster_id", "ensure_jars"]

log = logging.getLogger(__name__)

JVM_OPTS = (
    "-Xmx512m",
    "-Xms256m",
    # Serial GC: on two cores a concurrent collector's threads only compete with the broker.
    "-XX:+UseSerialGC",
    "-Djava.awt.headless=true",
    # Without this, log4j stops at the first signal and the broker's shutdown goes unlogged.
    "-Dlog4j2.shutdownHookEnabled=false",
)


def cluster_id() -> str:
    """Return a new KRaft cluster id: 16 random bytes in unpadded base64url (22 chars)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        # Kafka's own generator skips ids that start with '-': they read as a command flag.
        if not text.startswith("-"):
            return text


class KafkaServer(ServerProcess):
    """One Kafka node in KRaft mode (broker and controller) on loopback ports."""

    name = "broker"

    def __init__(
        self, data_dir: Path, port: int, controller_port: int, libs: Path | None = None
    ) -> None:
        super().__init__(data_dir)
        self.port = port
        self.controller_port = controller_port
        self.libs = libs

    @property
    def bootstrap(self) -> str:
        """The bootstrap servers string that clients use."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def properties_path(self) -> Path:
        """The broker's server.properties, rewritten on every start."""
        return self.data_dir / "server.properties"

    @property
    def log_config_path(self) -> Path:
        """The broker's log4j2 configuration, copied from the package on every start."""
        return self.data_dir / "log4j2.yaml"

    @property
    def log_dirs(self) -> Path:
        """The folder that holds the partitions and the metadata log."""
        return self.data_dir / "data"

    def owns(self, command: str) -> bool:
        """Tell whether a command line is this broker's JVM."""
        return "kafka.Kafka" in command and str(self.properties_path) in command

    def properties(self) -> dict[str, str]:
        """Return the broker configuration: one node, replication 1, tuned for a small machine."""
        return {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{LOOPBACK}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{LOOPBACK}:{self.port},"
            f"CONTROLLER://{LOOPBACK}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{LOOPBACK}:{self.port}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.log_dirs),
            "auto.create.topics.enable": "false",
            "num.partitions": "1",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "offsets.topic.replication.factor": "1",
            # 50 offset partitions (the default) cost seconds when the first group commits.
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # Lets tests use short session timeouts to see a dead consumer quickly.
            "group.min.session.timeout.ms": "1000",
            # Thread pools sized for two cores instead of the defaults meant for servers.
            "num.network.threads": "2",
            "num.io.threads": "2",
            "num.recovery.threads.per.data.dir": "1",
            "background.threads": "2",
            "log.cleaner.threads": "1",
        }

    def _java(self, main: str, *args: str) -> list[str]:
        libs = self.libs or default_libs(KAFKA)
        return [
            java_executable(),
            *JVM_OPTS,
            f"-Dlog4j2.configurationFile={self.log_config_path}",
            f"-Dkafka.logs.dir={self.data_dir}",
            "-cp",
            f"{libs}/*",
            main,
            *args,
        ]

    def format_storage(self) -> None:
        """Format the metadata log with a new cluster id unless it was formatted before."""
        if (self.log_dirs / "meta.properties").is_file():
            return
        argv = self._java(
            "kafka.tools.StorageTool", "format", "-t", cluster_id(), "-c", str(self.properties_path)
        )
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)  # noqa: S603
        if proc.returncode != 0:
            raise DevStackError(
                f"formatting Kafka storage in {self.log_dirs} failed:\n"
                f"{(proc.stdout + proc.stderr).strip()[-3000:]}"
            )

    def start(self, die_with_parent: bool = False) -> None:
        """Write the config, format storage on the first start, and launch the JVM detached."""
        if self.running():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        write_properties(self.properties_path, self.properties())
        install_resource(resource(KAFKA.name, "log4j2.yaml"), self.log_config_path)
        self.format_storage()
        self.spawn(
            self._java("kafka.Kafka", str(self.properties_path)), die_with_parent=die_with_parent
        )
        log.debug("kafka broker starting: pid=%s bootstrap=%s", self.pid, self.bootstrap)

    def healthy(self, timeout: float = 2.0) -> bool:
        """Tell whether the broker answers a metadata request and lists itself."""
        from confluent_kafka.admin import AdminClient

        # log_level 0: a broker still starting makes librdkafka print connection errors.
        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap,
            "log_level": 0,
            "error_cb": lambda _err: None,
        }
        admin = AdminClient(config)
        try:
            metadata = admin.list_topics(timeout=timeout)
        except Exception:  # noqa: BLE001 - any failure here just means "not yet"
            return False
        return bool(metadata.brokers)

    def wait_healthy(self, timeout: float = 120.0) -> None:
        """Block until the broker answers; raise with the log tail if it dies or time runs out."""
        self.wait_until(
            lambda: self.healthy(timeout=1.0), timeout, f"answering on {self.bootstrap}"
        )
