"""Champion-challenger evaluation: read an alias's shadow log, judge each record, keep totals.

Each record of `sv:{ALIAS}:challenge:log` (searcher/shadow.py) is read through the consumer
group `evaluators` and judged: overlap@k between the champion's and the challenger's ids,
and recall@k of each against the exact top k over its own collection's registered segments
(hidden rows and canary rows left out, tail hits set aside, as the recall probe does). The
figures are added to `sv:{ALIAS}:challenge:stats:<id>` and the latencies pushed to its
`:ms:<role>` lists in the same Lua script that acknowledges the record, so a record counts
exactly once whichever evaluator (monitor or `challenge report`) takes it.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import redis
from prometheus_client import CollectorRegistry

from indexer.registry import Registry
from indexer.store import SegmentStore
from ingest import catalog
from ingest.errors import CollectionNotFound
from lifecycle import aliases, challenges
from lifecycle.challenges import ROLES
from monitor.metrics import ChallengeMetrics
from monitor.recall import recall_at_k
from monitor.sealed import SealedView, contains, exact_top_k, visible_ids
from searcher import routing
from searcher.shadow import ShadowRecord, decode_record
from streamvec import redisconn
from streamvec.settings import Settings

log = logging.getLogger(__name__)

GROUP = "evaluators"
BATCH = 64
LATENCY_SAMPLES = 10_000  # per role and challenge, the latest kept for percentiles
# A record an evaluator took but never acknowledged (it died) is taken over after this long.
CLAIM_IDLE_MS = 60_000
WATCH_EVERY_S = 10.0  # seconds between the monitor's passes over the shadow logs

# KEYS: stats hash, champion latency list, challenger latency list, log stream.
# ARGV: group, entry id, samples cap, champion ms, challenger ms ('' = none), then
# (field, increment) pairs. Nothing is counted unless this call is the one that acknowledges.
_APPLY = """
if redis.call('XACK', KEYS[4], ARGV[1], ARGV[2]) == 0 then return 0 end
for i = 6, #ARGV, 2 do redis.call('HINCRBYFLOAT', KEYS[1], ARGV[i], ARGV[i + 1]) end
for role = 1, 2 do
  local ms = ARGV[3 + role]
  if ms ~= '' then
    redis.call('RPUSH', KEYS[1 + role], ms)
    redis.call('LTRIM', KEYS[1 + role], -tonumber(ARGV[3]), -1)
  end
end
return 1
"""


def apply_keys(alias: str, challenge_id: str) -> list[str]:
    """The KEYS of the script that counts a record: stats, latencies per role, the log."""
    return [challenges.stats_key(alias, challenge_id),
            *(challenges.latency_key(alias, challenge_id, r) for r in ROLES),
            routing.log_key(aliases.check_name(alias))]


def overlap_at_k(a: Sequence[str], b: Sequence[str], k: int) -> float:
    """|top k of a ∩ top k of b| / k: how much two answers agree."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return len(set(a[:k]) & set(b[:k])) / k


@dataclass(slots=True)
class Judgement:
    """What one record adds to its challenge's totals."""

    queries: int = 0
    compared: int = 0
    error: bool = False
    overlap_sum: float = 0.0
    recall_sum: dict[str, float] = field(default_factory=lambda: dict.fromkeys(ROLES, 0.0))
    recall_n: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ROLES, 0))

    def increments(self) -> dict[str, float]:
        """Stats hash field -> increment."""
        out = {"searches": 1, "queries": self.queries, "compared": self.compared,
               "errors": int(self.error), "overlap_sum": self.overlap_sum}
        for role in ROLES:
            out[f"{role}_recall_sum"] = self.recall_sum[role]
            out[f"{role}_recall_n"] = self.recall_n[role]
        return out


class Truth:
    """Per-query recall@k against exact search over a collection's registered segments."""

    def __init__(self, client: redis.Redis, store: SegmentStore) -> None:
        self.client = client
        self.store = store
        self._views: dict[str, tuple[str, SealedView]] = {}

    def recalls(self, collection: str, queries: np.ndarray, got: list[list[str]],
                k: int) -> list[float | None]:
        """recall@k of each answer row; None where it cannot be judged (nothing sealed)."""
        if collection not in self._views:
            try:
                metric = catalog.load_spec(self.client, collection).metric
            except CollectionNotFound:
                return [None] * len(got)  # dropped since the search: nothing to judge against
            self._views[collection] = (metric, SealedView(Registry(self.client, collection),
                                                          self.store))
        metric, view = self._views[collection]
        parts = view.parts()
        return per_query_recall(got, exact_top_k(parts, queries, k, metric), visible_ids(parts),
                                k)


