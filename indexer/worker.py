"""The indexer worker loop: consume, append, seal, build off-loop, snapshot, register, commit."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from prometheus_client import REGISTRY, CollectorRegistry
from redis.backoff import EqualJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from indexer import faults, publish, seal
from indexer.dlq import DeadLetters
from indexer.errors import CheckpointOutOfRange, IndexerError, RemoteStoreError
from indexer.idmap import IdMap
from indexer.metrics import IndexerMetrics
from indexer.ownership import PartitionState, Pending, take_over
from indexer.registry import Registry
from indexer.segment import GrowingSegment, SealedRows, segment_id
from indexer.store import SegmentStore
from ingest import catalog, message
from ingest.errors import ReadOnlyCollection, RecordError
from streamvec.health import KafkaProbe, TurnHook
from streamvec.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_MAX_HELD_BYTES = 1024 * 1024 * 1024
# A message holds hundreds of rows (~1 MB); the default 1 MB per partition per fetch would
# turn every message into its own round trip.
CONSUMER_FETCH = {"max.partition.fetch.bytes": 16 * 2**20, "fetch.max.bytes": 64 * 2**20}
# Offset-out-of-range surfaces as one of these when `auto.offset.reset` is `error`.
_OUT_OF_RANGE = {KafkaError.OFFSET_OUT_OF_RANGE, KafkaError._AUTO_OFFSET_RESET}
# Errors of a Redis that is restarting, failing over or unreachable: the call is retried.
REDIS_TRANSIENT = (RedisConnectionError, RedisTimeoutError)
# Each Redis call of the loop answers in milliseconds; a server that stopped answering must
# surface as a timeout (and be retried), never hang the loop.
REDIS_TIMEOUT_S = 10.0
# Retries of a dependency through an outage: 0.1-0.2 s doubling up to 5 s (jitter), for as long
# as it lasts (the worker stays in its group meanwhile, and `stop()` ends the wait).
OUTAGE_BACKOFF = EqualJitterBackoff(cap=5.0, base=0.1)
# Failures of the environment while a segment is built and written (disk full, I/O errors, too
# many open files, the object store unreachable): the build is tried again, never fatal. Each
# try rebuilds the index, so the waits start at half a second.
STORE_TRANSIENT = (OSError, RemoteStoreError)
BUILD_BACKOFF = EqualJitterBackoff(cap=5.0, base=0.5)
# How long a registration waits for dead letters still in flight before trying again next turn.
DLQ_WAIT_S = 1.0
# How often the loop reads its own ownership back from the registry (a Redis that restarted may
# have lost its last writes), and tries again to write registration markers that failed.
VERIFY_EVERY_S = 30.0
MARK_RETRY_S = 5.0

T = TypeVar("T")


class GaveUp(IndexerError):
    """A dependency call abandoned because the worker is stopping (or must not wait now)."""


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
        if self.spec.read_only:  # its checkpoints are offsets of another topic
            raise ReadOnlyCollection(f"collection {self.spec.name} is read-only (restored from "
                                     f"{self.spec.restored_from}): nothing indexes it")
        self.topic = self.spec.collection.topic
        self.generation = generation  # None: follow the registry's active generation
        self.max_held_bytes = max_held_bytes
        self.registry = Registry(settings.redis_client(timeout=REDIS_TIMEOUT_S), collection)
        self.store = SegmentStore.from_settings(settings)  # mirrored to its object store, if any
        self.policies = seal.policies_for(self.spec)
        self.metrics = IndexerMetrics(metrics_registry, collection)
        self.idmap = IdMap()
        self.parts: dict[int, PartitionState] = {}
        self.dlq = DeadLetters(
            settings.kafka_config(), self.spec.collection.dlq_topic,
            max_copy_bytes=settings.dlq_max_copy_bytes,
            on_truncated=self.metrics.labels(self.metrics.dlq_truncated).inc,
            on_retry=self.metrics.labels(self.metrics.retries, "dlq").inc)
        self.consumer = Consumer(settings.kafka_config(**{
            "group.id": group_id or f"{self.topic}.indexer",
            "enable.auto.commit": False,
            "auto.offset.reset": "error",  # never skip silently: see CheckpointOutOfRange
            "max.poll.interval.ms": 600_000,
            "error_cb": self._on_kafka_error,
            **CONSUMER_FETCH,
        }))
        # Seal builds keep the process's priority: a seal that falls behind ingest leaves its
        # rows in every searcher's tail, where each query scans them.
        self._builder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sv-build")
        # Asks the brokers on a thread of its own: a frozen broker never says it is down.
        self._kafka_probe = KafkaProbe(settings.kafka_config(), self.topic,
                                       on_change=self._kafka_changed)
        self._running = False
        self._paused = False
        self._fatal: BaseException | None = None
        self._stopping = threading.Event()
        # Dependency -> why the worker waits for it; replaced, never mutated, because the
        # health server's thread reads it (and the builder and probe threads write it).
        self._down: dict[str, str] = {}
        self._down_lock = threading.Lock()
        self._verify_at = time.monotonic() + VERIFY_EVERY_S
        # Registered folders whose marker could not be written yet (the disk was full).
        self._unmarked: list[publish.Written] = []
        self._mark_at = 0.0

    def stop(self) -> None:
        """Ask the loop to finish: in-flight builds complete, growing segments are dropped."""
        self._running = False
        self._stopping.set()

    def problem(self) -> str | None:
        """Why the worker cannot make progress now (a dependency it waits for), or None.

        A readiness check: the role runner reports the worker not ready while this says why.
        """
        reasons = list(self._down.values())
        dlq = self.dlq.problem
        if dlq is not None:
            reasons.append(dlq)
        return "; ".join(reasons) or None

    def run(self, max_seconds: float | None = None) -> None:
        """Consume until `stop()`, a fatal error (re-raised) or `max_seconds` have passed."""
        self.consumer.subscribe([self.topic], on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_lost)
        self._running = not self._stopping.is_set()  # a stop() that came first still counts
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        self._kafka_probe.start()

        try:
            while self._running and self._fatal is None:
                if deadline is not None and time.monotonic() >= deadline:
                    break
                with self._turn:
                    try:
                        self.step()
                    except GaveUp as exc:  # stop() came during an outage: nothing to finish
                        log.info("stopping while %s", exc)
                        break
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
        if self._unmarked and now >= self._mark_at:
            self._mark(now)
        if self.dlq.problem is not None:
            self.dlq.settled(0)  # resends failed dead letters once their backoff has passed
        if now >= self._verify_at:
            self._verify_owned()
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
            batch = message.decode_kafka(msg, self.spec)
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
        future = self._builder.submit(self._build_until_written, state, sealed, hides,
                                      generation, index)
        state.inflight.append(Pending(future, sealed.held_bytes))
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
        return self._redis("reading the build target",
                           lambda: self.registry.build_target(self.spec.index))

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

    def _build_until_written(self, state: PartitionState, sealed: SealedRows, hides: dict,
                             generation: int, index_spec: str) -> publish.Written:
        """`_build`, tried again with backoff while the environment makes it fail.

        Disk full, an I/O error, too many open files or an unreachable object store leave no
        folder behind (the temp folder is removed) and are retried until the write works, the
        partition is no longer `state`'s (revoked or reset: the next owner replays it) or the
        worker stops; meanwhile the worker reports the segment store unavailable and nothing
        registers, so the checkpoint stays. Any other exception is a bug and fails the build.
        """
        sid = segment_id(sealed.partition, sealed.start_offset, sealed.end_offset)
        return self._retrying(
            "store", f"segment store unavailable: writing segment {sid} failed",
            lambda: self._build(sealed, hides, generation, index_spec), STORE_TRANSIENT,
            patient=True, backoff=BUILD_BACKOFF,
            wanted=lambda: self.parts.get(state.partition) is state)

    def _mark(self, now: float) -> None:
        """Write the markers that failed earlier; keep those that fail again for later."""
        self._mark_at = now + MARK_RETRY_S
        left = []
        for written in self._unmarked:
            try:
                publish.mark(self.store, [written])
            except OSError as exc:
                left.append(written)
                self._set_down("store", f"segment store unavailable: marking segment "
                                        f"{written.record.segment_id} registered failed ({exc})")
                self.metrics.labels(self.metrics.retries, "store").inc()
        self._unmarked = left
        if not left:
            self._set_up("store")

    def _register_finished(self, *, block: bool, timeout: float | None = None) -> None:
        for partition in list(self.parts):
            state = self.parts.get(partition)
            while state is not None and state.inflight and (
                    block or state.inflight[0].future.done()):
                if not self._register_head(state, timeout):
                    break

    def _register_head(self, state: PartitionState, timeout: float | None, *,
                       revoking: bool = False) -> bool:
        """Register the oldest finished build of a partition; False if it must wait or was reset.

        It waits while dead letters are undelivered: a checkpoint never covers a bad message
        that is not in the dead-letter topic yet. While `revoking` nothing waits: undelivered
        dead letters return False, a Redis error raises GaveUp, and a refused registration
        drops the partition without taking it over again.
        """
        pending = state.inflight[0]
        try:
            written = pending.future.result(timeout)
        except GaveUp as exc:  # stopping, or the partition changed hands: the next owner replays
            log.info('partition="%s[%d]" %s', self.topic, state.partition, exc)
            return False
        except Exception as exc:
            if not pending.future.done():
                return False  # still building after `timeout`: the next owner replays it
            self._fail(exc)  # a build that failed on a bug: stop, lose nothing
            return False
        if not self.dlq.settled(0 if revoking else DLQ_WAIT_S):
            return False
        result = self._redis(f"registering {written.record.segment_id}",
                             lambda: self.registry.register(written.record, state.epoch),
                             patient=not revoking)
        self.metrics.labels(self.metrics.registrations, result.status).inc()
        if not result.ok:
            if revoking:
                self._drop(state.partition)
            else:
                self._reset_partition(state, result.status, result.checkpoint, result.epoch)
            return False
        try:
            publish.mark(self.store, [written])
        except OSError as exc:
            # Registered already; only its marker (for a registry rebuild) waits for space.
            self._unmarked.append(written)
            self._set_down("store", f"segment store unavailable: marking segment "
                                    f"{written.record.segment_id} registered failed ({exc})")
        faults.crash_point("after_register")
        state.inflight.popleft()
        state.checkpoint = written.record.end_offset
        self._commit_hint(state.partition, written.record.end_offset)
        faults.crash_point("after_commit")
        return True

    def _commit_hint(self, partition: int, offset: int) -> None:
        """Commit the Kafka offset; only a hint (the registry checkpoint is the truth)."""
        # Asynchronous: a synchronous commit sent to a frozen coordinator can wait forever,
        # and the rebalance that would end the wait needs this very thread to poll.
        try:
            self.consumer.commit(offsets=[TopicPartition(self.topic, partition, offset)],
                                 asynchronous=True)
        except KafkaException as exc:  # e.g. coordinator loading, or a rebalance under way
            log.warning('partition="%s[%d]" offset commit failed (harmless): %s',
                        self.topic, partition, exc)

    def _reset_partition(self, state: PartitionState, status: str, checkpoint: int,
                         epoch: int) -> None:
        """After a fenced or conflicting registration: drop our view of the partition.

        `checkpoint` and `epoch` are the registry's. An epoch below ours means the registry
        lost its last writes (a Redis restarted without them): the partition is still ours to
        claim again, from whatever checkpoint survived.
        """
        p = state.partition
        log.warning('partition="%s[%d]" registration %s (checkpoint %s, epoch %s, ours %s): '
                    "dropping local state", self.topic, p, status, checkpoint, epoch, state.epoch)
        self._drop(p)
        if status == "fenced" and epoch > state.epoch:
            return  # another worker owns it now; its revoke reaches us at the next rebalance
        now = time.monotonic()
        self.parts[p] = self._take(p, now)
        self.consumer.seek(TopicPartition(self.topic, p, self.parts[p].checkpoint))

    def _verify_owned(self) -> None:
        """Read each owned partition's epoch and checkpoint back; reset any the registry lost.

        Runs every VERIFY_EVERY_S and after a Redis outage: a Redis that restarted may have
        lost its last writes (a registration, a claim) while the worker has nothing new to
        register that would find out.
        """
        self._verify_at = time.monotonic() + VERIFY_EVERY_S
        for p in sorted(self.parts):
            state = self.parts.get(p)
            if state is None:
                continue
            epoch, checkpoint = self._redis(
                f"checking partition {p}",
                lambda p=p: (self.registry.epoch(p), self.registry.checkpoint(p)))
            if (epoch, checkpoint) != (state.epoch, state.checkpoint):
                self._reset_partition(state, "fenced" if epoch != state.epoch else "conflict",
                                      checkpoint, epoch)

    def _take(self, partition: int, now: float) -> PartitionState:
        tp = TopicPartition(self.topic, partition)
        low, _ = self._kafka(f"reading the log start of partition {partition}",
                             lambda: self.consumer.get_watermark_offsets(tp, timeout=10))
        try:
            return self._redis(
                f"taking partition {partition} over",
                lambda: take_over(partition, registry=self.registry, idmap=self.idmap,
                                  store=self.store, collection=self.spec.name,
                                  generation=self._target()[0], dim=self.spec.dim,
                                  low_watermark=low, now=now))
        except CheckpointOutOfRange:
            self.metrics.labels(self.metrics.out_of_range, str(partition)).set(1)
            raise

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        now = time.monotonic()
        try:
            for tp in partitions:
                self.parts[tp.partition] = self._take(tp.partition, now)
                tp.offset = self.parts[tp.partition].checkpoint
        except GaveUp as exc:  # stopping during an outage; the loop ends at its next check
            log.info("stopping while %s", exc)
        except Exception as exc:
            self._fail(exc)
        consumer.assign(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Register builds that are already finished (one Redis call each) so the next owner need
        # not redo them. Never wait for one still building, nor for Redis or dead letters: the
        # group's rebalance waits for this callback, and the next owner replays whatever is
        # dropped here from the registry checkpoint.
        for tp in partitions:
            state = self.parts.get(tp.partition)
            try:
                while (state is not None and state.inflight and self._fatal is None
                       and state.inflight[0].future.done() and state is self.parts.get(
                           tp.partition)):
                    if not self._register_head(state, timeout=0, revoking=True):
                        break
            except GaveUp as exc:
                log.info('partition="%s[%d]" revoked while %s: dropping its finished builds',
                         self.topic, tp.partition, exc)
        self._on_lost(consumer, partitions)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._drop(tp.partition)
        self._paused = False

    def _drop(self, partition: int) -> None:
        """Forget a partition: its growing rows and the builds not yet registered are dropped.

        A build still running finishes on the builder thread and is discarded; its folder is
        an orphan that the partition's next take-over removes (or reuses: writes are
        idempotent per range).
        """
        state = self.parts.pop(partition, None)
        if state is None:
            return
        self.idmap.drop_partition(partition)
        for pending in state.inflight:
            pending.future.cancel()
        if state.inflight:
            self.metrics.labels(self.metrics.discarded_builds).inc(len(state.inflight))
            log.info('partition="%s[%d]" dropped %d unregistered build(s); the next owner '
                     "replays from offset %d", self.topic, partition, len(state.inflight),
                     state.checkpoint)

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
        self.metrics.labels(self.metrics.unavailable, "dlq").set(int(self.dlq.problem is not None))
        # Bad messages stop being taken on while their dead letters cannot be delivered, so
        # that an outage of the dead-letter topic holds nothing but what was already read.
        want_pause = held > self.max_held_bytes or self.dlq.blocked
        if want_pause != self._paused:
            assignment = self.consumer.assignment()
            (self.consumer.pause if want_pause else self.consumer.resume)(assignment)
            self._paused = want_pause
            self.metrics.labels(self.metrics.paused).set(int(want_pause))

    def _shutdown(self) -> None:
        self._stopping.set()  # from here on, an unreachable dependency is given up at once
        if self._fatal is None:
            try:
                self._register_finished(block=True, timeout=120)
            except GaveUp as exc:  # the next owner replays what is left from the checkpoint
                log.info("not registering the last builds: %s", exc)
            except Exception as exc:  # keep closing; report the first problem
                self._fail(exc)
        self._builder.shutdown(wait=True, cancel_futures=True)
        self._kafka_probe.stop()
        try:
            self.consumer.close()
        finally:
            self.dlq.close(10)

    def _redis(self, what: str, call: Callable[[], T], *, patient: bool = True) -> T:
        """Run one Redis call of the loop, retrying with backoff through an outage.

        Every such call is safe to repeat: reads, a claim (a lost reply only bumps the epoch
        once more) and the compare-and-set registration (a repeat answers `already`). Raises
        GaveUp once the worker is stopping, or at the first failure if not `patient`.
        """
        return self._retrying("redis", f"Redis unreachable while {what}", call,
                               REDIS_TRANSIENT, patient=patient)

    def _kafka(self, what: str, call: Callable[[], T]) -> T:
        """Run one broker request of the loop, retrying with backoff through an outage."""
        return self._retrying("kafka", f"Kafka unreachable while {what}", call,
                              (KafkaException,), patient=True)

    def _retrying(self, dependency: str, why: str, call: Callable[[], T],
                  transient: tuple[type[BaseException], ...], *, patient: bool,
                  backoff: EqualJitterBackoff = OUTAGE_BACKOFF,
                  wanted: Callable[[], bool] = lambda: True) -> T:
        """`call`, repeated with backoff while it fails with a `transient` error.

        Meanwhile `dependency` is reported down (readiness, metrics). Raises GaveUp at the
        first failure if not `patient`, and once the worker stops or the result is no longer
        `wanted` (its partition moved on).
        """
        failures = 0
        while True:
            try:
                result = call()
            except transient as exc:
                failures += 1
                self._set_down(dependency, f"{why} ({type(exc).__name__}: {exc})")
                self.metrics.labels(self.metrics.retries, dependency).inc()
                if not patient or self._stopping.is_set() or not wanted():
                    raise GaveUp(f"{why}: {exc}") from exc
                self._stopping.wait(backoff.compute(failures))
                continue
            if failures:
                self._set_up(dependency)
            return result

    def _set_down(self, dependency: str, why: str) -> None:
        with self._down_lock:
            if dependency not in self._down:
                log.warning("%s; retrying with backoff", why)
            self._down = {**self._down, dependency: why}
            self.metrics.labels(self.metrics.unavailable, dependency).set(1)

    def _set_up(self, dependency: str) -> None:
        with self._down_lock:
            if dependency not in self._down:
                return
            self._down = {k: v for k, v in self._down.items() if k != dependency}
            self.metrics.labels(self.metrics.unavailable, dependency).set(0)
        log.info("%s reachable again", dependency)
        if dependency == "redis":  # it may have come back without its last writes
            self._verify_at = 0.0

    def _on_kafka_error(self, err: KafkaError) -> None:
        """librdkafka's error callback: notes that every broker is down (it reconnects itself)."""
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            self._kafka_probe.report(err.str())  # until the probe gets an answer again
        else:
            log.debug("kafka: %s", err.str())

    def _kafka_changed(self, problem: str | None) -> None:
        """The probe's verdict changed: Kafka unavailable (why) or reachable again (None)."""
        if problem is None:
            self._set_up("kafka")
        else:
            self._set_down("kafka", problem)
