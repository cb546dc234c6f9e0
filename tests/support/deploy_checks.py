"""Checks of the deployment files against the code, shared by tests/deploy/test_files.py.

Each checker returns the problems it finds, so tests can also feed it bad input and see it fail.
"""

from __future__ import annotations

import io
import re
import tomllib
from collections.abc import Iterable, Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import yaml

from streamvec import health
from streamvec.commands import COMMAND_MODULES, build_parser
from streamvec.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
PROMETHEUS = DEPLOY / "prometheus"
ROLES = ("indexer", "searcher", "monitor")
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
# x.y.z, optionally with a suffix (3.11.11-slim-bookworm): a floating 3.11 or 7 is not pinned.
FULL_VERSION = re.compile(r"^v?\d+\.\d+\.\d+([-.+][0-9A-Za-z.-]+)?$")
PROBE_PATHS = {"startupProbe": health.LIVENESS_PATH, "livenessProbe": health.LIVENESS_PATH,
               "readinessProbe": health.READINESS_PATH}


def settings_env_names() -> set[str]:
    """STREAMVEC_* names Settings reads, from its fields and env prefix."""
    prefix = Settings.model_config.get("env_prefix", "")
    return {(f.validation_alias if isinstance(f.validation_alias, str) else prefix + name).upper()
            for name, f in Settings.model_fields.items()}


def env_problems(names: Iterable[str], where: str) -> list[str]:
    """STREAMVEC_* names in `names` that no Settings field reads."""
    known = settings_env_names()
    return [f"{where}: {n} is no Settings field" for n in names
            if n.upper().startswith("STREAMVEC_") and n.upper() not in known]


def image_problem(image: str) -> str | None:
    """Why `image` is not pinned to an explicit version (the streamvec image: this version)."""
    if DIGEST.search(image):
        return None
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:  # no colon, or only a registry's port before the path
        return f"{image}: no tag"
    if not FULL_VERSION.match(tag):
        return f"{image}: tag {tag!r} is not an explicit x.y.z version"
    if name.rsplit("/", 1)[-1] == "streamvec" and tag != VERSION:
        return f"{image}: the streamvec image must be tagged {VERSION} (pyproject.toml)"
    return None


def command_problem(argv: list[str]) -> str | None:
    """Why `streamvec ARGV` would not reach a command's handler, per the real parser."""
    err = io.StringIO()
    try:
        with redirect_stderr(err), redirect_stdout(io.StringIO()):
            args = build_parser().parse_args(argv)
    except SystemExit:
        return f"{argv}: does not parse: {err.getvalue().strip().splitlines()[-1:]}"
    handler = getattr(args, "handler", None)
    if handler is None:
        return f"{argv}: names no command, only a group's help"
    if handler.__module__ not in {module.__name__ for module in COMMAND_MODULES}:
        return f"{argv}: handler {handler.__qualname__} is not in a command module"
    return None


def parsed(argv: list[str]):
    """The namespace the real parser makes of `argv`."""
    return build_parser().parse_args(argv)


def collections(argv: list[str]) -> list[str]:
    """The collections a role's command line names (the monitor takes several)."""
    named = parsed(argv).collection
    return named if isinstance(named, list) else [named]


def alert_jobs() -> set[str]:
    """The job names of deploy/prometheus/prometheus.yml, which the alert rules rely on."""
    return {job["job_name"] for job in load_yaml(PROMETHEUS / "prometheus.yml")["scrape_configs"]}


