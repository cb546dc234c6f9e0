"""Load for the fault suite: ingest and queries on threads, poison messages, hostile requests."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import redis
from confluent_kafka import Producer as KafkaProducer

from ingest import record
from ingest.errors import DeliveryError
from ingest.producer import Producer
from searcher import protocol
from searcher.client import REPLY_MARGIN_S, Client
from searcher.errors import QueryError
from streamvec.settings import Settings

# A query of the background thread: short, so an outage outlasts it many times over.
QUERY_TIMEOUT_S = 2.0
# What a call may take beyond its timeout and the client's reply margin: the client's own
# Redis retries (under two seconds of backoff) before it gives up with an error. Kept below
# the small scale's outage, so a call that waits out an outage is caught.
CALL_SLACK_S = 3.0
# How long one flush waits before the ingest thread tries again (the ops stay queued).
FLUSH_WAIT_S = 5.0


@dataclass(frozen=True)
class Snapshot:
    """The acknowledged state at one instant: latest vector per id, and the offsets behind it."""

    expected: dict[str, np.ndarray | None]
    previous: dict[str, np.ndarray]
    uncertain: frozenset[str]
    offsets: dict[int, int]

    def live(self) -> dict[str, np.ndarray]:
        """The ids that must be visible, with their latest vector (uncertain ids left out)."""
        return {k: v for k, v in self.expected.items() if v is not None and k not in self.uncertain}

    def deleted(self) -> dict[str, np.ndarray]:
        """Deleted ids with the vector they held last: none may be returned."""
        return {k: self.previous[k] for k, v in self.expected.items()
                if v is None and k not in self.uncertain and k in self.previous}

    def overwritten(self) -> dict[str, np.ndarray]:
        """Live ids that were overwritten, with their superseded vector."""
        return {k: self.previous[k] for k in self.live() if k in self.previous}


class Ingest:
    """Upserts, overwrites and deletes on a thread through the Producer SDK, each round flushed.

    An op counts once its flush succeeded; a flush that runs out is retried (the ops stay
    queued in the producer), and ops whose delivery failed for good become `uncertain`.
    """

    def __init__(self, settings: Settings, collection: str, dim: int, *, seed: int = 7,
                 new_per_round: int = 16, pause_s: float = 0.05) -> None:
        self.producer = Producer(collection, settings=settings)
        self.dim, self.new_per_round, self.pause_s = dim, new_per_round, pause_s
        self.rng = np.random.default_rng(seed)
        self.expected: dict[str, np.ndarray | None] = {}
        self.previous: dict[str, np.ndarray] = {}
        self.uncertain: set[str] = set()
        self.offsets: dict[int, int] = {}
        self.rounds = self.failures = 0
        self.error: BaseException | None = None
        self._next_id = 0
        self._lock = threading.Lock()
        self._live: list[str] = []
        self._stop, self._pause, self._paused = (threading.Event(), threading.Event(),
                                                 threading.Event())
        self.thread = threading.Thread(target=self._run, name="fault-ingest", daemon=True)

    def start(self) -> None:
        """Start the ingest thread."""
        self.thread.start()

    def stop(self, timeout: float = 120.0) -> None:
        """Stop the thread after its current round and re-raise its error, if any."""
        self._stop.set()
        self._pause.clear()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the ingest thread did not stop"
        if self.error is not None:
            raise self.error

    @contextmanager
    def paused(self, timeout: float = 300.0) -> Iterator[Snapshot]:
        """Hold ingest between rounds (every op sent so far acknowledged) and yield its state."""
        self._pause.set()
        try:
            if not self._paused.wait(timeout):
                raise AssertionError(f"ingest did not settle within {timeout:g} s "
                                     f"(a flush is still waiting for the broker)")
            if self.error is not None:
                raise AssertionError(f"the ingest thread failed: {self.error!r}")
            yield self.snapshot()
        finally:
            self._pause.clear()

    def snapshot(self) -> Snapshot:
        """A copy of the acknowledged state."""
        with self._lock:
            return Snapshot(dict(self.expected), dict(self.previous), frozenset(self.uncertain),
                            dict(self.offsets))

    def sample(self, n: int) -> list[np.ndarray]:
        """Latest vectors of up to n live ids, for the query thread."""
        with self._lock:
            if not self._live:
                return []
            picks = self.rng.integers(0, len(self._live), n)
            found = [self.expected.get(self._live[i]) for i in picks]
        return [v for v in found if v is not None]

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if self._pause.is_set():
                    self._paused.set()
                    self._stop.wait(0.02)
                    continue
                self._paused.clear()
                self._round()
                self._stop.wait(self.pause_s)
        except BaseException as exc:  # handed to the test thread
            self.error = exc
        finally:
            self._paused.set()

    def _round(self) -> None:
        """Send one round of ops, wait until they are acknowledged, then apply them."""
        ops: list[tuple[str, np.ndarray | None]] = []
        new = [f"row-{self._next_id + i}" for i in range(self.new_per_round)]
        self._next_id += self.new_per_round
        with self._lock:
            live = list(self._live)
        chosen = [live[i] for i in self.rng.choice(len(live), min(len(live), 6), replace=False)] \
            if live else []
        overwrite, delete = chosen[:4], chosen[4:]
        for ids in (new, overwrite):
            if ids:
                vectors = self.rng.standard_normal((len(ids), self.dim)).astype(np.float32)
                self.producer.upsert(ids, vectors)
                ops += list(zip(ids, vectors, strict=True))
        if delete:
            self.producer.delete(delete)
            ops += [(i, None) for i in delete]
        offsets = self._flush(ops)
        if offsets is None:
            return
        with self._lock:
            for key, vector in ops:
                old = self.expected.get(key)
                if old is not None:
                    self.previous[key] = old
                self.expected[key] = vector
            self.offsets = offsets
            self._live = [k for k, v in self.expected.items() if v is not None
                          and k not in self.uncertain]
            self.rounds += 1

    def _flush(self, ops: list[tuple[str, np.ndarray | None]]) -> dict[int, int] | None:
        while True:
            try:
                return self.producer.flush(FLUSH_WAIT_S)
            except DeliveryError as exc:
                if "still undelivered" in str(exc) and not self._stop.is_set():
                    continue
                # Delivery failed for good: these ids may or may not have been written.
                with self._lock:
                    self.uncertain.update(key for key, _ in ops)
                    self.failures += 1
                return None


@dataclass
class Outcome:
    """One search of the query thread: when it started, how long it took, what came back."""

    started: float
    elapsed: float
    error: str | None


@dataclass
class Queries:
    """Searches on a thread through one Client, recording every answer and error."""

    settings: Settings
    collection: str
    ingest: Ingest
    outcomes: list[Outcome] = field(default_factory=list)
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self.client = Client(settings=self.settings)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="fault-queries", daemon=True)

    def start(self) -> None:
        """Start the query thread."""
        self.thread.start()

    def stop(self) -> None:
        """Stop the thread and close the client."""
        self._stop.set()
        self.thread.join(QUERY_TIMEOUT_S + REPLY_MARGIN_S + CALL_SLACK_S + 60)
        self.client.close()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                vectors = self.ingest.sample(4)
                if not vectors:
                    self._stop.wait(0.1)
                    continue
                started = time.monotonic()
                try:
                    self.client.search(self.collection, np.stack(vectors), k=5,
                                       timeout=QUERY_TIMEOUT_S)
                    error = None
                except Exception as exc:  # noqa: BLE001 - every failure is recorded and judged
                    error = f"{type(exc).__name__}: {str(exc)[:200]}"
                self.outcomes.append(Outcome(started, time.monotonic() - started, error))
                self._stop.wait(0.02)
        except BaseException as exc:  # handed to the test thread
            self.error = exc

    def since(self, mark: int) -> list[Outcome]:
        """Outcomes recorded after the first `mark` ones."""
        return self.outcomes[mark:]

    def assert_in_time(self, mark: int) -> tuple[int, int]:
        """Every search since `mark` ended (answer or error) within its bound; (answers, errors)."""
        assert self.error is None, f"the query thread failed: {self.error!r}"
        assert self.thread.is_alive(), "the query thread stopped"
        bound = QUERY_TIMEOUT_S + REPLY_MARGIN_S + CALL_SLACK_S
        seen = self.since(mark)
        late = [o for o in seen if o.elapsed > bound]
        assert not late, (f"{len(late)} of {len(seen)} searches took longer than {bound:g} s, "
                          f"e.g. {late[0].elapsed:.1f} s ending in {late[0].error}")
        errors = sum(o.error is not None for o in seen)
        return len(seen) - errors, errors


# ----------------------------------------------------------------------------------------------
# Poison messages

POISON_KINDS = ("garbage", "wrong_dim", "nan", "unknown_version", "model_version", "oversize")
OVERSIZE_BYTES = 2 * 1024 * 1024


def poison_payload(kind: str, dim: int, rng: np.random.Generator) -> bytes:
    """One message a worker must dead-letter; `oversize` is over 1 MB of garbage."""
    if kind == "garbage":
        return rng.bytes(int(rng.integers(1, 512)))
    if kind == "oversize":
        return rng.bytes(OVERSIZE_BYTES)
    rid = [f"poison-{uuid.uuid4().hex[:8]}"]
    if kind == "wrong_dim":
        return record.encode(rid, np.ones((1, dim + 1), np.float32))
    if kind == "model_version":
        return record.encode(rid, np.ones((1, dim), np.float32), model_version="another")
    marker = np.full((1, dim), 1.5, np.float32)
    payload = bytearray(record.encode(rid, marker))
    if kind == "unknown_version":
        payload[3] = 99  # the version byte follows the 3-byte magic
        return bytes(payload)
    if kind == "nan":
        at = bytes(payload).index(marker.tobytes())
        payload[at:at + 4] = np.float32(np.nan).tobytes()
        return bytes(payload)
    raise ValueError(f"unknown poison kind {kind!r}")


def send_poison(settings: Settings, topic: str, dim: int, count: int, oversize: int,
                seed: int = 11) -> dict[tuple[int, int], str]:
    """Write `count` poison messages (of them `oversize` over 1 MB) with a raw Kafka producer.

    Returns {(partition, offset): kind} of every message the broker acknowledged.
    """
    rng = np.random.default_rng(seed)
    producer = KafkaProducer(settings.kafka_config(**{
        "message.max.bytes": OVERSIZE_BYTES * 2, "acks": "all", "linger.ms": 5}))
    delivered: dict[tuple[int, int], str] = {}
    failed: list[str] = []
    small = [k for k in POISON_KINDS if k != "oversize"]
    kinds = ["oversize"] * oversize + [small[i % len(small)] for i in range(count - oversize)]

    def report(kind: str):
        def on_delivery(err, msg) -> None:
            if err is not None:
                failed.append(f"{kind}: {err.str()}")
            else:
                delivered[(msg.partition(), msg.offset())] = kind
        return on_delivery

    for kind in kinds:
        key = f"poison-{rng.integers(1 << 30)}".encode()
        while True:
            try:
                producer.produce(topic, poison_payload(kind, dim, rng), key=key,
                                 on_delivery=report(kind))
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    left = producer.flush(120)
    assert not left and not failed, f"poison not delivered: {left} left, failures {failed[:3]}"
    return delivered


def dead_letters(settings: Settings, dlq_topic: str, timeout: float = 30.0
                 ) -> dict[tuple[int, int], str]:
    """Every message on the dead-letter topic: {(source partition, source offset): reason}."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(settings.kafka_config(**{
        "group.id": f"fault-dlq-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
        "auto.offset.reset": "earliest", "fetch.max.bytes": 64 * 1024 * 1024,
        "max.partition.fetch.bytes": 32 * 1024 * 1024}))
    try:
        meta = consumer.list_topics(dlq_topic, timeout=timeout).topics[dlq_topic]
        parts = [TopicPartition(dlq_topic, p, 0) for p in meta.partitions]
        ends = {tp.partition: consumer.get_watermark_offsets(tp, timeout=timeout)[1]
                for tp in parts}
        consumer.assign(parts)
        found: dict[tuple[int, int], str] = {}
        position = {p: 0 for p in ends}
        deadline = time.monotonic() + timeout * 4
        while any(position[p] < end for p, end in ends.items()):
            assert time.monotonic() < deadline, f"reading {dlq_topic} ran out of time"
            msg = consumer.poll(1.0)
            if msg is None or msg.error():
                continue
            position[msg.partition()] = msg.offset() + 1
            headers = {k: v for k, v in (msg.headers() or [])}
            src = (int(headers.get("sv-source-partition", b"-1")),
                   int(headers.get("sv-source-offset", b"-1")))
            found[src] = headers.get("sv-reason", b"").decode()
        return found
    finally:
        consumer.close()


