"""The searcher's request loop: read a collection's query stream as a group, batch, reply once."""

from __future__ import annotations

import logging
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import redis

from ingest.names import CollectionName
from searcher import protocol
from searcher.errors import QueryError
from searcher.metrics import SearcherMetrics
from searcher.query import QueryAnswer, QueryRequest
from streamvec.health import TurnHook
from streamvec.settings import Settings

log = logging.getLogger(__name__)

GROUP = "searchers"
# Pause after Redis stayed unreachable through the client's own retries, before trying again.
RETRY_PAUSE_S = 0.5

# KEYS: done marker, reply list, request stream. ARGV: reply JSON, reply TTL, marker TTL, group,
# entry id. Replicas that both answer a claimed request race here: only the one that sets the
# marker pushes a reply. Acking and deleting in the same script means that once a reply exists
# the entry is gone, so nobody can claim it again. KEYS share one hash tag (cluster-safe).
_REPLY = """
local fresh = redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[3])
if fresh then
  redis.call('RPUSH', KEYS[2], ARGV[1])
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
redis.call('XACK', KEYS[3], ARGV[4], ARGV[5])
redis.call('XDEL', KEYS[3], ARGV[5])
return fresh and 1 or 0
"""
# KEYS: request stream. ARGV: group, entry id. For a request whose id is unusable: no reply key
# can be named, so it is only removed.
_DROP = """
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
"""


@dataclass(slots=True)
class _Waiting:  # a decoded request waiting for its consistency level
    entry_id: bytes
    request: QueryRequest
    state: Any
    read_at: float
    deadline: float
    waited: float = 0.0


@dataclass(slots=True)
class _Reply:  # an outcome to write
    entry_id: bytes
    request_id: str | None  # None: the id is unusable, so no reply key can be named
    result: QueryAnswer | QueryError
    read_at: float
    started_ms: float  # the client's send time when known, else when the searcher read it
    with_metadata: bool = False
    timings_ms: dict[str, float] = field(default_factory=dict)


