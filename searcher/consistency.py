"""Consistency levels (invariant 6): what a level records at arrival, when it is met."""

# Nothing here blocks: the server checks `reached` while a request waits and answers
# consistency_timeout itself when its deadline passes. A strong request's log ends come from
# LogEnds, which asks the brokers on a thread of its own: a broker that is slow or down makes
# strong requests wait (and time out), never the request loop that serves the others.
#
# Waiting is pushed, not polled: whatever can make a waiting request's level met (the tail
# serving further offsets, a segment swap, a partition caught up, log ends fetched) notifies
# one Progress, which wakes the request loop at once and tells it when a check can pay off.

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from searcher.errors import QueryError
from searcher.query import Consistency
from streamvec.settings import Settings

log = logging.getLogger(__name__)

WATERMARK_TIMEOUT_S = 5.0
# Pause before asking again after the brokers could not say.
RETRY_PAUSE_S = 0.5


class Progress:
    """A count of the changes that may meet a waiting request's level, with a wake-up."""

    def __init__(self) -> None:
        self._changed = threading.Condition(threading.Lock())
        self._version = 0

    @property
    def version(self) -> int:
        """The changes so far; a check made after reading it sees at least those."""
        return self._version

    def notify(self) -> None:
        """Something moved (publish it first): wake whoever waits."""
        with self._changed:
            self._version += 1
            self._changed.notify_all()

    def wait(self, seen: int, timeout: float) -> bool:
        """Wait until the version differs from `seen` or `timeout` passes; True if it moved."""
        with self._changed:
            return self._changed.wait_for(lambda: self._version != seen, timeout)


class Watermarks:
    """Fetches the current log end of every partition of a topic, uncached."""

    def __init__(self, settings: Settings, topic: str, partitions: list[int]) -> None:
        self.topic = topic
        self.partitions = list(partitions)
        self._admin = AdminClient(settings.kafka_config())

    def fetch(self, timeout: float = WATERMARK_TIMEOUT_S) -> dict[int, int]:
        """{partition: high watermark}, asked of the brokers now; QueryError if they cannot say."""
        wanted = {TopicPartition(self.topic, p): OffsetSpec.latest() for p in self.partitions}
        try:
            futures = self._admin.list_offsets(wanted, request_timeout=timeout)
            return {tp.partition: f.result(timeout).offset for tp, f in futures.items()}
        except (KafkaException, TimeoutError) as exc:
            raise QueryError("internal",
                             f"cannot read the log ends of {self.topic}: {exc}") from None


@dataclass(slots=True)
class StrongArrival:
    """A strong request's arrival state: the fetch it waits for, then the log ends it got."""

    ticket: int
    highs: dict[int, int] | None = None


class LogEnds:
    """The log ends of a topic, fetched on a thread: one fetch answers every request before it."""

    def __init__(self, watermarks: Watermarks,
                 on_answer: Callable[[], None] | None = None) -> None:
        self.watermarks = watermarks
        # Told after each fetch that answered requests, so their waiters look again at once.
        self._on_answer = on_answer
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._asked = self._answered = 0
        self._highs: dict[int, int] = {}
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"sv-ends-{watermarks.topic}",
                                        daemon=True)

    def start(self) -> None:
        """Start the fetching thread."""
        self._thread.start()

    def stop(self, timeout: float = WATERMARK_TIMEOUT_S + 1) -> None:
        """Stop the fetching thread."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def ask(self) -> StrongArrival:
        """A strong request arrived: a fetch that starts from now on will answer it."""
        with self._lock:
            self._asked += 1
            ticket = self._asked
        self._wake.set()
        return StrongArrival(ticket)

    def answer(self, arrival: StrongArrival) -> dict[int, int] | None:
        """The log ends for `arrival` once a fetch begun after it returned; None until then."""
        if arrival.highs is None:
            with self._lock:
                if self._answered >= arrival.ticket:
                    arrival.highs = dict(self._highs)
        return arrival.highs

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            with self._lock:
                ticket = self._asked
            if ticket == self._answered or self._stop.is_set():
                continue
            try:
                highs = self.watermarks.fetch()
            except QueryError as exc:  # waiting requests time out; the next turn asks again
                self.last_error = exc.message
                log.warning("topic=%s %s", self.watermarks.topic, exc.message)
                self._wake.set()
                self._stop.wait(RETRY_PAUSE_S)
                continue
            with self._lock:
                self._highs, self._answered, self.last_error = highs, ticket, None
            if self._on_answer is not None:
                self._on_answer()


def reached(consistency: Consistency, arrival: object, positions: dict[int, int],
            caught_up_at: dict[int, float], now: float) -> bool:
    """True once an answer computed now meets the level; `arrival` is what arrival_state gave."""
    level = consistency.level
    if level == "eventual":
        return True
    if level == "session":
        wanted = consistency.offsets or {}
        return all(positions.get(int(p), -1) > int(o) for p, o in wanted.items())
    if level == "strong":
        if isinstance(arrival, StrongArrival):
            arrival = arrival.highs
        if not isinstance(arrival, dict):
            return False
        return all(positions.get(p, -1) >= high for p, high in arrival.items())
    if level == "bounded":
        bound_s = max(consistency.bound_ms or 0, 0) / 1000.0
        return all(now - caught_up_at.get(p, -math.inf) <= bound_s for p in positions)
    return False
