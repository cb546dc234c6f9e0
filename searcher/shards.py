"""Partition shards: labels, the shard map, which partitions a shard serves, merging its answers.

A shard is a set of a collection's partitions served by its own searchers, which read their
own request stream (`sv:{NAME~LABEL}:q`, searcher/protocol.py). The shard map
(`sv:{NAME}:shards`, its version in `sv:{NAME}:shards:v`) lists the shards clients scatter to;
without one the collection is served whole from `sv:{NAME}:q`. Only the lifecycle writes the
map (lifecycle/shards.py); searchers and clients read it. Everything here is plain logic over
values, so every client (this package's, an asynchronous one) scatters and merges the same way.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ingest.names import CollectionName
from ingest.spec import MAX_PARTITIONS
from searcher import protocol
from searcher.errors import QueryError, SearchError, ShardMapError, ShardTimeout, search_error
from searcher.query import Answer, Consistency, QueryAnswer, QueryRequest

MAP_FORMAT = 1
# A searcher advertises itself this often; an advert older than LIVE_S is a searcher gone.
ADVERT_S = 1.0
LIVE_S = 5.0
# The adverts key expires this long after the last write of any searcher of the collection.
ADVERT_TTL_S = 60
# Bytes of a stored shard map a reader accepts (1024 one-partition shards fit in 16 KiB).
MAX_MAP_BYTES = 64 * 1024
# What a searcher says it does with its stream (Advert.state).
STANDBY, ACTIVE, DRAINING = "standby", "active", "draining"

_RUN = re.compile(r"([0-9]{1,4})(?:-([0-9]{1,4}))?")
_SHARD = re.compile(r"([0-9]{1,4})/([0-9]{1,4})")


def label(partitions: Iterable[int]) -> str:
    """The canonical label of a set of partitions: ascending runs, `0-3` or `4-7,9`."""
    ordered = sorted(set(partitions))
    runs: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        runs.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(runs)


def parse_partitions(text: str) -> tuple[int, ...]:
    """Partitions from a list of numbers and ranges (`4-7,9`), ascending; ShardMapError if bad."""
    if not isinstance(text, str) or not text.strip():
        raise ShardMapError("a partition list is numbers and ranges such as 0-3 or 4-7,9, "
                            "got nothing")
    chosen: set[int] = set()
    for part in text.split(","):
        m = _RUN.fullmatch(part.strip())
        if m is None:
            raise ShardMapError(f"partition list {text[:60]!r}: {part.strip()[:20]!r} is not a "
                                "partition number or a range lo-hi")
        lo = int(m.group(1))
        hi = lo if m.group(2) is None else int(m.group(2))
        if hi < lo:
            raise ShardMapError(f"partition list {text[:60]!r}: range {lo}-{hi} runs backwards")
        if hi >= MAX_PARTITIONS:
            raise ShardMapError(f"partition list {text[:60]!r}: partition {hi} is over the "
                                f"limit of {MAX_PARTITIONS - 1}")
        chosen.update(range(lo, hi + 1))
    return tuple(sorted(chosen))


def parse_shard(text: str) -> tuple[int, int]:
    """`I/N` as (I, N): the I-th of N shards, 1 <= I <= N <= 1024; ShardMapError if bad."""
    m = _SHARD.fullmatch(text.strip()) if isinstance(text, str) else None
    if m is None:
        raise ShardMapError(f"a shard is I/N (the I-th of N shards, e.g. 2/4), got {text!r}")
    index, count = int(m.group(1)), int(m.group(2))
    if not 1 <= index <= count <= MAX_PARTITIONS:
        raise ShardMapError(f"shard {text!r}: I/N needs 1 <= I <= N <= {MAX_PARTITIONS}")
    return index, count


def block(total: int, index: int, count: int) -> tuple[int, ...]:
    """The partitions of shard `index` (1-based) of `count` over `total`: p * count // total.

    Contiguous blocks whose sizes differ by at most one, so a shard's label is one range.
    """
    if not 1 <= count <= total:
        raise ShardMapError(f"{count} shards need 1..{total} of them: the collection has "
                            f"{total} partitions and each shard serves at least one")
    if not 1 <= index <= count:
        raise ShardMapError(f"shard {index}/{count}: I must be 1..{count}")
    return tuple(p for p in range(total) if p * count // total == index - 1)


@dataclass(frozen=True, slots=True)
class Shard:
    """A set of a collection's partitions served together; all of them is the whole collection."""

    partitions: tuple[int, ...]  # ascending, distinct
    total: int  # partitions of the collection

    def __post_init__(self) -> None:
        if not self.partitions:
            raise ShardMapError("a shard serves at least one partition")
        if list(self.partitions) != sorted(set(self.partitions)):
            raise ShardMapError(f"a shard's partitions must be ascending and distinct, got "
                                f"{list(self.partitions)[:16]}")
        if self.partitions[0] < 0 or self.partitions[-1] >= self.total:
            raise ShardMapError(f"shard {label(self.partitions)[:60]} names partitions outside "
                                f"0..{self.total - 1}")

    @classmethod
    def of(cls, partitions: Iterable[int], total: int) -> Shard:
        """The shard of these partitions (any order) out of `total`."""
        return cls(tuple(sorted(set(partitions))), total)

    @property
    def whole(self) -> bool:
        """Whether it serves every partition: the unsharded layout and its keys."""
        return len(self.partitions) == self.total

    @property
    def label(self) -> str | None:
        """The label in its keys (`4-7`), None for the whole collection (`sv:{NAME}:q`)."""
        return None if self.whole else label(self.partitions)

    @property
    def name(self) -> str:
        """How messages name it: its label, or `all`."""
        return self.label or "all"