def per_query_recall(got: list[list[str]], exact: list[list[str]], sealed: np.ndarray,
                     k: int) -> list[float | None]:
    """recall@k of each answer against its exact ids; `sealed` is `visible_ids` of the parts."""
    return [recall_at_k([row], [truth], lambda ids: contains(sealed, ids), k)
            for row, truth in zip(got, exact, strict=True)]


def judge(record: ShadowRecord, truth: Truth) -> Judgement:
    """The figures of one record: overlap@k and each role's recall@k."""
    out = Judgement(queries=len(record.champion_ids), error=bool(record.error))
    answers = {"champion": (record.champion, record.champion_vectors, record.champion_ids)}
    if not record.error and record.challenger_ids is not None:
        answers["challenger"] = (record.challenger, record.challenger_vectors,
                                 record.challenger_ids)
        out.compared = len(record.champion_ids)
        out.overlap_sum = sum(overlap_at_k(a, b, record.k) for a, b in zip(
            record.champion_ids, record.challenger_ids, strict=True))
    for role, (collection, vectors, ids) in answers.items():
        for value in truth.recalls(collection, vectors, ids, record.k):
            if value is not None:
                out.recall_sum[role] += value
                out.recall_n[role] += 1
    return out


class Evaluator:
    """Judges one alias's shadow log through the consumer group and accumulates the totals."""

    def __init__(self, client: redis.Redis, alias: str, store: SegmentStore, *,
                 metrics: ChallengeMetrics | None = None, consumer: str | None = None) -> None:
        self.client = client
        self.alias = alias
        self.log_key = routing.log_key(aliases.check_name(alias))
        self.truth = Truth(client, store)
        self.metrics = metrics
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self._apply = redisconn.register_script(client, _APPLY)
        try:
            client.xgroup_create(self.log_key, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def run_once(self) -> int:
        """Judge every record not judged yet (own leftovers, stale ones, then new); count them."""
        done = self._handle(self._read("0"))  # taken earlier and not acknowledged
        claimed = self.client.xautoclaim(self.log_key, GROUP, self.consumer, CLAIM_IDLE_MS,
                                         "0-0", count=BATCH)
        done += self._handle(claimed[1])
        while entries := self._read(">"):
            done += self._handle(entries)
        return done

    def _read(self, start: str) -> list:
        got = self.client.xreadgroup(GROUP, self.consumer, {self.log_key: start}, count=BATCH)
        return got[0][1] if got else []

    def _handle(self, entries: list) -> int:
        done = 0
        for entry_id, fields in entries:
            if not fields:  # trimmed away while pending
                self.client.xack(self.log_key, GROUP, entry_id)
                continue
            try:
                record = decode_record(fields)
            except ValueError as exc:
                log.warning("alias=%s record=%r unreadable, skipped: %s", self.alias, entry_id, exc)
                self.client.xack(self.log_key, GROUP, entry_id)
                continue
            try:
                verdict = judge(record, self.truth)
            except Exception:  # e.g. a segment unreadable here: left pending, retried later
                log.exception("alias=%s record=%r not judged", self.alias, entry_id)
                continue
            if self._apply_one(entry_id, record, verdict):
                done += 1
        return done

    def _apply_one(self, entry_id: bytes, record: ShadowRecord, verdict: Judgement) -> bool:
        """Count the record and acknowledge it in one script; False if someone else had."""
        cid = record.challenge
        pairs = [x for kv in verdict.increments().items() for x in (kv[0], repr(kv[1]))]
        ms = ["" if v is None else f"{v:.3f}" for v in (record.champion_ms,
                                                        record.challenger_ms)]
        applied = self._apply(
            keys=apply_keys(self.alias, cid),
            args=[GROUP, entry_id, LATENCY_SAMPLES, *ms, *pairs])
        if applied and self.metrics is not None:
            self._export(record, verdict)
        return bool(applied)

    def _export(self, record: ShadowRecord, verdict: Judgement) -> None:
        m = self.metrics
        m.queries.labels(self.alias).inc(verdict.queries)
        if verdict.error:
            m.shadow_errors.labels(self.alias).inc()
        m.latency.labels(self.alias, "champion").observe(record.champion_ms / 1000.0)
        if record.challenger_ms is not None:
            m.latency.labels(self.alias, "challenger").observe(record.challenger_ms / 1000.0)
        # The means need only the totals hash, not the latency lists `stats` also reads.
        overlap, recall = _means(_totals(
            self.client.hgetall(challenges.stats_key(self.alias, record.challenge))))
        if overlap is not None:
            m.overlap.labels(self.alias).set(overlap)
        for role in ROLES:
            if recall[role] is not None:
                m.recall.labels(self.alias, role).set(recall[role])


@dataclass(frozen=True, slots=True)
class Stats:
    """A challenge's totals so far: counts, means and latency percentiles (ms)."""

    searches: int
    queries: int
    compared: int
    errors: int
    overlap: float | None
    recall: dict[str, float | None]
    latency_ms: dict[str, dict[str, float | int | None]]

    def to_json(self) -> dict:
        """The stats as a JSON-ready dict."""
        return {"searches": self.searches, "queries": self.queries, "compared": self.compared,
                "errors": self.errors, "overlap": self.overlap, "recall": self.recall,
                "latency_ms": self.latency_ms}


def stats(client: redis.Redis, alias: str, challenge_id: str) -> Stats:
    """Read a challenge's totals from Redis."""
    with client.pipeline(transaction=False) as pipe:
        pipe.hgetall(challenges.stats_key(alias, challenge_id))
        for role in ROLES:
            pipe.lrange(challenges.latency_key(alias, challenge_id, role), 0, -1)
        raw, *samples = pipe.execute()
    f = _totals(raw)
    latency = {}
    for role, values in zip(ROLES, samples, strict=True):
        ms = np.array([float(v) for v in values])
        latency[role] = {"samples": len(ms),
                         "p50": float(np.percentile(ms, 50)) if len(ms) else None,
                         "p99": float(np.percentile(ms, 99)) if len(ms) else None}
    return Stats(int(f.get("searches", 0)), int(f.get("queries", 0)),
                 int(f.get("compared", 0)), int(f.get("errors", 0)), *_means(f), latency)


def _totals(raw: dict[bytes, bytes]) -> dict[str, float]:
    """A stats hash as read from Redis, field -> total."""
    return {k.decode(): float(v) for k, v in raw.items()}


def _means(f: dict[str, float]) -> tuple[float | None, dict[str, float | None]]:
    """Mean overlap@k and each role's mean recall@k from the totals; None where nothing counted."""
    def mean(total: str, n: str) -> float | None:
        return f[total] / f[n] if f.get(n) else None

    return (mean("overlap_sum", "compared"),
            {r: mean(f"{r}_recall_sum", f"{r}_recall_n") for r in ROLES})


class ChallengeWatch:
    """The monitor's task: evaluate the shadow log of every alias that has one."""

    def __init__(self, client: redis.Redis, store: SegmentStore,
                 metrics: ChallengeMetrics) -> None:
        self.client = client
        self.store = store
        self.metrics = metrics
        self._evaluators: dict[str, Evaluator] = {}

    def run_once(self) -> int:
        """One pass over the aliases; the number of records judged."""
        done = 0
        for alias in aliases.list_aliases(self.client):
            if not self.client.exists(routing.log_key(alias.name)):
                continue
            if alias.name not in self._evaluators:
                self._evaluators[alias.name] = Evaluator(self.client, alias.name, self.store,
                                                         metrics=self.metrics)
            done += self._evaluators[alias.name].run_once()
        return done


def monitor_task(settings: Settings, registry: CollectorRegistry,
                 every: float = WATCH_EVERY_S) -> tuple[str, float, Callable[[], int]]:
    """The monitor's periodic evaluation of every shadow log, as a (name, seconds, fn) task."""
    watch = ChallengeWatch(settings.redis_client(), SegmentStore.from_settings(settings),
                           ChallengeMetrics(registry))
    return "challenges", every, watch.run_once
