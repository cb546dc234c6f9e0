"""The Redis query protocol, its one home: request fields, the JSON reply and the keys they use."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from ingest.names import CollectionName
from ingest.record import MAX_ID_BYTES
from ingest.spec import MAX_DIM, MAX_PARTITIONS
from searcher import filters
from searcher.errors import ERROR_CODES, QueryError
from searcher.query import (
    COUNT,
    GET,
    MAX_K,
    OPS,
    SEARCH,
    Answer,
    Consistency,
    CountAnswer,
    Filter,
    FoundRow,
    GetAnswer,
    QueryAnswer,
    QueryRequest,
    check_params,
)

VERSION = "1"
QUEUE_MAXLEN = 100_000  # approximate (MAXLEN ~): old requests fall off a stream nobody reads
MAX_QUERIES = 1024
# Ids of one get, and the bytes of its `ids` field (1024 ids of 256 bytes, escaped, fit).
MAX_GET_IDS, MAX_IDS_BYTES = 1024, 2 * 1024 * 1024
# A filter's budgets (searcher/filters.py): conditions, values of one list, and/or/not levels.
MAX_FILTER_FIELDS, MAX_FILTER_VALUES = filters.MAX_FILTER_CLAUSES, filters.MAX_FILTER_VALUES
MAX_FILTER_DEPTH = filters.MAX_FILTER_DEPTH
DEFAULT_TIMEOUT_MS, MAX_TIMEOUT_MS, MAX_BOUND_MS = 5000, 60_000, 86_400_000
MAX_VECTOR_BYTES, MAX_JSON_BYTES, REPLY_TTL_S = 64 * 1024 * 1024, 64 * 1024, 60
# Longer than any client waits (timeout + margin), so a late duplicate still finds the marker.
DONE_TTL_S = 600
# A client waits for a reply this long past its request's timeout, counted from when it adds
# the request; a searcher drops, unexecuted, a request read later than that.
GIVE_UP_MARGIN_MS = 2000

_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_INT = re.compile(rb"-?[0-9]{1,18}")
_MS = re.compile(rb"[0-9]{1,16}(\.[0-9]{1,6})?")
# A score threshold: a decimal or exponent number as Python's repr writes a float.
_FLOAT = re.compile(rb"-?[0-9]{1,24}(\.[0-9]{1,24})?([eE][-+]?[0-9]{1,3})?")
_PARTITION = re.compile(r"0|[1-9][0-9]{0,3}")
_MAX_OFFSET = 2**63 - 1


def _name(collection: str | CollectionName) -> CollectionName:
    return CollectionName.parse(str(collection))


# Between a collection's name and a shard's partitions in a hash tag (`sv:{NAME~4-7}:q`): no
# collection name holds it, so a shard's keys never meet another collection's.
SHARD_SEP = "~"
# A shard's label: its partitions as ascending runs, `0-3` or `4-7,9` (searcher/shards.py).
_LABEL = re.compile(r"(0|[1-9][0-9]{0,3})(-(0|[1-9][0-9]{0,3}))?"
                    r"(,(0|[1-9][0-9]{0,3})(-(0|[1-9][0-9]{0,3}))?){0,1023}")


def _prefix(collection: str | CollectionName, shard: str | None) -> str:
    """`sv:{NAME}:` for the whole collection, `sv:{NAME~LABEL}:` for the shard LABEL."""
    name = _name(collection)
    if shard is None:
        return name.key_prefix
    if not _LABEL.fullmatch(shard):
        raise ValueError(f"shard label {shard[:40]!r} is not a list of partitions and "
                         "ranges such as 0-3 or 4-7,9")
    return f"sv:{{{name}{SHARD_SEP}{shard}}}:"


def queue_key(collection: str | CollectionName, shard: str | None = None) -> str:
    """The stream that carries requests: `sv:{NAME}:q`, or `sv:{NAME~LABEL}:q` for a shard."""
    return _prefix(collection, shard) + "q"


def reply_key(collection: str | CollectionName, request_id: str,
              shard: str | None = None) -> str:
    """The list a request's reply is pushed to: `sv:{NAME}:r:<id>` (a shard's: its own tag)."""
    return _prefix(collection, shard) + f"r:{request_id}"


def done_key(collection: str | CollectionName, request_id: str,
             shard: str | None = None) -> str:
    """The marker that makes a request's reply happen once: `sv:{NAME}:done:<id>`."""
    return _prefix(collection, shard) + f"done:{request_id}"