@dataclass(frozen=True, slots=True)
class Selection:
    """What a searcher was told to serve: shard I of N, a list of partitions, or everything."""

    index: int | None = None
    count: int | None = None
    partitions: tuple[int, ...] | None = None

    @classmethod
    def parse(cls, shard: str | None = None, partitions: str | None = None) -> Selection:
        """From `--shard I/N` or `--partitions 4-7,9` (not both); neither: every partition."""
        if shard is not None and partitions is not None:
            raise ShardMapError("give a shard (I/N) or a partition list, not both")
        if shard is not None:
            index, count = parse_shard(shard)
            return cls(index, count)
        if partitions is not None:
            return cls(partitions=parse_partitions(partitions))
        return cls()

    def resolve(self, total: int) -> Shard:
        """The shard this selection makes of a collection with `total` partitions."""
        if self.index is not None and self.count is not None:
            return Shard(block(total, self.index, self.count), total)
        if self.partitions is not None:
            beyond = [p for p in self.partitions if p >= total]
            if beyond:
                raise ShardMapError(f"partition(s) {label(beyond)} do not exist: the collection "
                                    f"has {total} partitions (0..{total - 1})")
            return Shard(self.partitions, total)
        return Shard(tuple(range(total)), total)


@dataclass(frozen=True, slots=True)
class ShardMap:
    """The shards clients scatter a collection's requests to, as of one version."""

    version: int
    partitions: int
    shards: tuple[Shard, ...]
    updated_at: float = 0.0
    actor: str = ""

    def __post_init__(self) -> None:
        seen: dict[int, str] = {}
        for shard in self.shards:
            if shard.total != self.partitions:
                raise ShardMapError(f"shard {shard.name} counts {shard.total} partitions, the "
                                    f"map {self.partitions}")
            for p in shard.partitions:
                if p in seen:
                    raise ShardMapError(f"partition {p} is in two shards ({seen[p]} and "
                                        f"{shard.name})")
                seen[p] = shard.name
        missing = [p for p in range(self.partitions) if p not in seen]
        if missing:
            raise ShardMapError(f"partition(s) {label(missing)} are in no shard: every "
                                "partition must be served")

    @classmethod
    def plan(cls, total: int, count: int, version: int, *, actor: str = "",
             updated_at: float | None = None) -> ShardMap:
        """`count` contiguous shards over `total` partitions (`block`), as map `version`."""
        shards = tuple(Shard(block(total, i, count), total) for i in range(1, count + 1))
        return cls(version, total, shards, time.time() if updated_at is None else updated_at,
                   actor)

    def names(self, shard: Shard) -> bool:
        """Whether this map lists exactly that shard (its partition set)."""
        return any(s.partitions == shard.partitions for s in self.shards)

    def owner(self, partition: int) -> Shard:
        """The shard that serves `partition`."""
        for shard in self.shards:
            if partition in shard.partitions:
                return shard
        raise KeyError(partition)

    def same_shards(self, other: ShardMap | None) -> bool:
        """Whether `other` lists the same shards (whatever its version)."""
        return other is not None and {s.partitions for s in self.shards} == {
            s.partitions for s in other.shards}

    def to_json(self) -> str:
        """The JSON stored at `sv:{NAME}:shards`."""
        return json.dumps({"format": MAP_FORMAT, "version": self.version,
                           "partitions": self.partitions,
                           "shards": [{"partitions": list(s.partitions)} for s in self.shards],
                           "updated_at": self.updated_at, "actor": self.actor},
                          separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: bytes | str) -> ShardMap:
        """Parse a stored map; ShardMapError naming what is wrong with a malformed one."""
        if len(raw) > MAX_MAP_BYTES:
            raise ShardMapError(f"shard map is {len(raw)} bytes, over the limit of "
                                f"{MAX_MAP_BYTES}")
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise ShardMapError(f"shard map is not JSON: {str(exc)[:120]}") from None
        if not isinstance(doc, dict):
            raise ShardMapError("shard map must be a JSON object")
        if doc.get("format") != MAP_FORMAT:
            raise ShardMapError(f"shard map format must be {MAP_FORMAT}, got "
                                f"{str(doc.get('format'))[:20]!r}")
        version, total, shards = doc.get("version"), doc.get("partitions"), doc.get("shards")
        if not _whole(version, 1, 2**53):
            raise ShardMapError(f"shard map version must be an integer >= 1, got "
                                f"{str(version)[:20]!r}")
        if not _whole(total, 1, MAX_PARTITIONS):
            raise ShardMapError(f"shard map partitions must be 1..{MAX_PARTITIONS}, got "
                                f"{str(total)[:20]!r}")
        if not isinstance(shards, list) or not 1 <= len(shards) <= total:
            raise ShardMapError(f"shard map shards must be a list of 1..{total} shards")
        parsed = []
        for i, entry in enumerate(shards):
            ps = entry.get("partitions") if isinstance(entry, dict) else None
            if not isinstance(ps, list) or not ps or not all(_whole(p, 0, total - 1)
                                                             for p in ps):
                raise ShardMapError(f"shard map shard {i}: partitions must be a non-empty "
                                    f"list of integers 0..{total - 1}")
            parsed.append(Shard(tuple(ps), total))
        at, actor = doc.get("updated_at", 0.0), doc.get("actor", "")
        return cls(version, total, tuple(parsed),
                   float(at) if isinstance(at, (int, float)) and math.isfinite(at) else 0.0,
                   actor if isinstance(actor, str) else "")


