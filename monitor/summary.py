"""The monitor's live summary of a collection in Redis, which `streamvec status` reads.

`sv:{NAME}:monitor` is a hash of text fields, each written when its figure is computed:

- drift cycle: `drift_state` (`ok`, `warning` or `drift`), `drift_reasons` (the tests that
  fired, comma-separated), `drift_reference` (`pinned` or `first-seen`), `drift_at`
- recall probe: `recall` (recall@k in [0, 1]), `recall_k`, `recall_at`
- canary: `freshness_p99_s` (p99 of the last canary freshness samples), `freshness_at`
- rate sampler: `qps` (requests added to `sv:{NAME}:q` per second), `qps_at`, and
  `probe_p99_ms` (p99 latency of the monitor's own recent queries, canary and probe)

Times (`*_at`) are unix seconds. The hash expires after `ttl_s` without an update, so a
stopped monitor leaves no figures that look current.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np
import redis

from ingest.names import CollectionName
from searcher.protocol import queue_key

SAMPLES = 200


def summary_key(collection: str) -> str:
    """The Redis key of a collection's monitor summary."""
    return CollectionName.parse(collection).key("monitor")


def read(client: redis.Redis, collection: str) -> dict[str, str]:
    """The summary's fields as text; empty when no monitor wrote one recently."""
    return {k.decode(): v.decode() for k, v in client.hgetall(summary_key(collection)).items()}


class Summary:
    """Writes one collection's summary fields and refreshes the hash's expiry."""

    def __init__(self, client: redis.Redis, collection: str, ttl_s: float) -> None:
        self.client = client
        self.key = summary_key(collection)
        self.ttl_s = max(1, int(ttl_s))

    def update(self, **fields: str | float | int) -> None:
        """Set fields (converted to text) and push the expiry out."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(self.key, mapping={k: str(v) for k, v in fields.items()})
            pipe.expire(self.key, self.ttl_s)
            pipe.execute()


class Samples:
    """The last SAMPLES observations of a quantity, for percentiles; thread-safe."""

    def __init__(self, size: int = SAMPLES) -> None:
        self._values: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, value: float) -> None:
        """Record one observation."""
        with self._lock:
            self._values.append(float(value))

    def __len__(self) -> int:
        return len(self._values)

    def percentile(self, q: float) -> float | None:
        """The q-th percentile (0..100) of the samples held, or None without samples."""
        with self._lock:
            values = list(self._values)
        return float(np.percentile(values, q)) if values else None


class QueryRate:
    """Query requests per second on a collection's stream, from XINFO STREAM entries-added."""

    def __init__(self, client: redis.Redis, collection: str) -> None:
        self.client = client
        self.key = queue_key(collection)
        self._last: tuple[int, float] | None = None

    def sample(self, now: float | None = None) -> float | None:
        """Requests per second since the previous call; None on the first call."""
        now = time.monotonic() if now is None else now
        try:
            added = int(self.client.xinfo_stream(self.key).get("entries-added", 0))
        except redis.ResponseError:  # no stream yet: nobody has queried the collection
            added = 0
        last, self._last = self._last, (added, now)
        if last is None or now <= last[1]:
            return None
        return max(0, added - last[0]) / (now - last[1])
