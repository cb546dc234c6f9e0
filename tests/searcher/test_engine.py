"""The search engine against a real indexer, Kafka and Redis: exactness, read-your-writes, swaps."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from indexer.registry import Registry
from indexer.store import SegmentStore
from ingest import admin
from ingest.producer import Producer
from ingest.spec import CollectionSpec
from searcher import search
from searcher.engine import Engine
from searcher.metrics import SearcherMetrics
from searcher.query import MAX_K, Consistency, Filter, QueryAnswer, QueryRequest
from searcher.watcher import SegmentWatcher
from tests.support.oracle import exact_scores
from tests.support.polling import wait_until
from tests.support.stack import IndexerThread
from tests.support.workers import Workload, log_ends, wait_fully_indexed

pytestmark = pytest.mark.integration

DIM = 8
SYNC_TIMEOUT_S = 30.0
FAST_POLL_S = 0.002


class Served:
    """An engine plus the metric registry it reports to."""

    def __init__(self, settings, name: str) -> None:
        self.metrics = CollectorRegistry()
        self.engine = Engine(settings, name, metrics=SearcherMetrics(self.metrics, name),
                             reconcile_s=0.5)
        self.engine.start()

    def sample(self, name: str, default: float | None = None,
               labels: dict[str, str] | None = None) -> float | None:
        value = self.metrics.get_sample_value(f"streamvec_searcher_{name}",
                                              {"collection": self.engine.collection,
                                               **(labels or {})})
        return default if value is None else value

    def search(self, vectors: np.ndarray, k: int, **kw) -> QueryAnswer:
        (answer,) = self.engine.search_batch([QueryRequest("q", self.engine.collection,
                                                           vectors, k, **kw)])
        assert isinstance(answer, QueryAnswer), answer
        return answer

    def sync(self, flushed: dict[int, int]) -> None:
        """Wait until every flushed offset is reflected (read-your-writes)."""
        level = Consistency("session", offsets=flushed)
        wait_until(lambda: self.engine.reached(level, self.engine.arrival_state(level)),
                   timeout=SYNC_TIMEOUT_S, what=f"session offsets {flushed}",
                   interval=FAST_POLL_S)

    def sealed_up_to(self, ends: dict[int, int]) -> bool:
        """True once the served segments cover every partition up to `ends`."""
        state = self.engine.state
        with state.lock:
            return all(state.segments.coverage(p) >= end for p, end in ends.items())


def make_spec(settings, name: str, **kw) -> CollectionSpec:
    spec = CollectionSpec(name, dim=DIM, partitions=3, index="Flat", **kw)
    admin.create_collection(settings, spec)
    return spec


@pytest.fixture
def running() -> Iterator[list]:
    """Stops what a test started (engines, indexers), last started first."""
    started: list = []
    yield started
    for item in reversed(started):
        (item.engine if isinstance(item, Served) else item).stop()


def expected_answer(live: dict[str, np.ndarray], queries: np.ndarray, k: int,
                    metric: str) -> list[list[tuple[str, float]]]:
    ids = sorted(live)
    if not ids:
        return [[] for _ in queries]
    scores = exact_scores(np.stack([live[i] for i in ids]), queries, metric)
    order = np.argsort(search.cost(scores, metric), axis=1, kind="stable")[:, :k]
    return [[(ids[j], float(scores[q, j])) for j in row] for q, row in enumerate(order)]


def assert_exact(answer: QueryAnswer, expected: list[list[tuple[str, float]]]) -> None:
    for ids, scores, want in zip(answer.ids, answer.scores, expected, strict=True):
        assert ids == [i for i, _ in want]
        np.testing.assert_allclose(scores, [s for _, s in want], rtol=0, atol=1e-5)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_answers_equal_exact_search_while_ingest_and_seals_run(settings, collection_name,
                                                               running, metric) -> None:
    spec = make_spec(settings, collection_name, metric=metric, seal_rows=250, seal_seconds=0.2)
    running.append(IndexerThread(settings, spec.name))
    served = Served(settings, spec.name)
    running.append(served)
    rng = np.random.default_rng(21)
    workload = Workload(DIM, rng)
    rounds = 0

    def one_round(producer: Producer) -> bool:
        nonlocal rounds
        workload.send_round(producer, 120, id_space=500)
        flushed = producer.flush()
        served.sync(flushed)
        queries = rng.standard_normal((6, DIM)).astype(np.float32)
        answer = served.search(queries, 10)
        assert answer.offsets == {p: o + 1 for p, o in flushed.items()}
        assert_exact(answer, expected_answer(workload.live(), queries, 10, metric))
        rounds += 1
        return rounds >= 12 and served.sample("swaps_total", 0) >= 6

    with Producer(spec.name, settings=settings) as producer:
        # Ingest never waits for the indexer: seals land between and during the rounds.
        wait_until(lambda: one_round(producer), timeout=90, what="12 rounds and 6 swaps",
                   interval=0)
    assert served.sample("loaded_segments") >= 3


def test_read_your_writes_and_deletes_never_come_back(settings, collection_name,
                                                     running) -> None:
    spec = make_spec(settings, collection_name, seal_rows=40, seal_seconds=0.2)
    running.append(IndexerThread(settings, spec.name))
    served = Served(settings, spec.name)
    running.append(served)
    rng = np.random.default_rng(22)
    deleted: list[tuple[str, np.ndarray]] = []
    with Producer(spec.name, settings=settings, linger_ms=0) as producer:
        for trial in range(300):
            key, vector = f"ryw-{trial}", rng.standard_normal((1, DIM)).astype(np.float32)
            producer.upsert([key], vector, metadata=[{"trial": trial}])
            served.sync(producer.flush())
            answer = served.search(vector, 1, with_metadata=True)
            assert answer.ids == [[key]], trial
            assert answer.metadata == [[{"trial": trial}]]
            if trial % 25 == 0:
                elsewhere = rng.standard_normal((2, DIM)).astype(np.float32)
                only = served.search(elsewhere, 3, filter=Filter({"trial": (trial,)}))
                assert only.ids == [[key], [key]]
            if trial % 10 == 0:
                producer.delete([key])
                served.sync(producer.flush())
                deleted.append((key, vector))
            for gone, gone_vector in deleted[-3:]:
                assert gone not in served.search(gone_vector, 5).ids[0], (trial, gone)
    everything = served.search(np.zeros((1, DIM), np.float32), MAX_K).ids[0]
    assert len(everything) == len(set(everything)) == 300 - len(deleted)
    assert not {key for key, _ in deleted} & set(everything)
    strong = Consistency("strong")
    arrival = served.engine.arrival_state(strong)
    wait_until(lambda: served.engine.reached(strong, arrival), timeout=SYNC_TIMEOUT_S,
               what="strong consistency")
    assert arrival.highs == log_ends(settings, spec.collection.topic)
    assert all(served.engine.positions()[p] >= end for p, end in arrival.highs.items())
    bounded = Consistency("bounded", bound_ms=500)
    wait_until(lambda: served.engine.reached(bounded, served.engine.arrival_state(bounded)),
               timeout=SYNC_TIMEOUT_S, what="bounded consistency")


def test_searches_during_continuous_sealing_see_every_id_once(settings, collection_name,
                                                              running) -> None:
    spec = make_spec(settings, collection_name, seal_rows=100, seal_seconds=0.1)
    running.append(IndexerThread(settings, spec.name))
    served = Served(settings, spec.name)
    running.append(served)
    rng = np.random.default_rng(23)
    workload = Workload(DIM, rng)
    probe = np.zeros((1, DIM), np.float32)
    searches = 0

    def every_live_id_exactly_once(ends: dict[int, int]) -> bool:
        nonlocal searches
        answer = served.search(probe, MAX_K)
        searches += 1
        assert len(answer.ids[0]) == len(set(answer.ids[0])), "an id is served twice"
        assert sorted(answer.ids[0]) == sorted(workload.live())
        return served.sealed_up_to(ends)

    with Producer(spec.name, settings=settings) as producer:
        for _ in range(10):
            workload.send_round(producer, 150, id_space=900)
            flushed = producer.flush()
            served.sync(flushed)
            ends = {p: o + 1 for p, o in flushed.items()}
            # Search before, across and after the swap that seals this round.
            wait_until(lambda e=ends: every_live_id_exactly_once(e), timeout=SYNC_TIMEOUT_S,
                       what="the round to be sealed", interval=FAST_POLL_S)
    assert served.sample("swaps_total", 0) >= 10
    assert searches > 20


def test_a_corrupt_segment_is_refused_the_tail_serves_its_rows_and_a_repair_heals(
        settings, collection_name, running) -> None:
    spec = make_spec(settings, collection_name, seal_rows=60, seal_seconds=0.2)
    indexer = IndexerThread(settings, spec.name)
    running.append(indexer)
    rng = np.random.default_rng(24)
    keys = [f"c-{i}" for i in range(600)]
    vectors = rng.standard_normal((600, DIM)).astype(np.float32)
    with Producer(spec.name, settings=settings) as producer:
        for lo in range(0, 600, 50):
            producer.upsert(keys[lo:lo + 50], vectors[lo:lo + 50])
    wait_fully_indexed(settings, spec.name, spec.collection.topic, timeout=60)
    indexer.stop()
    registry = Registry(settings.redis_client(), spec.name)
    records = registry.segments(partition=0)
    assert len(records) >= 2
    victim = settings.store / records[0].path
    good = (victim / "vectors.npy").read_bytes()
    (victim / "vectors.npy").write_bytes(good[:-1] + bytes([good[-1] ^ 0xFF]))

    served = Served(settings, spec.name)
    running.append(served)
    assert served.sample("refused_segments_total") == 1
    assert served.sample("unloaded_segments", labels={"reason": "corrupt"}) == 1
    # Partition 0 waits for its first segment; the tail serves its offsets meanwhile.
    total = len(registry.segments())
    assert served.sample("loaded_segments") == total - len(records)
    ends = log_ends(settings, spec.collection.topic)
    served.sync({p: end - 1 for p, end in ends.items() if end})
    served_ids = served.search(np.zeros((1, DIM), np.float32), MAX_K).ids[0]
    assert sorted(served_ids) == sorted(keys)

    (victim / "vectors.npy").write_bytes(good)
    wait_until(lambda: served.sample("loaded_segments") == total, timeout=SYNC_TIMEOUT_S,
               what="the repaired segment and those after it loaded")
    assert served.sample("unloaded_segments", labels={"reason": "corrupt"}) == 0
    assert served.engine.state.tail.row_count() == 0
    served_ids = served.search(np.zeros((1, DIM), np.float32), MAX_K).ids[0]
    assert sorted(served_ids) == sorted(keys)
    with Producer(spec.name, settings=settings) as producer:
        producer.upsert(["after"], np.ones((1, DIM), np.float32))
        served.sync(producer.flush())
    assert served.search(np.ones((1, DIM), np.float32), 1).ids == [["after"]]


class RecordingSink:
    """A watcher sink that only records what it is told."""

    def __init__(self) -> None:
        self.loaded: dict[str, bool] = {}  # segment id -> loaded (False: refused)
        self.paths: dict[str, str] = {}

    def served(self) -> dict[str, str]:
        return dict(self.paths)

    def replace(self, gone, loaded) -> None:
        for sid in gone:
            del self.loaded[sid], self.paths[sid]
        for record, segment in loaded:
            self.loaded[record.segment_id] = segment is not None
            self.paths[record.segment_id] = record.path


def test_the_watcher_heals_missed_events_by_reconciling(settings, collection_name,
                                                       running) -> None:
    spec = make_spec(settings, collection_name, seal_rows=50, seal_seconds=0.2)
    registry = Registry(settings.redis_client(), spec.name)
    sink = RecordingSink()
    # Never subscribed: every event is missed, only the periodic reconcile sees segments.
    watcher = SegmentWatcher(registry, SegmentStore(settings.store), sink, reconcile_s=0.2)
    watcher.start()
    running.append(watcher)
    indexer = IndexerThread(settings, spec.name)
    running.append(indexer)
    with Producer(spec.name, settings=settings) as producer:
        producer.upsert([f"w-{i}" for i in range(300)],
                        np.ones((300, DIM), np.float32))
    wait_fully_indexed(settings, spec.name, spec.collection.topic, timeout=60)
    indexer.stop()
    registered = {r.segment_id for r in registry.segments()}
    wait_until(lambda: sink.loaded == dict.fromkeys(registered, True), timeout=SYNC_TIMEOUT_S,
               what="every registered segment loaded")
    registry.clear()
    wait_until(lambda: sink.loaded == {}, timeout=SYNC_TIMEOUT_S, what="every segment released")


def test_the_tail_stops_at_its_row_bound_until_segments_cover_it(settings, collection_name,
                                                                 running) -> None:
    spec = make_spec(settings, collection_name, seal_rows=1000, seal_seconds=0.2)
    served = Served(settings.model_copy(update={"searcher_max_tail_rows": 40}), spec.name)
    running.append(served)
    rng = np.random.default_rng(4)
    with Producer(spec.name, settings=settings) as producer:
        for i in range(30):  # 30 messages of 5 rows: 150 rows, far past the bound
            producer.upsert([f"r{i}-{j}" for j in range(5)],
                            rng.standard_normal((5, DIM)).astype(np.float32))
            producer.flush()
        flushed = producer.flush()
    wait_until(lambda: served.engine.problem() is not None, timeout=SYNC_TIMEOUT_S,
               what="the tail reaching its bound")
    assert served.engine.problem() == ("the live tail is at its bound of 40 rows: reading stops "
                                       "until sealed segments cover them (the searcher lags)")
    assert served.sample("tail_full") == 1
    # Reading stops at the bound: one poll's messages past it at most, never all 150 rows.
    assert 40 <= served.engine.state.tail.row_count() < 150
    session = Consistency("session", offsets=flushed)
    assert not served.engine.reached(session, served.engine.arrival_state(session))
    running.append(IndexerThread(settings, spec.name))
    served.sync(flushed)  # segments cover the rows: the tail drops them and reads on
    assert served.engine.problem() is None
    wait_until(lambda: served.sample("tail_full") == 0, timeout=SYNC_TIMEOUT_S,
               what="the reader's next turn")
    assert len(served.search(np.zeros((1, DIM), np.float32), MAX_K).ids[0]) == 150