def shard_map_key(collection: str | CollectionName) -> str:
    """The collection's shard map, JSON (searcher/shards.py): `sv:{NAME}:shards`."""
    return _name(collection).key("shards")


def shard_version_key(collection: str | CollectionName) -> str:
    """The shard map's version, an integer read on its own: `sv:{NAME}:shards:v`."""
    return _name(collection).key("shards:v")


def searchers_key(collection: str | CollectionName) -> str:
    """Where the collection's searchers advertise themselves: `sv:{NAME}:searchers`."""
    return _name(collection).key("searchers")


def _bad(field: str, problem: str) -> QueryError:
    return QueryError("malformed", f"field {field!r}: {problem}")


def _show(raw: bytes | None) -> str:
    return "nothing (it is required)" if raw is None else repr(raw[:40]) + "..." * (len(raw) > 40)


def _b(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")


def _fields(raw: Any) -> dict[str, bytes]:
    """Field name -> value; a name that is not ASCII cannot be one of ours and never matches."""
    if not isinstance(raw, Mapping) or not all(
            isinstance(x, (bytes, str)) for pair in raw.items() for x in pair):
        raise QueryError("malformed", "a request is a map of field names to values, all bytes")
    return {_b(k).decode("ascii", "replace"): _b(v) for k, v in raw.items()}


def _int(fields: dict[str, bytes], name: str, lo: int, hi: int, default: int | None = None) -> int:
    raw = fields.get(name)
    if raw is None and default is not None:
        return default
    if raw is None or not _INT.fullmatch(raw):
        raise _bad(name, f"must be a decimal integer, got {_show(raw)}")
    value = int(raw)
    if not lo <= value <= hi:
        raise _bad(name, f"must be {lo}..{hi}, got {value}")
    return value


def _json(name: str, raw: bytes) -> Any:
    if len(raw) > MAX_JSON_BYTES:
        raise _bad(name, f"is {len(raw)} bytes, over the limit of {MAX_JSON_BYTES}")
    try:
        # NaN and Infinity load as floats, which no field of ours accepts.
        return json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise _bad(name, f"is not valid JSON ({str(exc)[:120]})") from None


def parse_filter(obj: Any) -> Filter | None:
    """Validate a filter object of the filter language (searcher/filters.py); None for none."""
    try:
        expr = filters.parse(obj)
    except filters.FilterError as exc:
        raise _bad("filter", str(exc)) from None
    return None if expr is None else Filter(expr)


def _whole(value: Any, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def parse_consistency(obj: Any) -> Consistency:
    """Validate a consistency object (`{"level": ...}` plus the level's one parameter)."""
    if not isinstance(obj, Mapping) or not isinstance(obj.get("level"), str):
        raise _bad("consistency", "must be a JSON object with a string \"level\"")
    level, extra = obj["level"], sorted(str(k) for k in obj if k != "level")
    params = {"eventual": [], "strong": [], "bounded": ["bound_ms"], "session": ["offsets"]}
    if level not in params:
        raise _bad("consistency", f"unknown level {level[:40]!r}; "
                   "expected eventual, bounded, session or strong")
    if extra != params[level]:
        wanted = " and ".join(repr(p) for p in params[level]) or "no other key"
        raise _bad("consistency", f"level {level!r} takes {wanted}, got {extra[:8]}")
    if level == "bounded":
        if not _whole(obj["bound_ms"], 0, MAX_BOUND_MS):
            raise _bad("consistency", f"bound_ms must be an integer 0..{MAX_BOUND_MS}")
        return Consistency("bounded", bound_ms=obj["bound_ms"])
    if level == "session":
        offsets = obj["offsets"]
        if not isinstance(offsets, Mapping) or not all(
                isinstance(p, str) and _PARTITION.fullmatch(p) and int(p) < MAX_PARTITIONS
                and _whole(o, 0, _MAX_OFFSET) for p, o in offsets.items()):
            raise _bad("consistency", "offsets must map partitions (\"0\".."
                       f"\"{MAX_PARTITIONS - 1}\") to offsets >= 0")
        return Consistency("session", offsets={int(p): o for p, o in offsets.items()})
    return Consistency(level)


def request_id(fields: Any) -> str | None:
    """The request's id if it is well formed (so an error reply can be addressed), else None."""
    try:
        raw = _fields(fields).get("id", b"")
    except QueryError:
        return None
    text = raw.decode("ascii", "replace")
    return text if _ID.fullmatch(text) else None


def decode_request(collection: str | CollectionName, fields: Any, *, dim: int,
                   shard: str | None = None) -> QueryRequest:
    """Decode and validate a stream entry; any problem is a QueryError and nothing else.

    `shard` is the label of the shard whose stream it came from (None: the whole collection's).
    """
    name = _name(collection)
    f = _fields(fields)
    if f.get("v") != VERSION.encode():
        raise _bad("v", f"protocol version must be {VERSION!r}, got {_show(f.get('v'))}")
    rid = request_id(f)
    if rid is None:
        raise _bad("id", f"must match [A-Za-z0-9_.:-]{{1,64}}, got {_show(f.get('id'))}")
    expected = reply_key(name, rid, shard)
    if f.get("reply") != expected.encode():
        raise _bad("reply", f"must be {expected!r}, got {_show(f.get('reply'))}")
    op = f.get("op", SEARCH.encode()).decode("ascii", "replace")
    if op not in OPS:
        raise _bad("op", f"must be one of {', '.join(OPS)}, got {_show(f.get('op'))}")
    if op != SEARCH:
        return _decode_lookup(name, f, rid, expected, op, dim)
    k = _int(f, "k", -(10**18), 10**18)
    n = _int(f, "n", 1, MAX_QUERIES)
    req_dim = _int(f, "dim", 1, MAX_DIM)
    vectors = _vectors(f, n, req_dim)
    flt = parse_filter(_json("filter", f["filter"])) if "filter" in f else None
    consistency = parse_consistency(_json("consistency", f["consistency"])) \
        if "consistency" in f else Consistency()
    timeout_ms = _int(f, "timeout_ms", 1, MAX_TIMEOUT_MS, DEFAULT_TIMEOUT_MS)
    meta = f.get("meta", b"0")
    if meta not in (b"0", b"1"):
        raise _bad("meta", f"must be '0' or '1', got {_show(meta)}")
    sent = f.get("sent_ms")
    if sent is not None and not _MS.fullmatch(sent):
        raise _bad("sent_ms", f"must be unix milliseconds, got {_show(sent)}")
    # Search parameters: parsed here, their bounds checked after k's (bad_params).
    ef = _int(f, "ef", -(10**18), 10**18) if "ef" in f else None
    nprobe = _int(f, "nprobe", -(10**18), 10**18) if "nprobe" in f else None
    threshold = _threshold(f["score_threshold"]) if "score_threshold" in f else None
    if req_dim != dim:
        raise QueryError("wrong_dim", f"query vectors have dim {req_dim}, collection {name} "
                                      f"has dim {dim}")
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        raise QueryError("not_finite", f"query vector {int(np.argmin(finite))} holds NaN or Inf")
    if not 1 <= k <= MAX_K:
        raise QueryError("bad_k", f"k must be 1..{MAX_K}, got {k}")
    refused = check_params(k, ef, nprobe)
    if refused is not None:
        raise refused
    return QueryRequest(rid, str(name), vectors, k, flt, consistency, timeout_ms, meta == b"1",
                        expected, None if sent is None else float(sent), ef=ef, nprobe=nprobe,
                        score_threshold=threshold)


def _decode_lookup(name: CollectionName, f: dict[str, bytes], rid: str, reply: str, op: str,
                   dim: int) -> QueryRequest:
    """A get (its `ids`) or a count (its optional `filter`): no vectors, no k."""
    ids: tuple[str, ...] = ()
    flt = None
    if op == GET:
        ids = parse_ids(f.get("ids"))
    elif "filter" in f:
        flt = parse_filter(_json("filter", f["filter"]))
    consistency = parse_consistency(_json("consistency", f["consistency"])) \
        if "consistency" in f else Consistency()
    timeout_ms = _int(f, "timeout_ms", 1, MAX_TIMEOUT_MS, DEFAULT_TIMEOUT_MS)
    sent = f.get("sent_ms")
    if sent is not None and not _MS.fullmatch(sent):
        raise _bad("sent_ms", f"must be unix milliseconds, got {_show(sent)}")
    return QueryRequest(rid, str(name), np.zeros((0, dim), np.float32), 0, flt, consistency,
                        timeout_ms, False, reply, None if sent is None else float(sent), op=op,
                        ids=ids)


def parse_ids(raw: bytes | None) -> tuple[str, ...]:
    """A get's `ids` field: a JSON list of 1..MAX_GET_IDS distinct ids, each 1..256 UTF-8 bytes
    without NUL (the record's id rule); QueryError `malformed` naming the problem."""
    if raw is None:
        raise _bad("ids", "a get needs a JSON list of ids, got nothing (it is required)")
    if len(raw) > MAX_IDS_BYTES:
        raise _bad("ids", f"is {len(raw)} bytes, over the limit of {MAX_IDS_BYTES}")
    try:
        value = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise _bad("ids", f"is not valid JSON ({str(exc)[:120]})") from None
    return check_ids(value, "field 'ids': ")


def check_ids(value: Any, where: str = "") -> tuple[str, ...]:
    """Ids of a get, as a tuple in the order given with repeats dropped; QueryError if bad."""
    if not isinstance(value, (list, tuple)) or not 1 <= len(value) <= MAX_GET_IDS:
        raise QueryError("malformed", f"{where}ids must be a list of 1..{MAX_GET_IDS} ids, got "
                                      f"{_count(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not 1 <= _utf8_size(item) <= MAX_ID_BYTES or (
                "\x00" in item):
            raise QueryError("malformed", f"{where}id {i} must be a string of 1..{MAX_ID_BYTES} "
                                          f"UTF-8 bytes without NUL, got {repr(item)[:60]}")
    return tuple(dict.fromkeys(value))


def _utf8_size(text: str) -> int:
    """Bytes of `text` in UTF-8; 0 for text UTF-8 cannot hold (a lone surrogate)."""
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return 0


def _count(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return f"{len(value)}"
    return f"a {type(value).__name__}"


def _threshold(raw: bytes) -> float:
    """A search's `score_threshold`: a finite decimal number."""
    if not _FLOAT.fullmatch(raw):
        raise _bad("score_threshold", f"must be a decimal number, got {_show(raw)}")
    value = float(raw)
    if not np.isfinite(value):
        raise _bad("score_threshold", f"must be finite, got {_show(raw)}")
    return value


def _vectors(fields: dict[str, bytes], n: int, dim: int) -> np.ndarray:
    raw, expected = fields.get("vectors"), n * dim * 4
    if raw is None or len(raw) != expected or expected > MAX_VECTOR_BYTES:
        got = "nothing" if raw is None else f"{len(raw)}"
        raise _bad("vectors", f"must be n*dim*4 = {expected} bytes of float32 (at most "
                   f"{MAX_VECTOR_BYTES}), got {got}")
    # A copy, native and writable: the engine may normalise queries in place.
    return np.frombuffer(raw, dtype="<f4").reshape(n, dim).astype(np.float32)


def encode_request(request: QueryRequest, shard: str | None = None) -> dict[str, bytes]:
    """The stream entry fields of a request; its reply key is derived from collection and id.

    `shard` is the label of the shard it is sent to (None: the whole collection's stream).
    """
    if request.op != SEARCH:
        return _encode_lookup(request, shard)
    vectors = np.ascontiguousarray(request.vectors, dtype="<f4")
    if vectors.ndim != 2:
        raise ValueError(f"request vectors must be 2-D (n, dim), not {vectors.ndim}-D")
    fields = {
        "v": VERSION, "id": request.request_id,
        "reply": reply_key(request.collection, request.request_id, shard),
        "k": str(request.k), "dim": str(vectors.shape[1]), "n": str(vectors.shape[0]),
        "consistency": json.dumps(request.consistency.to_json(), separators=(",", ":")),
        "timeout_ms": str(request.timeout_ms), "meta": "1" if request.with_metadata else "0",
    }
    if request.filter:
        fields["filter"] = json.dumps(request.filter.to_json(), separators=(",", ":"),
                                      allow_nan=False)
    if request.sent_at_ms is not None:
        fields["sent_ms"] = f"{request.sent_at_ms:.3f}"
    if request.ef is not None:
        fields["ef"] = str(request.ef)
    if request.nprobe is not None:
        fields["nprobe"] = str(request.nprobe)
    if request.score_threshold is not None:
        fields["score_threshold"] = repr(float(request.score_threshold))
    out = {k: v.encode() for k, v in fields.items()}
    out["vectors"] = vectors.tobytes()
    return out


def _encode_lookup(request: QueryRequest, shard: str | None) -> dict[str, bytes]:
    """The stream entry fields of a get or a count."""
    fields = {
        "v": VERSION, "id": request.request_id, "op": request.op,
        "reply": reply_key(request.collection, request.request_id, shard),
        "consistency": json.dumps(request.consistency.to_json(), separators=(",", ":")),
        "timeout_ms": str(request.timeout_ms),
    }
    if request.op == GET:
        fields["ids"] = json.dumps(list(request.ids), separators=(",", ":"), ensure_ascii=False)
    elif request.filter:
        fields["filter"] = json.dumps(request.filter.to_json(), separators=(",", ":"),
                                      allow_nan=False)
    if request.sent_at_ms is not None:
        fields["sent_ms"] = f"{request.sent_at_ms:.3f}"
    return {k: v.encode("utf-8") for k, v in fields.items()}


def encode_reply(request_id: str, result: Answer | QueryError, *,
                 with_metadata: bool = False, timings_ms: Mapping[str, float] | None = None
                 ) -> bytes:
    """The JSON reply document; raises ValueError for an answer JSON cannot carry (NaN scores).

    A search's reply is as it was before gets and counts existed (it names no `op`); a get's
    and a count's carry `op` and their own fields.
    """
    if isinstance(result, QueryError):
        doc: dict[str, Any] = {"v": 1, "id": request_id, "ok": False,
                               "error": {"code": result.code, "message": result.message}}
    elif isinstance(result, GetAnswer):
        doc = {"v": 1, "id": request_id, "ok": True, "op": GET,
               "rows": [{"id": r.id, "vector": [float(x) for x in np.asarray(r.vector).tolist()],
                         "metadata": r.metadata, "partition": int(r.partition),
                         "offset": int(r.offset)} for r in result.rows]}
    elif isinstance(result, CountAnswer):
        doc = {"v": 1, "id": request_id, "ok": True, "op": COUNT, "count": int(result.count)}
    else:
        ids = [[str(i) for i in row] for row in result.ids]
        doc = {"v": 1, "id": request_id, "ok": True, "ids": ids,
               "scores": [[float(s) for s in row] for row in result.scores]}
        if with_metadata:
            doc["metadata"] = result.metadata if result.metadata is not None else [
                [None] * len(row) for row in ids]
    if not isinstance(result, QueryError):
        doc["offsets"] = {str(p): int(o) for p, o in result.offsets.items()}
        times = {**result.timings_ms, **(timings_ms or {})}
        doc["timings_ms"] = {k: round(float(v), 3) for k, v in times.items()}
    if isinstance(result, QueryAnswer) and result.filter is not None:
        doc["filter"] = result.filter
    return json.dumps(doc, separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode()


def decode_reply(data: bytes | str) -> tuple[str, Answer | QueryError]:
    """Parse a reply into (request id, answer or error); ValueError if it breaks the protocol.

    The answer's kind follows the reply's `op` (none: a search).
    """
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"reply is not JSON: {exc}") from None
    if not (isinstance(doc, dict) and doc.get("v") == 1 and isinstance(doc.get("id"), str)
            and isinstance(doc.get("ok"), bool)):
        raise ValueError("reply lacks v=1, a string id or a boolean ok")
    if not doc["ok"]:
        err = doc.get("error")
        if not (isinstance(err, dict) and isinstance(err.get("code"), str)
                and isinstance(err.get("message"), str)):
            raise ValueError("error reply lacks error.code and error.message strings")
        code, message = err["code"], err["message"]
        if code not in ERROR_CODES:  # a newer searcher's code: keep it in the message
            code, message = "internal", f"{code}: {message}"
        return doc["id"], QueryError(code, message)
    offsets, timings = doc.get("offsets", {}), doc.get("timings_ms", {})
    if not (isinstance(offsets, dict) and isinstance(timings, dict)
            and all(_PARTITION.fullmatch(p) and _whole(o, 0, _MAX_OFFSET)
                    for p, o in offsets.items()) and _rows([list(timings.values())], _number)):
        raise ValueError("reply offsets or timings_ms are not maps of numbers")
    positions = {int(p): o for p, o in offsets.items()}
    times = {k: float(v) for k, v in timings.items()}
    op = doc.get("op", SEARCH)
    if op == GET:
        return doc["id"], GetAnswer(_found(doc.get("rows")), positions, times)
    if op == COUNT:
        if not _whole(doc.get("count"), 0, _MAX_OFFSET):
            raise ValueError("count reply lacks a count: an integer >= 0")
        return doc["id"], CountAnswer(doc["count"], positions, times)
    if op != SEARCH:
        raise ValueError(f"reply op {str(op)[:20]!r} is not one of {', '.join(OPS)}")
    ids = _rows(doc.get("ids"), lambda v: isinstance(v, str), "ids")
    scores = _rows(doc.get("scores"), _number, "scores")
    metadata = None if "metadata" not in doc else _rows(
        doc["metadata"], lambda v: v is None or isinstance(v, dict), "metadata")
    shape = [len(row) for row in ids]
    if [len(r) for r in scores] != shape or (metadata and [len(r) for r in metadata] != shape):
        raise ValueError("reply ids, scores and metadata differ in shape")
    plan = doc.get("filter")
    if plan is not None and not (isinstance(plan, dict) and all(
            isinstance(v, (int, float, str, dict)) for v in plan.values())):
        raise ValueError("reply filter is not an object")
    return doc["id"], QueryAnswer(ids, [[float(s) for s in r] for r in scores], metadata,
                                  positions, times, plan)


def _found(rows: Any) -> list[FoundRow]:
    """A get reply's rows; ValueError naming what breaks the protocol."""
    if not isinstance(rows, list):
        raise ValueError("get reply lacks rows: a list")
    out = []
    for i, row in enumerate(rows):
        if not (isinstance(row, dict) and isinstance(row.get("id"), str)
                and isinstance(row.get("vector"), list) and row["vector"]
                and all(_number(x) for x in row["vector"])
                and (row.get("metadata") is None or isinstance(row["metadata"], dict))
                and _whole(row.get("partition"), 0, MAX_PARTITIONS - 1)
                and _whole(row.get("offset"), 0, _MAX_OFFSET)):
            raise ValueError(f"get reply row {i} lacks an id, a vector of numbers, metadata "
                             "(an object or null), a partition or an offset")
        out.append(FoundRow(row["id"], np.asarray(row["vector"], dtype=np.float32),
                            row.get("metadata"), row["partition"], row["offset"]))
    return out


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _rows(value: Any, ok: Any, name: str = "timings_ms") -> list[list[Any]]:
    if not (isinstance(value, list) and all(isinstance(r, list) and all(ok(v) for v in r)
                                            for r in value)):
        raise ValueError(f"reply {name} is not a list of lists of the right type")
    return value
