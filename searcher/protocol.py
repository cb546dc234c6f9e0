"""The Redis query protocol, its one home: request fields, the JSON reply and the keys they use."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from ingest.names import CollectionName
from ingest.spec import MAX_DIM, MAX_PARTITIONS
from searcher.errors import ERROR_CODES, QueryError
from searcher.query import MAX_K, Consistency, Filter, QueryAnswer, QueryRequest

VERSION = "1"
QUEUE_MAXLEN = 100_000  # approximate (MAXLEN ~): old requests fall off a stream nobody reads
MAX_QUERIES, MAX_FILTER_FIELDS, MAX_FILTER_VALUES = 1024, 64, 1024
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
_PARTITION = re.compile(r"0|[1-9][0-9]{0,3}")
_MAX_OFFSET = 2**63 - 1


def _name(collection: str | CollectionName) -> CollectionName:
    return CollectionName.parse(str(collection))


def queue_key(collection: str | CollectionName) -> str:
    """The stream that carries a collection's requests: `sv:{NAME}:q`."""
    return _name(collection).key("q")


def reply_key(collection: str | CollectionName, request_id: str) -> str:
    """The list a request's reply is pushed to: `sv:{NAME}:r:<id>`."""
    return _name(collection).key(f"r:{request_id}")


def done_key(collection: str | CollectionName, request_id: str) -> str:
    """The marker that makes a request's reply happen once: `sv:{NAME}:done:<id>`."""
    return _name(collection).key(f"done:{request_id}")


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


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, str)) or (
        isinstance(value, float) and math.isfinite(value))


def parse_filter(obj: Any) -> Filter | None:
    """Validate a filter object (`{"field": value}` or `{"field": {"in": [values]}}`)."""
    if obj is None:
        return None
    if not isinstance(obj, Mapping):
        raise _bad("filter", "must be a JSON object of field -> value or {\"in\": [values]}")
    if len(obj) > MAX_FILTER_FIELDS:
        raise _bad("filter", f"has {len(obj)} fields, over the limit of {MAX_FILTER_FIELDS}")
    allowed: dict[str, tuple[Any, ...]] = {}
    for name, cond in obj.items():
        if not isinstance(name, str) or not name:
            raise _bad("filter", "field names must be non-empty strings")
        values = cond.get("in") if isinstance(cond, Mapping) else [cond]
        if isinstance(cond, Mapping) and (set(cond) != {"in"} or not isinstance(
                values, (list, tuple)) or not 1 <= len(values) <= MAX_FILTER_VALUES):
            raise _bad("filter", f"{name!r}: a condition must be "
                       f"{{\"in\": [1..{MAX_FILTER_VALUES} values]}}")
        if not all(_is_scalar(v) for v in values):
            raise _bad("filter", f"{name!r}: values must be strings, finite numbers, "
                       "booleans or null")
        allowed[name] = tuple(values)
    return Filter(allowed) if allowed else None


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


def decode_request(collection: str | CollectionName, fields: Any, *, dim: int) -> QueryRequest:
    """Decode and validate a stream entry; any problem is a QueryError and nothing else."""
    name = _name(collection)
    f = _fields(fields)
    if f.get("v") != VERSION.encode():
        raise _bad("v", f"protocol version must be {VERSION!r}, got {_show(f.get('v'))}")
    rid = request_id(f)
    if rid is None:
        raise _bad("id", f"must match [A-Za-z0-9_.:-]{{1,64}}, got {_show(f.get('id'))}")
    if f.get("reply") != reply_key(name, rid).encode():
        raise _bad("reply", f"must be {reply_key(name, rid)!r}, got {_show(f.get('reply'))}")
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
    if req_dim != dim:
        raise QueryError("wrong_dim", f"query vectors have dim {req_dim}, collection {name} "
                                      f"has dim {dim}")
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        raise QueryError("not_finite", f"query vector {int(np.argmin(finite))} holds NaN or Inf")
    if not 1 <= k <= MAX_K:
        raise QueryError("bad_k", f"k must be 1..{MAX_K}, got {k}")
    return QueryRequest(rid, str(name), vectors, k, flt, consistency, timeout_ms, meta == b"1",
                        reply_key(name, rid), None if sent is None else float(sent))