def _whole(value: Any, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def parse_version(raw: bytes | str | None) -> int:
    """The value of `sv:{NAME}:shards:v`: 0 when absent; ShardMapError when not a count."""
    if raw is None:
        return 0
    text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw)
    if not text.isdigit() or len(text) > 16:
        raise ShardMapError(f"shard map version {text[:20]!r} is not a non-negative integer")
    return int(text)


def read_map(client: Any, collection: str | CollectionName) -> ShardMap | None:
    """The collection's shard map, None when it has none; ShardMapError when it is malformed."""
    version_raw, raw = client.mget([protocol.shard_version_key(collection),
                                    protocol.shard_map_key(collection)])
    return map_of(version_raw, raw)


def map_of(version_raw: bytes | str | None, raw: bytes | str | None) -> ShardMap | None:
    """The map from the values of its two keys, read together; they must agree."""
    version = parse_version(version_raw)
    if raw is None:
        if version:
            raise ShardMapError(f"shard map version is {version} but the map is missing")
        return None
    parsed = ShardMap.from_json(raw)
    if parsed.version != version:
        raise ShardMapError(f"shard map holds version {parsed.version}, its version key "
                            f"{version}")
    return parsed


@dataclass(frozen=True, slots=True)
class Layout:
    """Where a client sends a collection's requests: one stream, or one per shard."""

    version: int  # of the shard map it follows; 0 without one
    shards: tuple[Shard, ...] = ()  # empty: the whole collection's stream
    metric: str = "l2"  # how the shards' answers are merged

    @classmethod
    def of(cls, shard_map: ShardMap | None, metric: str) -> Layout:
        """The layout a map gives: a map of one shard is the whole collection."""
        if shard_map is None:
            return cls(0, (), metric)
        shards = () if len(shard_map.shards) == 1 else shard_map.shards
        return cls(shard_map.version, shards, metric)


