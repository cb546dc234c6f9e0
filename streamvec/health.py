"""Liveness, readiness and /metrics of a long-running process, over one small HTTP server.

    GET /metrics  Prometheus exposition of the default registry
    GET /healthz  liveness: 200 unless the process failed or one turn runs past `stall_after_s`
    GET /readyz   readiness: 200 once `ready()` was said, every registered loop finished a
                  first turn and every check passes; both answer {"component", "status", "reason"}

`python -m streamvec.probe` asks a local server, for container health checks.
"""

from __future__ import annotations

import json
import logging
import socketserver
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from streamvec import redisconn
from streamvec.errors import ListenError
from streamvec.settings import Settings

log = logging.getLogger(__name__)

METRICS_PATH = "/metrics"
LIVENESS_PATH = "/healthz"
READINESS_PATH = "/readyz"
PATHS = (METRICS_PATH, LIVENESS_PATH, READINESS_PATH)
# The default bind address (STREAMVEC_METRICS_HOST): scraped and probed from other hosts.
ALL_INTERFACES = "0.0.0.0"  # noqa: S104
# A turn is stuck when it runs longer than this. Generous on purpose: an indexer's turn can
# load a partition's segments on assignment, and a false alarm restarts a healthy process.
DEFAULT_STALL_S = 600.0
# A probe answers within the prober's timeout (1 s by default in Kubernetes).
CHECK_TIMEOUT_S = 0.8
# The Kafka probe asks the brokers this often, and calls them unavailable when an answer takes
# longer than its timeout: a frozen broker is noticed within about the sum of the two.
KAFKA_PROBE_EVERY_S = 2.0
KAFKA_PROBE_TIMEOUT_S = 3.0

# What a loop is handed to report its turns: called once with the loop's name, it registers
# the loop and returns the context manager that brackets each of its turns.
TurnHook = Callable[[str], AbstractContextManager[None]]


@dataclass(frozen=True, slots=True)
class Verdict:
    """The answer of one probe: ok or not, and why."""

    ok: bool
    reason: str


