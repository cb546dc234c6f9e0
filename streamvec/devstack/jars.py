"""Server jars (Kafka broker, S3Proxy): fetched once with Maven into a cache, run on Java 17+."""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET  # noqa: S405 - parses our own pom.xml only
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from streamvec import files
from streamvec.errors import DevStackError
from streamvec.settings import Settings

MIN_JAVA = 17
_COMPLETE = ".complete"
_DOWNLOADED = re.compile(r"^\[INFO\] Downloaded from ")
_POM_NS = "{http://maven.apache.org/POM/4.0.0}"


def resource(*parts: str) -> Traversable:
    """Return a file the dev stack ships inside the package: a pom or a JVM logging config."""
    # Package data rather than a path into the source tree, so that an installed wheel
    # finds them as well as a checkout does.
    return resources.files("streamvec.devstack").joinpath("resources", *parts)


def install_resource(source: Traversable, target: Path) -> Path:
    """Copy a packaged file to `target` (where a JVM or Maven reads it) and return `target`."""
    # Servers and Maven get a copy outside the installed package: Maven writes its `target/`
    # beside the pom, and a running JVM must not lose its config when the package is upgraded.
    data = _read(source)
    if not (target.is_file() and target.read_bytes() == data):
        target.parent.mkdir(parents=True, exist_ok=True)
        files.write_atomic(target, data, durable=False)
    return target


def _read(source: Traversable) -> bytes:
    try:
        return source.read_bytes()
    except OSError as exc:
        raise DevStackError(
            f"the packaged dev stack file {source} cannot be read ({exc}); "
            "reinstall streamvec") from None


@dataclass(frozen=True, slots=True)
class JarSet:
    """The runtime jars of one server, named by a packaged pom and cached per version."""

    name: str  # cache folder prefix: <name>-<version>/libs; also its resources folder
    title: str  # how messages name the server
    version_property: str

    @property
    def pom(self) -> Traversable:
        """The packaged pom whose runtime dependencies are this server's jars."""
        return resource(self.name, "pom.xml")

    def version(self) -> str:
        """Return the version pinned in the pom's `version_property`."""
        return pinned_version(self.pom, self.version_property)


KAFKA = JarSet("kafka", "Kafka broker", "kafka.version")
# The S3-compatible server the object-store tests run against; a pom of its own, because
# Maven picks one version per artifact and its Jackson must not follow Kafka's.
S3PROXY = JarSet("s3proxy", "S3Proxy", "s3proxy.version")


def pinned_version(pom: Traversable | Path, prop: str) -> str:
    """Return the `<prop>` property of `pom`."""
    root = ET.fromstring(_read(pom))  # noqa: S314 - our own packaged file, not untrusted input
    found = root.find(f"{_POM_NS}properties/{_POM_NS}{prop}")
    version = (found.text or "").strip() if found is not None else ""
    if not version:
        raise DevStackError(f"{pom} has no <{prop}> property")
    return version


def kafka_version() -> str:
    """Return the Kafka version pinned in the packaged Kafka pom."""
    return KAFKA.version()


def java_executable() -> str:
    """Return the `java` to run, from JAVA_HOME or PATH, after checking it is Java 17 or newer."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).exists():
        raise DevStackError(
            f"java not found: the local servers need Java {MIN_JAVA} or newer "
            "(Debian: apt-get install -y openjdk-17-jre-headless)"
        )
    proc = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)  # noqa: S603
    match = re.search(r'version "(\d+)(?:\.(\d+))?', proc.stderr + proc.stdout)
    if not match:
        raise DevStackError(f"cannot tell the version of {java}: {proc.stderr.strip()!r}")
    major = int(match.group(1))
    if major == 1:  # "1.8.0_392" is Java 8
        major = int(match.group(2) or 0)
    if major < MIN_JAVA:
        raise DevStackError(f"{java} is Java {major}; the local servers need Java {MIN_JAVA}+")
    return java


def cache_dir(settings: Settings) -> Path:
    """Return the folder that holds downloads reused across runs (the server jars)."""
    return settings.home / "cache"


def jars_dir(cache_dir: Path, jars: JarSet = KAFKA) -> Path:
    """Return the folder that holds (or will hold) the jars of `jars` under `cache_dir`."""
    return Path(cache_dir) / f"{jars.name}-{jars.version()}" / "libs"


def _pom_stamp(jars: JarSet) -> str:
    # The pom's content, not its mtime: a fresh install must not refetch what the cache holds.
    return f"{jars.version()} {hashlib.sha256(_read(jars.pom)).hexdigest()}\n"


def ensure_jars(cache_dir: Path, echo: Callable[[str], None] | None = None,
                jars: JarSet = KAFKA) -> Path:
    """Return the jars folder of `jars` under `cache_dir`, fetching them with Maven if needed."""
    libs = jars_dir(cache_dir, jars)
    marker = libs.parent / _COMPLETE
    if marker.is_file() and marker.read_text() == _pom_stamp(jars):
        return libs
    java_executable()
    mvn = shutil.which("mvn")
    if not mvn:
        raise DevStackError(
            f"mvn not found: the {jars.title} jars are fetched with Maven "
            "(Debian: apt-get install -y maven)"
        )
    libs.parent.mkdir(parents=True, exist_ok=True)
    with open(libs.parent / ".lock", "w") as lock:
        # Two test runs may start cold at once; the second waits and reuses the first's fetch.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (marker.is_file() and marker.read_text() == _pom_stamp(jars)):
            _fetch(mvn, jars, libs, echo or (lambda _line: None))
            marker.write_text(_pom_stamp(jars))
    return libs


def _fetch(mvn: str, jars: JarSet, libs: Path, echo: Callable[[str], None]) -> None:
    """Copy the runtime dependencies of the pom into `libs`, replacing it only on success."""
    staging = libs.with_name(f"libs.tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    fetch_log = libs.parent / "fetch.log"
    pom = install_resource(jars.pom, libs.parent / "pom.xml")
    argv = [
        mvn,
        "-B",
        "-Dstyle.color=never",
        "-f",
        str(pom),
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={staging}",
    ]
    echo(f"fetching {jars.title} {jars.version()} jars with Maven into {libs} (first run only)")
    started = time.monotonic()
    downloads = _run_counting(argv, fetch_log)
    if downloads < 0:
        tail = "\n".join(fetch_log.read_text(errors="replace").splitlines()[-25:])
        shutil.rmtree(staging, ignore_errors=True)
        raise DevStackError(
            f"Maven could not fetch the {jars.title} jars (full log: {fetch_log}):\n{tail}")
    shutil.rmtree(libs, ignore_errors=True)
    os.replace(staging, libs)
    found = list(libs.glob("*.jar"))
    size_mb = sum(j.stat().st_size for j in found) / 1e6
    echo(
        f"fetched {len(found)} jars ({size_mb:.0f} MB, {downloads} downloaded) "
        f"in {time.monotonic() - started:.1f} s"
    )


def _run_counting(argv: list[str], log_file: Path) -> int:
    """Run Maven with its output in `log_file`; return the files downloaded, or -1 on failure."""
    from tqdm import tqdm

    count = 0
    with (
        open(log_file, "w") as out,
        tqdm(desc="maven", unit=" files", disable=None, file=sys.stderr, leave=False) as bar,
    ):
        proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            if _DOWNLOADED.match(line):
                count += 1
                bar.update(1)
        rc = proc.wait()
    return count if rc == 0 else -1


def default_libs(jars: JarSet) -> Path:
    """Return the jars folder of `jars` in the cache the environment's settings name."""
    return ensure_jars(cache_dir(Settings()), jars=jars)
