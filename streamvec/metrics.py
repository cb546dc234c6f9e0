"""Prometheus metrics as every role makes them: `streamvec_<role>_<name>`, on a given registry."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

NAMESPACE = "streamvec"

M = TypeVar("M", bound=MetricWrapperBase)
Make = Callable[..., Any]


def factory(registry: CollectorRegistry, role: str, first_label: str = "collection") -> Make:
    """A function that makes `role`'s metrics on `registry`, each labelled `first_label` first.

    Usage: `make = factory(registry, "indexer")`, then
    `seals = make(Counter, "seals", "Segments sealed, by policy.", ("reason",))` exports
    `streamvec_indexer_seals_total{collection, reason}`. Keywords such as `buckets` go to the
    metric's constructor.
    """

    def make(kind: type[M], name: str, doc: str, labels: Sequence[str] = (), **kw: Any) -> M:
        """One metric of `kind`, labelled `first_label` and then `labels`."""
        return kind(name, doc, [first_label, *labels], namespace=NAMESPACE, subsystem=role,
                    registry=registry, **kw)

    return make


def full_name(role: str, name: str) -> str:
    """The exported name of a role's metric, for collectors that build families at scrape time."""
    return f"{NAMESPACE}_{role}_{name}"


class CollectionMetrics:
    """Base of a role's metrics for one collection: `labels` fills in the collection label."""

    def __init__(self, collection: str) -> None:
        self.collection = collection

    def labels(self, metric: MetricWrapperBase, *values: str) -> Any:
        """Return `metric` with the collection label (and any others) applied."""
        return metric.labels(self.collection, *values)