class Health:
    """What a process says about itself: ready, not ready or failed, plus its loop's turns.

    Usage: health = Health("searcher"); serve(health, port)
    server = Server(..., turn_hook=health.turns); health.add_check(redis_check(s))
    health.ready("serving products")   # /readyz is 200 after the server's first turn
    """

    def __init__(self, component: str, *, stall_after_s: float = DEFAULT_STALL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.component = component
        self.stall_after_s = stall_after_s
        self._clock = clock
        # Reentrant: a signal handler that says not_ready() may interrupt a turn holding it.
        self._lock = threading.RLock()
        self._state, self._reason = "not_ready", "starting"
        self._first_turns: set[str] = set()  # registered loops that have not turned yet
        self._running: dict[tuple[str, int], float] = {}  # (loop, thread) -> turn start
        self._checks: list[Callable[[], str | None]] = []

    def ready(self, reason: str) -> None:
        """Say the process is started; readiness still waits for first turns and checks."""
        self._set("ready", reason)

    def not_ready(self, reason: str) -> None:
        """Say the process should get no work for now (starting, stopping, degraded)."""
        self._set("not_ready", reason)

    def failed(self, reason: str) -> None:
        """Say the process cannot go on; final, and the first reason given is kept."""
        self._set("failed", reason)

    def _set(self, state: str, reason: str) -> None:
        with self._lock:
            if self._state == "failed":
                return
            if (state, reason) != (self._state, self._reason):
                log.info("%s %s: %s", self.component, state.replace("_", " "), reason)
            self._state, self._reason = state, reason

    def add_check(self, check: Callable[[], str | None]) -> None:
        """Add a readiness condition, run at each probe: it returns why not ready, or None."""
        with self._lock:
            self._checks.append(check)

    def turns(self, name: str) -> Turns:
        """Register a loop: readiness waits for its first turn; `with` the result around each."""
        with self._lock:
            self._first_turns.add(name)
        return Turns(self, name)

    def _begin_turn(self, name: str) -> None:
        with self._lock:
            self._running[(name, threading.get_ident())] = self._clock()

    def _end_turn(self, name: str) -> None:
        with self._lock:
            del self._running[(name, threading.get_ident())]
            self._first_turns.discard(name)

    def liveness(self) -> Verdict:
        """Alive unless failed or a turn has run longer than `stall_after_s`."""
        with self._lock:
            if self._state == "failed":
                return Verdict(False, self._reason)
            now = self._clock()
            ages = [(now - since, name) for (name, _), since in self._running.items()]
        age, name = max(ages, default=(0.0, ""))
        if age > self.stall_after_s:
            return Verdict(False, f"stuck: a {name} turn has run for {age:.0f} s "
                                  f"(limit {self.stall_after_s:g} s)")
        return Verdict(True, "alive")

    def readiness(self) -> Verdict:
        """Ready once `ready()` was said, every loop turned once, and every check passes."""
        with self._lock:
            state, reason = self._state, self._reason
            waiting, checks = sorted(self._first_turns), list(self._checks)
        if state != "ready":
            return Verdict(False, reason)
        if waiting:
            return Verdict(False, f"waiting for a first {', '.join(waiting)} turn")
        alive = self.liveness()
        if not alive.ok:
            return alive
        for check in checks:
            try:
                problem = check()
            except Exception as exc:  # a broken check means not ready, never a dead endpoint
                problem = f"{type(exc).__name__}: {exc}"
            if problem:
                return Verdict(False, problem)
        return Verdict(True, reason)


class Turns(AbstractContextManager[None]):
    """Brackets each turn of one registered loop, on any thread: `with turns: step()`."""

    def __init__(self, health: Health, name: str) -> None:
        self.health = health
        self.name = name

    def __enter__(self) -> None:
        self.health._begin_turn(self.name)

    def __exit__(self, *exc: object) -> None:
        # A turn that raised still ran: the loop logs the error and goes on, or exits.
        self.health._end_turn(self.name)


def redis_check(settings: Settings) -> Callable[[], str | None]:
    """A readiness check that pings Redis once per probe, without retries."""
    client = redisconn.connect(settings.redis_url, timeout=CHECK_TIMEOUT_S,
                               retry=Retry(NoBackoff(), 0))

    def check() -> str | None:
        try:
            client.ping()
        except RedisError as exc:
            return f"Redis unreachable: {exc}"
        return None

    return check


class KafkaProbe:
    """Asks the brokers for a topic's metadata every few seconds on its own thread.

    A readiness check (`problem`): a broker that is down fails the request at once, and one that
    is frozen (stopped, partitioned away) keeps its connections open and never answers, which
    only a request with a deadline shows. The role's own loop never waits for the probe.

    Usage: probe = KafkaProbe(settings.kafka_config(), topic); probe.start(); probe.problem()
    """

    def __init__(self, config: dict[str, Any], topic: str, *,
                 every_s: float = KAFKA_PROBE_EVERY_S, timeout_s: float = KAFKA_PROBE_TIMEOUT_S,
                 on_change: Callable[[str | None], None] | None = None) -> None:
        self.topic = topic
        self.every_s, self.timeout_s = every_s, timeout_s
        self._on_change = on_change  # told why Kafka became unavailable, or None once it is back
        self._admin = AdminClient(config)
        self._lock = threading.Lock()
        self._problem: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sv-kafka-probe-{topic}",
                                        daemon=True)

    def start(self) -> KafkaProbe:
        """Start probing on a daemon thread and return self."""
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop probing; waits for a request in flight at most its own timeout."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.timeout_s + 1 if timeout is None else timeout)

    def problem(self) -> str | None:
        """Why Kafka counts as unavailable now, or None."""
        return self._problem

    def report(self, why: str) -> None:
        """Mark Kafka unavailable (e.g. librdkafka said every broker is down) until it answers."""
        self._set(f"Kafka unreachable: {why}")

    def probe(self) -> bool:
        """Ask once, now, on the caller's thread; True if the brokers answered in time."""
        started = time.monotonic()
        try:
            meta = self._admin.list_topics(self.topic, timeout=self.timeout_s)
        except KafkaException as exc:
            self._set(f"Kafka unreachable: no metadata of {self.topic} within "
                      f"{time.monotonic() - started:.1f}s ({_kafka_reason(exc)})")
            return False
        topic = meta.topics.get(self.topic)
        if topic is not None and topic.error is not None:
            self._set(f"Kafka cannot serve {self.topic}: {topic.error.str()}")
            return False
        self._set(None)
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.probe()
            except Exception as exc:  # keep probing; a failed probe counts as unavailable
                self._set(f"Kafka probe failed: {type(exc).__name__}: {exc}")
            self._stop.wait(self.every_s)

    def _set(self, problem: str | None) -> None:
        with self._lock:
            changed = (problem is None) != (self._problem is None)
            self._problem = problem
        if changed:
            if problem is None:
                log.info("Kafka reachable again (%s)", self.topic)
            else:
                log.warning("%s", problem)
            if self._on_change is not None:
                self._on_change(problem)