def selects(selector: dict, labels: dict) -> bool:
    """Whether a Kubernetes label selector (matchLabels, matchExpressions) selects `labels`."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        has, value = expr["key"] in labels, labels.get(expr["key"])
        ok = {"In": has and value in expr.get("values", []),
              "NotIn": value not in expr.get("values", []),
              "Exists": has, "DoesNotExist": not has}[expr["operator"]]
        if not ok:
            return False
    return True


def container_ports(spec: dict) -> dict[str, int]:
    """Named container ports of a pod spec."""
    return {p["name"]: p["containerPort"] for c in spec["containers"] for p in c.get("ports", [])
            if "name" in p}


def port_problems(where: str, container: dict, env: dict[str, str]) -> list[str]:
    """Ports, STREAMVEC_METRICS_PORT and HTTP probes of one container must agree."""
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    metrics = env.get("STREAMVEC_METRICS_PORT")
    problems = [f"{where}: port {name}={port} is not STREAMVEC_METRICS_PORT={metrics}"
                for name, port in ports.items() if str(port) != str(metrics)]
    for kind, path in PROBE_PATHS.items():
        if kind not in container:
            continue
        get = container[kind].get("httpGet")
        if get is None:
            problems.append(f"{where}: {kind} is not an HTTP GET")
            continue
        port = ports.get(get["port"]) if isinstance(get["port"], str) else get["port"]
        if str(port) != str(metrics):
            problems.append(f"{where}: {kind} port {get['port']} is not the health port {metrics}")
        if get.get("path") != path:
            problems.append(f"{where}: {kind} asks {get.get('path')}, the server answers {path}")
    return problems


def service_problems(service: dict, pods: dict[str, tuple[dict, dict]]) -> list[str]:
    """A Service selects some pods, and its ports land on their container ports."""
    name, spec = service["metadata"]["name"], service["spec"]
    chosen = {n: s for n, (labels, s) in pods.items()
              if selects({"matchLabels": spec["selector"]}, labels)}
    problems = [] if chosen else [f"Service {name} selects no pod"]
    for pod, pod_spec in chosen.items():
        named = container_ports(pod_spec)
        for port in spec["ports"]:
            target = port.get("targetPort", port["port"])
            resolved = named.get(target) if isinstance(target, str) else target
            if resolved not in named.values() or resolved != port["port"]:
                problems.append(f"Service {name} port {port['port']}->{target} misses {pod}")
    return problems


def podmonitor_problems(monitor: dict, pods: dict[str, tuple[dict, dict]],
                        jobs: set[str]) -> list[str]:
    """A PodMonitor scrapes /metrics on a named port of exactly the pods behind `jobs`."""
    spec = monitor["spec"]
    chosen = {n: (labels, s) for n, (labels, s) in pods.items()
              if selects(spec["selector"], labels)}
    found = {labels.get(spec["jobLabel"]) for labels, _ in chosen.values()}
    problems = [] if found == jobs else [
        f"PodMonitor jobs {sorted(found, key=str)} are not {sorted(jobs)}"]
    for endpoint in spec["podMetricsEndpoints"]:
        if endpoint.get("path", "/metrics") != health.METRICS_PATH:
            problems.append(f"PodMonitor path {endpoint['path']} is not {health.METRICS_PATH}")
        problems += [f"PodMonitor port {endpoint['port']} is not a port of {n}"
                     for n, (_, s) in chosen.items() if endpoint["port"] not in container_ports(s)]
    return problems


# The files, loaded.

def load_yaml(path: Path) -> dict:
    """One YAML document."""
    return yaml.safe_load(path.read_text())


def compose() -> dict:
    """deploy/docker-compose.yml, merge keys resolved."""
    return load_yaml(DEPLOY / "docker-compose.yml")


def compose_env(service: dict) -> dict[str, str]:
    """A compose service's environment as a dict (mapping or KEY=VALUE list)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: str(v) for k, v in env.items()}


def streamvec_services() -> dict[str, dict]:
    """Compose services that run the streamvec image."""
    return {n: s for n, s in compose()["services"].items()
            if s["image"].rpartition(":")[0].endswith("streamvec")}


def manifests() -> Iterator[tuple[str, dict]]:
    """(file name, document) of every Kubernetes manifest but the kustomization."""
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            yield from ((path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc)


def of_kind(kind: str) -> dict[str, dict]:
    """Manifests of one kind, by name."""
    return {doc["metadata"]["name"]: doc for _, doc in manifests() if doc["kind"] == kind}


def pods() -> dict[str, tuple[dict, dict]]:
    """Pod template labels and spec of every workload, by workload name."""
    return {name: (doc["spec"]["template"]["metadata"]["labels"], doc["spec"]["template"]["spec"])
            for kind in ("Deployment", "Job") for name, doc in of_kind(kind).items()}


def k8s_env(container: dict) -> dict[str, str]:
    """A container's environment: envFrom ConfigMaps and Secrets, then its own env."""
    maps, secrets, env = of_kind("ConfigMap"), of_kind("Secret"), {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(maps[source["configMapRef"]["name"]]["data"])
        else:
            env.update(secrets[source["secretRef"]["name"]]["stringData"])
    env.update({e["name"]: str(e.get("value")) for e in container.get("env", [])})
    return env


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    lines = [ln.strip() for ln in text.splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


def dockerfile_uid() -> int:
    """The numeric user the Dockerfile's runtime stage runs as."""
    return int(next(a for i, a in dockerfile() if i == "USER").split(":")[0])
