"""The optional KEDA component scales the searcher Deployment on a backlog the monitor exports."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import redis
import yaml

from monitor.collectors import QueryStreamCollector
from tests.support.deploy_checks import K8S, load_yaml, of_kind, parsed

KEDA = K8S / "keda"
SEARCHER = "streamvec-searcher"


def scaled_object() -> dict:
    """The one document of deploy/k8s/keda/scaledobject.yaml."""
    (doc,) = [d for d in yaml.safe_load_all((KEDA / "scaledobject.yaml").read_text()) if d]
    return doc


def backlog_metrics() -> set[str]:
    """The gauges of the monitor's query-stream collector (describing them reads no Redis)."""
    collector = QueryStreamCollector("products", redis.Redis(port=1))
    return {family.name for family in collector.describe()}


def test_the_scaled_object_targets_the_searchers_on_their_collections_backlog():
    doc = scaled_object()
    assert (doc["apiVersion"], doc["kind"]) == ("keda.sh/v1alpha1", "ScaledObject")
    spec = doc["spec"]
    searcher = of_kind("Deployment")[spec["scaleTargetRef"]["name"]]
    assert searcher["metadata"]["name"] == SEARCHER
    served = parsed(searcher["spec"]["template"]["spec"]["containers"][0]["args"]).collection
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (2, 8)
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    query = trigger["metadata"]["query"]
    assert re.fullmatch(r'max\((\w+)\{collection="([^"]+)", shard="all"\}\)', query).groups() == (
        "streamvec_monitor_query_stream_backlog", served)
    assert "streamvec_monitor_query_stream_backlog" in backlog_metrics()
    assert float(trigger["metadata"]["threshold"]) > 0
    assert trigger["metadata"]["ignoreNullValues"] == "false"


def test_the_component_is_optional_and_hands_the_replica_count_to_the_autoscaler():
    component = load_yaml(KEDA / "kustomization.yaml")
    assert component["kind"] == "Component"
    assert component["resources"] == ["scaledobject.yaml"]
    (patch,) = component["patches"]
    assert patch["target"] == {"kind": "Deployment", "name": SEARCHER}
    assert yaml.safe_load(patch["patch"]) == [{"op": "remove", "path": "/spec/replicas"}]
    assert "keda" not in str(load_yaml(K8S / "kustomization.yaml"))


def render(folder: Path) -> list[dict]:
    """`kubectl kustomize folder`, parsed."""
    proc = subprocess.run([shutil.which("kubectl"), "kustomize", str(folder)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_an_overlay_with_the_component_renders_the_scaled_object(tmp_path):
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    base = os.path.relpath(K8S, overlay)  # kustomize takes relative paths only
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [base], "components": [f"{base}/keda"]}))
    docs = {(d["kind"], d["metadata"]["name"]): d for d in render(overlay)}
    scaled = docs[("ScaledObject", SEARCHER)]
    assert scaled["metadata"]["namespace"] == "streamvec"
    assert "replicas" not in docs[("Deployment", SEARCHER)]["spec"]
    assert docs[("Deployment", "streamvec-indexer")]["spec"]["replicas"] == 2
    assert not any(kind == "ScaledObject" for kind, _ in
                   {(d["kind"], d["metadata"]["name"]) for d in render(K8S)})
