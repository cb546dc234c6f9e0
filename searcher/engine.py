"""The search engine of one collection: served segments, the live tail, batches, consistency."""

from __future__ import annotations

import logging
import time

from confluent_kafka.admin import AdminClient

from indexer.registry import Registry
from indexer.store import SegmentStore
from ingest import catalog
from searcher import budgets as costs
from searcher import execute
from searcher.budgets import Budgets
from searcher.consistency import LogEnds, StrongArrival, Watermarks
from searcher.consistency import reached as level_met
from searcher.errors import QueryError
from searcher.metrics import SearcherMetrics
from searcher.query import Consistency, QueryAnswer, QueryRequest
from searcher.segments import SegmentIdentity
from searcher.state import ServingState
from searcher.tail import TailReader
from searcher.watcher import SegmentWatcher
from streamvec.health import KafkaProbe
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
        self._log_ends: LogEnds | None = None
        self._kafka: KafkaProbe | None = None
        self.budgets = Budgets.from_settings(settings)

    def start(self) -> None:
        """Load the registered segments, then start the segment watcher and the tail threads."""
        partitions = self._partitions()
        self.state = ServingState(self.spec.dim, partitions, self.metrics)
        self._log_ends = LogEnds(Watermarks(self.settings, self.topic, partitions))
        self._watcher = SegmentWatcher(self.registry, self.store, self.state,
                                       self.reconcile_s, identity=SegmentIdentity.of(self.spec),
                                       metrics=self.metrics)
        self._watcher.subscribe()
        self._watcher.reconcile()  # the tail starts where the loaded segments end
        unavailable = self.metrics.labels(self.metrics.unavailable, "kafka")
        unavailable.set(0)
        # While the brokers do not answer, the live tail cannot read: the searcher says so.
        self._kafka = KafkaProbe(self.settings.kafka_config(), self.topic,
                                 on_change=lambda why: unavailable.set(int(why is not None)))
        self._reader = TailReader(self.settings, self.spec, partitions, self.state,
                                  max_rows=self.budgets.tail_rows,
                                  held_rows=self.state.tail.row_count,
                                  full_gauge=self.metrics.labels(self.metrics.tail_full),
                                  on_brokers_down=self._kafka.report)
        self.state.on_rewind = self._reader.request_reassign
        self._reader.start()
        self._kafka.start()
        self._log_ends.start()
        self._watcher.start()
        log.info("collection=%s engine started: %d segments, positions %s", self.collection,
                 len(self.state.segments.entries()), self.state.positions())

    def stop(self) -> None:
        """Stop both threads and close the Kafka and Redis connections."""
        if self._watcher is not None:
            self._watcher.stop()
        if self._reader is not None:
            self._reader.stop()
        if self._log_ends is not None:
            self._log_ends.stop()
        if self._kafka is not None:
            self._kafka.stop()
        self._watcher = self._reader = self._log_ends = self._kafka = None

    def search_batch(self, requests: list[QueryRequest]) -> list[QueryAnswer | QueryError]:
        """Answer a batch: each request gets its answer or its own QueryError."""
        # Timings (search_seconds, the reply's timings_ms) are the server's: it times the batch.
        state = self._started()
        answers: dict[int, QueryAnswer | QueryError] = {}
        fitting: list[int] = []
        valid = {}
        for i, r in enumerate(requests):
            vectors = execute.validate(r, self.spec.dim)
            refused = vectors if isinstance(vectors, QueryError) else self.budgets.check(r)
            if refused is not None:
                answers[i] = refused
            else:
                fitting.append(i)
                valid[i] = vectors
        # Requests that share one query matrix run in groups within the batch budget; the lock
        # is let go between groups, so the tail and segment swaps go on during a long batch.
        for group in costs.split_batch([requests[i] for i in fitting],
                                       self.budgets.batch_results, execute.CANARY_SLACK):
            chosen = [requests[fitting[j]] for j in group]
            queries = [valid[fitting[j]] for j in group]
            with state.lock:
                got = execute.execute(chosen, queries, state.searchables(), self.spec.metric,
                                      state.positions_locked(), self.budgets)
            answers.update((fitting[j], a) for j, a in zip(group, got, strict=True))
        return [answers[i] for i in range(len(requests))]

    def problem(self) -> str | None:
        """Why the searcher is not ready (a readiness check), or None."""
        kafka = self._kafka
        if kafka is not None and (problem := kafka.problem()) is not None:
            return f"{problem}: the live tail cannot read"
        if self.state is not None and self.state.tail.row_count() >= self.budgets.tail_rows:
            return (f"the live tail is at its bound of {self.budgets.tail_rows} rows: reading "
                    "stops until sealed segments cover them (the searcher lags)")
        return None

    def positions(self) -> dict[int, int]:
        """Per partition, the next offset the tail reads: never below the checkpoint."""
        return self._started().positions()

    def arrival_state(self, consistency: Consistency) -> object:
        """What `reached` compares against, taken when a request arrives: log ends for strong."""
        self._started()
        if consistency.level == "strong" and self._log_ends is not None:
            return self._log_ends.ask()  # fetched off the request loop; `reached` waits for it
        return None

    def reached(self, consistency: Consistency, arrival_state: object) -> bool:
        """True once an answer computed now meets the request's consistency level; never blocks."""
        state = self._started()
        if consistency.level == "eventual":
            return True
        if isinstance(arrival_state, StrongArrival) and self._log_ends is not None:
            self._log_ends.answer(arrival_state)
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
