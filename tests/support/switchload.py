"""Load for the lifecycle tests: stable rows, far-away churn, client threads, exactness checks."""

# Stable rows are loaded and sealed first; client threads then query near them without pause
# while ingest churns other rows placed far away, so every answer under load has one known
# exact value: the stable rows' top-k. A switch that served half a segment set, lost a
# segment for an instant or counted one twice would answer something else.

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ingest.producer import Producer
from ingest.spec import CollectionSpec
from searcher.client import Client
from tests.support.polling import wait_until
from tests.support.stack import exact_top_k
from tests.support.workers import wait_fully_indexed

DIM = 16
K = 10
PARTITIONS = 2
STABLE_ROWS = 2000
SEAL_ROWS = 125  # 1000 stable rows per partition: 8 segments each
LOAD_STEP = 50  # rows per upsert call while loading
CLIENTS = 8
# Answers sent after a switch took effect, counted inside its window: serving goes on.
AFTER_SWITCH = 400
CHURN_IDS = 600
CHURN_ROWS = 10  # per tick: ~200 rows/s
CHURN_TICK_S = 0.05
# Churned rows sit this far out in every dimension: never in a stable query's top k.
FAR = 50.0
SWITCH_TIMEOUT_S = 60.0
INDEX_TIMEOUT_S = 60.0


def stable_rows(seed: int = 1) -> dict[str, np.ndarray]:
    """The rows every load query is answered from: none is overwritten while the load runs."""
    vectors = np.random.default_rng(seed).standard_normal((STABLE_ROWS, DIM)).astype(np.float32)
    return {f"stable-{i}": vectors[i] for i in range(STABLE_ROWS)}


def near(rows: dict[str, np.ndarray], n: int, seed: int) -> np.ndarray:
    """n queries a little off randomly picked rows."""
    rng = np.random.default_rng(seed)
    picked = np.stack([rows[k] for k in sorted(rows)])[rng.integers(0, len(rows), n)]
    return (picked + 0.05 * rng.standard_normal(picked.shape)).astype(np.float32)


class Churn:
    """Upserts, overwrites and deletes far-away rows into collections on a thread; pausable."""

    def __init__(self, settings, names: list[str], seed: int = 5) -> None:
        self.producers = [Producer(name, settings=settings) for name in names]
        self.rng = np.random.default_rng(seed)
        self.expected: dict[str, np.ndarray | None] = {}
        self.sent = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self) -> None:
        """Start sending."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True, name="churn")
        self._thread.start()

    def pause(self) -> list[dict[int, int]]:
        """Stop sending; return each collection's delivered offsets, for session reads."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
            assert not self._thread.is_alive(), "the churn thread did not stop"
        self._thread = None  # the thread refers back to this object: let both go
        if self._error is not None:
            raise self._error
        return [p.flush() for p in self.producers]

    def close(self) -> None:
        """Stop sending and drop the producers, so none outlives the test's broker."""
        try:
            self.pause()
        finally:
            self.producers = []

    def live(self) -> dict[str, np.ndarray]:
        """The churned ids that must be visible now, with their latest vectors."""
        return {k: v for k, v in self.expected.items() if v is not None}

    def _run(self) -> None:
        try:
            while not self._stop.wait(CHURN_TICK_S):  # pacing, not synchronization
                self._tick()
        except BaseException as exc:  # handed to the test thread by pause()
            self._error = exc

    def _tick(self) -> None:
        ids = [f"churn-{i}" for i in self.rng.integers(0, CHURN_IDS, CHURN_ROWS)]
        vectors = (FAR + self.rng.standard_normal((CHURN_ROWS, DIM))).astype(np.float32)
        gone = sorted(set(ids[::5]))
        for producer in self.producers:
            producer.upsert(ids, vectors)
            producer.delete(gone)
        for key, vector in zip(ids, vectors, strict=True):
            self.expected[key] = vector
        for key in gone:
            self.expected[key] = None
        self.sent += CHURN_ROWS


@dataclass
class Window:
    """Queries answered while one switch ran and right after it."""

    name: str
    answered: int
    seconds: float
    returned: float  # when the action had taken effect (time.monotonic)
    outcome: object = None

    @property
    def rate(self) -> float:
        """Answered queries per second over the window."""
        return self.answered / self.seconds


