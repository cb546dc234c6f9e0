"""The freshness canary: how long an upsert takes to become visible to searches.

Each cycle upserts one row with the reserved id `__sv_canary__<instance>` (the host name by
default) and metadata `{"__sv_canary__": true, "token": <fresh hex>}`, then asks the searchers
with `eventual` consistency, k = 1 and the filter `{"__sv_canary__": true}` for its own vector,
until the answer is that id with that token or the deadline passes. The time from sending the
upsert to that answer is observed in `streamvec_monitor_freshness_seconds`; then the row is
deleted. Searchers never return canary rows to queries whose filter does not name the
`__sv_canary__` field (docs/protocol.md 7.7), and the drift windows and recall probe skip them.
Run one monitor per host and collection: two sharing a host would share the canary id.

A filtered query keeps reading candidates until it finds its k matches, so in segments that
hold no canary row the canary's query reads every row's metadata: its cost grows with the
collection, which is why it runs every few seconds, not continuously.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid

import numpy as np
from confluent_kafka import KafkaException

from ingest.errors import IngestError
from ingest.producer import Producer
from ingest.spec import CollectionSpec
from monitor.metrics import MonitorMetrics
from monitor.summary import Samples, Summary
from searcher.client import Client
from searcher.errors import SearchError, SearchTimeout
from searcher.execute import CANARY_FIELD, CANARY_PREFIX
from streamvec.settings import Settings

log = logging.getLogger(__name__)

DEADLINE_S = 30.0
SEARCH_TIMEOUT_S = 2.0
# Between visibility checks: short against the tail's ~100 ms fetch wait, so the figure is
# not rounded up by much, and long enough not to flood the query stream.
POLL_INTERVAL_S = 0.02


def canary_id(instance: str | None = None) -> str:
    """The reserved id of this monitor's canary row."""
    return CANARY_PREFIX + (instance or socket.gethostname() or "monitor")


class Canary:
    """Runs freshness cycles for one collection."""

    def __init__(self, settings: Settings, spec: CollectionSpec, metrics: MonitorMetrics,
                 client: Client, *, summary: Summary | None = None,
                 latencies: Samples | None = None, instance: str | None = None,
                 deadline_s: float = DEADLINE_S, stop: threading.Event | None = None,
                 seed: int | None = None) -> None:
        self.spec = spec
        self.metrics = metrics
        self.client = client
        self.summary = summary
        self.latencies = latencies
        self.id = canary_id(instance)
        self.deadline_s = deadline_s
        self.freshness = Samples()
        self._stop = stop or threading.Event()
        self._rng = np.random.default_rng(seed)
        self._producer = Producer(spec.name, settings=settings)

    def run_once(self) -> float | None:
        """One cycle: upsert, wait until visible, delete; the freshness in seconds or None."""
        token = uuid.uuid4().hex
        vector = self._rng.standard_normal(self.spec.dim).astype(np.float32)
        started = time.monotonic()
        try:
            self._producer.upsert([self.id], vector[None, :],
                                  metadata=[{CANARY_FIELD: True, "token": token}])
            self._producer.flush()
        except (IngestError, KafkaException, BufferError) as exc:
            self._fail("produce", exc)
            return None
        try:
            return self._await(vector, token, started)
        finally:
            self._delete()

    def close(self) -> None:
        """Flush what the producer still holds."""
        self._producer.close(timeout=5.0)

    def _await(self, vector: np.ndarray, token: str, started: float) -> float | None:
        """Poll until the canary answers with `token`; observe and return the freshness."""
        deadline = started + self.deadline_s
        problem: Exception | None = None
        while not self._stop.is_set():
            asked = time.monotonic()
            try:
                result = self.client.search(self.spec.name, vector, k=1,
                                            filter={CANARY_FIELD: True}, consistency="eventual",
                                            timeout=SEARCH_TIMEOUT_S, with_metadata=True)
            except (SearchError, SearchTimeout) as exc:
                problem = exc
            else:
                problem = None
                now = time.monotonic()
                if self.latencies is not None:
                    self.latencies.add((now - asked) * 1000.0)
                if _is_ours(result.rows(0), self.id, token):
                    return self._observe(now - started)
            if time.monotonic() >= deadline:
                reason = "search" if problem is not None else "timeout"
                self._fail(reason, problem or TimeoutError(
                    f"canary not visible within {self.deadline_s:g}s"))
                return None
            self._stop.wait(POLL_INTERVAL_S)
        return None

    def _observe(self, seconds: float) -> float:
        self.metrics.labels(self.metrics.freshness_seconds).observe(seconds)
        self.freshness.add(seconds)
        if self.summary is not None:
            self.summary.update(freshness_p99_s=f"{self.freshness.percentile(99):.4f}",
                                freshness_at=f"{time.time():.3f}")
        log.debug("collection=%s canary visible after %.3f s", self.spec.name, seconds)
        return seconds

    def _delete(self) -> None:
        try:
            self._producer.delete([self.id])
            self._producer.flush()
        except (IngestError, KafkaException, BufferError) as exc:
            self._fail("delete", exc)

    def _fail(self, reason: str, exc: BaseException) -> None:
        self.metrics.labels(self.metrics.canary_failures, reason).inc()
        log.warning("collection=%s canary %s failed: %s", self.spec.name, reason, exc)


def _is_ours(rows: list[tuple[str, float, dict | None]], wanted: str, token: str) -> bool:
    """True when the best hit is the canary row written with `token`."""
    if not rows:
        return False
    hit, _, meta = rows[0]
    return hit == wanted and isinstance(meta, dict) and meta.get("token") == token
