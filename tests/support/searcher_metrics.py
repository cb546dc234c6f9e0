"""Reading the searcher metrics that the unit tests' fixtures register."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

UNIT = "unit"  # the collection the `metrics` fixture (tests/searcher/conftest.py) labels


def sample(registry: CollectorRegistry, name: str) -> float | None:
    """The value of `streamvec_searcher_<name>` for collection `unit`, None if never set."""
    return registry.get_sample_value(f"streamvec_searcher_{name}", {"collection": UNIT})
