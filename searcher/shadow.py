"""Shadow queries: a sampled share of an alias's searches also asks the challenger, off the
caller's thread, and each comparison is appended to the challenge log (searcher/routing.py
says which searches are under a challenge).

A log record (`sv:{ALIAS}:challenge:log`, a capped stream) has the fields `v` (1),
`challenge` (id), `request` (the champion request's id), `at_ms`, `k`, `champion` and
`challenger` (collection names), `champion_dim`/`challenger_dim`, `champion_vectors`/
`challenger_vectors` (n x dim float32, little-endian, raw bytes; empty when the challenger
had no vector), `champion_ids`/`challenger_ids` (JSON lists of id lists, best first),
`champion_ms`/`challenger_ms` (latency the client measured; empty on error) and `error`
(empty, or why the challenger gave no answer).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis

from searcher import routing
from searcher.routing import Challenge

log = logging.getLogger(__name__)

LOG_VERSION = "1"
LOG_MAXLEN = 10_000  # approximate (MAXLEN ~): records carry query vectors, so keep few
DEFAULT_WORKERS = 4
# Shadows waiting or running at once; beyond this a sampled search is not shadowed (counted
# in Shadow.dropped), so a dead challenger can never pile up work behind the caller.
MAX_PENDING = 256


def sampled(request_id: str, share: float) -> bool:
    """Whether a request is in the shadowed share: a stable hash of its id, below `share`."""
    digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64 < share


def pick_vectors(vectors: Any, model_version: str | None, collection: str) -> Any:
    """The query vectors for a collection: `vectors`, or its model version's entry of a dict."""
    if not isinstance(vectors, Mapping):
        return vectors
    if not model_version:
        raise ValueError(f"collection {collection!r} has no model version, so vectors keyed "
                         "by model version cannot be matched to it; pass one array")
    if model_version not in vectors:
        raise ValueError(f"no query vectors for model version {model_version!r} of collection "
                         f"{collection!r}; got versions {sorted(map(str, vectors))}")
    return vectors[model_version]


@dataclass(frozen=True, slots=True)
class ShadowRecord:
    """One comparison of a champion answer with the challenger's answer to the same request."""

    challenge: str
    request: str
    at_ms: float
    k: int
    champion: str
    challenger: str
    champion_vectors: np.ndarray  # float32 (n, dim)
    challenger_vectors: np.ndarray | None  # float32 (n, dim'), None without a vector
    champion_ids: list[list[str]]
    challenger_ids: list[list[str]] | None  # None on error
    champion_ms: float
    challenger_ms: float | None  # None on error
    error: str = ""


def encode_record(record: ShadowRecord) -> dict[str, bytes]:
    """The stream fields of a record."""
    theirs = record.challenger_vectors
    fields = {
        "v": LOG_VERSION, "challenge": record.challenge, "request": record.request,
        "at_ms": f"{record.at_ms:.3f}", "k": str(record.k), "champion": record.champion,
        "challenger": record.challenger, "champion_dim": str(record.champion_vectors.shape[1]),
        "challenger_dim": "0" if theirs is None else str(theirs.shape[1]),
        "champion_ids": json.dumps(record.champion_ids, separators=(",", ":")),
        "challenger_ids": "" if record.challenger_ids is None else json.dumps(
            record.challenger_ids, separators=(",", ":")),
        "champion_ms": f"{record.champion_ms:.3f}",
        "challenger_ms": "" if record.challenger_ms is None else f"{record.challenger_ms:.3f}",
        "error": record.error,
    }
    out = {k: v.encode() for k, v in fields.items()}
    out["champion_vectors"] = np.ascontiguousarray(record.champion_vectors, "<f4").tobytes()
    out["challenger_vectors"] = b"" if theirs is None else np.ascontiguousarray(
        theirs, "<f4").tobytes()
    return out


