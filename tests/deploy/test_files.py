"""Compose, Kubernetes and Dockerfile agree with the code: commands, settings, images, ports."""

from __future__ import annotations

import copy
import shutil
import subprocess
import tomllib

import pytest
import yaml

from streamvec import health
from streamvec.devstack.jars import kafka_version
from tests.support.deploy_checks import (
    DEPLOY,
    K8S,
    PROMETHEUS,
    ROLES,
    ROOT,
    VERSION,
    alert_jobs,
    collections,
    command_problem,
    compose,
    compose_env,
    dockerfile,
    dockerfile_uid,
    env_problems,
    image_problem,
    k8s_env,
    load_yaml,
    manifests,
    of_kind,
    parsed,
    podmonitor_problems,
    pods,
    port_problems,
    service_problems,
    streamvec_services,
)

JOBS = {f"streamvec-{role}" for role in ROLES}


# The checkers themselves reject bad input.

@pytest.mark.parametrize(("argv", "problem"), [
    (["collection"], "names no command, only a group's help"),
    (["produce"], "names no command, only a group's help"),
    (["indexer"], "the following arguments are required: --collection"),
    (["indexr", "--collection", "demo"], "invalid choice: 'indexr'"),
    (["searcher", "--collection", "demo", "--metrics-port", "http"], "invalid int value"),
])
def test_the_command_check_rejects_what_the_real_parser_rejects(argv, problem):
    found = command_problem(argv)
    assert found is not None and problem in found
    assert command_problem(["indexer", "--collection", "demo"]) is None


def test_the_env_check_rejects_names_no_settings_field_reads():
    assert env_problems(["STREAMVEC_KAFKA", "STREAMVEC_METRICS_PORT", "GF_X"], "x") == []
    assert env_problems(["STREAMVEC_KAFKA_BOOTSTRAP", "STREAMVEC_LOG_LEVEL"], "svc") == [
        "svc: STREAMVEC_KAFKA_BOOTSTRAP is no Settings field",
        "svc: STREAMVEC_LOG_LEVEL is no Settings field"]


@pytest.mark.parametrize(("image", "problem"), [
    ("redis", "redis: no tag"),
    ("localhost:5000/streamvec", "localhost:5000/streamvec: no tag"),
    ("redis:latest", "redis:latest: tag 'latest' is not an explicit x.y.z version"),
    ("python:3.11-slim", "python:3.11-slim: tag '3.11-slim' is not an explicit x.y.z version"),
    ("streamvec:0.0.9",
     f"streamvec:0.0.9: the streamvec image must be tagged {VERSION} (pyproject.toml)"),
    ("redis:7.4.1", None),
    ("python:3.11.11-slim-bookworm", None),
    ("redis@sha256:" + "a" * 64, None),
])
def test_the_image_check_rejects_floating_or_missing_tags(image, problem):
    assert image_problem(image) == problem


def test_the_port_check_rejects_a_probe_on_another_port_or_path():
    container = of_kind("Deployment")["streamvec-searcher"]["spec"]["template"]["spec"][
        "containers"][0]
    env = k8s_env(container)
    assert port_problems("searcher", container, env) == []
    bad = copy.deepcopy(container)
    bad["readinessProbe"]["httpGet"].update(port=9999, path="/ready")
    bad["livenessProbe"] = {"exec": {"command": ["true"]}}
    assert port_problems("searcher", bad, env) == [
        "searcher: livenessProbe is not an HTTP GET",
        "searcher: readinessProbe port 9999 is not the health port 9102",
        "searcher: readinessProbe asks /ready, the server answers /readyz"]
    assert port_problems("searcher", container, {**env, "STREAMVEC_METRICS_PORT": "9100"})[0] == (
        "searcher: port http-metrics=9102 is not STREAMVEC_METRICS_PORT=9100")


