"""`streamvec_build_info`: every role's metrics registry says which build the process runs."""

from __future__ import annotations

import platform

import faiss
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from indexer.metrics import IndexerMetrics
from monitor.metrics import ChallengeMetrics, MonitorMetrics
from searcher.metrics import SearcherMetrics
from streamvec import __version__
from streamvec.metrics import BUILD_INFO, register_build_info

ROLES = {"indexer": IndexerMetrics, "searcher": SearcherMetrics, "monitor": MonitorMetrics}


def build_samples(registry: CollectorRegistry) -> list[dict[str, str]]:
    """The label sets of every build_info sample (each of value 1)."""
    found = []
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == BUILD_INFO:
                assert sample.value == 1
                found.append(sample.labels)
    return found


@pytest.mark.parametrize("role", sorted(ROLES))
def test_each_roles_registry_exports_build_info(role) -> None:
    registry = CollectorRegistry()
    ROLES[role](registry, "products")
    register_build_info(registry, role, revision="abc1234")  # what the role runner adds
    assert build_samples(registry) == [{
        "role": role, "version": __version__, "revision": "abc1234",
        "python": platform.python_version(), "faiss": faiss.__version__}]
    text = generate_latest(registry).decode()
    assert f'{BUILD_INFO}{{faiss="{faiss.__version__}",python=' in text


def test_one_series_per_role_however_many_metric_sets_a_process_makes() -> None:
    registry = CollectorRegistry()
    MonitorMetrics(registry, "products")
    ChallengeMetrics(registry)
    SearcherMetrics(registry, "products")  # a process running two roles (the demo does)
    assert sorted((s["role"], s["revision"]) for s in build_samples(registry)) == [
        ("monitor", ""), ("searcher", "")]
    assert register_build_info(registry, "monitor") is register_build_info(registry, "indexer")
    assert sorted(s["role"] for s in build_samples(registry)) == ["indexer", "monitor",
                                                                   "searcher"]
