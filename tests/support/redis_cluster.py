"""A real three-master Redis Cluster on loopback: three redis-server nodes joined by redis-cli."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis

from streamvec.devstack.ports import LOOPBACK
from streamvec.devstack.redis import RedisServer
from streamvec.errors import DevStackError

MASTERS = 3
SLOTS = 16384
# Short enough that a node that stops answering is noticed in a test's lifetime.
NODE_TIMEOUT_MS = 5000
CREATE_TIMEOUT_S = 60.0


class ClusterNode(RedisServer):
    """One redis-server with cluster mode on: its client port plus a cluster bus port."""

    name = "redis-node"

    def __init__(self, data_dir: Path, port: int, bus_port: int) -> None:
        super().__init__(data_dir, port)
        self.bus_port = bus_port

    @property
    def address(self) -> str:
        """`host:port`, as redis-cli and cluster URLs name the node."""
        return f"{LOOPBACK}:{self.port}"

    def argv(self, executable: str) -> list[str]:
        """The single server's flags plus cluster mode, with the bus on a port of its own."""
        # The bus port defaults to port + 10000, which need not be free (nor below 65536).
        return [*super().argv(executable), "--cluster-enabled", "yes",
                "--cluster-config-file", str(self.data_dir / "nodes.conf"),
                "--cluster-port", str(self.bus_port),
                "--cluster-node-timeout", str(NODE_TIMEOUT_MS)]

    def cluster_info(self) -> dict[str, str]:
        """The node's CLUSTER INFO as text fields; empty when it does not answer."""
        try:
            with self.client() as conn:
                raw = conn.execute_command("CLUSTER", "INFO")
        except (redis.RedisError, OSError):
            return {}
        if isinstance(raw, dict):
            return {str(k): str(v) for k, v in raw.items()}
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


class LocalCluster:
    """Three cluster nodes, each a master of a third of the slots, with no replicas."""

    def __init__(self, nodes: list[ClusterNode]) -> None:
        if len(nodes) != MASTERS:
            raise ValueError(f"a local cluster has {MASTERS} nodes, got {len(nodes)}")
        self.nodes = nodes

    @property
    def url(self) -> str:
        """The `redis+cluster://` URL that names every node as a seed."""
        return "redis+cluster://" + ",".join(n.address for n in self.nodes)

    def create(self, timeout: float = CREATE_TIMEOUT_S) -> None:
        """Assign the slots with `redis-cli --cluster create`; wait until every node is ok."""
        cli = shutil.which("redis-cli")
        if cli is None:
            raise DevStackError("redis-cli not found: it comes with redis-server (Debian: "
                                "redis-tools); the cluster tests need it")
        argv = [cli, "--cluster", "create", *(n.address for n in self.nodes),
                "--cluster-replicas", "0", "--cluster-yes"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,  # noqa: S603
                              stdin=subprocess.DEVNULL, check=False)
        if done.returncode != 0:
            output = (done.stdout + done.stderr)[-3000:]
            raise DevStackError(f"`{' '.join(argv)}` failed:\n{output}")
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() >= deadline:
                states = {n.address: self.nodes[i].cluster_info().get("cluster_state")
                          for i, n in enumerate(self.nodes)}
                raise DevStackError(f"the cluster was not ok after {timeout:g} s: {states}")
            time.sleep(0.1)

    def ready(self) -> bool:
        """Whether every node says the cluster is ok, knows the others and sees every slot."""
        for node in self.nodes:
            info = node.cluster_info()
            if (info.get("cluster_state") != "ok"
                    or info.get("cluster_known_nodes") != str(MASTERS)
                    or info.get("cluster_slots_ok") != str(SLOTS)):
                return False
        return True

    def stop(self) -> None:
        """Stop every node."""
        for node in self.nodes:
            node.stop()
