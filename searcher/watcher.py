"""Keeps the served segment set equal to the registry: pub/sub events plus a periodic reconcile."""

# Events make a new segment appear quickly; the reconcile every `reconcile_s` is what makes the
# set correct, since a pub/sub message missed during a reconnect is never sent again. A broken
# subscription (Redis restarted, a cluster node failed over) leaves the watcher polling on that
# timer alone while it subscribes again. The events are plain PUBLISH messages, which a Redis
# Cluster passes to subscribers on every node.
#
# A segment that cannot be loaded is never counted as covered: its partition is served up to
# where it starts, and the live tail goes on serving its offsets (and the deletes it carries)
# until it loads. Whatever the cause, corruption (a checksum, manifest or identity mismatch)
# or trouble (EIO, EMFILE, ESTALE, a folder not yet in the object store), loading is tried
# again with backoff, so a folder replaced by a good copy or a disk that recovers heals
# without a restart. The segments not served are published in `sv:{name}:unloaded` for
# `streamvec status` and counted in `streamvec_searcher_unloaded_segments`.

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Collection
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Protocol

from redis.exceptions import RedisError

from indexer.errors import CorruptSegment
from indexer.registry import Registry, SegmentRecord, note_skipped
from indexer.segfolder import LoadedSegment
from indexer.segment import parse_segment_id
from indexer.store import SegmentStore
from searcher import segments
from searcher.metrics import SearcherMetrics
from searcher.segments import SegmentIdentity, SegmentUnavailable

log = logging.getLogger(__name__)

EVENT_WAIT_S = 0.2
RESUBSCRIBE_S = 1.0  # between tries to subscribe again once the subscription broke
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 60.0
UNLOADED_TTL_S = 600  # a report outlives its searcher by this much, then expires
UNLOADED_SUFFIX = "unloaded"
# Segments verified at once: sha256 releases the GIL, so a start-up over many segments uses
# every core (1M rows of 384 dims in 13 segments: 1.5 GB to hash before the first answer).
LOAD_THREADS = max(1, min(4, os.cpu_count() or 1))


class WatcherSink(Protocol):
    """What the watcher changes: the engine's serving state."""

    def served(self) -> dict[str, str]:
        """Segment id -> registered path of every segment served."""

    def replace(self, gone: set[str], loaded: list[tuple[SegmentRecord, LoadedSegment]]) -> None:
        """Stop serving `gone` and serve `loaded` in one step."""


@dataclass(slots=True)
class Unloaded:
    """A registered segment that failed to load, why, and when loading is tried again."""

    path: str
    reason: str
    corrupt: bool
    since: float  # wall-clock time of the first failure
    attempts: int
    retry_at: float  # monotonic

    def to_json(self) -> str:
        """What `sv:{name}:unloaded` holds for this segment (no monotonic time)."""
        body = asdict(self)
        del body["retry_at"]
        return json.dumps(body, sort_keys=True)