# ----------------------------------------------------------------------------------------------
# Hostile requests


@dataclass(frozen=True)
class Hostile:
    """One raw request on the query stream and the outcomes it may get."""

    kind: str
    fields: dict[str, bytes]
    allowed: frozenset[str]  # error codes, or "answer"; empty: no reply can be addressed
    timeout_s: float


def _fields(name: str, rid: str, queries: np.ndarray, k: int, **extra: object) -> dict[str, bytes]:
    fields: dict[str, object] = {
        "v": protocol.VERSION, "id": rid, "reply": protocol.reply_key(name, rid), "k": k,
        "dim": queries.shape[1], "n": queries.shape[0], "timeout_ms": 3000, "meta": "0",
        "sent_ms": f"{time.time() * 1000:.3f}"}
    fields.update(extra)
    out = {k: v if isinstance(v, bytes) else str(v).encode() for k, v in fields.items()}
    out.setdefault("vectors", queries.astype("<f4").tobytes())
    return out


HOSTILE_KINDS = ("huge_k", "huge_batch", "huge_filter", "wide_filter", "bogus_reply",
                 "impossible_session", "garbage_fields", "nan", "wrong_dim", "lying_sizes",
                 "bad_id", "huge_timeout")


def hostile_request(kind: str, name: str, dim: int, rng: np.random.Generator) -> Hostile:
    """Build one hostile request of `kind` for collection `name`."""
    rid = uuid.uuid4().hex
    one = rng.standard_normal((1, dim)).astype(np.float32)
    malformed = frozenset({"malformed"})
    if kind == "huge_k":
        return Hostile(kind, _fields(name, rid, one, 10**12), frozenset({"bad_k"}), 3)
    if kind == "huge_batch":
        many = rng.standard_normal((protocol.MAX_QUERIES, dim)).astype(np.float32)
        return Hostile(kind, _fields(name, rid, many, 1000),
                       frozenset({"answer", "too_large"}), 3)
    if kind == "huge_filter":
        flt = {f"f{i}": {"in": [f"v{j}" for j in range(protocol.MAX_FILTER_VALUES)]}
               for i in range(protocol.MAX_FILTER_FIELDS)}
        return Hostile(kind, _fields(name, rid, one, 10, filter=json.dumps(flt)),
                       malformed | {"too_large"}, 3)
    if kind == "wide_filter":  # legal, but matches nothing: a scan that must stay bounded
        flt = {"tag": {"in": [f"t{j}" for j in range(protocol.MAX_FILTER_VALUES)]}}
        return Hostile(kind, _fields(name, rid, one, 1000, filter=json.dumps(flt)),
                       frozenset({"answer", "too_large"}), 3)
    if kind == "bogus_reply":
        return Hostile(kind, _fields(name, rid, one, 10, reply=f"sv:{{elsewhere}}:r:{rid}"),
                       malformed, 3)
    if kind == "impossible_session":
        consistency = json.dumps({"level": "session", "offsets": {"0": 2**62, "1": 2**62}})
        return Hostile(kind, _fields(name, rid, one, 10, consistency=consistency,
                                     timeout_ms=500), frozenset({"consistency_timeout"}), 0.5)
    if kind == "garbage_fields":
        junk = {f: rng.bytes(int(rng.integers(1, 64))) for f in
                ("k", "n", "dim", "consistency", "meta", "sent_ms", "timeout_ms", "vectors")}
        return Hostile(kind, {**_fields(name, rid, one, 10), **junk}, malformed, 3)
    if kind == "nan":
        bad = one.copy()
        bad[0, 0] = np.nan
        return Hostile(kind, _fields(name, rid, bad, 10), frozenset({"not_finite"}), 3)
    if kind == "wrong_dim":
        return Hostile(kind, _fields(name, rid, np.ones((1, dim + 3), np.float32), 10),
                       frozenset({"wrong_dim"}), 3)
    if kind == "lying_sizes":  # claims 1024 x 65536 floats, carries 4 bytes
        return Hostile(kind, _fields(name, rid, one, 10, n=protocol.MAX_QUERIES, dim=65536,
                                     vectors=b"\0\0\0\0"), malformed, 3)
    if kind == "bad_id":
        fields = _fields(name, rid, one, 10)
        fields["id"] = b"\xff bad id \x00" + rng.bytes(8)
        return Hostile(kind, fields, frozenset(), 3)
    if kind == "huge_timeout":
        return Hostile(kind, _fields(name, rid, one, 10, timeout_ms=10**12), malformed, 3)
    raise ValueError(f"unknown hostile kind {kind!r}")


