"""The indexer worker loop: consume, append, seal, build off-loop, snapshot, register, commit."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from prometheus_client import REGISTRY, CollectorRegistry

from indexer import faults, publish, seal
from indexer.dlq import DeadLetters
from indexer.errors import CheckpointOutOfRange
from indexer.idmap import IdMap
from indexer.metrics import IndexerMetrics
from indexer.ownership import PartitionState, Pending, take_over
from indexer.registry import Registry
from indexer.segment import GrowingSegment, SealedRows, segment_id
from indexer.store import SegmentStore
from ingest import catalog, record
from ingest.errors import RecordError
from streamvec.health import TurnHook
from streamvec.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_MAX_HELD_BYTES = 1024 * 1024 * 1024
# A message holds hundreds of rows (~1 MB); the default 1 MB per partition per fetch would
# turn every message into its own round trip.
CONSUMER_FETCH = {"max.partition.fetch.bytes": 16 * 2**20, "fetch.max.bytes": 64 * 2**20}
# Offset-out-of-range surfaces as one of these when `auto.offset.reset` is `error`.
_OUT_OF_RANGE = {KafkaError.OFFSET_OUT_OF_RANGE, KafkaError._AUTO_OFFSET_RESET}


class Worker:
    """One indexer worker of a collection; any number share the partitions through a group."""

    def __init__(self, settings: Settings, collection: str, *, group_id: str | None = None,
                 metrics_registry: CollectorRegistry = REGISTRY,
                 max_held_bytes: int = DEFAULT_MAX_HELD_BYTES,
                 generation: int | None = None, turn_hook: TurnHook | None = None) -> None:
        self.settings = settings
        # The worker subscribes before its first turn, so a finished turn means it consumes.
        self._turn = turn_hook("consume") if turn_hook else nullcontext()
        self.spec = catalog.load_spec(settings.redis_client(), collection)
        self.topic = self.spec.collection.topic
        self.generation = generation  # None: follow the registry's active generation
        self.max_held_bytes = max_held_bytes
        self.registry = Registry(settings.redis_client(), collection)
        self.store = SegmentStore.from_settings(settings)  # mirrored to its object store, if any
        self.policies = seal.policies_for(self.spec)
        self.metrics = IndexerMetrics(metrics_registry, collection)
        self.idmap = IdMap()
        self.parts: dict[int, PartitionState] = {}
        self.dlq = DeadLetters(settings.kafka_config(), self.spec.collection.dlq_topic)
        self.consumer = Consumer(settings.kafka_config(**{
            "group.id": group_id or f"{self.topic}.indexer",
            "enable.auto.commit": False,
            "auto.offset.reset": "error",  # never skip silently: see CheckpointOutOfRange
            "max.poll.interval.ms": 600_000,
            **CONSUMER_FETCH,
        }))
        self._builder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sv-build")
        self._running = False
        self._paused = False
        self._fatal: BaseException | None = None

    def stop(self) -> None:
        """Ask the loop to finish: in-flight builds complete, growing segments are dropped."""
        self._running = False

    def run(self, max_seconds: float | None = None) -> None:
        """Consume until `stop()`, a fatal error (re-raised) or `max_seconds` have passed."""
        self.consumer.subscribe([self.topic], on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_lost)
        self._running = True
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        try:
            while self._running and self._fatal is None:
                if deadline is not None and time.monotonic() >= deadline:
                    break
                with self._turn:
                    self.step()
        finally:
            self._shutdown()
        if self._fatal is not None:
            raise self._fatal

    def _fail(self, exc: BaseException) -> None:
        """Record a fatal error; the first one wins, later ones are consequences."""
        if self._fatal is None:
            log.error("stopping: %s", exc)
            self._fatal = exc

    def step(self) -> None:
        """One turn of the loop: consume a batch, seal what is due, register finished builds."""
        for msg in self.consumer.consume(num_messages=1000, timeout=0.1):
            self._handle(msg)
        now = time.monotonic()
        due = seal.select({p: st.growing.stats(now) for p, st in self.parts.items()},
                          self.policies)
        for partition, reason in due.items():
            self._seal(partition, reason, now)
        self._register_finished(block=False)
        self._apply_backpressure(now)

    def _handle(self, msg: Message) -> None:
        err = msg.error()
        if err is not None:
            if err.code() in _OUT_OF_RANGE:
                self.metrics.labels(self.metrics.out_of_range, str(msg.partition())).set(1)
                self._fail(CheckpointOutOfRange(
                    f"partition {msg.partition()}: the next offset to index is no longer in "
                    f"the log ({err.str()}); refusing to skip records silently"))
            elif err.fatal():
                self._fail(RuntimeError(f"fatal Kafka error: {err.str()}"))
            elif err.code() != KafkaError._PARTITION_EOF:
                log.warning("kafka error: %s", err.str())
            return
        state = self.parts.get(msg.partition())
        if state is None or msg.offset() < state.growing.end_offset:
            return  # revoked or fenced meanwhile, or a redelivery already covered
        self.metrics.labels(self.metrics.consumed_messages).inc()
        try:
            batch = record.decode_valid(msg.value() or b"", dim=self.spec.dim,
                                        model_version=self.spec.model_version)
        except RecordError as exc:
            self.dlq.send(msg, exc)
            self.metrics.labels(self.metrics.dlq_messages, exc.reason).inc()
            state.growing.skip(msg.offset())
        else:
            state.growing.append(batch, msg.offset())
            self.metrics.labels(self.metrics.consumed_rows).inc(len(batch))
        now = time.monotonic()
        if state.growing.messages == 1:  # age counts from the first message, not from idling
            state.growing.created_at = now
        # Size policies are checked per message so segments respect their bounds exactly.
        due = seal.select({state.partition: state.growing.stats(now)}, self.policies)
        if due:
            self._seal(state.partition, due[state.partition], now)
        self._seal_for_memory(now)

    def _seal(self, partition: int, reason: str, now: float) -> None:
        state = self.parts[partition]
        sealed = state.growing.seal()
        sid = segment_id(partition, sealed.start_offset, sealed.end_offset)
        hides = self.idmap.hides_for(sealed)
        self.idmap.apply(sid, sealed)
        state.growing = GrowingSegment(partition, sealed.end_offset, self.spec.dim, now)
        generation, index = self._target()
        future = self._builder.submit(self._build, sealed, hides, generation, index)
        state.inflight.append(Pending(future, sealed.vectors.nbytes))
        self.metrics.labels(self.metrics.seals, reason.split(":", 1)[0]).inc()
        self.metrics.last_seal.mark(partition)
        log.info('seal partition="%s[%d]" segment=%s rows=%d deletes=%d reason="%s"', self.topic,
                 partition, sid, sealed.rows, len(sealed.deleted_ids), reason)

    def _target(self) -> tuple[int, str]:
        """The generation a new segment goes into and the index spec it is built with.

        Read at every seal, so a generation switch reaches new segments at once; one sealed
        just before a switch is caught by the reindex's next pass.
        """
        if self.generation is not None:
            return self.generation, self.spec.index
        return self.registry.build_target(self.spec.index)

    def _build(self, sealed: SealedRows, hides: dict, generation: int,
               index_spec: str) -> publish.Written:
        """Build the FAISS index, write the snapshot and mirror it; runs on the builder thread."""
        faults.crash_point("build")
        written = publish.write(self.store, self.spec.name, generation, sealed,
                                metric=self.spec.metric, index=index_spec, hides=hides)
        faults.crash_point("after_snapshot")
        self.metrics.labels(self.metrics.build_seconds).observe(written.build_seconds)
        self.metrics.labels(self.metrics.snapshot_bytes).inc(written.nbytes)
        return written

    def _register_finished(self, *, block: bool, timeout: float | None = None) -> None:
        for partition in list(self.parts):
            state = self.parts.get(partition)
            while state is not None and state.inflight and (
                    block or state.inflight[0].future.done()):
                if not self._register_head(state, timeout):
                    break

    def _register_head(self, state: PartitionState, timeout: float | None) -> bool:
        """Register the oldest finished build of a partition; False if the partition was reset."""
        pending = state.inflight[0]
        try:
            written = pending.future.result(timeout)
        except Exception as exc:  # a failed build is not a bad record: stop, lose nothing
            self._fail(exc)
            return False
        self.dlq.confirm()
        result = self.registry.register(written.record, state.epoch)
        self.metrics.labels(self.metrics.registrations, result.status).inc()
        if not result.ok:
            self._reset_partition(state, result)
            return False
        publish.mark(self.store, [written])
        faults.crash_point("after_register")
        state.inflight.popleft()
        state.checkpoint = written.record.end_offset
        self._commit_hint(state.partition, written.record.end_offset)
        faults.crash_point("after_commit")
        return True

    def _commit_hint(self, partition: int, offset: int) -> None:
        """Commit the Kafka offset; only a hint (the registry checkpoint is the truth)."""
        try:
            self.consumer.commit(offsets=[TopicPartition(self.topic, partition, offset)],
                                 asynchronous=False)
        except KafkaException as exc:  # e.g. coordinator loading, or a rebalance under way
            log.warning('partition="%s[%d]" offset commit failed (harmless): %s',
                        self.topic, partition, exc)

    def _reset_partition(self, state: PartitionState, result) -> None:
        """After a fenced or conflicting registration: drop our view of the partition."""
        p = state.partition
        log.warning('partition="%s[%d]" registration %s (checkpoint %s): dropping local state',
                    self.topic, p, result.status, result.checkpoint)
        for pending in state.inflight:
            pending.future.cancel()
        del self.parts[p]
        self.idmap.drop_partition(p)
        if result.status == "fenced":
            return  # another worker owns it now; its revoke reaches us at the next rebalance
        now = time.monotonic()
        self.parts[p] = self._take(p, now)
        self.consumer.seek(TopicPartition(self.topic, p, self.parts[p].checkpoint))

    def _take(self, partition: int, now: float) -> PartitionState:
        low, _ = self.consumer.get_watermark_offsets(TopicPartition(self.topic, partition),
                                                     timeout=10)
        try:
            return take_over(partition, registry=self.registry, idmap=self.idmap,
                             store=self.store, collection=self.spec.name,
                             generation=self._target()[0], dim=self.spec.dim,
                             low_watermark=low, now=now)
        except CheckpointOutOfRange:
            self.metrics.labels(self.metrics.out_of_range, str(partition)).set(1)
            raise

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        now = time.monotonic()
        try:
            for tp in partitions:
                self.parts[tp.partition] = self._take(tp.partition, now)
                tp.offset = self.parts[tp.partition].checkpoint
        except Exception as exc:
            self._fail(exc)
        consumer.assign(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Finish what is already built so the next owner need not redo it; drop the rest.
        for tp in partitions:
            state = self.parts.get(tp.partition)
            while state is not None and state.inflight and self._fatal is None:
                if not self._register_head(state, timeout=60):
                    break
        self._on_lost(consumer, partitions)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            if self.parts.pop(tp.partition, None) is not None:
                self.idmap.drop_partition(tp.partition)
        self._paused = False

    def _seal_for_memory(self, now: float) -> None:
        """Seal the biggest growing segment while growing rows take over half the cap."""
        growing = sum(st.growing.nbytes for st in self.parts.values())
        biggest = max(self.parts.values(), key=lambda st: st.growing.nbytes, default=None)
        if growing > self.max_held_bytes // 2 and biggest is not None and biggest.growing.messages:
            self._seal(biggest.partition,
                       f"memory: {growing} >= {self.max_held_bytes // 2} growing bytes", now)

    def _apply_backpressure(self, now: float) -> None:
        """Pause consuming while sealed segments still building hold more than the cap."""
        self._seal_for_memory(now)
        held = sum(st.held_bytes for st in self.parts.values())
        self.metrics.labels(self.metrics.growing_bytes).set(held)
        self.metrics.labels(self.metrics.growing_rows).set(
            sum(st.growing.rows for st in self.parts.values()))
        want_pause = held > self.max_held_bytes
        if want_pause != self._paused:
            assignment = self.consumer.assignment()
            (self.consumer.pause if want_pause else self.consumer.resume)(assignment)
            self._paused = want_pause
            self.metrics.labels(self.metrics.paused).set(int(want_pause))

    def _shutdown(self) -> None:
        if self._fatal is None:
            try:
                self._register_finished(block=True, timeout=120)
            except Exception as exc:  # keep closing; report the first problem
                self._fail(exc)
        self._builder.shutdown(wait=True, cancel_futures=True)
        try:
            self.consumer.close()
        finally:
            self.dlq.confirm(10)

