"""A local S3-compatible server: S3Proxy over the jclouds filesystem provider, on Java 17."""

from __future__ import annotations

import http.client
import logging
from pathlib import Path
from typing import Any

from streamvec.devstack.jars import (
    S3PROXY,
    default_libs,
    install_resource,
    java_executable,
    resource,
)
from streamvec.devstack.ports import LOOPBACK
from streamvec.devstack.process import ServerProcess, write_properties

log = logging.getLogger(__name__)

MAIN_CLASS = "org.gaul.s3proxy.Main"
# Fixed credentials of a server that listens on loopback only and holds throwaway data;
# they exist so that requests are signed (AWS v4) exactly as against a real object store.
IDENTITY = "streamvec-local"
CREDENTIAL = "streamvec-local-secret"
REGION = "us-east-1"
JVM_OPTS = (
    "-Xmx256m",
    # Serial GC: on two cores a concurrent collector's threads only compete with the server.
    "-XX:+UseSerialGC",
    "-Djava.awt.headless=true",
)


class S3ProxyServer(ServerProcess):
    """One S3Proxy on a loopback port, keeping buckets as folders under `data_dir/blobs`."""

    name = "s3proxy"

    def __init__(self, data_dir: Path, port: int, libs: Path | None = None) -> None:
        super().__init__(data_dir)
        self.port = port
        self.libs = libs

    @property
    def endpoint(self) -> str:
        """The endpoint URL that S3 clients use."""
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def properties_path(self) -> Path:
        """The server's configuration, rewritten on every start."""
        return self.data_dir / "s3proxy.conf"

    @property
    def log_config_path(self) -> Path:
        """The server's logback configuration, copied from the package on every start."""
        return self.data_dir / "logback.xml"

    @property
    def blobs_dir(self) -> Path:
        """The folder that holds one subfolder per bucket."""
        return self.data_dir / "blobs"

    def storage_options(self) -> dict[str, Any]:
        """Options for fsspec's `s3://` filesystem (s3fs) that reach this server."""
        return {"endpoint_url": self.endpoint, "key": IDENTITY, "secret": CREDENTIAL,
                "client_kwargs": {"region_name": REGION}}

    def owns(self, command: str) -> bool:
        """Tell whether a command line is this server's JVM."""
        return MAIN_CLASS in command and str(self.properties_path) in command

    def properties(self) -> dict[str, str]:
        """Return the server configuration: AWS v2/v4 signatures, filesystem backend."""
        return {
            "s3proxy.endpoint": self.endpoint,
            "s3proxy.authorization": "aws-v2-or-v4",
            "s3proxy.identity": IDENTITY,
            "s3proxy.credential": CREDENTIAL,
            "jclouds.provider": "filesystem",
            "jclouds.filesystem.basedir": str(self.blobs_dir),
        }

    def start(self, die_with_parent: bool = False) -> None:
        """Write the config and launch the JVM detached, unless it already runs."""
        if self.running():
            return
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        write_properties(self.properties_path, self.properties())
        install_resource(resource(S3PROXY.name, "logback.xml"), self.log_config_path)
        libs = self.libs or default_libs(S3PROXY)
        argv = [java_executable(), *JVM_OPTS, f"-Dlogback.configurationFile={self.log_config_path}",
                "-cp", f"{libs}/*", MAIN_CLASS, "--properties", str(self.properties_path)]
        self.spawn(argv, die_with_parent=die_with_parent)
        log.debug("s3proxy starting: pid=%s endpoint=%s", self.pid, self.endpoint)

    def healthy(self, timeout: float = 1.0) -> bool:
        """Tell whether the server answers an HTTP request (unsigned, so with 403 AccessDenied)."""
        conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=timeout)
        try:
            conn.request("GET", "/")
            return conn.getresponse().status > 0
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Block until the server answers; raise with the log tail if it dies or time runs out."""
        self.wait_until(lambda: self.healthy(timeout=1.0), timeout,
                        f"answering on {self.endpoint}")