class Server:
    """Answers one collection's queries from `sv:{NAME}:q`; replicas share it through a group."""

    def __init__(self, settings: Settings, collection: str, engine: Any, *, consumer: str,
                 metrics: SearcherMetrics, batch_max: int = 64, block_ms: int = 20,
                 claim_idle_ms: int = 2000, turn_hook: TurnHook | None = None) -> None:
        self.collection = CollectionName.parse(collection)
        self._turn = turn_hook("serve") if turn_hook else nullcontext()
        self.engine, self.consumer, self.metrics = engine, consumer, metrics
        self.batch_max, self.block_ms, self.claim_idle_ms = batch_max, block_ms, claim_idle_ms
        self.redis = settings.redis_client()
        self.stream = protocol.queue_key(self.collection)
        self._reply_script = self.redis.register_script(_REPLY)
        self._drop_script = self.redis.register_script(_DROP)
        self._waiting: dict[bytes, _Waiting] = {}
        self._outbox: list[_Reply] = []
        self._stop = threading.Event()
        self._group_ready = False
        self._claim_cursor: bytes | str = "0-0"
        self._next_claim = self._next_heartbeat = 0.0

    def stop(self) -> None:
        """Ask `run` to return after the current step; a stopped server stays stopped."""
        self._stop.set()

    def run(self, max_seconds: float | None = None) -> None:
        """Serve until `stop()` or `max_seconds`; a Redis outage is logged and waited out."""
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        while not self._stop.is_set() and (deadline is None or time.monotonic() < deadline):
            try:
                with self._turn:
                    self.step()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("stream=%s redis unavailable (%s); retrying", self.stream, exc)
                self._stop.wait(RETRY_PAUSE_S)

    def ensure_group(self) -> None:
        """Create the stream and the `searchers` group if missing, reading from the first entry."""
        try:
            self.redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def step(self) -> None:
        """One turn: claim stalled entries, read new ones, run what is ready, write replies."""
        if not self._group_ready:
            self.ensure_group()
        now = time.monotonic()
        try:
            self._heartbeat(now)
            entries = self._claim(now) + self._read()
        except redis.ResponseError as exc:
            if not str(exc).startswith(("NOGROUP", "UNBLOCKED")):
                raise
            log.warning("stream=%s was deleted under us; recreating it", self.stream)
            self._group_ready, self._waiting = False, {}
            return
        self.admit(entries)
        ready = self._sweep()
        if ready:
            self._execute(ready)
        self._send()

    def admit(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        """Take in entries just read or claimed: bad ones get an error reply, good ones wait."""
        now, now_ms = time.monotonic(), time.time() * 1000
        for entry_id, fields in entries:
            if entry_id in self._waiting:
                continue
            rid = protocol.request_id(fields)
            try:
                request = protocol.decode_request(self.collection, fields, dim=self.engine.spec.dim)
                state = self.engine.arrival_state(request.consistency)
            except QueryError as exc:
                self._outbox.append(_Reply(entry_id, rid, exc, now, now_ms))
                continue
            except Exception as exc:  # an engine failure on one request must not stop the loop
                log.exception("stream=%s entry=%s arrival failed", self.stream, entry_id)
                self._outbox.append(_Reply(entry_id, rid, _internal(exc), now, now_ms))
                continue
            if request.sent_at_ms is not None:
                self.metrics.labels(self.metrics.queue_wait).observe(
                    max(0.0, now_ms - request.sent_at_ms) / 1000)
            self._waiting[entry_id] = _Waiting(entry_id, request, state, now,
                                               now + request.timeout_ms / 1000)

    def _read(self) -> list[tuple[bytes, dict[bytes, bytes]]]:
        # Redis times out blocked reads on its own clock (every 100 ms at the default hz), so
        # while requests wait for consistency we poll and pace the loop ourselves.
        polling = bool(self._waiting) or self.block_ms <= 0
        got = self.redis.xreadgroup(GROUP, self.consumer, {self.stream: ">"},
                                    count=self.batch_max, block=None if polling else self.block_ms)
        entries = [entry for _, batch in got or [] for entry in batch]
        if polling and not entries:
            self._stop.wait(self.block_ms / 1000)
        return entries

    def _claim(self, now: float) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """Take over entries another replica read and then left idle (it crashed or hangs)."""
        if now < self._next_claim:
            return []
        cursor, entries, *_ = self.redis.xautoclaim(
            self.stream, GROUP, self.consumer, self.claim_idle_ms, start_id=self._claim_cursor,
            count=self.batch_max)
        self._claim_cursor = cursor
        if cursor in (b"0-0", "0-0"):  # a full pass over the pending list: rest a while
            self._next_claim = now + self.claim_idle_ms / 2000
        fresh = [(i, f) for i, f in entries if i is not None and i not in self._waiting]
        if fresh:
            log.info("stream=%s claimed %d idle request(s)", self.stream, len(fresh))
        return [(i, f or {}) for i, f in fresh]

    def _heartbeat(self, now: float) -> None:
        """Reset the idle time of held requests so no replica claims them while they wait."""
        if now < self._next_heartbeat or not self._waiting:
            return
        self._next_heartbeat = now + self.claim_idle_ms / 4000
        held = list(self._waiting)
        kept = set(self.redis.xclaim(self.stream, GROUP, self.consumer, 0, held, justid=True))
        for entry_id in held:
            if entry_id not in kept:  # acked meanwhile: another replica answered it
                del self._waiting[entry_id]

    def _sweep(self) -> list[_Waiting]:
        """Split off the requests whose consistency is reached; time out the overdue ones."""
        now, ready = time.monotonic(), []
        for w in list(self._waiting.values()):
            level = w.request.consistency.level
            try:
                reached = self.engine.reached(w.request.consistency, w.state)
            except Exception as exc:  # as in admit: one request fails, the loop goes on
                log.exception("stream=%s consistency check failed", self.stream)
                reached, error = False, _internal(exc)
            else:
                error = None if reached or now < w.deadline else QueryError(
                    "consistency_timeout", timeout_message(w.request, w.state, self._positions()))
            if reached or error is not None:
                del self._waiting[w.entry_id]
                w.waited = now - w.read_at
                self.metrics.labels(self.metrics.consistency_wait, level).observe(w.waited)
            if reached:
                ready.append(w)
            elif error is not None:
                self._outbox.append(self._reply_to(w, error))
        return ready

    def _positions(self) -> dict[int, int]:
        try:
            return self.engine.positions()
        except Exception:  # only a timeout message needs them; the timeout itself stands
            return {}

    def _execute(self, ready: list[_Waiting]) -> None:
        """Run every ready request in one engine batch; a failing batch gets `internal` errors."""
        start = time.perf_counter()
        try:
            results = self.engine.search_batch([w.request for w in ready])
            if len(results) != len(ready):
                raise RuntimeError(f"engine gave {len(results)} answers to {len(ready)} requests")
        except Exception as exc:  # the batch fails, the server keeps serving
            log.exception("stream=%s batch of %d failed", self.stream, len(ready))
            results = [_internal(exc)] * len(ready)
        took = time.perf_counter() - start
        self.metrics.labels(self.metrics.search_seconds).observe(took)
        self.metrics.labels(self.metrics.batch_size).observe(len(ready))
        for w, result in zip(ready, results, strict=True):
            reply = self._reply_to(w, result)
            reply.timings_ms.update(wait=w.waited * 1000, search=took * 1000)
            self._outbox.append(reply)

    def _reply_to(self, w: _Waiting, result: QueryAnswer | QueryError) -> _Reply:
        r, read_ms = w.request, time.time() * 1000 - (time.monotonic() - w.read_at) * 1000
        timings = {} if r.sent_at_ms is None else {"queue": max(0.0, read_ms - r.sent_at_ms)}
        return _Reply(w.entry_id, r.request_id, result, w.read_at, r.sent_at_ms or read_ms,
                      r.with_metadata, timings)

    def _send(self) -> None:
        """Write every pending outcome in one pipeline; each script answers one request once."""
        replies, self._outbox = self._outbox, []
        if not replies:
            return
        pipe = self.redis.pipeline(transaction=False)
        for r in replies:
            if r.request_id is None:
                self._drop_script(keys=[self.stream], args=[GROUP, r.entry_id], client=pipe)
                continue
            keys = [protocol.done_key(self.collection, r.request_id),
                    protocol.reply_key(self.collection, r.request_id), self.stream]
            args = [self._encode(r), protocol.REPLY_TTL_S, protocol.DONE_TTL_S, GROUP, r.entry_id]
            self._reply_script(keys=keys, args=args, client=pipe)
        outcomes = pipe.execute(raise_on_error=False)
        now_ms, m = time.time() * 1000, self.metrics
        for r, outcome in zip(replies, outcomes, strict=True):
            if isinstance(outcome, Exception):
                log.error("stream=%s entry=%s reply failed: %s", self.stream, r.entry_id, outcome)
            elif outcome == 1:  # 0: another replica answered first and counted it
                m.labels(m.queries).inc()
                if isinstance(r.result, QueryError):
                    m.labels(m.errors, r.result.code).inc()
                m.labels(m.total_seconds).observe(max(0.0, now_ms - r.started_ms) / 1000)

    def _encode(self, r: _Reply) -> bytes:
        """The reply JSON; an answer JSON cannot carry becomes an `internal` error."""
        timings = {**r.timings_ms, "total": (time.monotonic() - r.read_at) * 1000}
        try:
            return protocol.encode_reply(r.request_id or "", r.result,
                                         with_metadata=r.with_metadata, timings_ms=timings)
        except (ValueError, TypeError) as exc:
            r.result = QueryError("internal", f"the answer cannot be encoded: {exc}")
            return protocol.encode_reply(r.request_id or "", r.result)


def _internal(exc: BaseException) -> QueryError:
    return QueryError("internal", f"{type(exc).__name__}: {exc}")


def timeout_message(request: QueryRequest, state: Any, positions: dict[int, int]) -> str:
    """Say which level a timed-out request asked for and what it was still waiting for."""
    c = request.consistency
    head = f"{c.level} consistency not reached within {request.timeout_ms} ms: waiting for "
    if c.level == "session" or (c.level == "strong" and isinstance(state, dict)):
        need = (c.offsets or {}) if c.level == "session" else state
        # Positions are next offsets to read: a session offset is read once the position passes
        # it, a high watermark once the position reaches it.
        short = {p: o for p, o in need.items()
                 if positions.get(p, 0) < o + (c.level == "session")} or need
        goal = "pass offset" if c.level == "session" else "reach the high watermark"
        return head + "; ".join(f"partition {p} to {goal} {o} (searcher at "
                                f"{positions.get(p, 'nothing')})" for p, o in sorted(short.items()))
    if c.level == "bounded":
        return head + f"the live tail to lag at most {c.bound_ms} ms (positions {positions})"
    return head + f"{state!r} (positions {positions})"
