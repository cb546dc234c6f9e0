"""The recall probe: the searchers' answers against exact search over the registered segments.

Each cycle samples query vectors from the current drift window (rows recently written), asks
the searchers for k neighbours with `eventual` consistency, and computes the exact k nearest
visible rows of the registered segments (hides applied, canary rows left out). Searchers also
serve their live tail, rows newer than the segments; a hit the segments do not hold is such a
row, and it displaces a sealed row from the answer. So for a query with m such hits the probe
compares the answer's sealed hits with the exact top k - m: recall@k is the mean over queries
of |sealed hits in the exact top k - m| / (k - m). What remains is a small downward bias from
ids rewritten in the tail since the probe loaded the segments.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import numpy as np

from indexer.registry import Registry
from indexer.store import SegmentStore
from ingest.spec import CollectionSpec
from monitor.metrics import MonitorMetrics
from monitor.sealed import SealedView, contains, exact_top_k, visible_ids
from monitor.summary import Samples, Summary
from monitor.windows import SlidingWindow
from searcher.client import Client

log = logging.getLogger(__name__)

DEFAULT_K = 10
DEFAULT_QUERIES = 64
SEARCH_TIMEOUT_S = 10.0


def recall_at_k(got: Sequence[Sequence[str | None]], exact: Sequence[Sequence[str]],
                sealed: Callable[[list[str]], np.ndarray], k: int) -> float | None:
    """Mean recall@k over queries, hits outside the sealed rows set aside (module docstring).

    `got[i]` is the searcher's answer to query i, `exact[i]` the exact ids over the sealed rows
    best first, and `sealed(ids)` says which ids the sealed rows hold. None when no query
    could be judged (nothing sealed to compare with).
    """
    values = []
    for answer, truth in zip(got, exact, strict=True):
        hits = [h for h in answer[:k] if h is not None]
        in_sealed = sealed(hits) if hits else np.zeros(0, dtype=bool)
        budget = k - int(np.count_nonzero(~in_sealed))
        wanted = set(truth[:budget])
        if not wanted:
            continue
        found = {h for h, ok in zip(hits, in_sealed.tolist(), strict=True) if ok}
        values.append(len(found & wanted) / len(wanted))
    return float(np.mean(values)) if values else None


class RecallProbe:
    """Measures recall@k of one collection's searchers."""

    def __init__(self, spec: CollectionSpec, registry: Registry, store: SegmentStore,
                 window: SlidingWindow, metrics: MonitorMetrics, client: Client, *,
                 k: int = DEFAULT_K, queries: int = DEFAULT_QUERIES,
                 summary: Summary | None = None, latencies: Samples | None = None,
                 seed: int | None = None) -> None:
        self.spec = spec
        self.view = SealedView(registry, store)
        self.window = window
        self.metrics = metrics
        self.client = client
        self.k = k
        self.queries = queries
        self.summary = summary
        self.latencies = latencies
        self._rng = np.random.default_rng(seed)

    def run_once(self) -> float | None:
        """One probe; the recall measured, or None when there is nothing to measure yet."""
        pool = self.window.snapshot()
        parts = self.view.parts()
        if not len(pool) or not any(len(p.rows) for p in parts):
            log.debug("collection=%s recall probe idle: %d window rows, %d segments",
                      self.spec.name, len(pool), len(parts))
            return None
        picked = self._rng.choice(len(pool), size=min(self.queries, len(pool)), replace=False)
        queries = pool[np.sort(picked)]
        asked = time.monotonic()
        result = self.client.search(self.spec.name, queries, k=self.k, consistency="eventual",
                                    timeout=SEARCH_TIMEOUT_S)
        if self.latencies is not None:
            self.latencies.add((time.monotonic() - asked) * 1000.0)
        self.metrics.labels(self.metrics.probe_queries).inc(len(queries))
        exact = exact_top_k(parts, queries, self.k, self.spec.metric)
        sealed = visible_ids(parts)
        value = recall_at_k(result.ids.tolist(), exact, lambda ids: contains(sealed, ids),
                            self.k)
        if value is None:
            return None
        self.metrics.labels(self.metrics.recall, str(self.k)).set(value)
        if self.summary is not None:
            self.summary.update(recall=f"{value:.4f}", recall_k=self.k,
                                recall_at=f"{time.time():.3f}")
        return value
