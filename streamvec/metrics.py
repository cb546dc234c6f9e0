"""Prometheus metrics as every role makes them: `streamvec_<role>_<name>`, on a given registry.

And the one metric every role shares, `streamvec_build_info`: which build a process runs.
"""

from __future__ import annotations

import platform
import sys
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from importlib import metadata
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics import MetricWrapperBase

from streamvec import __version__

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


BUILD_INFO = f"{NAMESPACE}_build_info"
# Distributions that may provide the `faiss` module, for a process that has not imported it.
_FAISS_DISTRIBUTIONS = ("faiss-cpu", "faiss-gpu", "faiss-gpu-cu12", "faiss")


class BuildInfo:
    """Scrape-time collector of `streamvec_build_info`: 1 per role this process runs.

    Labels: role, version (streamvec's), revision (the `revision` setting, which the role
    runner passes; may be empty), python and faiss versions, so a dashboard can tell which
    build each process runs.
    """

    def __init__(self) -> None:
        self.roles: set[str] = set()
        self.revision = ""
        self._faiss: str | None = None

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The family without samples: registering computes nothing."""
        yield self._family()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """One sample of 1 per role, labelled with what this process runs."""
        family = self._family()
        versions = [__version__, self.revision, platform.python_version(),
                    self.faiss_version()]
        for role in sorted(self.roles):
            family.add_metric([role, *versions], 1)
        yield family

    def faiss_version(self) -> str:
        """The FAISS version, looked up once."""
        if self._faiss is None:
            self._faiss = _faiss_version()
        return self._faiss

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(BUILD_INFO, "Always 1: the build this process runs, per role.",
                                 labels=["role", "version", "revision", "python", "faiss"])


def _faiss_version() -> str:
    """The loaded faiss module's version, else its installed distribution's, else ''."""
    loaded = getattr(sys.modules.get("faiss"), "__version__", None)
    if loaded:
        return str(loaded)
    for name in _FAISS_DISTRIBUTIONS:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return ""


# One BuildInfo per registry, so that every role's metrics can ask for it without a clash.
_BUILD_INFOS: weakref.WeakKeyDictionary[CollectorRegistry, BuildInfo] = (
    weakref.WeakKeyDictionary())
_BUILD_INFO_LOCK = threading.Lock()


def register_build_info(registry: CollectorRegistry, role: str,
                        revision: str | None = None) -> BuildInfo:
    """Export `streamvec_build_info{role=...}` on `registry`; idempotent per registry and role.

    `revision`, when given, labels every role's sample of `registry` from then on.
    """
    with _BUILD_INFO_LOCK:
        info = _BUILD_INFOS.get(registry)
        if info is None:
            info = _BUILD_INFOS[registry] = BuildInfo()
            registry.register(info)
        info.roles.add(role)
        if revision is not None:
            info.revision = revision
    return info
