"""Fixtures of the searcher's unit tests: a private metrics registry per test."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from searcher.metrics import SearcherMetrics
from tests.support.searcher_metrics import UNIT


@pytest.fixture
def registry() -> CollectorRegistry:
    """A registry of this test's own, so that counts start at zero."""
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> SearcherMetrics:
    """The searcher metrics of collection `unit` on this test's registry."""
    return SearcherMetrics(registry, UNIT)