def test_the_service_and_podmonitor_checks_reject_ports_that_miss_the_pods():
    service = copy.deepcopy(of_kind("Service")["streamvec-indexer"])
    service["spec"]["ports"][0]["targetPort"] = "metrics"
    assert service_problems(service, pods()) == [
        "Service streamvec-indexer port 9101->metrics misses streamvec-indexer"]
    monitor = copy.deepcopy(of_kind("PodMonitor")["streamvec"])
    monitor["spec"]["podMetricsEndpoints"][0]["port"] = "metrics"
    monitor["spec"]["selector"]["matchExpressions"][0]["values"].remove("monitor")
    assert podmonitor_problems(monitor, pods(), JOBS) == [
        "PodMonitor jobs ['streamvec-indexer', 'streamvec-searcher'] are not "
        "['streamvec-indexer', 'streamvec-monitor', 'streamvec-searcher']",
        "PodMonitor port metrics is not a port of streamvec-indexer",
        "PodMonitor port metrics is not a port of streamvec-searcher"]


# The Dockerfile.

def test_the_dockerfile_pins_its_base_runs_non_root_and_probes_healthz():
    steps = dockerfile()
    bases = [args.split()[0] for op, args in steps if op == "FROM"]
    assert bases and [image_problem(b) for b in bases] == [None] * len(bases)
    assert dockerfile_uid() >= 1000
    env_names = [w.split("=")[0] for op, args in steps if op == "ENV" for w in args.split()]
    assert env_problems(env_names, "Dockerfile") == []
    assert ("ENTRYPOINT", '["streamvec"]') in steps
    check = next(args for op, args in steps if op == "HEALTHCHECK")
    assert '"streamvec.probe", "/healthz"' in check


