"""The search engine of one collection: served segments, the live tail, batches, consistency."""

from __future__ import annotations

import json
import logging
import time

import numpy as np
from confluent_kafka.admin import AdminClient

from indexer import build
from indexer.registry import Registry
from indexer.segment import parse_segment_id
from indexer.store import SegmentStore
from ingest import catalog
from searcher import budgets as costs
from searcher import execute
from searcher.budgets import Budgets
from searcher.consistency import LogEnds, Progress, StrongArrival, Watermarks
from searcher.consistency import reached as level_met
from searcher.errors import QueryError
from searcher.fold import FoldConfig
from searcher.metrics import SearcherMetrics
from searcher.query import (
    GET,
    SEARCH,
    Answer,
    Consistency,
    CountAnswer,
    FoundRow,
    GetAnswer,
    QueryRequest,
)
from searcher.search import ScanBudgetExceeded, SearchParams
from searcher.segments import SegmentIdentity
from searcher.shards import Selection, Shard, session_offsets
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
                 reconcile_s: float = 2.0, selection: Selection | None = None) -> None:
        self.settings = settings
        self.collection = collection
        # Which partitions to serve (searcher/shards.py); resolved against the topic at start.
        self.selection = selection or Selection()
        # The shard served once started; None when it is every partition (the unsharded layout).
        self.shard: Shard | None = None
        self._total = 0  # partitions of the topic
        self.metrics = metrics
        self.reconcile_s = reconcile_s
        client = settings.redis_client()
        self.spec = catalog.load_spec(client, collection)
        self.topic = self.spec.collection.topic
        self.registry = Registry(client, collection)
        # Segment folders missing locally come from the store's object store, if it has one.
        self.store = SegmentStore.from_settings(settings)
        self.state: ServingState | None = None
        # Wakes the request loop when a waiting request's level may be met (searcher/server.py).
        self.progress = Progress()
        self._watcher: SegmentWatcher | None = None
        self._reader: TailReader | None = None
        self._log_ends: LogEnds | None = None
        self._kafka: KafkaProbe | None = None
        self.budgets = Budgets.from_settings(settings)
        # Search breadth of requests that name none: the collection's, else the engine's.
        self.defaults = SearchParams(self.spec.search_ef or None, self.spec.search_nprobe or None)
        self.workers = execute.Workers(execute.search_threads(settings.search_threads))

    def start(self) -> None:
        """Load the registered segments, then start the segment watcher and the tail threads."""
        every = self._partitions()
        self._total = len(every)
        chosen = self.selection.resolve(self._total)
        self.shard = None if chosen.whole else chosen
        partitions = list(chosen.partitions)
        fold = (FoldConfig(self.spec.metric, self.settings.searcher_fold_min_segments,
                           nice=self.settings.build_nice, auto=build.is_auto(self.spec.index))
                if self.settings.searcher_fold else None)
        self.state = ServingState(self.spec.dim, partitions, self.metrics, progress=self.progress,
                                  fold=fold)
        self._log_ends = LogEnds(Watermarks(self.settings, self.topic, partitions),
                                 on_answer=self.progress.notify)
        self._watcher = SegmentWatcher(self.registry, self.store, self.state,
                                       self.reconcile_s, identity=SegmentIdentity.of(self.spec),
                                       metrics=self.metrics,
                                       partitions=None if self.shard is None else partitions)
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
        log.info("collection=%s shard=%s engine started: %d segments, positions %s",
                 self.collection, "all" if self.shard is None else self.shard.label,
                 len(self.state.segments.entries()), self.state.positions())

    def stop(self) -> None:
        """Stop the threads and close the Kafka and Redis connections."""
        if self._watcher is not None:
            self._watcher.stop()
        if self._reader is not None:
            self._reader.stop()
        if self._log_ends is not None:
            self._log_ends.stop()
        if self._kafka is not None:
            self._kafka.stop()
        if self.state is not None:
            self.state.close()
        self._watcher = self._reader = self._log_ends = self._kafka = None
        self.workers.close()

    def search_batch(self, requests: list[QueryRequest]) -> list[Answer | QueryError]:
        """Answer a batch: each request gets its answer or its own QueryError.

        Gets and counts (`op`) are answered one by one; searches as below.
        """
        # Timings (search_seconds, the reply's timings_ms) are the server's: it times the batch.
        state = self._started()
        answers: dict[int, Answer | QueryError] = {}
        fitting: list[int] = []
        valid = {}
        for i, r in enumerate(requests):
            if r.op != SEARCH:
                answers[i] = self._lookup(r, state)
                continue
            vectors = execute.validate(r, self.spec.dim)
            refused = vectors if isinstance(vectors, QueryError) else self.budgets.check(r)
            if refused is not None:
                answers[i] = refused
            else:
                fitting.append(i)
                valid[i] = vectors
        # Requests that share one query matrix run in groups within the batch budget, each over
        # the state's last published view: no lock is held while searching.
        for group in costs.split_batch([requests[i] for i in fitting],
                                       self.budgets.batch_results, execute.CANARY_SLACK):
            chosen = [requests[fitting[j]] for j in group]
            queries = [valid[fitting[j]] for j in group]
            view = state.view()
            got = execute.execute(chosen, queries, view.searchables, self.spec.metric,
                                  view.positions, self.budgets,
                                  defaults=self.defaults, workers=self.workers)
            answers.update((fitting[j], a) for j, a in zip(group, got, strict=True))
        return [answers[i] for i in range(len(requests))]

    def _lookup(self, request: QueryRequest, state: ServingState) -> Answer | QueryError:
        """Answer a get or a count; a failure is this request's error, not the batch's."""
        try:
            if request.op == GET:
                return self.get(request.ids, state)
            view = state.view()
            return CountAnswer(execute.count(view.searchables, request.filter,
                                             self.budgets.filter_rows), dict(view.positions))
        except ScanBudgetExceeded as exc:
            return self.budgets.filter_exhausted(exc.examined)
        except Exception as exc:  # one request's failure must not fail the batch
            log.exception("collection=%s %s request %s failed", self.collection, request.op,
                          request.request_id)
            return QueryError("internal", f"{type(exc).__name__}: {exc}")

    def get(self, ids: tuple[str, ...], state: ServingState | None = None
            ) -> GetAnswer | QueryError:
        """The live rows of `ids`, from the id maps of the served segments and the tail.

        An id whose latest op is a delete, or that no served row has, is left out. The maps
        are read under the state's lock, with the positions they reflect; vectors and
        metadata are copied then, and metadata parsed after. Its budgets: ids x dim values
        (`request_values`) and the metadata's bytes (`reply_bytes`): over them, too_large.
        """
        state = state or self._started()
        values = len(ids) * self.spec.dim
        if values > self.budgets.request_values:
            return QueryError("too_large", f"{len(ids)} ids x dim {self.spec.dim} = {values} "
                              f"values, over the budget of {self.budgets.request_values} per "
                              "request; ask for fewer ids")
        keys = {i.encode("utf-8") for i in ids}
        with state.lock:
            sealed = state.segments.find(keys)
            tail = state.tail.find(keys)
            positions = state.positions()
        rows: list[FoundRow] = []
        size = 0
        for i in ids:
            key = i.encode("utf-8")
            live = tail.get(key)
            old = sealed.get(key)
            if live is not None and (old is None or live[0] <= old[0]):
                partition, offset, vector, raw = live
                metadata = json.loads(raw) if raw else None
                size += len(raw)
            elif old is not None:
                partition, segment, row = old
                vector = np.array(segment.vectors[row], dtype=np.float32)
                offset = int(segment.offsets[row])
                metadata = segment.metadata(row)
                size += int(segment.meta_offsets[row + 1] - segment.meta_offsets[row])
            else:
                continue
            if size > self.budgets.reply_bytes:
                return self.budgets.reply_exhausted(size)
            rows.append(FoundRow(i, vector, metadata, partition, offset))
        return GetAnswer(rows, positions)

    def problem(self) -> str | None:
        """Why the searcher is not ready (a readiness check), or None."""
        kafka = self._kafka
        if kafka is not None and (problem := kafka.problem()) is not None:
            return f"{problem}: the live tail cannot read"
        if self.state is not None and self.state.tail.row_count() >= self.budgets.tail_rows:
            return (f"the live tail is at its bound of {self.budgets.tail_rows} rows: reading "
                    "stops until sealed segments cover them (the searcher lags)")
        if self.shard is not None and (behind := self.behind()):
            # A shard's searcher takes its place in a shard map only once it has caught up.
            return (f"the live tail has not reached the log end of partition(s) "
                    f"{behind[:16]} yet")
        return None

    def behind(self) -> list[int]:
        """The served partitions whose tail has never reached the log end yet."""
        if self.state is None:
            return []
        seen = self.state.caught_up_at()
        return [p for p in self.state.partitions if p not in seen]

    def describe(self) -> dict:
        """What it serves, for its advert: partitions, segments per partition, readiness.

        Ready here also means caught up, for an unsharded searcher too: a shard map switch
        waits for that (lifecycle/shards.py).
        """
        state = self._started()
        segments: dict[int, int] = {p: 0 for p in state.partitions}
        for sid in state.served():
            partition = parse_segment_id(sid)[0]
            segments[partition] = segments.get(partition, 0) + 1
        behind = self.behind()
        problem = self.problem() or (f"the live tail has not reached the log end of "
                                     f"partition(s) {behind[:16]} yet" if behind else None)
        return {"partitions": tuple(state.partitions), "segments": segments,
                "positions": state.positions(), "ready": problem is None, "reason": problem}

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
        if consistency.level == "session" and self.shard is not None:
            # Offsets of partitions other shards serve are theirs to wait for.
            consistency = Consistency("session", offsets=session_offsets(
                consistency.offsets or {}, self.shard.partitions, self._total))
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
