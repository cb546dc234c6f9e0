"""The drift cycle: compare the reference window with the current one and publish the verdict."""

from __future__ import annotations

import logging
import time

import numpy as np
import redis

from monitor import drift, reference
from monitor.metrics import MonitorMetrics
from monitor.summary import Summary
from monitor.windows import FirstRows, SlidingWindow

log = logging.getLogger(__name__)


class DriftTracker:
    """Assesses drift of one collection: pinned reference (else first rows seen) vs current."""

    def __init__(self, client: redis.Redis, collection: str, current: SlidingWindow,
                 first: FirstRows, metrics: MonitorMetrics, *, summary: Summary | None = None,
                 thresholds: drift.DriftThresholds = drift.DEFAULTS, seed: int = 0) -> None:
        self.client = client
        self.collection = collection
        self.current = current
        self.first = first
        self.metrics = metrics
        self.summary = summary
        self.thresholds = thresholds
        self.seed = seed
        self._pinned: reference.Reference | None = None

    def reference(self) -> tuple[np.ndarray, str]:
        """The reference rows and their origin: `pinned` or `first-seen`."""
        stamp = reference.pinned_at(self.client, self.collection)
        if stamp is None:
            self._pinned = None
            return self.first.snapshot(), "first-seen"
        if self._pinned is None or self._pinned.pinned_at != stamp:
            self._pinned = reference.load(self.client, self.collection)
        if self._pinned is None:  # unpinned between the two reads
            return self.first.snapshot(), "first-seen"
        return self._pinned.vectors, "pinned"

    def run_once(self) -> drift.DriftReport | None:
        """One assessment; None while either window has too few rows or dims disagree."""
        ref, origin = self.reference()
        cur = self.current.snapshot()
        self.metrics.labels(self.metrics.window_rows, "reference").set(len(ref))
        self.metrics.labels(self.metrics.window_rows, "current").set(len(cur))
        if min(len(ref), len(cur)) < drift.MIN_ROWS or ref.shape[1] != cur.shape[1]:
            log.debug("collection=%s drift idle: reference %s (%s), current %s",
                      self.collection, ref.shape, origin, cur.shape)
            return None
        report = drift.assess(ref, cur, self.thresholds, seed=self.seed)
        self.metrics.observe_drift(report)
        if self.summary is not None:
            self.summary.update(drift_state=report.state, drift_reasons=",".join(report.reasons),
                                drift_reference=origin, drift_at=f"{time.time():.3f}")
        if report.state != "ok":
            log.warning("collection=%s drift state=%s reasons=%s", self.collection,
                        report.state, ",".join(report.reasons))
        return report
