"""The monitor process: drift, canary, recall and scrape-time collectors for some collections."""

# One reader thread per collection fills the drift windows; each periodic task (drift, canary,
# recall, query rate, and whatever the caller adds) runs on its own thread, so a canary waiting
# out its deadline never delays a drift verdict. A task that raises is logged and tried again
# at its next turn: a monitor must outlive the outages it reports.

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry

from indexer.registry import Registry
from indexer.store import SegmentStore
from ingest import catalog
from monitor import recall, reference
from monitor.canary import Canary
from monitor.collectors import CollectionCollector, KafkaWatermarks, QueryStreamCollector
from monitor.metrics import MonitorMetrics
from monitor.summary import QueryRate, Samples, Summary
from monitor.tracker import DriftTracker
from monitor.windows import FirstRows, SlidingWindow, WindowReader
from searcher.client import Client
from streamvec.health import TurnHook
from streamvec.settings import Settings

log = logging.getLogger(__name__)

RATE_EVERY_S = 10.0
# The summary outlives a few missed cycles of the slowest task, and never less than this.
SUMMARY_MIN_TTL_S = 300.0
JOIN_TIMEOUT_S = 60.0

# A periodic task: its name, the seconds between its turns (0 turns it off), what it runs.
Task = tuple[str, float, Callable[[], object]]


@dataclass(frozen=True, slots=True)
class MonitorOptions:
    """Seconds between cycles of each task (0 turns it off) and the drift window sizes."""

    drift: float = 60.0
    canary: float = 10.0
    recall: float = 60.0
    window_rows: int = 1000
    reference_rows: int = reference.DEFAULT_ROWS


class CollectionMonitor:
    """Every probe, window and collector of one collection."""

    def __init__(self, settings: Settings, collection: str, registry: CollectorRegistry,
                 options: MonitorOptions, stop: threading.Event, store: SegmentStore) -> None:
        client = settings.redis_client()
        self.spec = catalog.load_spec(client, collection)
        name = self.spec.name
        self.metrics = MonitorMetrics(registry, name)
        segments = Registry(client, name)
        registry.register(CollectionCollector(
            name, segments, KafkaWatermarks(settings, self.spec.collection.topic)))
        registry.register(QueryStreamCollector(name, client))
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
        # The recall probe reads segments through the store (from its object store too).
        self.recall = recall.RecallProbe(self.spec, segments, store, self.current,
                                         self.metrics, self.search_client, summary=self.summary,
                                         latencies=self.latencies)
        self.rate = QueryRate(client, name)
        wanted = [("drift", options.drift, self.drift.run_once),
                  ("canary", options.canary, self.canary.run_once),
                  ("recall", options.recall, self.recall.run_once),
                  ("rates", RATE_EVERY_S, self.sample_rates)]
        # Every periodic task that is switched on.
        self.tasks: list[Task] = [
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
    """Runs the monitor of some collections, and the caller's own periodic tasks, until `stop()`.

    `tasks` are (name, seconds, fn) run beside the collections' own, each on its own thread,
    such as the evaluation of champion-challenger logs (lifecycle/evaluation.py).
    """

    def __init__(self, settings: Settings, collections: list[str], *,
                 registry: CollectorRegistry = REGISTRY,
                 options: MonitorOptions = MonitorOptions(), tasks: Sequence[Task] = (),
                 turn_hook: TurnHook | None = None) -> None:
        if not collections:
            raise ValueError("the monitor needs at least one collection")
        self.options = options
        self._stop = threading.Event()
        store = SegmentStore.from_settings(settings)
        self.monitors = [CollectionMonitor(settings, name, registry, options, self._stop, store)
                         for name in dict.fromkeys(collections)]
        # Each collection task reports its turns: the monitor is ready once each has run once.
        self._turns = {name: turn_hook(name) for m in self.monitors
                       for name, _, _ in m.tasks} if turn_hook else {}
        self._threads: list[threading.Thread] = []
        self.tasks: list[Task] = [(n, s, fn) for n, s, fn in tasks if s > 0]

    def stop(self) -> None:
        """Ask every thread to finish its current cycle and return."""
        self._stop.set()
        for monitor in self.monitors:
            monitor.reader.stop()

    def start(self) -> None:
        """Start the reader and task threads."""
        for monitor in self.monitors:
            self._spawn(f"sv-monitor-{monitor.spec.name}-reader", monitor.reader.run)
            self._start_tasks(monitor.tasks)
        self._start_tasks(self.tasks)

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

    def _start_tasks(self, tasks: list[Task]) -> None:
        """Start one thread per periodic task."""
        for name, every, fn in tasks:
            self._spawn(f"sv-monitor-{name}", lambda every=every, fn=fn, name=name:
                        self._every(name, every, fn))

    def _spawn(self, name: str, target: Callable[[], object]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _every(self, name: str, seconds: float, fn: Callable[[], object]) -> None:
        """Run `fn` now and then every `seconds` until stopped; log and survive its errors."""
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                with self._turns.get(name) or nullcontext():
                    fn()
            except Exception:
                log.exception("monitor task %s failed; retrying in %gs", name, seconds)
            self._stop.wait(max(0.0, seconds - (time.monotonic() - started)))