def split(request: QueryRequest, shards: Sequence[Shard]) -> list[tuple[Shard, QueryRequest]]:
    """The request each shard gets: its own reply key, and only its partitions' session offsets."""
    out = []
    for shard in shards:
        out.append((shard, replace(
            request, consistency=consistency_for(request.consistency, shard),
            reply_key=protocol.reply_key(request.collection, request.request_id, shard.label))))
    return out


def consistency_for(consistency: Consistency, shard: Shard) -> Consistency:
    """The level one shard must meet: a session's offsets of the partitions it serves only.

    `strong` and `bounded` hold per shard as they are: each shard meets them for its
    partitions, so the merged answer meets them for all.
    """
    if consistency.level != "session" or shard.whole:
        return consistency
    own = set(shard.partitions)
    return Consistency("session", offsets={p: o for p, o in (consistency.offsets or {}).items()
                                           if p in own})


def merge(answers: Sequence[QueryAnswer], k: int, metric: str) -> QueryAnswer:
    """The k best hits of each query over every shard's answer, best first.

    Equal scores are ordered by id, as a single searcher orders them, so the merged answer
    equals one searcher's over the same rows. Empty slots (an id of None, a NaN score) are
    skipped; a query with fewer than k hits in all keeps fewer. Offsets are the union (each
    shard reports its own partitions), timings the slowest shard's.
    """
    if not answers:
        raise ValueError("nothing to merge")
    n = len(answers[0].ids)
    if any(len(a.ids) != n for a in answers):
        raise ValueError("answers differ in their number of queries")
    similar = metric != "l2"  # ip and cosine: higher is better
    with_metadata = any(a.metadata is not None for a in answers)
    ids: list[list[str]] = []
    scores: list[list[float]] = []
    metadata: list[list[dict | None]] = []
    for i in range(n):
        hits: list[tuple[float, str, float, dict | None]] = []
        for a in answers:
            row_meta = a.metadata[i] if a.metadata is not None else None
            for j, (hit, score) in enumerate(zip(a.ids[i], a.scores[i], strict=True)):
                if hit is None or score is None or math.isnan(score):
                    continue
                meta = row_meta[j] if row_meta is not None and j < len(row_meta) else None
                hits.append((-score if similar else score, hit, score, meta))
        hits.sort(key=lambda h: (h[0], h[1]))
        best = hits[:k]
        ids.append([h[1] for h in best])
        scores.append([h[2] for h in best])
        metadata.append([h[3] for h in best])
    offsets: dict[int, int] = {}
    timings: dict[str, float] = {}
    for a in answers:
        offsets.update(a.offsets)
        for key, value in a.timings_ms.items():
            timings[key] = max(value, timings.get(key, value))
    return QueryAnswer(ids, scores, metadata if with_metadata else None, offsets, timings)


@dataclass(frozen=True, slots=True)
class Gathered:
    """The merged answer of a scattered search, and the shards it lacks (partial results)."""

    answer: Any  # a QueryAnswer, or what the `merge` given to `combine` makes
    missing: tuple[str, ...] = ()  # labels of the shards that gave no answer

    @property
    def partial(self) -> bool:
        """Whether some shard's hits are missing."""
        return bool(self.missing)


# One shard's outcome: its answer, its error reply, or None when nothing came in time.
Outcome = Answer | QueryError | None


def combine(collection: str, outcomes: Sequence[tuple[Shard, Outcome]], k: int, metric: str, *,
            partial: bool = False, waited_s: float = 0.0,
            merger: Callable[[list[Any]], Any] | None = None) -> Gathered:
    """Merge every shard's answer; raise for a shard that failed unless `partial` allows it.

    Without `partial`, the first failed shard (in map order) fails the search: an error reply
    as SearchError naming the shard, silence as ShardTimeout. With `partial`, the failed
    shards are left out and named, unless every shard failed. `merger` merges answers of
    another kind than a search's (a get's, a count's); by default they are merged by score.
    """
    answered = [o for _, o in outcomes if o is not None and not isinstance(o, QueryError)]
    failed = [(s, o) for s, o in outcomes if o is None or isinstance(o, QueryError)]
    if failed and (not partial or not answered):
        shard, outcome = failed[0]
        raise _failure(collection, shard, outcome, waited_s)
    merged = merge(answered, k, metric) if merger is None else merger(answered)
    return Gathered(merged, tuple(s.name for s, _ in failed))


