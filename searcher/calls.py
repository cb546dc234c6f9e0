"""Client calls (search, get, count) as plain steps, shared by Client and AsyncClient.

A call is a generator: it yields what it needs of Redis (a `Command`, a `Pipeline` of
commands, a `Pause`) and is sent the reply back, or has the Redis error thrown in at that
point. It does no I/O itself, so the blocking client (searcher/client.py) and the asyncio
client (searcher/aclient.py) drive the same code and give the same answers: input checks,
alias routing, request building, the scatter to shards and the merge of their replies
(searcher/shards.py), reply parsing and retries. A driver only runs the steps.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple, NoReturn, TypeVar

import numpy as np
import redis

from ingest.catalog import spec_key
from ingest.errors import InvalidName
from ingest.names import CollectionName
from ingest.partition import partition_of
from ingest.spec import CollectionSpec
from searcher import protocol, routing, shadow, shards
from searcher.errors import (
    InvalidRequest,
    QueryError,
    SearchError,
    SearchTimeout,
    ShardMapError,
    ShardTimeout,
    UnknownCollection,
    search_error,
)
from searcher.query import (
    COUNT,
    GET,
    MAX_K,
    SEARCH,
    Answer,
    Consistency,
    CountAnswer,
    Filter,
    GetAnswer,
    QueryAnswer,
    QueryRequest,
    check_params,
)
from streamvec.settings import Settings

# Waited beyond the request's own timeout: a searcher answers a consistency timeout only once
# that timeout has run out, counted from when it read the request off a possibly busy stream.
REPLY_MARGIN_S = protocol.GIVE_UP_MARGIN_MS / 1000
# A Redis call may take this long beyond the longest wait it asks for (BLPOP's own timeout)
# before its socket gives up, so a frozen Redis ends a call within its timeout plus
# REPLY_MARGIN_S plus this, instead of whenever the server wakes up.
SOCKET_MARGIN_S = 0.5
# Socket timeouts are rounded up to this step so that a client keeps few connection pools.
SOCKET_STEP_S = 0.5
# Shadow comparisons are logged through a connection bounded like a short request.
SHADOW_LOG_TIMEOUT_S = 5.0
# A shadow request's reply is awaited only this long past its timeout: a late answer from the
# challenger is counted as a timeout rather than holding a shadow thread.
SHADOW_MARGIN_S = 0.5
# Times one call re-reads a shard map that changed under it before it gives up.
MAP_MOVES = 3
# Retries of a timed-out call: at most MAX_RETRIES, the n-th (from 0) after a pause of
# RETRY_BACKOFF_S * 2**n, at most RETRY_BACKOFF_MAX_S.
MAX_RETRIES = 10
RETRY_BACKOFF_S = 0.1
RETRY_BACKOFF_MAX_S = 2.0

# KEYS: spec, request stream, shard map version, the name's alias key. ARGV: the map version the
# client follows ('0': none), MAXLEN, then field/value pairs. Checking that the collection
# exists in the same round trip means a mistyped name never creates a stream nobody reads;
# checking the version, that a request never lands on the whole collection's stream once a
# shard map replaced it; checking the alias key, that a client which skipped reading the alias
# (it knew the name as a collection) never sends to a name that has become an alias since.
SUBMIT = """
if redis.call('EXISTS', KEYS[4]) == 1 then return {'alias'} end
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local version = redis.call('GET', KEYS[3]) or '0'
if version ~= ARGV[1] then return {'moved', version} end
return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 3))
"""

_CONSISTENCY_FORMS = ("'eventual', 'strong', {'bounded_ms': N} or "
                      "{'session': {partition: offset}} (what Producer.flush() returns)")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Command:
    """One Redis command: the client method `name` with its arguments, on a connection whose
    socket gives up `wait` seconds (plus a margin) after a command is sent."""

    wait: float
    name: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Pipeline:
    """Commands sent together (no transaction); the reply is the list of their replies."""

    wait: float
    commands: tuple[tuple[str, tuple[Any, ...], Mapping[str, Any]], ...]


@dataclass(frozen=True, slots=True)
class Pause:
    """Wait this long before the next step (a retry's backoff)."""

    seconds: float


Step = Command | Pipeline | Pause
Flow = Generator[Step, Any, T]


def socket_timeout(wait: float) -> float:
    """The socket timeout of a connection for calls that wait up to `wait` seconds."""
    return math.ceil((wait + SOCKET_MARGIN_S) / SOCKET_STEP_S) * SOCKET_STEP_S


# Answers as callers see them.

@dataclass(frozen=True, slots=True)
class Hit:
    """One hit of a search: the row's id, its score (l2 distance, or ip/cosine similarity) and
    its metadata (None unless asked for, or when the row has none)."""

    id: str
    score: float
    metadata: dict | None = None


@dataclass(frozen=True, eq=False)
class SearchResult:
    """The answer to one search: row i holds query i's hits, best first, padded to k columns."""

    ids: np.ndarray  # object (n, k): str, None where there were fewer than k hits
    scores: np.ndarray  # float32 (n, k): NaN where there were fewer than k hits
    metadata: list[list[dict | None]] | None  # per query, one entry per hit (not padded)
    offsets: dict[int, int]
    timings_ms: dict[str, float]
    collection: str = ""  # the collection that answered (an alias's target at the time)
    partial: bool = False  # some shard gave no answer (a search with partial=True)
    missing: tuple[str, ...] = ()  # the labels of those shards (`4-7`)

    def __len__(self) -> int:
        return len(self.ids)

    def hits(self, i: int) -> list[Hit]:
        """Query i's hits, best first, without padding."""
        return [Hit(h, s, m) for h, s, m in self.rows(i)]

    def rows(self, i: int) -> list[tuple[str, float, dict | None]]:
        """Query i's hits as (id, score, metadata) tuples, best first, without padding."""
        hits = [j for j, hit in enumerate(self.ids[i]) if hit is not None]
        meta = self.metadata[i] if self.metadata is not None else [None] * len(hits)
        return [(self.ids[i, j], float(self.scores[i, j]), meta[j]) for j in hits]


class Row(NamedTuple):
    """One live row of a get: its vector (float32, as stored) and its metadata."""

    vector: np.ndarray
    metadata: dict | None


@dataclass(frozen=True, eq=False)
class GetResult(Mapping[str, Row]):
    """The answer to a get: id -> Row for the live ids asked, in the order asked.

    An id that was never written, was deleted, or is not served yet is absent.
    """

    found: dict[str, Row]
    offsets: dict[int, int]
    collection: str = ""  # the collection that answered (an alias's target at the time)

    def __getitem__(self, key: str) -> Row:
        return self.found[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.found)

    def __len__(self) -> int:
        return len(self.found)


@dataclass(frozen=True, slots=True)
class Searched:
    """A search's result and what a shadow of it needs: the request, the route, the time."""

    result: SearchResult
    request: QueryRequest
    route: routing.Route
    took_ms: float


# What a client keeps between calls.

class Known:
    """Per collection, the spec and where its requests go, as last read (the shard map)."""

    def __init__(self) -> None:
        self.specs: dict[str, CollectionSpec] = {}
        self.layouts: dict[str, shards.Layout] = {}
        # Names a request was last submitted to as a collection: their calls skip reading the
        # alias (a round trip, a third of a search's Redis calls); the submit script refuses
        # such a name if it has become an alias since, and the call then reads it.
        self.plain: set[str] = set()


class AliasAppeared(Exception):
    """A name known as a collection is an alias now: the call resolves it and goes again."""


# The calls.

def search(known: Known, name: str, vectors: Any, *, k: Any = 10, filter: Any = None,
           consistency: Any = "eventual", timeout: Any = 5.0, with_metadata: bool = False,
           ef: Any = None, nprobe: Any = None, partial: bool = False,
           score_threshold: Any = None, retries: Any = 0,
           margin: float = REPLY_MARGIN_S) -> Flow[Searched]:
    """Search the k nearest rows of each query vector; every input is checked before sending."""
    started = time.perf_counter()
    k, flt = k_of(k), filter_of(filter)
    level, timeout_ms = consistency_of(consistency), timeout_ms_of(timeout)
    refused = check_params(k, ef, nprobe)  # the searcher would refuse them alike
    if refused is not None:
        raise search_error(refused.code, refused.message)
    threshold, tries = threshold_of(score_threshold), retries_of(retries)
    # Vectors keyed by model version are picked once the collection's spec is read.
    given = None if isinstance(vectors, Mapping) else queries_of(vectors)
    wait = timeout_ms / 1000 + margin

    def attempt(n: int) -> Flow[Searched]:
        route = yield from resolve(name, wait, known)
        queries = given if given is not None else queries_of(
            (yield from pick(known, route.target, vectors, wait)))
        request = QueryRequest(new_id(), route.target, queries, k, flt, level, timeout_ms,
                               bool(with_metadata), ef=ef, nprobe=nprobe,
                               score_threshold=threshold)
        result = yield from ask(known, request, margin, partial=bool(partial),
                                started=started if n == 0 else None)
        return Searched(result, request, route, (time.perf_counter() - started) * 1000.0)
    return (yield from retried(attempt, tries))


def get(known: Known, name: str, ids: Any, *, consistency: Any = "eventual",
        timeout: Any = 5.0, retries: Any = 0, margin: float = REPLY_MARGIN_S
        ) -> Flow[GetResult]:
    """The live rows of `ids` (one id or many): their vectors and metadata."""
    return (yield from _lookup(known, name, GET, ids_of(ids), None, consistency, timeout,
                               retries, margin))


def count(known: Known, name: str, *, filter: Any = None, consistency: Any = "eventual",
          timeout: Any = 5.0, retries: Any = 0, margin: float = REPLY_MARGIN_S) -> Flow[int]:
    """The number of live rows the filter accepts (every live row without one)."""
    return (yield from _lookup(known, name, COUNT, (), filter_of(filter), consistency, timeout,
                               retries, margin))


def _lookup(known: Known, name: str, op: str, ids: tuple[str, ...], flt: Filter | None,
            consistency: Any, timeout: Any, retries: Any, margin: float) -> Flow[Any]:
    """A get or a count: no vectors, no k, no shadow."""
    started = time.perf_counter()
    level, timeout_ms, tries = consistency_of(consistency), timeout_ms_of(timeout), \
        retries_of(retries)

    def attempt(n: int) -> Flow[Any]:
        route = yield from resolve(name, timeout_ms / 1000 + margin, known)
        request = QueryRequest(new_id(), route.target, np.zeros((0, 0), np.float32), 0, flt,
                               level, timeout_ms, op=op, ids=ids)
        return (yield from ask(known, request, margin, started=started if n == 0 else None))
    return (yield from retried(attempt, tries))


def retried(attempt: Callable[[int], Flow[T]], retries: int) -> Flow[T]:
    """Run attempt(0), and on SearchTimeout attempt(1), ... up to `retries` more times.

    Calls are reads, so repeating one is safe; each attempt is a fresh request (its own id,
    its name resolved again), after a doubling pause. The last attempt's timeout is raised.
    The first attempt's time counts from the call's start, each later one's from its own.
    """
    n, rerouted = 0, False
    while True:
        try:
            return (yield from attempt(n))
        except AliasAppeared as exc:  # not a retry: the name is read again, then sent again
            if rerouted:
                raise SearchError("internal", f"{exc} twice during one call; try again") from None
            rerouted = True
            continue
        except SearchTimeout:
            if n >= retries:
                raise
        yield Pause(min(RETRY_BACKOFF_MAX_S, RETRY_BACKOFF_S * 2 ** n))
        n += 1


def new_id() -> str:
    """A fresh request id."""
    return uuid.uuid4().hex


def resolve(name: Any, wait: float, known: Known | None = None) -> Flow[routing.Route]:
    """Where a call on `name` goes: an alias's target and active challenge, else the name.

    A name `known` to be no alias is not read again (see Known.plain).
    """
    parsed = collection_name(name)
    keys = routing.route_keys(parsed)
    if not keys or (known is not None and parsed in known.plain):
        return routing.Route(parsed)
    with bounded(parsed, wait):
        values = yield Command(wait, "mget", (keys,))
    try:
        return routing.route_of(parsed, values)
    except (ValueError, KeyError, TypeError) as exc:
        raise SearchError("internal", f"alias {parsed!r} is unreadable: {exc}") from None


def pick(known: Known, name: str, vectors: Any, wait: float) -> Flow[Any]:
    """The query vectors for collection `name` (a per-model-version dict picks one)."""
    if not isinstance(vectors, Mapping):
        return vectors
    with bounded(name, wait):
        spec = yield from described(known, name, wait)
    try:
        return shadow.pick_vectors(vectors, spec.model_version, name)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None


def described(known: Known, name: str, wait: float) -> Flow[CollectionSpec]:
    """The collection's spec (read with its shard map the first time)."""
    if name not in known.specs:
        yield from read_layout(known, name, wait)
    return known.specs[name]


def read_layout(known: Known, name: str, wait: float) -> Flow[shards.Layout]:
    """Read where a collection's requests go (its shard map, with its spec) and keep it."""
    version_raw, map_raw, spec_raw = yield Command(wait, "mget", ([
        protocol.shard_version_key(name), protocol.shard_map_key(name), spec_key(name)],))
    if spec_raw is None:
        _missing(known, name)
    try:
        shard_map = shards.map_of(version_raw, map_raw)
    except ShardMapError as exc:
        raise SearchError("internal", f"the shard map of {name!r} is unreadable: "
                                      f"{exc}") from None
    spec = known.specs[name] = CollectionSpec.from_json(spec_raw)
    layout = known.layouts[name] = shards.Layout.of(shard_map, spec.metric)
    return layout


def _alias_slot_key(name: str) -> str:
    """`sv:{NAME}:alias`: an alias's key for a plain name; for a versioned one (never an
    alias) a key in the same slot that is never set, so one script serves both."""
    return CollectionName.parse(name).key("alias")


def _missing(known: Known, name: str) -> NoReturn:
    """Raise for a collection found missing: UnknownCollection, or AliasAppeared where the
    name was known as a collection and its alias was not read (the call reads it and goes
    again, and a name that is neither then gets UnknownCollection)."""
    known.layouts.pop(name, None)
    if name in known.plain:
        known.plain.discard(name)
        raise AliasAppeared(f"{name!r} is no collection any more")
    raise UnknownCollection(f"collection {name!r} does not exist")


def ask(known: Known, request: QueryRequest, margin: float, *, partial: bool = False,
        started: float | None = None) -> Flow[Any]:
    """Send one request and wait for its reply up to its timeout plus `margin` seconds.

    The time counts from `started` (a perf_counter reading; default now), and every Redis
    call is bounded by what is left of it: a frozen Redis raises SearchTimeout in time. A
    sharded collection's request goes to its shards (a get's only to the shards owning its
    ids' partitions) and their replies are merged. Returns what the caller gets: a
    SearchResult, a GetResult or a count.
    """
    name = request.collection
    wait = request.timeout_ms / 1000 + margin
    deadline = (time.perf_counter() if started is None else started) + wait
    request = replace(request, sent_at_ms=time.time() * 1000)
    with bounded(name, wait):
        layout = known.layouts.get(name) or (yield from read_layout(known, name, wait))
        for _ in range(MAP_MOVES):
            sent = yield from send(known, layout, request, wait)
            if sent is not None and not sent[1]:
                break
            # A stream was missing: the map moved under this call (read it and send again),
            # or a shard of the current map has no stream (no searcher ever ran).
            fresh = yield from read_layout(known, name, wait)
            if sent is not None and fresh.version == layout.version:
                break
            layout = fresh
        else:
            raise SearchError("internal", f"the shard map of {name!r} changed {MAP_MOVES} "
                              "times during one call; try again")
        parts, gone = sent
        if gone and (not partial or not parts):
            raise no_stream(name, gone[0])
        bodies = yield from gather([part.reply_key for _, part in parts], deadline, wait)
    if not layout.shards:
        if bodies[0] is None:
            raise SearchTimeout(f"no searcher answered a query on {name!r} within {wait:g}s: "
                                f"is `streamvec searcher --collection {name}` running?")
        answer = outcome(request, bodies[0])
        if isinstance(answer, QueryError):
            raise search_error(answer.code, answer.message)
        return finished(request, answer)
    got = {shard: None if body is None else outcome(part, body)
           for (shard, part), body in zip(parts, bodies, strict=True)}
    asked = {shard for shard, _ in parts} | set(gone)
    gathered = shards.combine(name, [(s, got.get(s)) for s in layout.shards if s in asked],
                              request.k, layout.metric, partial=partial and request.op == SEARCH,
                              waited_s=wait, merger=_MERGERS.get(request.op))
    return finished(request, gathered.answer, gathered.missing)


def send(known: Known, layout: shards.Layout, request: QueryRequest, wait: float
         ) -> Flow[tuple[list[tuple[Any, QueryRequest]], list[shards.Shard]] | None]:
    """Add the request to the layout's stream(s): (what was sent, shards without a stream).

    None when the whole collection's script says that the shard map moved. Shard streams
    are added to with NOMKSTREAM, so a stream that a retired shard deleted once drained is
    not created again; the map version read in the same pipeline makes the next call follow
    a switch that the streams still there answer.
    """
    name = request.collection
    if not layout.shards:
        asked = replace(request, reply_key=protocol.reply_key(name, request.request_id))
        fields = protocol.encode_request(asked)
        args = [str(layout.version), protocol.QUEUE_MAXLEN,
                *(x for pair in fields.items() for x in pair)]
        added = yield Command(wait, "eval", (SUBMIT, 4, spec_key(name), protocol.queue_key(name),
                                             protocol.shard_version_key(name),
                                             _alias_slot_key(name), *args))
        if added is None:
            _missing(known, name)
        if isinstance(added, list) and added and added[0] in (b"alias", "alias"):
            known.plain.discard(name)
            raise AliasAppeared(f"{name!r} became an alias")
        if isinstance(added, list):
            known.layouts.pop(name, None)
            return None
        known.plain.add(name)  # a collection, no alias, as of this script
        return [(None, asked)], []
    parts = split(known.specs.get(name), layout, request)
    commands: list[tuple[str, tuple[Any, ...], Mapping[str, Any]]] = [
        ("get", (protocol.shard_version_key(name),), {})]
    for shard, part in parts:
        commands.append(("xadd", (protocol.queue_key(name, shard.label),
                                  protocol.encode_request(part, shard.label)),
                         {"maxlen": protocol.QUEUE_MAXLEN, "approximate": True,
                          "nomkstream": True}))
    version_raw, *added = yield Pipeline(wait, tuple(commands))
    if version_raw != str(layout.version).encode():
        # The streams that took this request answer it; the next call reads the new map.
        known.layouts.pop(name, None)
    return ([p for p, entry in zip(parts, added, strict=True) if entry is not None],
            [shard for (shard, _), entry in zip(parts, added, strict=True) if entry is None])


def split(spec: CollectionSpec | None, layout: shards.Layout, request: QueryRequest
          ) -> list[tuple[shards.Shard, QueryRequest]]:
    """The request each shard gets (searcher/shards.py `split`); a get's ids go to the shards
    that own their partitions under the spec's partitioner, and a shard owning none gets none."""
    parts = shards.split(request, layout.shards)
    if request.op != GET or spec is None:
        return parts
    total = layout.shards[0].total
    owned: dict[shards.Shard, list[str]] = {}
    for i in request.ids:
        p = partition_of(i, total, spec.partitioner)
        owner = next(s for s in layout.shards if p in s.partitions)
        owned.setdefault(owner, []).append(i)
    return [(shard, replace(part, ids=tuple(owned[shard]))) for shard, part in parts
            if shard in owned]


def gather(keys: Sequence[str], deadline: float, wait: float) -> Flow[list[bytes | None]]:
    """Each reply key's reply, None for one that stays empty until the deadline.

    One BLPOP per key (each shard's reply key has its own hash slot); once one reply is
    in, the others are usually in too and are taken in one pipeline.
    """
    bodies: list[bytes | None] = [None] * len(keys)
    for i, key in enumerate(keys):
        if bodies[i] is not None:
            continue
        left = deadline - time.perf_counter()
        # BLPOP takes whole milliseconds; 0 would mean forever.
        got = None if left < 0.001 else (yield Command(wait, "blpop", ([key],),
                                                       {"timeout": left}))
        if got is None:
            continue
        bodies[i] = got[1]
        rest = [j for j in range(i + 1, len(keys)) if bodies[j] is None]
        if rest:
            popped = yield Pipeline(wait, tuple(("lpop", (keys[j],), {}) for j in rest))
            for j, body in zip(rest, popped, strict=True):
                bodies[j] = body
    return bodies


def outcome(request: QueryRequest, body: bytes) -> Answer | QueryError:
    """The answer or error a reply carries; a reply that breaks the protocol is `internal`."""
    try:
        rid, answer = protocol.decode_reply(body)
    except ValueError as exc:
        return QueryError("internal", f"the searcher's reply breaks the protocol: {exc}")
    if rid != request.request_id:
        return QueryError("internal", f"reply to request {rid!r} on the key of "
                                      f"{request.request_id!r}")
    if not isinstance(answer, (QueryError, _KINDS[request.op])):
        return QueryError("internal", f"a {request.op} got a reply of another kind: does the "
                                      "searcher predate gets and counts?")
    return answer


def finished(request: QueryRequest, answer: Any, missing: tuple[str, ...] = ()) -> Any:
    """What the caller gets for an answer: a SearchResult, a GetResult or a count."""
    if request.op == COUNT:
        return int(answer.count)
    if request.op == GET:
        by_id = {r.id: r for r in answer.rows}
        found = {i: Row(by_id[i].vector, by_id[i].metadata) for i in request.ids if i in by_id}
        return GetResult(found, dict(answer.offsets), request.collection)
    result = padded(answer, request.k, request.with_metadata, request.collection)
    return replace(result, partial=bool(missing), missing=missing)


def merge_rows(answers: list[GetAnswer]) -> GetAnswer:
    """Shards' get answers as one: every row (an id two shards hold: the first shard's)."""
    rows, seen = [], set()
    for a in answers:
        for r in a.rows:
            if r.id not in seen:
                seen.add(r.id)
                rows.append(r)
    return GetAnswer(rows, _union(a.offsets for a in answers), _slowest(answers))


def merge_counts(answers: list[CountAnswer]) -> CountAnswer:
    """Shards' counts as one: their sum (each counts its own partitions)."""
    return CountAnswer(sum(a.count for a in answers), _union(a.offsets for a in answers),
                       _slowest(answers))


def _union(offsets: Any) -> dict[int, int]:
    out: dict[int, int] = {}
    for each in offsets:
        out.update(each)
    return out


def _slowest(answers: Sequence[Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for a in answers:
        for key, value in a.timings_ms.items():
            out[key] = max(value, out.get(key, value))
    return out


_MERGERS: dict[str, Callable[[list[Any]], Any]] = {GET: merge_rows, COUNT: merge_counts}
_KINDS: dict[str, type] = {SEARCH: QueryAnswer, GET: GetAnswer, COUNT: CountAnswer}


def padded(answer: QueryAnswer, k: int, with_metadata: bool, collection: str = ""
           ) -> SearchResult:
    """A search answer as a SearchResult: every query's row padded to k columns."""
    n = len(answer.ids)
    ids = np.full((n, k), None, dtype=object)
    scores = np.full((n, k), np.nan, dtype=np.float32)
    for i, (row_ids, row_scores) in enumerate(zip(answer.ids, answer.scores, strict=True)):
        hits = min(len(row_ids), k)
        ids[i, :hits] = row_ids[:hits]
        scores[i, :hits] = row_scores[:hits]
    metadata = None
    if with_metadata:
        metadata = [list(row[:k]) for row in answer.metadata] if answer.metadata is not None \
            else [[None] * min(len(row), k) for row in answer.ids]
    return SearchResult(ids, scores, metadata, dict(answer.offsets), dict(answer.timings_ms),
                        collection)


def id_rows(result: SearchResult) -> list[list[str]]:
    """Each query's hit ids, best first."""
    return [[h for h in row if h is not None] for row in result.ids.tolist()]


@contextmanager
def bounded(name: str, wait: float) -> Iterator[None]:
    """Turn a Redis failure during one call into the client's error: a timeout or a lost
    connection is SearchTimeout, any other refusal SearchError `internal`."""
    try:
        yield
    except redis.TimeoutError as exc:
        raise SearchTimeout(f"Redis did not answer a query on {name!r} within {wait:g}s: "
                            f"{exc}") from exc
    except redis.ConnectionError as exc:
        raise SearchTimeout(f"Redis unreachable for a query on {name!r}: {exc}") from exc
    except redis.RedisError as exc:
        raise SearchError("internal", f"Redis refused a query on {name!r}: "
                                      f"{type(exc).__name__}: {exc}") from exc


def no_stream(name: str, shard: shards.Shard) -> ShardTimeout:
    """The error of a shard of the current map that has no stream: none of its searchers ran."""
    return ShardTimeout(
        f"shard {shard.name} of {name!r} has no request stream "
        f"({protocol.queue_key(name, shard.label)}): no searcher serves it; start `streamvec "
        f"searcher --collection {name} --partitions {shard.name}`",
        collection=name, shard=shard.name)


# Input checks: each raises InvalidRequest with the message a searcher would send.

def collection_name(name: Any) -> str:
    """A collection or alias name, checked against the naming rules."""
    try:
        return str(CollectionName.parse(name if isinstance(name, str) else str(name)))
    except InvalidName as exc:
        raise InvalidRequest(str(exc)) from None


def queries_of(vectors: Any) -> np.ndarray:
    """Query vectors as float32 (n, dim): one vector (1-D) or many (2-D)."""
    try:
        arr = np.asarray(vectors)
    except (ValueError, TypeError) as exc:
        raise InvalidRequest(f"vectors must be one vector or a 2-D array of numbers "
                             f"({exc})") from None
    if arr.dtype.kind not in "iuf":
        raise InvalidRequest(f"vectors must hold numbers, not {arr.dtype}")
    if arr.ndim == 1:
        arr = arr[np.newaxis, :]
    if arr.ndim != 2:
        raise InvalidRequest(f"vectors must be 1-D (one query) or 2-D (n, dim), not "
                             f"{arr.ndim}-D")
    if arr.size == 0:
        raise InvalidRequest(f"vectors must not be empty (shape {arr.shape})")
    if len(arr) > protocol.MAX_QUERIES:
        raise InvalidRequest(f"at most {protocol.MAX_QUERIES} queries per search, got "
                             f"{len(arr)}")
    return arr.astype(np.float32)


def k_of(k: Any) -> int:
    """Neighbours per query, 1..MAX_K."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise InvalidRequest(f"k must be an integer, not {type(k).__name__}", code="bad_k")
    if not 1 <= k <= MAX_K:  # the searcher would refuse it with the same code and message
        raise InvalidRequest(f"k must be 1..{MAX_K}, got {k}", code="bad_k")
    return int(k)


def timeout_ms_of(timeout: Any) -> int:
    """A call's timeout in seconds, as whole milliseconds."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not (
            0 < timeout * 1000 <= protocol.MAX_TIMEOUT_MS):
        raise InvalidRequest(f"timeout must be seconds in (0, "
                             f"{protocol.MAX_TIMEOUT_MS // 1000}], not {timeout!r}")
    return max(1, round(timeout * 1000))


def threshold_of(value: Any) -> float | None:
    """A score threshold: a finite number, or None for none."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(value)):
        raise InvalidRequest(f"score_threshold must be a finite number, not {value!r}")
    return float(value)


def settings_of(redis_url: str | None, settings: Settings | None) -> Settings:
    """A client's settings: given ones, or the environment's with `redis_url` if one is given."""
    if redis_url is not None and settings is not None:
        raise InvalidRequest("give either redis_url or settings, not both")
    if settings is not None:
        return settings
    return Settings() if redis_url is None else Settings(redis=redis_url)


def retries_of(value: Any) -> int:
    """Retries of a timed-out call: 0..MAX_RETRIES."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not (
            0 <= value <= MAX_RETRIES):
        raise InvalidRequest(f"retries must be an integer in 0..{MAX_RETRIES}, not {value!r}")
    return int(value)


def ids_of(ids: Any) -> tuple[str, ...]:
    """The ids of a get: one id, or a list of them (repeats dropped, order kept)."""
    if isinstance(ids, str):
        ids = [ids]
    elif isinstance(ids, np.ndarray):
        ids = ids.tolist()
    elif not isinstance(ids, (list, tuple)):
        try:
            ids = list(ids)
        except TypeError:
            raise InvalidRequest(f"ids must be an id or a list of ids, not "
                                 f"{type(ids).__name__}") from None
    try:
        return protocol.check_ids(ids)
    except QueryError as exc:
        raise InvalidRequest(exc.message) from None


def filter_of(flt: Any) -> Filter | None:
    """A call's filter: a Filter, or a filter object of the filter language (docs/protocol.md
    7.1.1); a bad one raises InvalidRequest naming the problem, before anything is sent."""
    if isinstance(flt, Filter):
        return flt if flt else None
    try:
        return protocol.parse_filter(flt)
    except QueryError as exc:
        raise InvalidRequest(exc.message) from None


def consistency_of(value: Any) -> Consistency:
    """A consistency level as callers give it (see _CONSISTENCY_FORMS)."""
    if isinstance(value, Consistency):
        return value
    if isinstance(value, str) and value in ("eventual", "strong"):
        return Consistency(value)
    obj: dict[str, Any] | None = None
    if isinstance(value, Mapping) and list(value) == ["bounded_ms"]:
        obj = {"level": "bounded", "bound_ms": value["bounded_ms"]}
    elif isinstance(value, Mapping) and list(value) == ["session"] and isinstance(
            value["session"], Mapping):
        obj = {"level": "session", "offsets": {str(p): o for p, o in value["session"].items()}}
    if obj is None:
        raise InvalidRequest(f"consistency must be {_CONSISTENCY_FORMS}, not {value!r}")
    try:
        return protocol.parse_consistency(obj)
    except QueryError as exc:
        raise InvalidRequest(exc.message) from None