@dataclass
class HostileReport:
    """What the hostile requests got: outcomes per kind, and the problems found."""

    outcomes: dict[str, dict[str, int]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    unaddressable: list[bytes] = field(default_factory=list)  # entry ids of bad-id requests

    def count(self, kind: str, outcome: str) -> None:
        """Count one outcome of one kind."""
        per = self.outcomes.setdefault(kind, {})
        per[outcome] = per.get(outcome, 0) + 1


def send_hostile(client: redis.Redis, name: str, dim: int, count: int, *, window: int = 32,
                 seed: int = 13) -> HostileReport:
    """Send `count` hostile requests, `window` at a time, and await each one's reply."""
    rng = np.random.default_rng(seed)
    report = HostileReport()
    stream = protocol.queue_key(name)
    for start in range(0, count, window):
        batch = [hostile_request(HOSTILE_KINDS[(start + i) % len(HOSTILE_KINDS)], name, dim, rng)
                 for i in range(min(window, count - start))]
        pipe = client.pipeline(transaction=False)
        for h in batch:
            pipe.xadd(stream, h.fields, maxlen=protocol.QUEUE_MAXLEN, approximate=True)
        entry_ids = pipe.execute()
        sent = time.monotonic()
        for h, entry_id in zip(batch, entry_ids, strict=True):
            if not h.allowed:
                report.unaddressable.append(entry_id)
                report.count(h.kind, "dropped")
                continue
            rid = h.fields["id"].decode()
            # Each request may wait behind the window's others; all of them are small or refused.
            wait = max(0.1, sent + h.timeout_s * 2 + REPLY_MARGIN_S + CALL_SLACK_S
                       - time.monotonic())
            got = client.blpop([protocol.reply_key(name, rid)], timeout=wait)
            if got is None:
                report.count(h.kind, "no reply")
                report.problems.append(f"{h.kind}: no reply within {wait:.1f} s")
                continue
            _, answer = protocol.decode_reply(got[1])
            outcome = answer.code if isinstance(answer, QueryError) else "answer"
            report.count(h.kind, outcome)
            if outcome not in h.allowed:
                detail = answer.message[:160] if isinstance(answer, QueryError) else ""
                report.problems.append(f"{h.kind}: got {outcome} {detail}, "
                                       f"wanted one of {sorted(h.allowed)}")
    return report
