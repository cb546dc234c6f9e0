"""Background work (index builds, folds, compaction) yields the CPU to tailing and answering."""

# Serving and building share a host's cores: an HNSW build at 384-d takes a core for seconds,
# and at the priority of the threads that tail Kafka and answer queries the answers wait
# behind it. A build thread may therefore lower its own scheduling priority
# (STREAMVEC_BUILD_NICE), as search engines do for segment merges; with idle cores it still
# runs at full speed, and under a load that keeps every core busy it waits. Linux gives every
# thread its own nice value, and the threads a thread starts (FAISS's OpenMP pool) inherit it.

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)

MAX_NICE = 19


def lower_priority(nice: int) -> int:
    """Add `nice` to the calling thread's niceness (Linux); return what it is now, or -1.

    Best effort: where threads have no niceness of their own, or the call is refused, the
    thread keeps its priority and -1 says so. A thread cannot raise its priority back.
    """
    if nice < 0:
        raise ValueError(f"nice must be >= 0, got {nice}")
    if nice == 0 or not hasattr(os, "setpriority"):
        return -1
    tid = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, tid)
        target = min(MAX_NICE, current + nice)
        os.setpriority(os.PRIO_PROCESS, tid, target)
        return os.getpriority(os.PRIO_PROCESS, tid)
    except OSError as exc:
        log.debug("thread priority unchanged: %s", exc)
        return -1
