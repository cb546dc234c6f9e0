"""Keeps the served segment set equal to the registry: pub/sub events plus a periodic reconcile."""

# Events make a new segment appear quickly; the reconcile every `reconcile_s` is what makes the
# set correct, since a pub/sub message missed during a reconnect is never sent again.

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

from indexer.registry import Registry, SegmentRecord
from indexer.segfolder import LoadedSegment
from indexer.store import SegmentStore
from searcher import segments

log = logging.getLogger(__name__)

EVENT_WAIT_S = 0.2


class WatcherSink(Protocol):
    """What the watcher changes: the engine's serving state."""

    def served(self) -> dict[str, str]:
        """Segment id -> registered path of every segment served or refused."""

    def replace(self, gone: set[str],
                loaded: list[tuple[SegmentRecord, LoadedSegment | None]]) -> None:
        """Stop serving `gone` and serve `loaded` (None: refused) in one step."""


class SegmentWatcher:
    """Loads newly registered segments and releases unregistered ones, on its own thread."""

    def __init__(self, registry: Registry, store: SegmentStore, sink: WatcherSink,
                 reconcile_s: float) -> None:
        self.registry = registry
        self.store = store
        self.sink = sink
        self.reconcile_s = reconcile_s
        self._pubsub = registry.client.pubsub(ignore_subscribe_messages=True)
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
        self._pubsub.close()

    def reconcile(self) -> None:
        """Make the served set equal to the registry's in one swap, loading new segments first.

        A segment is new when its id is, or when its path moved (a generation switch rebuilt
        it over the same offsets). Loading happens before the swap, so queries keep being
        answered from the old set meanwhile.
        """
        records = self.registry.segments()
        served = self.sink.served()
        current = {r.segment_id: r.path for r in records}
        gone = {sid for sid, path in served.items() if current.get(sid) != path}
        fresh = [r for r in records if served.get(r.segment_id) != r.path]
        if gone or fresh:
            self.sink.replace(gone, [(r, segments.load(self.store, r)) for r in fresh])

    def _run(self) -> None:
        due = time.monotonic() + self.reconcile_s
        while not self._stop.is_set():
            try:
                event = self._pubsub.get_message(timeout=EVENT_WAIT_S)
                if event is not None or time.monotonic() >= due:
                    self._drain()
                    self.reconcile()
                    due = time.monotonic() + self.reconcile_s
            except Exception:  # Redis away: keep serving what is loaded, try again later
                log.exception("collection=%s segment reconcile failed", self.registry.collection)
                self._stop.wait(min(self.reconcile_s, 1.0))

    def _drain(self) -> None:
        """Swallow queued events: one reconcile answers all of them."""
        while self._pubsub.get_message(timeout=0) is not None:
            pass