def _failure(collection: str, shard: Shard, outcome: Outcome,
             waited_s: float) -> SearchError | ShardTimeout:
    """The error of one shard that gave no answer, naming it."""
    if isinstance(outcome, QueryError):
        return search_error(outcome.code, f"shard {shard.name} of {collection}: "
                                          f"{outcome.message}")
    stream = protocol.queue_key(collection, shard.label)
    return ShardTimeout(
        f"shard {shard.name} of {collection!r} (stream {stream}) did not answer within "
        f"{waited_s:g}s: is `streamvec searcher --collection {collection} --partitions "
        f"{shard.name}` running?", collection=collection, shard=shard.name)


@dataclass(frozen=True, slots=True)
class Advert:
    """What one searcher says of itself in `sv:{NAME}:searchers`, refreshed every ADVERT_S."""

    replica: str
    shard: str | None  # its label; None when it serves the whole collection
    partitions: tuple[int, ...]
    state: str  # STANDBY (its shard is in no active map yet), ACTIVE or DRAINING
    ready: bool  # its tail reached the log end of every partition and nothing is wrong
    reason: str | None  # why not ready
    map_version: int  # the shard map version it last read
    segments: dict[int, int] = field(default_factory=dict)  # partition -> segments served
    positions: dict[int, int] = field(default_factory=dict)  # partition -> offset served up to
    at: float = 0.0  # unix time of the advert

    @property
    def key(self) -> str:
        """Its field in the hash: the shard and the replica, unique per process."""
        return advert_field(self.shard, self.replica)

    def to_json(self) -> str:
        """The JSON stored in its field."""
        return json.dumps({"replica": self.replica, "shard": self.shard,
                           "partitions": list(self.partitions), "state": self.state,
                           "ready": self.ready, "reason": self.reason,
                           "map_version": self.map_version,
                           "segments": {str(p): n for p, n in self.segments.items()},
                           "positions": {str(p): o for p, o in self.positions.items()},
                           "at": self.at}, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: bytes | str) -> Advert:
        """Parse a stored advert; ValueError (or KeyError, TypeError) when it is malformed."""
        doc = json.loads(raw)
        return cls(str(doc["replica"]), None if doc["shard"] is None else str(doc["shard"]),
                   tuple(int(p) for p in doc["partitions"]), str(doc["state"]),
                   bool(doc["ready"]), None if doc["reason"] is None else str(doc["reason"]),
                   int(doc["map_version"]),
                   {int(p): int(n) for p, n in doc["segments"].items()},
                   {int(p): int(o) for p, o in doc["positions"].items()}, float(doc["at"]))


def advert_field(shard: str | None, replica: str) -> str:
    """The hash field of one searcher's advert: `<label or all>/<replica>`."""
    return f"{shard or 'all'}/{replica}"


def read_adverts(client: Any, collection: str | CollectionName, *,
                 now: float | None = None, live_s: float = LIVE_S) -> list[Advert]:
    """The adverts of the collection's live searchers (refreshed within `live_s`), by field."""
    now = time.time() if now is None else now
    out = []
    for _, raw in sorted(client.hgetall(protocol.searchers_key(collection)).items()):
        try:
            advert = Advert.from_json(raw)
        except (ValueError, KeyError, TypeError, AttributeError):
            continue  # a malformed advert says nothing about a live searcher
        if now - advert.at <= live_s:
            out.append(advert)
    return out


def serving(adverts: Iterable[Advert], shard: Shard) -> list[Advert]:
    """The adverts of searchers that serve exactly `shard` and are ready."""
    return [a for a in adverts if a.partitions == shard.partitions and a.ready]


def session_offsets(offsets: Mapping[int, int], served: Iterable[int],
                    total: int) -> dict[int, int]:
    """The session offsets a shard waits for: those of partitions it serves, or none that exist.

    A partition the collection has but this shard does not serve is another shard's to wait
    for; one the collection lacks is kept, so the request times out saying so.
    """
    own = set(served)
    return {p: o for p, o in offsets.items() if p in own or p >= total}
