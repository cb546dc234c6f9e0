"""streamvec as a distribution: what the wheel holds, what a client imports, what it depends on.

`make wheel-check` also runs the slow check at the end: the built wheel installed into fresh
virtual environments outside the checkout, with the `server` extra and with the client set.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

from streamvec.commands.errors import OPTIONAL_MODULES, MissingDependency, optional_dependencies
from streamvec.devstack.jars import KAFKA, S3PROXY, install_resource, kafka_version, resource
from tests.support.stack import serving

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
EXTRAS: dict[str, list[str]] = PROJECT["optional-dependencies"]
PACKAGES = ("streamvec", "ingest", "indexer", "searcher", "monitor", "lifecycle")
SERVER_MODULES = tuple(sorted(m for m, (_, extra) in OPTIONAL_MODULES.items() if extra == "server"))
# The dev stack's packaged files, relative to streamvec/devstack/resources/.
DEV_STACK_FILES = ("kafka/pom.xml", "kafka/log4j2.yaml", "s3proxy/pom.xml", "s3proxy/logback.xml")
LOCK = ROOT / "deploy" / "requirements.lock"
PIP_QUIET = ("-q", "--disable-pip-version-check")


def _name(requirement: str) -> str:
    """The normalised distribution name of a requirement string."""
    name = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    assert name, requirement
    return re.sub(r"[-_.]+", "-", name.group(0)).lower()


def _specifier(requirement: str) -> SpecifierSet:
    return SpecifierSet(re.sub(r"^[A-Za-z0-9._-]+(\[[^]]*\])?", "", requirement).split(";")[0])


def build_wheel(dest: Path) -> Path:
    """Build streamvec's wheel into `dest` from a copy of the files it is made of; return it."""
    # A copy keeps setuptools' build/ and egg-info out of the checkout (and away from another
    # build running there); no build isolation, so the venv's setuptools builds it offline.
    src = dest / "src"
    src.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, src / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", *PIP_QUIET, "--no-deps",
                    "--no-build-isolation", "-w", str(dest / "dist"), str(src)],
                   check=True, capture_output=True, text=True, timeout=300)
    (wheel,) = (dest / "dist").glob("streamvec-*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


# Imports the client path makes, with the server packages absent: a finder that refuses them
# and records every attempt, so that even an import caught by `except ImportError` shows.
ABSENT = textwrap.dedent("""
    import sys
    ABSENT = {absent!r}
    attempts = []

    class Absent:
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in ABSENT:
                attempts.append(name)
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None

    sys.meta_path.insert(0, Absent())
""")


def _run_without_server_packages(code: str, cwd: Path, env: dict[str, str] | None = None,
                                 ) -> subprocess.CompletedProcess:
    script = ABSENT.format(absent=SERVER_MODULES) + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


# The client: light imports.

def test_the_client_sdks_and_the_command_line_import_no_server_package(tmp_path):
    done = _run_without_server_packages("""
        import json
        import ingest.producer, searcher.aclient, searcher.client, streamvec.commands
        print(json.dumps({"attempts": attempts, "loaded": sorted(
            m for m in sys.modules if m.partition(".")[0] in ABSENT)}))
    """, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"attempts": [], "loaded": []}


@pytest.mark.parametrize("role", ["indexer", "searcher", "monitor"])
def test_a_role_without_the_server_extra_names_the_install(tmp_path, role):
    done = _run_without_server_packages(f"""
        from streamvec.commands import main
        sys.exit(main([{role!r}, "--collection", "products"]))
    """, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (f"streamvec: error: the {role} needs faiss-cpu, fsspec, "
                           "prometheus-client, s3fs, tqdm: pip install 'streamvec[server]'\n")


def test_only_a_missing_optional_package_becomes_a_missing_dependency():
    with pytest.raises(MissingDependency, match=r"^`streamvec compact` needs faiss-cpu"):
        with optional_dependencies("compact"):
            raise ModuleNotFoundError("No module named 'faiss.contrib'", name="faiss.contrib")
    with pytest.raises(ModuleNotFoundError) as raised:
        with optional_dependencies("indexer"):
            raise ModuleNotFoundError("No module named 'numpy.foo'", name="numpy.foo")
    assert raised.value.name == "numpy.foo"


@pytest.mark.integration
def test_a_client_without_the_server_packages_produces_and_searches(settings, collection_name,
                                                                    tmp_path):
    with serving(settings, collection_name, dim=4, partitions=2, seal_rows=2) as spec:
        done = _run_without_server_packages(f"""
            import json
            import numpy as np
            from ingest.producer import Producer
            from searcher.client import Client
            vectors = np.eye(4, dtype=np.float32)[:3]
            with Producer({spec.name!r}) as producer:
                producer.upsert(["a", "b", "c"], vectors)
                producer.delete(["b"])
                offsets = producer.flush()
            query = np.array([0, 0.9, 0.1, 0], dtype=np.float32)
            found = Client().search({spec.name!r}, query, k=2,
                                    consistency={{"session": offsets}})
            print(json.dumps({{"ids": [list(row) for row in found.ids], "attempts": attempts}}))
        """, cwd=tmp_path, env={**settings.child_env(), "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"ids": [["c", "a"]], "attempts": []}


# Dependencies and the lock.

def test_the_base_set_is_the_client_set_and_the_server_extra_holds_the_rest():
    assert sorted(_name(r) for r in PROJECT["dependencies"]) == [
        "argcomplete", "confluent-kafka", "numpy", "pydantic", "pydantic-settings", "redis"]
    assert EXTRAS["client"] == []
    assert sorted(_name(r) for r in EXTRAS["server"]) == [
        "faiss-cpu", "fsspec", "prometheus-client", "s3fs", "tqdm"]
    assert "redis[hiredis]" in {r.split(">")[0].split("<")[0] for r in PROJECT["dependencies"]}


def test_the_missing_dependency_table_agrees_with_the_extras():
    for module, (dist, extra) in OPTIONAL_MODULES.items():
        assert dist in {_name(r) for r in EXTRAS[extra]}, module
    named = {(dist, extra) for dist, extra in OPTIONAL_MODULES.values()}
    assert {(_name(r), "server") for r in EXTRAS["server"]} <= named


def test_every_dependency_has_an_upper_bound():
    requirements = [*PROJECT["dependencies"], *(r for rs in EXTRAS.values() for r in rs)]
    unbounded = [r for r in requirements if not any(s.operator in ("<", "<=", "==", "~=")
                                                    for s in _specifier(r))]
    assert unbounded == []


def _lock_lines() -> list[str]:
    return [ln for ln in LOCK.read_text().splitlines() if ln and not ln.startswith("#")]


def test_the_lock_pins_the_base_and_server_sets_within_their_bounds():
    lines = _lock_lines()
    pins = dict(ln.split("==") for ln in lines)
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+==[A-Za-z0-9.+!-]+", ln) for ln in lines)
    pinned = {_name(name): version for name, version in pins.items()}
    assert "streamvec" not in pinned
    for requirement in [*PROJECT["dependencies"], *EXTRAS["server"], "hiredis>=1"]:
        name = _name(requirement)
        assert name in pinned, requirement
        assert pinned[name] in _specifier(requirement), (requirement, pinned[name])


def test_the_image_installs_exactly_the_lock():
    text = re.sub(r"\\\n", " ", (ROOT / "deploy" / "Dockerfile").read_text())
    runs = [ln for ln in text.splitlines() if ln.startswith("RUN ")]
    assert any("pip install --no-deps -r deploy/requirements.lock" in r for r in runs)
    assert any("pip install --no-deps ." in r and "pip check" in r for r in runs)


# The wheel.

def test_the_wheel_holds_the_license_typing_markers_corpus_and_dev_stack_files(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert {f"{p}/py.typed" for p in PACKAGES} <= names
        assert "streamvec/corpus_data.json" in names
        for relative in DEV_STACK_FILES:
            packaged = archive.read(f"streamvec/devstack/resources/{relative}")
            assert packaged == (ROOT / "streamvec/devstack/resources" / relative).read_bytes()
        info = wheel.name.split("-py3")[0] + ".dist-info"
        assert archive.read(f"{info}/licenses/LICENSE") == (ROOT / "LICENSE").read_bytes()
        metadata = archive.read(f"{info}/METADATA").decode()
    assert "License-Expression: Apache-2.0" in metadata.splitlines()
    assert {"client", "server", "test", "bench", "demo"} <= {
        ln.split(": ")[1] for ln in metadata.splitlines() if ln.startswith("Provides-Extra: ")}
    always = {_name(ln.split(": ")[1]) for ln in metadata.splitlines()
              if ln.startswith("Requires-Dist: ") and "extra ==" not in ln}
    assert always == {"argcomplete", "confluent-kafka", "numpy", "pydantic", "pydantic-settings",
                      "redis"}


def test_the_license_is_the_apache_license_2_0():
    text = (ROOT / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "END OF TERMS AND CONDITIONS" in text


# The dev stack's files come from the package.

def test_the_dev_stack_finds_its_poms_in_the_package():
    devstack = ROOT / "streamvec" / "devstack" / "resources"
    assert Path(str(KAFKA.pom)) == devstack / "kafka" / "pom.xml"
    assert Path(str(S3PROXY.pom)) == devstack / "s3proxy" / "pom.xml"
    assert not (ROOT / "deploy" / "local" / "pom.xml").exists()


def test_an_installed_copy_reads_its_poms_from_its_own_folder(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", *PIP_QUIET, "--no-deps",
                    "--no-compile", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=120)
    done = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import json
        from streamvec.devstack.jars import KAFKA, S3PROXY, kafka_version
        print(json.dumps([str(KAFKA.pom), str(S3PROXY.pom), kafka_version()]))
    """)], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(site)}, capture_output=True,
        text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    resources = site / "streamvec" / "devstack" / "resources"
    assert json.loads(done.stdout) == [str(resources / "kafka" / "pom.xml"),
                                       str(resources / "s3proxy" / "pom.xml"), kafka_version()]


def test_a_packaged_file_is_copied_where_it_is_used_and_kept_in_step(tmp_path):
    source = resource("kafka", "log4j2.yaml")
    target = tmp_path / "broker" / "log4j2.yaml"
    assert install_resource(source, target) == target
    assert target.read_bytes() == source.read_bytes()
    inode = target.stat().st_ino
    install_resource(source, target)
    assert target.stat().st_ino == inode  # unchanged content: not rewritten
    target.write_text("stale\n")
    install_resource(source, target)
    assert target.read_bytes() == source.read_bytes()


# The installed wheel, end to end (minutes: network installs; `make wheel-check`).

WHEEL_CHECK = os.environ.get("STREAMVEC_WHEEL_CHECK") == "1"


def _venv(path: Path, *install: str) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=120)
    subprocess.run([str(path / "bin" / "pip"), "install", *PIP_QUIET, "-c", str(LOCK), *install],
                   check=True, timeout=900)
    return path / "bin"


def _run(argv: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=900)


@pytest.mark.skipif(not WHEEL_CHECK, reason="installs into fresh venvs: make wheel-check")
@pytest.mark.timeout(900)  # a cold pip cache and Maven repository download ~250 MB
def test_the_installed_wheel_works_outside_the_checkout(wheel, tmp_path):
    work = tmp_path / "elsewhere"
    work.mkdir()
    # The server set, as an operator installs it; the lock keeps the versions the image's.
    server = _venv(tmp_path / "server", f"{wheel}[server]")
    frozen = _run([str(server / "pip"), "freeze", "--exclude", "streamvec"], work)
    assert set(frozen.stdout.split()) == set(_lock_lines())  # the lock is the whole set
    assert _run([str(server / "pip"), "check"], work).returncode == 0
    helped = _run([str(server / "streamvec"), "--help"], work)
    assert helped.returncode == 0 and "collection" in helped.stdout
    home = tmp_path / "home"
    fetched = _run([str(server / "streamvec"), "dev", "fetch"], work, STREAMVEC_HOME=str(home))
    assert fetched.returncode == 0, fetched.stderr
    assert fetched.stdout.split() == [str(home / "cache" / f"{jars.name}-{jars.version()}" / "libs")
                                      for jars in (KAFKA, S3PROXY)]
    for jars in (KAFKA, S3PROXY):
        libs = home / "cache" / f"{jars.name}-{jars.version()}" / "libs"
        assert len(list(libs.glob("*.jar"))) > 10
    site = next((tmp_path / "server" / "lib").glob("python3.*/site-packages"))
    resources = site / "streamvec" / "devstack" / "resources"
    assert sorted(str(p.relative_to(resources)) for p in resources.rglob("*")
                  if p.is_file()) == sorted(DEV_STACK_FILES)  # Maven wrote nothing there

    # The client set: produce and query, with FAISS and the object-store stack not installed.
    client = _venv(tmp_path / "client", f"{wheel}[client]")
    checked = _run([str(client / "python"), "-c", textwrap.dedent("""
        import importlib.util, json
        import ingest.producer, searcher.client
        print(json.dumps([m for m in ("faiss", "fsspec", "s3fs", "prometheus_client", "tqdm")
                          if importlib.util.find_spec(m) is not None]))
    """)], work)
    assert (checked.returncode, checked.stdout.strip()) == (0, "[]"), checked.stderr
    indexer = _run([str(client / "streamvec"), "indexer", "--collection", "products"], work)
    assert indexer.returncode == 1
    assert indexer.stderr == ("streamvec: error: the indexer needs faiss-cpu, fsspec, "
                              "prometheus-client, s3fs, tqdm: pip install 'streamvec[server]'\n")
