"""The per-collection lifecycle lock: one reindex, compaction, restore or collection at a time."""

# These actions each read the registry, work for a while, then swap segments; two at once
# would plan against a registry the other is about to change. The lock expires on its own
# (a crashed holder cannot block forever) and a heartbeat thread keeps a live holder's lease.
# A lease can still run out under a live holder (a Redis outage longer than the lease, a
# process stalled past it), and then another action may take the lock. So the lock is also a
# fence: its token is checked by every write of the action, atomically by the registry's swap
# script (`Registry.swap(fence=lock)`) and by `check()` before any other write, and an action
# that lost its lease stops with LifecycleBusy instead of writing beside the new holder.

from __future__ import annotations

import logging
import secrets
import threading

import redis

from ingest.names import CollectionName
from lifecycle.errors import LifecycleBusy

log = logging.getLogger(__name__)

LEASE_S = 60.0
# KEYS: lock. ARGV: token. Delete or extend only while we still hold it.
_RELEASE = ("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) "
            "end return 0")
_EXTEND = ("if redis.call('GET', KEYS[1]) == ARGV[1] then "
           "return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0")


def lock_key(collection: str) -> str:
    """The lock of a collection, `sv:{name}:lifecycle`: in the hash slot of its registry."""
    return CollectionName.parse(collection).key("lifecycle")


class LifecycleLock:
    """Hold `sv:{name}:lifecycle` while a lifecycle action runs; raise LifecycleBusy if taken."""

    # Usage: with LifecycleLock(client, "products@v4", "compact"): ...

    def __init__(self, client: redis.Redis, collection: str, action: str, *,
                 lease_s: float = LEASE_S) -> None:
        self.client = client
        self.key = lock_key(collection)
        self.action = action
        self.lease_s = lease_s
        self.token = f"{action}:{secrets.token_hex(8)}"
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread: threading.Thread | None = None

    def holder(self) -> str | None:
        """The action holding the lock now, or None."""
        raw = self.client.get(self.key)
        return None if raw is None else raw.decode().split(":", 1)[0]

    def check(self) -> None:
        """Raise LifecycleBusy unless this action still holds the lock; call before a write."""
        if self._lost.is_set() or self.client.get(self.key) != self.token.encode():
            self._lost.set()
            raise self.lost()

    def lost(self) -> LifecycleBusy:
        """The error of an action whose lease ran out: what `check` and a fenced swap raise."""
        return LifecycleBusy(f"{self.key}: the {self.action} lost its lease on the lifecycle "
                             "lock (it expired, or another action holds it now) and stopped "
                             f"before writing more; run the {self.action} again")

    def __enter__(self) -> LifecycleLock:
        if not self.client.set(self.key, self.token, nx=True, px=int(self.lease_s * 1000)):
            raise LifecycleBusy(f"{self.key} is held by a running {self.holder() or 'action'}; "
                                f"try the {self.action} again when it has finished")
        self._thread = threading.Thread(target=self._heartbeat, daemon=True,
                                        name=f"sv-lock-{self.action}")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.client.eval(_RELEASE, 1, self.key, self.token)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                if not self.client.eval(_EXTEND, 1, self.key, self.token,
                                        int(self.lease_s * 1000)):
                    log.error("%s: lost the lifecycle lock during a %s", self.key, self.action)
                    self._lost.set()
                    return
            except redis.RedisError as exc:  # the lease outlives a short outage
                log.warning("%s: lock heartbeat failed: %s", self.key, exc)