@dataclass
class QueryLoad:
    """Client threads, each with its own Client, querying without pause and checking answers."""

    settings: object
    name: str
    queries: np.ndarray
    want_ids: list[list[str]]
    want_scores: np.ndarray
    done: list[tuple[float, float, str]] = field(default_factory=list)  # (sent, answered, by)
    failures: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    windows: list[Window] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> QueryLoad:
        self._threads = [threading.Thread(target=self._client, args=(c,), daemon=True,
                                          name=f"query-client-{c}") for c in range(CLIENTS)]
        for thread in self._threads:
            thread.start()
        wait_until(lambda: len(self.done) >= 100, timeout=30, what="the first answers")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        assert not any(t.is_alive() for t in self._threads), "a query client did not stop"

    def switch(self, name: str, action: Callable[[], object], *,
               settled: Callable[[object], bool] | None = None,
               served_by: str | None = None) -> Window:
        """Run `action` under load, then wait for AFTER_SWITCH answers sent after it took effect.

        `settled(outcome)` says when the searchers apply it; with `served_by`, those answers
        must come from that collection (an alias's target).
        """
        started = time.monotonic()
        outcome = action()
        if settled is not None:
            wait_until(lambda: settled(outcome), timeout=SWITCH_TIMEOUT_S,
                       what=f"the searchers to apply the {name}")
        returned = time.monotonic()

        def after() -> int:
            return sum(1 for sent, _, by in list(self.done)
                       if sent >= returned and (served_by is None or by == served_by))

        wait_until(lambda: after() >= AFTER_SWITCH, timeout=SWITCH_TIMEOUT_S,
                   what=f"{AFTER_SWITCH} answers after the {name}")
        ended = time.monotonic()
        answered = sum(1 for _, at, _ in list(self.done) if started <= at <= ended)
        window = Window(name, answered, ended - started, returned, outcome)
        self.windows.append(window)
        return window

    def sent_after(self, moment: float) -> set[str]:
        """The collections that answered queries sent after `moment`."""
        return {by for sent, _, by in list(self.done) if sent > moment}

    def _client(self, number: int) -> None:
        with Client(settings=self.settings) as client:
            turn = number
            while not self._stop.is_set():
                q = turn % len(self.queries)
                turn += CLIENTS
                sent = time.monotonic()
                try:
                    got = client.search(self.name, self.queries[q], k=K, timeout=10)
                except Exception as exc:  # noqa: BLE001 - every failure is counted and shown
                    self.failures.append(f"query {q}: {type(exc).__name__}: {exc}")
                    continue
                self.done.append((sent, time.monotonic(), got.collection))
                ids = list(got.ids[0])
                if ids != self.want_ids[q] or not np.allclose(
                        got.scores[0], self.want_scores[q], rtol=1e-5, atol=1e-4):
                    self.wrong.append(f"query {q} from {got.collection}: {ids} "
                                      f"(want {self.want_ids[q]})")

    def check(self) -> None:
        """No query failed and every answer was the exact one; the rates are printed only.

        Speed is measured by bench/lifecycle.py: a shared machine cannot promise a rate here.
        """
        assert not self.failures, f"{len(self.failures)} failed queries: {self.failures[:3]}"
        assert not self.wrong, f"{len(self.wrong)} wrong answers: {self.wrong[:3]}"
        rates = {w.name: round(w.rate) for w in self.windows}
        print(f"query rates during switches (queries/s): {rates}; {len(self.done)} answered")


def load_sealed(settings, spec: CollectionSpec, rows: dict[str, np.ndarray]) -> None:
    """Upsert `rows` and wait until sealed segments cover every offset."""
    keys = sorted(rows)
    with Producer(spec.name, settings=settings) as producer:
        # Small messages: a segment seals at the first message that reaches SEAL_ROWS.
        for lo in range(0, len(keys), LOAD_STEP):
            producer.upsert(keys[lo:lo + LOAD_STEP],
                            np.stack([rows[k] for k in keys[lo:lo + LOAD_STEP]]))
        producer.flush()
    wait_fully_indexed(settings, spec.name, spec.collection.topic, INDEX_TIMEOUT_S)


def assert_exact(settings, name: str, churn: Churn, stable: dict[str, np.ndarray],
                 offsets: dict[int, int]) -> None:
    """With ingest paused: probes near stable and churned rows get the brute-force answer."""
    live = {**stable, **churn.live()}
    probes = np.concatenate([near(stable, 8, seed=31), near(churn.live(), 8, seed=32)])
    want_ids, want_scores = exact_top_k(live, probes, K)
    with Client(settings=settings) as client:
        got = client.search(name, probes, k=K, consistency={"session": offsets}, timeout=30)
    assert [list(row) for row in got.ids] == want_ids
    np.testing.assert_allclose(got.scores, want_scores, rtol=1e-5, atol=1e-4)


def spec_for(name: str, **fields: object) -> CollectionSpec:
    """A Flat collection with small segments."""
    return CollectionSpec(name, **{"dim": DIM, "partitions": PARTITIONS, "index": "Flat",
                                   "seal_rows": SEAL_ROWS, "seal_seconds": 2.0, **fields})


def load_queries(stable: dict[str, np.ndarray]) -> tuple[np.ndarray, list[list[str]], np.ndarray]:
    """The load's queries and their exact answers over the stable rows alone."""
    queries = near(stable, 64, seed=3)
    want_ids, want_scores = exact_top_k(stable, queries, K)
    return queries, want_ids, want_scores
