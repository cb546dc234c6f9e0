"""The searcher's request loop: read a collection's query stream as a group, batch, reply once."""

from __future__ import annotations

import logging
import math
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import redis

from ingest.names import CollectionName
from searcher import protocol, shards
from searcher.budgets import Budgets, split_batch
from searcher.errors import QueryError, ShardMapError
from searcher.execute import CANARY_SLACK
from searcher.metrics import SearcherMetrics
from searcher.query import Answer, QueryRequest
from streamvec import logs, redisconn
from streamvec.health import TurnHook
from streamvec.settings import Settings

log = logging.getLogger(__name__)

GROUP = "searchers"
# Pause after Redis stayed unreachable through the client's own retries, before trying again.
RETRY_PAUSE_S = 0.5
# The stream is polled (a script cannot block): this often for ACTIVE_S after the last request
# read, every block_ms after that. Requests waiting for their consistency level are pushed: an
# engine with a `progress` (searcher/consistency.py Progress) wakes the loop as soon as its tail,
# segments or log ends move, and waiting requests are checked again only then, when new ones
# arrive, or when one's deadline passes. With an engine without one they are checked every
# turn, and the loop turns every block_ms while any wait.
ACTIVE_POLL_S = 0.002
ACTIVE_S = 1.0
# The shard map's version is read this often: a searcher sees a switch within it.
MAP_POLL_S = 0.5
# Adverts of searchers gone longer than the adverts key's TTL are pruned this often.
PRUNE_S = 30.0

# Shared by the read and claim scripts: an entry as {id, fields, bytes, deliveries}; one over
# the byte budget keeps only its id field (cut short), so its payload never leaves Redis.
_SIZED = """
local function sized(entry, limit, deliveries)
  local fields, size = entry[2], 0
  for i = 1, #fields do size = size + #fields[i] end
  if size <= limit then return {entry[1], fields, size, deliveries} end
  local kept = {}
  for i = 1, #fields - 1, 2 do
    if fields[i] == 'id' then kept = {'id', string.sub(fields[i + 1], 1, 128)} end
  end
  return {entry[1], kept, size, deliveries}
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""
# KEYS: request stream. ARGV: group, consumer, most entries, turn byte budget, entry byte budget.
# Entries are read one at a time until the turn's bytes are spent (an entry may overshoot by at
# most its own budget). Returns {Redis time in ms, entries}.
_READ = _SIZED + """
local out, left, limit = {}, tonumber(ARGV[4]), tonumber(ARGV[5])
for _ = 1, tonumber(ARGV[3]) do
  if left <= 0 then break end
  local got = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', 1,
                         'STREAMS', KEYS[1], '>')
  if not got then break end
  local entry = sized(got[1][2][1], limit, 1)
  if entry[3] <= limit then left = left - entry[3] end
  out[#out + 1] = entry
end
return {now_ms(), out}
"""
# KEYS: request stream. ARGV: group, consumer, min idle ms, start id, most entries, entry byte
# budget. Claims entries idle that long with their delivery count (XAUTOCLAIM does not say it).
# Returns {Redis time in ms, next start id ('-' after a full pass), entries}.
_CLAIM = _SIZED + """
local most = tonumber(ARGV[5])
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', tonumber(ARGV[3]), ARGV[4],
                           '+', most)
