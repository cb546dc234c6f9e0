"""The start-up and shutdown every long-running role shares: health, signals, the loop, the end.

    run_role("searcher", settings, port, start, max_seconds=...)

serves /metrics, /healthz and /readyz first, so a probe answers while the role starts; waits
for Redis to answer (not ready meanwhile), since every role reads its collection there; then
`start(turn_hook)` builds the role's loop (and whatever must be released after it) around the
health's turn hook; the runner says ready, runs the loop until SIGTERM, SIGINT or
`max_seconds`, and marks the process failed if the loop ends with an error.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import REGISTRY

from streamvec.health import Health, TurnHook, redis_check, serve
from streamvec.metrics import register_build_info
from streamvec.settings import Settings

log = logging.getLogger(__name__)

# Backoff of the start-up wait for Redis, jittered so that restarted roles do not ping together.
REDIS_WAIT_FIRST_S = 0.2
REDIS_WAIT_MAX_S = 5.0
# Granularity of that wait: how soon a stop signal ends it.
STOP_POLL_S = 0.1


class Loop(Protocol):
    """What a role runs: blocks in `run` until `stop()` is called from a signal handler."""

    def run(self, max_seconds: float | None = None) -> None:
        """Run until stopped or `max_seconds` have passed."""

    def stop(self) -> None:
        """Ask `run` to return soon."""


@dataclass(frozen=True, slots=True)
class Role:
    """A started role: its loop, what it is doing (the readiness reason), how it stops (logged)."""

    loop: Loop
    doing: str
    stopping: str = "stopping"
    # Readiness conditions of the role itself (each returns why not ready, or None), beside
    # the runner's own Redis ping: e.g. a dependency the loop is waiting for.
    checks: tuple[Callable[[], str | None], ...] = ()


Start = Callable[[TurnHook], AbstractContextManager[Role]]


def run_role(component: str, settings: Settings, metrics_port: int | None, start: Start, *,
             max_seconds: float | None = None) -> int:
    """Run one long-running role to its end and return the exit status (0: stopped cleanly)."""
    health = Health(component)
    # /metrics says which build runs, from the start on (the role's own metrics come later).
    register_build_info(REGISTRY, component, revision=settings.revision)
    stopper = _Stopper(health)
    signal.signal(signal.SIGTERM, stopper)
    signal.signal(signal.SIGINT, stopper)
    serve(health, metrics_port or settings.metrics_port, host=settings.metrics_host)
    if not wait_for_redis(settings, health, lambda: stopper.requested):
        return 0
    with start(health.turns) as role:
        if not stopper.attach(role):
            return 0
        health.add_check(redis_check(settings))
        for check in role.checks:
            health.add_check(check)

        health.ready(role.doing)
        try:
            role.loop.run(max_seconds=max_seconds)
        except Exception as exc:
            health.failed(str(exc))
            raise
    return 0


def wait_for_redis(settings: Settings, health: Health, stopped: Callable[[], bool]) -> bool:
    """Ping Redis with backoff until it answers (True) or `stopped()` turns true (False).

    A role started before Redis (a host booting, a Redis restarting) then waits instead of
    exiting; /readyz says why meanwhile. What the role reads next (its collection's spec) is
    read once Redis answers, so a missing collection still ends the start-up with its error.
    """
    check = redis_check(settings)
    delay = REDIS_WAIT_FIRST_S
    logged = False
    while not stopped():
        problem = check()
        if problem is None:
            if logged:
                log.info("%s: Redis answers, starting", health.component)
            return True
        health.not_ready(f"waiting for Redis at start: {problem}")
        if not logged:  # once: the readiness reason carries the latest error
            log.warning("%s: %s; retrying until it answers", health.component, problem)
            logged = True
        deadline = time.monotonic() + delay * random.uniform(1.0, 1.5)  # noqa: S311
        while not stopped() and time.monotonic() < deadline:
            time.sleep(STOP_POLL_S)
        delay = min(delay * 2, REDIS_WAIT_MAX_S)
    return False


class _Stopper:
    """The signal handler: not ready at once, then stop the loop, even one still starting."""

    def __init__(self, health: Health) -> None:
        self.health = health
        self.role: Role | None = None
        self.requested = False

    def __call__(self, signum: int, _frame: object) -> None:
        self.requested = True
        # A handler runs between two bytecodes of the main thread, which may hold the lock
        # that Event.set (or a health or logging call) takes: inside Event.wait, it re-takes
        # its Condition's lock on waking. Setting the event from here then waits for a lock
        # its own thread holds, forever; a thread of its own waits until the main one lets go.
        threading.Thread(target=self._stop, args=(signum,), name="sv-stop", daemon=True).start()

    def _stop(self, signum: int) -> None:
        self.health.not_ready("stopping")
        if self.role is not None:
            log.info("signal %s: %s", signal.Signals(signum).name, self.role.stopping)
            self.role.loop.stop()
        else:
            log.info("signal %s while starting: exiting", signal.Signals(signum).name)

    def attach(self, role: Role) -> bool:
        """Hand the started role over; False if a signal already asked to stop."""
        self.role = role
        return not self.requested
