"""The monitor process: drift, canary, recall and scrape-time collectors for some collections."""

# One reader thread per collection fills the drift windows; each periodic task (drift, canary,
# recall, query rate) runs on its own thread, so a canary waiting out its deadline never delays
# a drift verdict. A task that raises is logged and tried again at its next turn: a monitor
# must outlive the outages it reports.

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry

from indexer import remote
from indexer.registry import Registry
from ingest import catalog
from lifecycle import evaluation
from monitor import recall, reference
from monitor.canary import Canary
from monitor.collectors import CollectionCollector, KafkaWatermarks
from monitor.metrics import ChallengeMetrics, MonitorMetrics
from monitor.summary import QueryRate, Samples, Summary
from monitor.tracker import DriftTracker
from monitor.windows import FirstRows, SlidingWindow, WindowReader
from searcher.client import Client
from streamvec.settings import Settings

log = logging.getLogger(__name__)

RATE_EVERY_S = 10.0
# The summary outlives a few missed cycles of the slowest task, and never less than this.
SUMMARY_MIN_TTL_S = 300.0
JOIN_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class MonitorOptions:
    """Seconds between cycles of each task (0 turns it off) and the drift window sizes."""

    drift: float = 60.0
    canary: float = 10.0
    recall: float = 60.0
    challenge: float = 10.0  # judging the shadow logs of aliases under a challenge
    window_rows: int = 1000
    reference_rows: int = reference.DEFAULT_ROWS


class CollectionMonitor:
    """Every probe, window and collector of one collection."""

    def __init__(self, settings: Settings, collection: str, registry: CollectorRegistry,
                 options: MonitorOptions, stop: threading.Event) -> None:
        client = settings.redis_client()
        self.spec = catalog.load_spec(client, collection)
        name = self.spec.name
        self.metrics = MonitorMetrics(registry, name)
        segments = Registry(client, name)
        remote.attach(settings)  # the recall probe reads segments from the object store too
        registry.register(CollectionCollector(
            name, segments, KafkaWatermarks(settings, self.spec.collection.topic)))
        ttl = max(SUMMARY_MIN_TTL_S, 3 * max(options.drift, options.canary, options.recall))
        self.summary = Summary(client, name, ttl)
        self.latencies = Samples()
        self.current = SlidingWindow(options.window_rows)
        self.first = FirstRows(options.reference_rows)
        self.reader = WindowReader(settings, self.spec, self.current, self.first, self.metrics)
        self.drift = DriftTracker(client, name, self.current, self.first, self.metrics,
                                  summary=self.summary)
        self.search_client = Client(settings=settings)
        self.canary = Canary(settings, self.spec, self.metrics, self.search_client,
                             summary=self.summary, latencies=self.latencies, stop=stop)
        self.recall = recall.RecallProbe(self.spec, segments, settings.store, self.current,
                                         self.metrics, self.search_client, summary=self.summary,
                                         latencies=self.latencies)
        self.rate = QueryRate(client, name)
        wanted = [("drift", options.drift, self.drift.run_once),
                  ("canary", options.canary, self.canary.run_once),
                  ("recall", options.recall, self.recall.run_once),
                  ("rates", RATE_EVERY_S, self.sample_rates)]
        # (name, interval, callable) of every periodic task that is switched on.
        self.tasks: list[tuple[str, float, Callable[[], object]]] = [
            (f"{name}-{n}", s, fn) for n, s, fn in wanted if s > 0]

    def sample_rates(self) -> None:
        """Publish the query rate and the p99 of the monitor's own query latencies."""
        fields: dict[str, str] = {}
        qps = self.rate.sample()
        if qps is not None:
            fields.update(qps=f"{qps:.3f}", qps_at=f"{time.time():.3f}")
        p99 = self.latencies.percentile(99)
        if p99 is not None:
            fields["probe_p99_ms"] = f"{p99:.3f}"
        if fields:
            self.summary.update(**fields)

    def close(self) -> None:
        """Release the canary's producer and the query client."""
        self.canary.close()
        self.search_client.close()


class Service:
    """Runs the monitor of some collections until `stop()`."""

    def __init__(self, settings: Settings, collections: list[str], *,
                 registry: CollectorRegistry = REGISTRY,
                 options: MonitorOptions = MonitorOptions()) -> None:
        if not collections:
            raise ValueError("the monitor needs at least one collection")
        self.options = options
        self._stop = threading.Event()
        self.monitors = [CollectionMonitor(settings, name, registry, options, self._stop)
                         for name in dict.fromkeys(collections)]
        self._threads: list[threading.Thread] = []
        self.challenges = evaluation.ChallengeWatch(settings.redis_client(), settings.store,
                                                   ChallengeMetrics(registry))

    def stop(self) -> None:
        """Ask every thread to finish its current cycle and return."""
        self._stop.set()
        for monitor in self.monitors:
            monitor.reader.stop()

    def start(self) -> None:
        """Start the reader and task threads."""
        for monitor in self.monitors:
            self._spawn(f"sv-monitor-{monitor.spec.name}-reader", monitor.reader.run)
            for name, every, fn in monitor.tasks:
                self._spawn(f"sv-monitor-{name}", lambda every=every, fn=fn, name=name:
                            self._every(name, every, fn))
        if self.options.challenge > 0:
            self._spawn("sv-monitor-challenges", lambda: self._every(
                "challenges", self.options.challenge, self.challenges.run_once))

    def run(self, max_seconds: float | None = None) -> None:
        """Start, then block until `stop()` (or `max_seconds`), then shut down."""
        self.start()
        try:
            self._stop.wait(max_seconds)
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        """Stop and join every thread, then close connections."""
        self.stop()
        for thread in self._threads:
            thread.join(JOIN_TIMEOUT_S)
            if thread.is_alive():
                log.warning("thread %s still running after %gs", thread.name, JOIN_TIMEOUT_S)
        for monitor in self.monitors:
            monitor.close()

    def _spawn(self, name: str, target: Callable[[], object]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _every(self, name: str, seconds: float, fn: Callable[[], object]) -> None:
        """Run `fn` now and then every `seconds` until stopped; log and survive its errors."""
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                fn()
            except Exception:
                log.exception("monitor task %s failed; retrying in %gs", name, seconds)
            self._stop.wait(max(0.0, seconds - (time.monotonic() - started)))