class SegmentWatcher:
    """Loads newly registered segments and releases unregistered ones, on its own thread."""

    def __init__(self, registry: Registry, store: SegmentStore, sink: WatcherSink,
                 reconcile_s: float, *, identity: SegmentIdentity | None = None,
                 metrics: SearcherMetrics | None = None,
                 retry_max_s: float = RETRY_MAX_S,
                 partitions: Collection[int] | None = None) -> None:
        self.registry = registry
        # A shard's searcher serves the segments of its partitions only (None: every one).
        self.partitions = None if partitions is None else frozenset(partitions)
        self.store = store
        self.sink = sink
        self.reconcile_s = reconcile_s
        self.identity = identity
        self.metrics = metrics
        self.retry_max_s = retry_max_s
        self.unloaded_key = registry.collection.key(UNLOADED_SUFFIX)
        self._unloaded: dict[str, Unloaded] = {}
        self._published: set[str] = set()
        self._malformed: dict[str, str] = {}
        # Loaded but not yet served (their partition waits for an earlier segment): kept so a
        # retry does not verify them again. Key: (segment id, path).
        self._ready: dict[tuple[str, str], LoadedSegment] = {}
        self._loaders = ThreadPoolExecutor(LOAD_THREADS, thread_name_prefix="sv-load")
        self._pubsub = registry.client.pubsub(ignore_subscribe_messages=True)
        self._resubscribe_at: float | None = None  # set while the subscription is broken
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"sv-segments-{registry.collection}")

    def subscribe(self) -> None:
        """Listen for registry events; call before the first reconcile so none slips between."""
        self._pubsub.subscribe(self.registry.events_channel)

    def start(self) -> None:
        """Start the watcher thread."""
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the thread and unsubscribe."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._loaders.shutdown(wait=False, cancel_futures=True)
        self._pubsub.close()

    def unloaded(self) -> dict[str, Unloaded]:
        """Segment id -> why it is registered but not served, as of the last reconcile."""
        return dict(self._unloaded)

    def reconcile(self) -> None:
        """Make the served set equal to the registry's in one swap, loading new segments first.

        A segment is new when its id is, or when its path moved (a generation switch rebuilt
        it over the same offsets). Loading happens before the swap, so queries keep being
        answered from the old set meanwhile. A malformed registry record is skipped (logged
        once, counted), never blocking the rest.
        """
        skipped: dict[str, str] = {}
        records = self.registry.segments(skipped=skipped)
        if self.partitions is not None:
            records = [r for r in records if r.partition in self.partitions]
        self._note_malformed(skipped)
        served = self.sink.served()
        current = {r.segment_id: r.path for r in records}
        gone = {sid for sid, path in served.items() if current.get(sid) != path}
        fresh = [r for r in records if served.get(r.segment_id) != r.path]
        loaded, held = self._load(records, fresh, served, gone)
        gone = {sid for sid in gone if parse_segment_id(sid)[0] not in held}
        self._unloaded = {sid: u for sid, u in self._unloaded.items()
                          if current.get(sid) == u.path}
        wanted = {(r.segment_id, r.path) for r in fresh}
        self._ready = {key: seg for key, seg in self._ready.items() if key in wanted}
        for record, _ in loaded:
            self._ready.pop((record.segment_id, record.path), None)
        if gone or loaded:
            self.sink.replace(gone, loaded)
        self._report()

    def _load(self, records: list[SegmentRecord], fresh: list[SegmentRecord],
              served: dict[str, str], gone: set[str]
              ) -> tuple[list[tuple[SegmentRecord, LoadedSegment]], set[int]]:
        """Open the fresh segments in offset order; return what to serve and partitions held.

        In each partition loading stops at the first segment that fails: what follows it
        waits, since serving it would leave a hole the tail no longer reads. Where that leaves
        the partition with less coverage than it has now (a swap whose new segment failed),
        the partition is held: the old segments stay served and nothing of it changes.
        """
        now = time.monotonic()
        by_partition: dict[int, list[SegmentRecord]] = {}
        for record in fresh:
            by_partition.setdefault(record.partition, []).append(record)
        out: list[tuple[SegmentRecord, LoadedSegment]] = []
        held: set[int] = set()
        loading = self._start_loading(fresh, now)
        for partition, wanted in sorted(by_partition.items()):
            got = []
            for record in sorted(wanted, key=lambda r: r.start_offset):
                segment = self._open(record, now, loading.pop(record.segment_id, None))
                if segment is None:
                    break
                got.append((record, segment))
            else:
                out += got
                continue
            kept = [parse_segment_id(sid)[1:] for sid in served
                    if sid not in gone and parse_segment_id(sid)[0] == partition]
            now_covered = max((parse_segment_id(sid)[2] for sid in served
                               if parse_segment_id(sid)[0] == partition), default=0)
            first = min(r.start_offset for r in records if r.partition == partition)
            spans = kept + [(r.start_offset, r.end_offset) for r, _ in got]
            if _gapless(spans, first, now_covered):
                out += got
            else:
                held.add(partition)
                self._ready.update({(r.segment_id, r.path): s for r, s in got})
        # Loaded behind one that failed: kept, verified, for the partition's next try.
        for record, future in loading.values():
            if future.exception() is None:
                self._ready[(record.segment_id, record.path)] = future.result()
        return out, held

    def _start_loading(self, fresh: list[SegmentRecord], now: float
                       ) -> dict[str, tuple[SegmentRecord, Future[LoadedSegment]]]:
        """Start loading every fresh segment not loaded already nor waiting to retry, at once.

        Only when there are several: one is loaded where it is needed, by `_open`.
        """
        due = [r for r in fresh if (r.segment_id, r.path) not in self._ready
               and not self._waiting(r, now)]
        if len(due) < 2:
            return {}
        return {r.segment_id: (r, self._loaders.submit(segments.load, self.store, r,
                                                        self.identity)) for r in due}

    def _waiting(self, record: SegmentRecord, now: float) -> bool:
        """Whether loading `record` failed before and its next try is not due yet."""
        prior = self._unloaded.get(record.segment_id)
        return prior is not None and prior.path == record.path and now < prior.retry_at

    def _open(self, record: SegmentRecord, now: float,
              loading: tuple[SegmentRecord, Future[LoadedSegment]] | None = None
              ) -> LoadedSegment | None:
        """The opened segment, or None when it failed now or waits for its next try.

        `loading` is its load already under way on the pool, if `_start_loading` began one.
        """
        key = (record.segment_id, record.path)
        if key in self._ready:
            return self._ready[key]
        prior = self._unloaded.get(record.segment_id)
        if prior is not None and prior.path != record.path:
            prior = None
        if prior is not None and now < prior.retry_at:
            return None
        try:
            segment = (segments.load(self.store, record, self.identity) if loading is None
                       else loading[1].result())
        except (CorruptSegment, SegmentUnavailable) as exc:
            corrupt = isinstance(exc, CorruptSegment)
            attempts = 1 if prior is None else prior.attempts + 1
            delay = min(self.retry_max_s, RETRY_FIRST_S * 2 ** min(attempts - 1, 16))
            if prior is None or prior.corrupt != corrupt:
                if corrupt and self.metrics is not None:
                    self.metrics.labels(self.metrics.refused_segments).inc()
                log.error('collection=%s partition="%d" segment=%s not served (%s, retried '
                          "until it loads; the tail serves its offsets): %s",
                          self.registry.collection, record.partition, record.segment_id,
                          "corrupt" if corrupt else "unavailable", exc)
            since = time.time() if prior is None else prior.since
            self._unloaded[record.segment_id] = Unloaded(
                record.path, str(exc), corrupt, since, attempts, now + delay)
            return None
        if prior is not None:
            log.info('collection=%s partition="%d" segment=%s loaded after %d failed tries',
                     self.registry.collection, record.partition, record.segment_id,
                     prior.attempts)
        self._unloaded.pop(record.segment_id, None)
        return segment

    def _note_malformed(self, skipped: dict[str, str]) -> None:
        self._malformed = note_skipped(log, self.registry.collection, skipped, self._malformed)

    def _report(self) -> None:
        """Publish the unserved segments to the metrics and to Redis for `streamvec status`."""
        if self.metrics is not None:
            corrupt = sum(u.corrupt for u in self._unloaded.values())
            self.metrics.labels(self.metrics.unloaded_segments, "corrupt").set(corrupt)
            self.metrics.labels(self.metrics.unloaded_segments, "unavailable").set(
                len(self._unloaded) - corrupt)
            self.metrics.labels(self.metrics.malformed_records).set(len(self._malformed))
        resolved = self._published - set(self._unloaded)
        if not resolved and not self._unloaded:
            return
        with self.registry.client.pipeline(transaction=False) as pipe:
            if resolved:
                pipe.hdel(self.unloaded_key, *sorted(resolved))
            if self._unloaded:
                pipe.hset(self.unloaded_key, mapping={sid: u.to_json()
                                                      for sid, u in self._unloaded.items()})
                pipe.expire(self.unloaded_key, UNLOADED_TTL_S)
            pipe.execute()
        self._published = set(self._unloaded)

    def _run(self) -> None:
        due = time.monotonic() + self.reconcile_s
        while not self._stop.is_set():
            try:
                event = self._next_event()
                if event or time.monotonic() >= due:
                    self._drain()
                    self.reconcile()
                    due = time.monotonic() + self.reconcile_s
            except Exception:  # Redis away: keep serving what is loaded, try again later
                log.exception("collection=%s segment reconcile failed", self.registry.collection)
                self._stop.wait(min(self.reconcile_s, 1.0))

    def _next_event(self) -> bool:
        """Wait up to EVENT_WAIT_S for a registry event; True when one calls for a reconcile.

        While the subscription is broken, subscribing again is tried every RESUBSCRIBE_S and
        the timer's reconciles go on meanwhile; a new subscription is followed by a reconcile
        at once, since what was published while there was none is never sent again.
        """
        if self._resubscribe_at is not None:
            if time.monotonic() >= self._resubscribe_at and self._resubscribe():
                return True
            self._stop.wait(EVENT_WAIT_S)
            return False
        try:
            return self._pubsub.get_message(timeout=EVENT_WAIT_S) is not None
        except (RedisError, OSError) as exc:
            self._lose_events(exc)
            return False

    def _drain(self) -> None:
        """Swallow queued events: one reconcile answers all of them."""
        if self._resubscribe_at is not None:
            return
        try:
            while self._pubsub.get_message(timeout=0) is not None:
                pass
        except (RedisError, OSError) as exc:
            self._lose_events(exc)

    def _lose_events(self, exc: Exception) -> None:
        log.warning("collection=%s registry events lost (%s): reconciling every %gs until "
                    "subscribed again", self.registry.collection, exc, self.reconcile_s)
        self._resubscribe_at = time.monotonic()

    def _resubscribe(self) -> bool:
        """Replace the broken subscription; True if it worked, else try again later."""
        try:
            self._pubsub.close()
        except (RedisError, OSError):
            pass  # its connection is the broken part
        try:
            self._pubsub = self.registry.client.pubsub(ignore_subscribe_messages=True)
            self.subscribe()
        except (RedisError, OSError) as exc:
            log.debug("collection=%s subscribing again failed: %s", self.registry.collection,
                      exc)
            self._resubscribe_at = time.monotonic() + RESUBSCRIBE_S
            return False
        self._resubscribe_at = None
        log.info("collection=%s registry events received again", self.registry.collection)
        return True


def read_unloaded(registry: Registry) -> dict[str, dict]:
    """What searchers reported as registered but not served: segment id -> report."""
    out = {}
    for key, value in registry.client.hgetall(registry.collection.key(UNLOADED_SUFFIX)).items():
        try:
            out[key.decode()] = json.loads(value)
        except ValueError:
            continue
    return out


def _gapless(spans: list[tuple[int, int]], first: int, at_least: int) -> bool:
    """Whether `spans` cover [first, end) without a hole, with end >= at_least."""
    end = first
    for start, stop in sorted(spans):
        if start != end:
            return False
        end = stop
    return end >= at_least