local out = {}
for _, p in ipairs(pending) do
  local claimed = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], p[1])
  local entry = claimed[1]
  if entry and entry[2] then out[#out + 1] = sized(entry, tonumber(ARGV[6]), p[4] + 1) end
end
local cursor = '-'
if #pending >= most then cursor = '(' .. pending[#pending][1] end
return {now_ms(), cursor, out}
"""

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
# KEYS: request stream. Deletes it only if it holds no entry (read or not): the last step of a
# retired shard's drain. A client's `XADD ... NOMKSTREAM` then finds no stream and reads the
# shard map again; an entry added before this keeps the stream alive until it is answered.
_RETIRE = """
if redis.call('XLEN', KEYS[1]) > 0 then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""
# KEYS: request stream. ARGV: group, entry id. For a request whose id is unusable: no reply key
# can be named, so it is only removed.
_DROP = """
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
"""


@dataclass(frozen=True, slots=True)
class Delivered:
    """A stream entry as read or claimed: its fields (only `id` when over the byte budget)."""

    entry_id: bytes
    fields: dict[bytes, bytes]
    size: int  # bytes of every field name and value
    deliveries: int  # times the group has handed it to a replica, this one included


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
    result: Answer | QueryError  # a search's, a get's or a count's
    read_at: float
    started_ms: float  # the client's send time when known, else when the searcher read it
    with_metadata: bool = False
    timings_ms: dict[str, float] = field(default_factory=dict)
    counted: bool = True  # False for an expired request: dropped, not answered


class Server:
    """Answers one collection's queries from `sv:{NAME}:q`; replicas share it through a group.

    A shard's server (`shard`, searcher/shards.py) reads `sv:{NAME~LABEL}:q` instead, and
    follows the shard map: STANDBY until a map lists its shard, ACTIVE while one does, then
    DRAINING once a newer map leaves it out. Draining, it answers what its stream still
    holds, deletes the empty stream and returns from `run` (the process exits 0).
    """

    def __init__(self, settings: Settings, collection: str, engine: Any, *, consumer: str,
                 metrics: SearcherMetrics, batch_max: int = 64, block_ms: int = 20,
                 claim_idle_ms: int = 2000, turn_hook: TurnHook | None = None,
                 budgets: Budgets | None = None, shard: shards.Shard | None = None) -> None:
        self.collection = CollectionName.parse(collection)
        self.shard = None if shard is None or shard.whole else shard
        self.label = None if self.shard is None else self.shard.label
        self._turn = turn_hook("serve") if turn_hook else nullcontext()
        self.engine, self.consumer, self.metrics = engine, consumer, metrics
        self.batch_max, self.block_ms, self.claim_idle_ms = batch_max, block_ms, claim_idle_ms
        self.redis = settings.redis_client()
        self.stream = protocol.queue_key(self.collection, self.label)
        self.budgets = budgets or Budgets.from_settings(settings)
        # Pipelined on a cluster too (`_send`): redisconn's scripts need no loading there.
        self._reply_script = redisconn.register_script(self.redis, _REPLY)
        self._drop_script = redisconn.register_script(self.redis, _DROP)
        self._read_script = redisconn.register_script(self.redis, _READ)
        self._claim_script = redisconn.register_script(self.redis, _CLAIM)
        self._retire_script = redisconn.register_script(self.redis, _RETIRE)
        # The shard map as last read: its version, the version seen at start, and whether it
        # listed this server's shard since then.
        self.state = shards.STANDBY
        self.map_version = -1
        self._start_version: int | None = None
        self._was_named = False
        self._map_problem: str | None = None
        self._version_raw: bytes | None = b"unread"  # the version key's value at the last read
        self._next_map = self._next_advert = self._next_prune = 0.0
        self._redis_ms = 0  # Redis's clock at the last read: entry ids carry the same clock
        self._last_entry = -math.inf
        self._waiting: dict[bytes, _Waiting] = {}
        self._outbox: list[_Reply] = []
        self._stop = threading.Event()
        self._group_ready = False
        self._claim_cursor: bytes | str = "-"
        self._next_claim = self._next_heartbeat = 0.0
        self._progress = getattr(engine, "progress", None)
        self._seen = -1  # the progress version the last check of waiting requests saw
        self._admitted = False  # requests began waiting since that check
        self._next_deadline = math.inf  # the earliest deadline among waiting requests

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
        self._unadvertise()

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
        self._watch_map(now)
        self._advertise(now)
        try:
            self._heartbeat(now)
            # Claimed entries are taken in before reading, so both count against the bound.
            self.admit(self._claim(now))
            self.admit(self._read())
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc) and not str(exc).startswith("UNBLOCKED"):
                raise
            if self.state == shards.DRAINING:
                # Another replica of this retired shard found the stream empty and deleted it.
                log.info("stream=%s deleted after its drain; stopping", self.stream)
                self._stop.set()
                return
            log.warning("stream=%s was deleted under us; recreating it", self.stream)
            self._group_ready, self._waiting = False, {}
            return
        ready = self._sweep()
        if ready:
            self._execute(ready)
        self._send()
        if self.state == shards.DRAINING and not self._waiting:
            self._retire()

    def admit(self, entries: list[Delivered]) -> None:
        """Take in entries just read or claimed: bad ones get an error reply, good ones wait."""
        now, now_ms = time.monotonic(), time.time() * 1000
        for e in entries:
            if e.entry_id in self._waiting:
                continue
            rid = protocol.request_id(e.fields)
            # Whatever is logged while taking the request in names it (JSON logs: request_id).
            with logs.request_context(rid):
                try:
                    request = self._decode(e)
                    if self._expired(e.entry_id, request):
                        # Its client stopped waiting: an answer would go unread, so none is made.
                        self.metrics.labels(self.metrics.expired).inc()
                        self._outbox.append(_Reply(e.entry_id, None, QueryError(
                            "consistency_timeout", "expired"), now, now_ms, counted=False))
                        continue
                    refused = self.budgets.check(request)
                    if refused is not None:
                        raise refused
                    state = self.engine.arrival_state(request.consistency)
                except QueryError as exc:
                    self._outbox.append(_Reply(e.entry_id, rid, exc, now, now_ms))
                    continue
                except Exception as exc:  # an engine failure on one request must not stop the loop
                    log.exception("stream=%s entry=%s arrival failed", self.stream, e.entry_id)
                    self._outbox.append(_Reply(e.entry_id, rid, _internal(exc), now, now_ms))
                    continue
            if request.sent_at_ms is not None:
                self.metrics.labels(self.metrics.queue_wait).observe(
                    max(0.0, now_ms - request.sent_at_ms) / 1000)
            self._waiting[e.entry_id] = _Waiting(e.entry_id, request, state, now,
                                                 now + request.timeout_ms / 1000)
            self._admitted = True

    def _decode(self, e: Delivered) -> QueryRequest:
        """The entry's request; a QueryError for one that is redelivered, oversize or bad."""
        if e.deliveries > self.budgets.deliveries:
            # Every replica that took it stopped before answering: it may be what stops them.
            self.metrics.labels(self.metrics.redelivered).inc()
            raise QueryError("internal", f"the request was delivered {e.deliveries} times "
                             "without being answered (the searchers that took it stopped); it "
                             f"is not run again (limit {self.budgets.deliveries} deliveries)")
        if e.size > self.budgets.request_bytes:
            raise self.budgets.oversize(e.size)
        return protocol.decode_request(self.collection, e.fields, dim=self.engine.spec.dim,
                                       shard=self.label)

    def _expired(self, entry_id: bytes, request: QueryRequest) -> bool:
        """True when the request's client has given up: it waits its timeout plus a margin."""
        added_ms = _entry_ms(entry_id)
        return added_ms is not None and self._redis_ms > (
            added_ms + request.timeout_ms + protocol.GIVE_UP_MARGIN_MS)

    def _room(self) -> int:
        """Entries this turn may take in: the batch size, less near the bounds on held ones."""
        held = sum(w.request.vectors.nbytes for w in self._waiting.values())
        if held >= self.budgets.waiting_bytes:
            return 0
        return max(0, min(self.batch_max, self.budgets.waiting - len(self._waiting)))

    def _read(self) -> list[Delivered]:
        """New entries, up to the turn's count and byte budgets; paces the loop when none."""
        room = self._room()
        entries: list[Delivered] = []
        if room:
            self._redis_ms, got = self._read_script(
                keys=[self.stream], args=[GROUP, self.consumer, room, self.budgets.read_bytes,
                                          self.budgets.request_bytes])
            entries = _delivered(got)
        now = time.monotonic()
        if entries:
            self._last_entry = now
        elif self.block_ms > 0:
            active = now - self._last_entry < ACTIVE_S
            if self._waiting and self._progress is not None:
                # Returns early once something moved; waiting requests cost nothing till then.
                self._progress.wait(self._seen, ACTIVE_POLL_S if active else self.block_ms / 1000)
            else:  # without a progress every turn checks the waiting requests: turn slower
                self._stop.wait(ACTIVE_POLL_S if active and not self._waiting
                                else self.block_ms / 1000)
        return entries

    def _claim(self, now: float) -> list[Delivered]:
        """Take over entries another replica read and then left idle (it crashed or hangs)."""
        room = self._room()
        if now < self._next_claim or not room:
            return []
        self._redis_ms, cursor, got = self._claim_script(
            keys=[self.stream], args=[GROUP, self.consumer, self.claim_idle_ms,
                                      self._claim_cursor, room, self.budgets.request_bytes])
        self._claim_cursor = cursor
        if cursor in (b"-", "-"):  # a full pass over the pending list: rest a while
            self._next_claim = now + self.claim_idle_ms / 2000
        fresh = [e for e in _delivered(got) if e.entry_id not in self._waiting]
        if fresh:
            log.info("stream=%s claimed %d idle request(s)", self.stream, len(fresh))
        return fresh

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
        if self._progress is not None:
            # Read before the checks: whatever moves after them changes it and wakes the loop.
            version = self._progress.version
            if version == self._seen and not self._admitted and now < self._next_deadline:
                return ready  # nothing a waiting request needs has moved since the last check
            self._seen = version
        self._admitted = False
        for w in list(self._waiting.values()):
            level = w.request.consistency.level
            try:
                reached = self.engine.reached(w.request.consistency, w.state)
            except Exception as exc:  # as in admit: one request fails, the loop goes on
                with logs.request_context(w.request.request_id):
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
        self._next_deadline = min((w.deadline for w in self._waiting.values()), default=math.inf)
        return ready

    def _positions(self) -> dict[int, int]:
        try:
            return self.engine.positions()
        except Exception:  # only a timeout message needs them; the timeout itself stands
            return {}

    def _execute(self, ready: list[_Waiting]) -> None:
        """Run the ready requests in batches within the batch budget, replying after each."""
        # Replies go out batch by batch, so answers are held for one batch at a time.
        requests = [w.request for w in ready]
        for group in split_batch(requests, self.budgets.batch_results, CANARY_SLACK):
            self._execute_batch([ready[i] for i in group])
            self._send()

    def _execute_batch(self, ready: list[_Waiting]) -> None:
        """Run requests in one engine batch; a failing batch gets `internal` errors."""
        start = time.perf_counter()
        try:
            results = self.engine.search_batch([w.request for w in ready])
            if len(results) != len(ready):
                raise RuntimeError(f"engine gave {len(results)} answers to {len(ready)} requests")
        except Exception as exc:  # the batch fails, the server keeps serving
            with logs.request_context(*(w.request.request_id for w in ready)):
                log.exception("stream=%s batch of %d failed", self.stream, len(ready))
            results = [_internal(exc)] * len(ready)
        took = time.perf_counter() - start
        self.metrics.labels(self.metrics.search_seconds).observe(took)
        self.metrics.labels(self.metrics.batch_size).observe(len(ready))
        for w, result in zip(ready, results, strict=True):
            reply = self._reply_to(w, result)
            reply.timings_ms.update(wait=w.waited * 1000, search=took * 1000)
            self._outbox.append(reply)

    def _reply_to(self, w: _Waiting, result: Answer | QueryError) -> _Reply:
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
            keys = [protocol.done_key(self.collection, r.request_id, self.label),
                    protocol.reply_key(self.collection, r.request_id, self.label), self.stream]
            args = [self._encode(r), protocol.REPLY_TTL_S, protocol.DONE_TTL_S, GROUP, r.entry_id]
            self._reply_script(keys=keys, args=args, client=pipe)
        outcomes = pipe.execute(raise_on_error=False)
        now_ms, m = time.time() * 1000, self.metrics
        for r, outcome in zip(replies, outcomes, strict=True):
            if isinstance(outcome, Exception):
                with logs.request_context(r.request_id):
                    log.error("stream=%s entry=%s reply failed: %s", self.stream, r.entry_id,
                              outcome)
            elif outcome == 1 and r.counted:  # 0: another replica answered first and counted it
                m.labels(m.queries).inc()
                if isinstance(r.result, QueryError):
                    m.labels(m.errors, r.result.code).inc()
                m.labels(m.total_seconds).observe(max(0.0, now_ms - r.started_ms) / 1000)

    def _watch_map(self, now: float) -> None:
        """Read the shard map's version; on a change, the map, and where this server stands."""
        if now < self._next_map:
            return
        self._next_map = now + MAP_POLL_S
        raw = self.redis.get(protocol.shard_version_key(self.collection))
        if raw == self._version_raw and self._map_problem is None:
            return  # the usual case: one small GET, no map to parse
        try:
            current = shards.read_map(self.redis, self.collection)
        except ShardMapError as exc:  # keep serving as before; the operator must fix the map
            if str(exc) != self._map_problem:
                log.error("collection=%s shard map unreadable (%s); serving as before",
                          self.collection, exc)
                self._map_problem = str(exc)
            return
        self._map_problem = None
        version = 0 if current is None else current.version
        self._version_raw = str(version).encode() if version else None
        if version == self.map_version:
            return
        if current is None:
            named = self.shard is None
        else:
            named = (len(current.shards) == 1 if self.shard is None
                     else current.names(self.shard))
        if self._start_version is None:
            self._start_version = version
        self._was_named = self._was_named or named
        retired = not named and (self._was_named or version > self._start_version)
        state = shards.ACTIVE if named else shards.DRAINING if retired else shards.STANDBY
        if state != self.state:
            log.info("stream=%s shard %s is %s as of shard map version %d", self.stream,
                     "all" if self.label is None else self.label, state, version)
        self.state, self.map_version = state, version

    def _retire(self) -> None:
        """Delete the drained stream of a retired shard and stop; serve on while it holds any."""
        if self._retire_script(keys=[self.stream]) == 1:
            log.info("stream=%s drained and deleted (shard map version %d does not list it); "
                     "stopping", self.stream, self.map_version)
            self._stop.set()

    def _advertise(self, now: float) -> None:
        """Refresh this server's advert in `sv:{NAME}:searchers` (if its engine describes it)."""
        describe = getattr(self.engine, "describe", None)
        if describe is None or now < self._next_advert:
            return
        self._next_advert = now + shards.ADVERT_S
        try:
            info = describe()
        except Exception:  # the advert is for operators: it must not stop the serving loop
            log.exception("stream=%s describing the engine failed", self.stream)
            return
        advert = shards.Advert(self.consumer, self.label, tuple(info["partitions"]), self.state,
                               bool(info["ready"]), info["reason"], self.map_version,
                               dict(info["segments"]), dict(info["positions"]), time.time())
        key = protocol.searchers_key(self.collection)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(key, advert.key, advert.to_json())
        pipe.expire(key, shards.ADVERT_TTL_S)
        pipe.execute()
        if now >= self._next_prune:
            self._next_prune = now + PRUNE_S
            self._prune(key)

    def _prune(self, key: str) -> None:
        """Remove the adverts of searchers gone longer than the key's TTL (killed, not stopped)."""
        old = time.time() - shards.ADVERT_TTL_S
        gone = []
        for name, raw in self.redis.hgetall(key).items():
            try:
                if shards.Advert.from_json(raw).at < old:
                    gone.append(name)
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # not ours to judge
        if gone:
            self.redis.hdel(key, *gone)

    def _unadvertise(self) -> None:
        """Take this server's advert away as it stops; a lost Redis leaves it to age out."""
        if getattr(self.engine, "describe", None) is None:
            return
        try:
            self.redis.hdel(protocol.searchers_key(self.collection),
                            shards.advert_field(self.label, self.consumer))
        except redis.RedisError as exc:
            log.warning("stream=%s advert not removed (%s); it ages out", self.stream, exc)

    def _encode(self, r: _Reply) -> bytes:
        """The reply JSON; an answer JSON cannot carry becomes an `internal` error."""
        timings = {**r.timings_ms, "total": (time.monotonic() - r.read_at) * 1000}
        try:
            return protocol.encode_reply(r.request_id or "", r.result,
                                         with_metadata=r.with_metadata, timings_ms=timings)
        except (ValueError, TypeError) as exc:
            r.result = QueryError("internal", f"the answer cannot be encoded: {exc}")
            return protocol.encode_reply(r.request_id or "", r.result)


def _delivered(got: list) -> list[Delivered]:
    """Entries as the read and claim scripts return them."""
    out = []
    for entry_id, flat, size, deliveries in got or []:
        it = iter(flat)
        out.append(Delivered(entry_id, dict(zip(it, it, strict=False)), int(size),
                             int(deliveries)))
    return out


def _entry_ms(entry_id: bytes | str) -> int | None:
    """Redis's clock in ms when the entry was added, from its id."""
    head = (entry_id.decode() if isinstance(entry_id, bytes) else entry_id).partition("-")[0]
    return int(head) if head.isdigit() else None


def _internal(exc: BaseException) -> QueryError:
    return QueryError("internal", f"{type(exc).__name__}: {exc}")


def timeout_message(request: QueryRequest, state: Any, positions: dict[int, int]) -> str:
    """Say which level a timed-out request asked for and what it was still waiting for."""
    c = request.consistency
    head = f"{c.level} consistency not reached within {request.timeout_ms} ms: waiting for "
    state = getattr(state, "highs", state)  # a strong request's log ends, once fetched
    if c.level == "strong" and state is None:
        return head + "the log ends of the topic (the brokers have not answered)"
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
