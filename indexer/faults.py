"""Crash points for fault-injection tests: `STREAMVEC_CRASH_AT=point[:n]` kills the process."""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger(__name__)

# Known points, in the order a segment passes them.
POINTS = ("build", "after_snapshot", "after_register", "after_commit")

_counts: dict[str, int] = {}


def _target() -> tuple[str, int] | None:
    spec = os.environ.get("STREAMVEC_CRASH_AT", "")
    if not spec:
        return None
    point, _, nth = spec.partition(":")
    if point not in POINTS:
        raise ValueError(f"STREAMVEC_CRASH_AT names unknown point {point!r}; known: {POINTS}")
    return point, int(nth or 1)


def crash_point(point: str) -> None:
    """Kill this process with SIGKILL if `point` is the armed crash point's n-th occurrence."""
    target = _target()
    if target is None or target[0] != point:
        return
    _counts[point] = _counts.get(point, 0) + 1
    if _counts[point] >= target[1]:
        log.warning("crash point %s reached (occurrence %d): SIGKILL", point, _counts[point])
        os.kill(os.getpid(), signal.SIGKILL)