def _vectors(fields: dict[str, bytes], n: int, dim: int) -> np.ndarray:
    raw, expected = fields.get("vectors"), n * dim * 4
    if raw is None or len(raw) != expected or expected > MAX_VECTOR_BYTES:
        got = "nothing" if raw is None else f"{len(raw)}"
        raise _bad("vectors", f"must be n*dim*4 = {expected} bytes of float32 (at most "
                   f"{MAX_VECTOR_BYTES}), got {got}")
    # A copy, native and writable: the engine may normalise queries in place.
    return np.frombuffer(raw, dtype="<f4").reshape(n, dim).astype(np.float32)


def encode_request(request: QueryRequest) -> dict[str, bytes]:
    """The stream entry fields of a request; its reply key is derived from collection and id."""
    vectors = np.ascontiguousarray(request.vectors, dtype="<f4")
    if vectors.ndim != 2:
        raise ValueError(f"request vectors must be 2-D (n, dim), not {vectors.ndim}-D")
    fields = {
        "v": VERSION, "id": request.request_id,
        "reply": reply_key(request.collection, request.request_id),
        "k": str(request.k), "dim": str(vectors.shape[1]), "n": str(vectors.shape[0]),
        "consistency": json.dumps(request.consistency.to_json(), separators=(",", ":")),
        "timeout_ms": str(request.timeout_ms), "meta": "1" if request.with_metadata else "0",
    }
    if request.filter is not None and request.filter.allowed:
        # Equality for one allowed value, {"in": [...]} for several.
        fields["filter"] = json.dumps({k: v[0] if len(v) == 1 else {"in": list(v)}
                                       for k, v in request.filter.allowed.items()},
                                      separators=(",", ":"), allow_nan=False)
    if request.sent_at_ms is not None:
        fields["sent_ms"] = f"{request.sent_at_ms:.3f}"
    out = {k: v.encode() for k, v in fields.items()}
    out["vectors"] = vectors.tobytes()
    return out


def encode_reply(request_id: str, result: QueryAnswer | QueryError, *,
                 with_metadata: bool = False, timings_ms: Mapping[str, float] | None = None
                 ) -> bytes:
    """The JSON reply document; raises ValueError for an answer JSON cannot carry (NaN scores)."""
    if isinstance(result, QueryError):
        doc: dict[str, Any] = {"v": 1, "id": request_id, "ok": False,
                               "error": {"code": result.code, "message": result.message}}
    else:
        ids = [[str(i) for i in row] for row in result.ids]
        doc = {"v": 1, "id": request_id, "ok": True, "ids": ids,
               "scores": [[float(s) for s in row] for row in result.scores]}
        if with_metadata:
            doc["metadata"] = result.metadata if result.metadata is not None else [
                [None] * len(row) for row in ids]
        doc["offsets"] = {str(p): int(o) for p, o in result.offsets.items()}
        times = {**result.timings_ms, **(timings_ms or {})}
        doc["timings_ms"] = {k: round(float(v), 3) for k, v in times.items()}
    return json.dumps(doc, separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode()


def decode_reply(data: bytes | str) -> tuple[str, QueryAnswer | QueryError]:
    """Parse a reply into (request id, answer or error); ValueError if it breaks the protocol."""
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
    ids = _rows(doc.get("ids"), lambda v: isinstance(v, str), "ids")
    scores = _rows(doc.get("scores"), _number, "scores")
    metadata = None if "metadata" not in doc else _rows(
        doc["metadata"], lambda v: v is None or isinstance(v, dict), "metadata")
    shape = [len(row) for row in ids]
    if [len(r) for r in scores] != shape or (metadata and [len(r) for r in metadata] != shape):
        raise ValueError("reply ids, scores and metadata differ in shape")
    offsets, timings = doc.get("offsets", {}), doc.get("timings_ms", {})
    if not (isinstance(offsets, dict) and isinstance(timings, dict)
            and all(_PARTITION.fullmatch(p) and _whole(o, 0, _MAX_OFFSET)
                    for p, o in offsets.items()) and _rows([list(timings.values())], _number)):
        raise ValueError("reply offsets or timings_ms are not maps of numbers")
    return doc["id"], QueryAnswer(ids, [[float(s) for s in r] for r in scores], metadata,
                                  {int(p): o for p, o in offsets.items()},
                                  {k: float(v) for k, v in timings.items()})


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _rows(value: Any, ok: Any, name: str = "timings_ms") -> list[list[Any]]:
    if not (isinstance(value, list) and all(isinstance(r, list) and all(ok(v) for v in r)
                                            for r in value)):
        raise ValueError(f"reply {name} is not a list of lists of the right type")
    return value
