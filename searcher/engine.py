"""The search engine of one collection: served segments, the live tail, batches, consistency."""

from __future__ import annotations

import logging
import time

from confluent_kafka.admin import AdminClient

from indexer.registry import Registry
from indexer.store import SegmentStore
from ingest import catalog
from searcher import execute
from searcher.consistency import Watermarks
from searcher.consistency import reached as level_met
from searcher.errors import QueryError
from searcher.metrics import SearcherMetrics
from searcher.query import Consistency, QueryAnswer, QueryRequest
from searcher.state import ServingState
from searcher.tail import TailReader
from searcher.watcher import SegmentWatcher
from streamvec.settings import Settings

log = logging.getLogger(__name__)

METADATA_TIMEOUT_S = 10.0


class Engine:
    """Answers query batches of one collection from its registered segments and its live tail."""

    # Usage: engine = Engine(settings, "products", metrics=SearcherMetrics(registry, "products"))
    # engine.start(); answers = engine.search_batch(requests); engine.stop()

    def __init__(self, settings: Settings, collection: str, *, metrics: SearcherMetrics,
                 reconcile_s: float = 2.0) -> None:
        self.settings = settings
        self.collection = collection
        self.metrics = metrics
        self.reconcile_s = reconcile_s
        client = settings.redis_client()
        self.spec = catalog.load_spec(client, collection)
        self.topic = self.spec.collection.topic
        self.registry = Registry(client, collection)
        # Segment folders missing locally come from the store's object store, if it has one.
        self.store = SegmentStore.from_settings(settings)
        self.state: ServingState | None = None
        self._watcher: SegmentWatcher | None = None
        self._reader: TailReader | None = None
        self._watermarks: Watermarks | None = None

    def start(self) -> None:
        """Load the registered segments, then start the segment watcher and the tail threads."""
        partitions = self._partitions()
        self.state = ServingState(self.spec.dim, partitions, self.metrics)
        self._watermarks = Watermarks(self.settings, self.topic, partitions)
        self._watcher = SegmentWatcher(self.registry, self.store, self.state,
                                       self.reconcile_s)
        self._watcher.subscribe()
        self._watcher.reconcile()  # the tail starts where the loaded segments end
        self._reader = TailReader(self.settings, self.spec, partitions, self.state)
        self.state.on_rewind = self._reader.request_reassign
        self._reader.start()
        self._watcher.start()
        log.info("collection=%s engine started: %d segments, positions %s", self.collection,
                 len(self.state.segments.entries()), self.state.positions())

    def stop(self) -> None:
        """Stop both threads and close the Kafka and Redis connections."""
        if self._watcher is not None:
            self._watcher.stop()
        if self._reader is not None:
            self._reader.stop()
        self._watcher = self._reader = None

    def search_batch(self, requests: list[QueryRequest]) -> list[QueryAnswer | QueryError]:
        """Answer a batch: each request gets its answer or its own QueryError."""
        # Timings (search_seconds, the reply's timings_ms) are the server's: it times the batch.
        state = self._started()
        queries = [execute.validate(r, self.spec.dim) for r in requests]
        with state.lock:
            return execute.execute(requests, queries, state.searchables(), self.spec.metric,
                                   state.positions_locked())

    def positions(self) -> dict[int, int]:
        """Per partition, the next offset the tail reads: never below the checkpoint."""
        return self._started().positions()

    def arrival_state(self, consistency: Consistency) -> object:
        """What `reached` compares against, taken when a request arrives: log ends for strong."""
        self._started()
        if consistency.level == "strong":
            return self._watermarks.fetch()
        return None

    def reached(self, consistency: Consistency, arrival_state: object) -> bool:
        """True once an answer computed now meets the request's consistency level; never blocks."""
        state = self._started()
        if consistency.level == "eventual":
            return True
        return level_met(consistency, arrival_state, state.positions(), state.caught_up_at(),
                         time.monotonic())

    def _started(self) -> ServingState:
        if self.state is None:
            raise RuntimeError(f"engine of {self.collection} is not started")
        return self.state

    def _partitions(self) -> list[int]:
        """The topic's partitions, as the brokers see them (the spec's count if they cannot say)."""
        admin = AdminClient(self.settings.kafka_config())
        meta = admin.list_topics(self.topic, timeout=METADATA_TIMEOUT_S).topics.get(self.topic)
        if meta is None or meta.error is not None or not meta.partitions:
            log.warning("topic=%s metadata unavailable (%s); using the spec's %d partitions",
                        self.topic, None if meta is None else meta.error, self.spec.partitions)
            return list(range(self.spec.partitions))
        return sorted(meta.partitions)