def _kafka_reason(exc: KafkaException) -> str:
    err = exc.args[0] if exc.args else None
    return err.str() if isinstance(err, KafkaError) else str(exc)


class HealthServer(ThreadingHTTPServer):
    """Serves /metrics, /healthz and /readyz of one process on a thread of its own."""

    daemon_threads = True  # a slow scraper never holds up the process's exit

    def __init__(self, health: Health, address: tuple[str, int],
                 registry: CollectorRegistry = REGISTRY) -> None:
        super().__init__(address, _Handler)
        self.health = health
        self.registry = registry
        self._thread: threading.Thread | None = None

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse DNS lookup of the host, slow where DNS is absent."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    @property
    def port(self) -> int:
        """The port bound (the one asked for, or the one picked for port 0)."""
        return int(self.server_address[1])

    def start(self) -> HealthServer:
        """Serve on a daemon thread and return self."""
        # The poll interval bounds how long close() waits for the loop to notice.
        self._thread = threading.Thread(target=self.serve_forever, args=(0.1,),
                                        name="sv-health", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and release the port."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: HealthServer

    def do_GET(self) -> None:
        self._answer(with_body=True)

    def do_HEAD(self) -> None:
        self._answer(with_body=False)

    def _answer(self, *, with_body: bool) -> None:
        path = urlsplit(self.path).path
        if path == METRICS_PATH:
            status, ctype, body = self._metrics()
        elif path in (LIVENESS_PATH, READINESS_PATH):
            health = self.server.health
            verdict = health.liveness() if path == LIVENESS_PATH else health.readiness()
            status = HTTPStatus.OK if verdict.ok else HTTPStatus.SERVICE_UNAVAILABLE
            ctype, body = "application/json", _json(
                component=health.component, status="ok" if verdict.ok else "fail",
                reason=verdict.reason)
        else:
            status, ctype = HTTPStatus.NOT_FOUND, "application/json"
            body = _json(error=f"no such path: {path}", paths=list(PATHS))
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def _metrics(self) -> tuple[HTTPStatus, str, bytes]:
        encoder, ctype = choose_encoder(self.headers.get("Accept", ""))
        try:
            return HTTPStatus.OK, ctype, encoder(self.server.registry)
        except Exception as exc:  # a failing collector fails this scrape, not the server
            log.exception("collecting metrics failed")
            return (HTTPStatus.INTERNAL_SERVER_ERROR, "text/plain; charset=utf-8",
                    f"collecting metrics failed: {type(exc).__name__}: {exc}\n".encode())

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


def _json(**fields: Any) -> bytes:
    return (json.dumps(fields, sort_keys=True) + "\n").encode()


def serve(health: Health, port: int | None, *, host: str = ALL_INTERFACES,
          registry: CollectorRegistry = REGISTRY) -> HealthServer | None:
    """Serve `health` and `registry` on `host:port` (0: any free port); None: serve nothing."""
    if port is None:
        return None
    try:
        server = HealthServer(health, (host, port), registry)
    except OSError as exc:
        raise ListenError(f"cannot serve /metrics and health on {host}:{port}: "
                           f"{exc.strerror or exc}") from None
    log.info("serving %s on %s:%d", ", ".join(PATHS), host, server.port)
    return server.start()