def test_the_image_holds_every_package_and_the_build_context_lets_them_in():
    includes = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"]["find"]["include"]
    packages = {pattern.rstrip("*") for pattern in includes}
    copied = {args.split()[0] for op, args in dockerfile() if op == "COPY" and "--from" not in args}
    allowed = {line[1:] for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")}
    assert packages <= copied
    assert copied <= allowed
    assert all((ROOT / path).exists() for path in copied)


# docker-compose.yml.

def test_every_compose_image_is_pinned():
    images = {name: s["image"] for name, s in compose()["services"].items()}
    assert {n: image_problem(i) for n, i in images.items()} == {n: None for n in images}


def test_every_streamvec_service_runs_a_real_command_with_real_settings():
    services = streamvec_services()
    assert set(services) == {"create-collection", *ROLES, "producer"}
    for name, service in services.items():
        assert command_problem(service["command"]) is None, name
        assert env_problems(compose_env(service), name) == []
        build = service["build"]
        assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == (
            DEPLOY / "Dockerfile")


def test_compose_creates_the_collection_once_before_everything_that_uses_it():
    services = streamvec_services()
    create = parsed(services["create-collection"]["command"])
    assert services["create-collection"]["restart"] == "no"
    assert services["create-collection"]["depends_on"] == {
        "kafka": {"condition": "service_healthy"}, "redis": {"condition": "service_healthy"}}
    for name in ("kafka", "redis"):
        assert "healthcheck" in compose()["services"][name], name
    for name, service in services.items():
        if name != "create-collection":
            assert collections(service["command"]) == [create.name], name
            assert service["depends_on"] == {
                "create-collection": {"condition": "service_completed_successfully"}}, name


def test_compose_shares_one_snapshot_volume_and_wires_kafka_and_redis_by_name():
    c = compose()
    for name, service in streamvec_services().items():
        env = compose_env(service)
        assert f"snapshots:{env['STREAMVEC_STORE']}" in service["volumes"], name
        assert env["STREAMVEC_KAFKA"] == "kafka:9092" and env["STREAMVEC_REDIS"].startswith(
            "redis://redis:6379/"), name
    kafka = c["services"]["kafka"]["environment"]
    assert "PLAINTEXT://kafka:9092" in kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert set(kafka["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert c["services"]["kafka"]["image"] == f"apache/kafka:{kafka_version()}"
    redis = c["services"]["redis"]
    assert "--appendonly yes" in " ".join(redis["command"]) and "redis-data:/data" in redis[
        "volumes"]
    assert {r: c["services"][r].get("deploy", {}).get("replicas", 1) for r in ROLES} == {
        "indexer": 2, "searcher": 2, "monitor": 1}


def test_compose_prometheus_scrapes_each_role_on_its_metrics_port():
    services = streamvec_services()
    config = load_yaml(PROMETHEUS / "prometheus-compose.yml")
    assert config["rule_files"] == load_yaml(PROMETHEUS / "prometheus.yml")["rule_files"]
    scraped = {job["job_name"]: job["dns_sd_configs"] for job in config["scrape_configs"]}
    assert set(scraped) == alert_jobs() == JOBS
    for role in ROLES:
        port = int(compose_env(services[role])["STREAMVEC_METRICS_PORT"])
        assert scraped[f"streamvec-{role}"] == [
            {"names": [role], "type": "A", "port": port, "refresh_interval": "15s"}]
    prometheus = compose()["services"]["prometheus"]
    assert "./prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus-compose.yml" in prometheus["command"]


def test_promtool_accepts_the_compose_scrape_config():
    promtool = shutil.which("promtool")
    assert promtool, "promtool not on PATH: run `make prometheus` (Debian package prometheus)"
    proc = subprocess.run([promtool, "check", "config", "prometheus-compose.yml"], cwd=PROMETHEUS,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 1 rule files found" in proc.stdout + proc.stderr


def test_compose_grafana_loads_the_dashboard_from_the_compose_prometheus():
    c = compose()
    provider = load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "streamvec.yml")
    path = provider["providers"][0]["options"]["path"]
    assert f"./grafana/dashboards:{path}:ro" in c["services"]["grafana"]["volumes"]
    source = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    ours = yaml.safe_load(c["configs"]["grafana-datasource"]["content"])["datasources"][0]
    assert ours["uid"] == source["datasources"][0]["uid"]
    assert ours["url"] == "http://prometheus:9090"
    assert "127.0.0.1:9090:9090" in c["services"]["prometheus"]["ports"]


# deploy/k8s.

def test_kustomization_lists_every_manifest_and_pins_the_image():
    kustomization = load_yaml(K8S / "kustomization.yaml")
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)
    assert kustomization["images"] == [{"name": "streamvec", "newTag": VERSION}]


def test_every_k8s_setting_is_a_settings_field():
    for name, config in of_kind("ConfigMap").items():
        assert env_problems(config["data"], name) == []
    for name, secret in of_kind("Secret").items():
        assert env_problems(secret["stringData"], name) == []
    for workload, (_, spec) in pods().items():
        for c in spec["containers"] + spec.get("initContainers", []):
            assert env_problems(k8s_env(c), f"{workload}/{c['name']}") == []


def test_every_k8s_container_runs_a_real_command_pinned_and_non_root():
    uid = dockerfile_uid()
    for workload, (_, spec) in pods().items():
        assert spec["securityContext"]["runAsNonRoot"] is True, workload
        assert spec["securityContext"]["runAsUser"] == uid, workload
        for c in spec["containers"] + spec.get("initContainers", []):
            where = f"{workload}/{c['name']}"
            assert image_problem(c["image"]) is None, where
            assert "command" not in c and command_problem(c["args"]) is None, where
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, where
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, where
            assert c["resources"]["requests"] and c["resources"]["limits"]["memory"], where


def test_each_role_has_probes_on_its_health_port_and_the_shared_snapshots():
    deployments = of_kind("Deployment")
    assert set(deployments) == JOBS
    claims = of_kind("PersistentVolumeClaim")
    for name, deployment in deployments.items():
        spec = deployment["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        env = k8s_env(container)
        assert parsed(container["args"]).command == name.removeprefix("streamvec-")
        assert {"livenessProbe", "readinessProbe"} <= set(container), name
        assert port_problems(name, container, env) == []
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
        claim = mounts[env["STREAMVEC_STORE"]]["persistentVolumeClaim"]["claimName"]
        assert claims[claim]["spec"]["accessModes"] == ["ReadWriteMany"], name


def test_the_job_creates_the_collection_every_deployment_serves():
    (job,) = of_kind("Job").values()
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:2] == ["collection", "create"]
    for name, deployment in of_kind("Deployment").items():
        spec = deployment["spec"]["template"]["spec"]
        assert collections(spec["containers"][0]["args"]) == [args[2]], name
        assert parsed(spec["initContainers"][0]["args"]).name == args[2], name


def test_services_and_the_podmonitor_reach_the_metrics_ports():
    workloads = pods()
    for service in of_kind("Service").values():
        assert service_problems(service, workloads) == []
    (monitor,) = of_kind("PodMonitor").values()
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert podmonitor_problems(monitor, workloads, alert_jobs()) == []


def test_every_manifest_names_its_kind_and_api():
    for file, doc in manifests():
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"], file
    assert health.PATHS == ("/metrics", "/healthz", "/readyz")