def decode_record(fields: Mapping[bytes | str, bytes | str]) -> ShadowRecord:
    """Parse stream fields into a record; ValueError names what is wrong."""
    f = {(k.decode() if isinstance(k, bytes) else k): (v if isinstance(v, bytes) else v.encode())
         for k, v in fields.items()}
    try:
        if f["v"] != LOG_VERSION.encode():
            raise ValueError(f"unknown record version {f['v'][:8]!r}")
        text = {k: v.decode() for k, v in f.items() if not k.endswith("_vectors")}
        ours = _matrix(f["champion_vectors"], int(text["champion_dim"]), "champion")
        dim = int(text["challenger_dim"])
        theirs = _matrix(f["challenger_vectors"], dim, "challenger") if dim else None
        return ShadowRecord(
            text["challenge"], text["request"], float(text["at_ms"]), int(text["k"]),
            text["champion"], text["challenger"], ours, theirs, json.loads(text["champion_ids"]),
            json.loads(text["challenger_ids"]) if text["challenger_ids"] else None,
            float(text["champion_ms"]),
            float(text["challenger_ms"]) if text["challenger_ms"] else None, text["error"])
    except KeyError as exc:
        raise ValueError(f"record lacks field {exc.args[0]!r}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"record text is not UTF-8: {exc}") from None


def _matrix(raw: bytes, dim: int, role: str) -> np.ndarray:
    if dim < 1 or len(raw) % (4 * dim):
        raise ValueError(f"{role}_vectors: {len(raw)} bytes is not rows of {dim} float32")
    return np.frombuffer(raw, dtype="<f4").reshape(-1, dim).astype(np.float32)


@dataclass(frozen=True, slots=True)
class Ask:
    """What the champion's search produced, and how to put the same request to the challenger.

    On the shadow thread, `pick()` returns the challenger's query vectors (raising if there
    is none) and `send(vectors)` its answer's id rows, best first.
    """

    challenge: Challenge
    request: str
    k: int
    champion: str  # the collection that answered the caller
    champion_vectors: np.ndarray
    champion_ids: list[list[str]]
    champion_ms: float
    pick: Callable[[], np.ndarray]
    send: Callable[[np.ndarray], list[list[str]]]


class Shadow:
    """Runs challenger requests on background threads and logs each comparison."""

    def __init__(self, client: redis.Redis, workers: int = DEFAULT_WORKERS,
                 max_pending: int = MAX_PENDING) -> None:
        self.client = client
        self.dropped = 0  # sampled searches not shadowed because too many were pending
        self._slots = threading.BoundedSemaphore(max_pending)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sv-shadow")

    def submit(self, job: Ask) -> bool:
        """Queue a shadow request; False (and counted) when too many are pending already."""
        if not self._slots.acquire(blocking=False):
            self.dropped += 1
            return False
        try:
            self._pool.submit(self._run, job)
        except RuntimeError:  # the pool is shut down: the client is closing
            self._slots.release()
            return False
        return True

    def close(self) -> None:
        """Wait for queued shadows to finish and log, then stop the threads."""
        self._pool.shutdown(wait=True)

    def _run(self, job: Ask) -> None:
        try:
            record = compare(job)
            self.client.xadd(routing.log_key(job.challenge.alias), encode_record(record),
                             maxlen=LOG_MAXLEN, approximate=True)
        except Exception:  # a shadow must never take the client down; say why and go on
            log.exception("alias=%s challenge=%s shadow comparison not logged",
                          job.challenge.alias, job.challenge.id)
        finally:
            self._slots.release()


def compare(job: Ask) -> ShadowRecord:
    """Put the request to the challenger and return the comparison; failures become `error`."""
    vectors: np.ndarray | None = None
    ids: list[list[str]] | None = None
    error, took = "", None
    try:
        vectors = job.pick()
        started = time.perf_counter()
        ids = job.send(vectors)
        took = (time.perf_counter() - started) * 1000.0
    except Exception as exc:  # any failure of the challenger is data for the report
        error = f"{type(exc).__name__}: {exc}"
    return ShadowRecord(job.challenge.id, job.request, time.time() * 1000.0, job.k,
                        job.champion, job.challenge.challenger,
                        job.champion_vectors, vectors, job.champion_ids, ids, job.champion_ms,
                        took, error)
