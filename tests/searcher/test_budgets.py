"""Searcher budgets without servers: cost arithmetic, refusals, bounded rescoring and scans."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from ingest.spec import CollectionSpec
from searcher import search
from searcher.budgets import Budgets, batch_results, request_results, split_batch
from searcher.consistency import LogEnds, StrongArrival, reached
from searcher.errors import QueryError, SearchError
from searcher.execute import Searchable, execute, validate
from searcher.metrics import SearcherMetrics
from searcher.query import Consistency, Filter, QueryRequest
from searcher.search import ScanBudgetExceeded, Source
from searcher.tail import POLL_MESSAGES, TailReader
from streamvec.commands.errors import ExitCode, exit_code
from streamvec.devstack.ports import LOOPBACK
from streamvec.settings import Settings
from tests.support.polling import wait_until

DIM = 4


def req(n: int, k: int, dim: int = DIM, **kw) -> QueryRequest:
    return QueryRequest("r", "c", np.ones((n, dim), np.float32), k, **kw)


def test_cost_arithmetic() -> None:
    assert request_results(1024, 1000) == 1_024_000
    assert batch_results([]) == 0
    # One query matrix, searched with the batch's largest k (plus the canary slack).
    assert batch_results([req(3, 10), req(2, 100)]) == 5 * 100
    assert batch_results([req(3, 10), req(2, 100)], extra_k=8) == 5 * 108
    assert batch_results([QueryRequest("r", "c", np.ones(DIM, np.float32), 7)]) == 7


def test_split_batch_keeps_each_group_within_budget() -> None:
    requests = [req(10, 10), req(10, 10), req(10, 50), req(1, 10), req(100, 100)]
    assert split_batch(requests, 300) == [[0, 1], [2], [3], [4]]
    assert split_batch(requests, 10**9) == [[0, 1, 2, 3, 4]]
    assert split_batch([], 5) == []
    for budget in (100, 500, 1000, 5000):
        for group in split_batch(requests, budget):
            chosen = [requests[i] for i in group]
            assert len(group) == 1 or batch_results(chosen) <= budget


def test_check_refuses_with_exact_messages() -> None:
    budgets = Budgets()
    refused = budgets.check(req(1024, 1000))
    assert (refused.code, refused.message) == (
        "too_large", "1024 query vectors x k=1000 = 1024000 results, over the budget of "
        "100000 per request; send fewer vectors per request or a smaller k")
    assert budgets.check(req(100, 1000)) is None
    assert budgets.check(req(100, 1001)).code == "too_large"
    values = Budgets(request_values=1000).check(req(300, 1, dim=4))
    assert values.message == ("300 query vectors x dim 4 = 1200 values, over the budget of "
                              "1000 per request")
    assert budgets.oversize(9_000_000).message == (
        "the request is 9000000 bytes, over the budget of 8388608 bytes per request")


def test_too_large_is_a_usage_error_for_the_command_line() -> None:
    assert exit_code(SearchError("too_large", "x")) == ExitCode.USAGE == 2


def test_budgets_come_from_settings_and_env(monkeypatch) -> None:
    monkeypatch.setenv("STREAMVEC_SEARCHER_MAX_REQUEST_RESULTS", "5000")
    monkeypatch.setenv("STREAMVEC_SEARCHER_MAX_DELIVERIES", "7")
    budgets = Budgets.from_settings(Settings())
    assert (budgets.request_results, budgets.deliveries) == (5000, 7)
    assert budgets.batch_results == Budgets().batch_results


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_rescoring_in_blocks_gives_the_same_scores(metric, monkeypatch) -> None:
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((50, 8)).astype(np.float32)
    queries = rng.standard_normal((7, 8)).astype(np.float32)
    rows = rng.integers(-1, 50, size=(7, 9))
    whole = search.rescore(vectors, rows, queries, metric)
    for block in (1, 8, 20, 100):  # one value (columns split), rows of queries, and more
        monkeypatch.setattr(search, "RESCORE_BLOCK_VALUES", block)
        assert np.array_equal(search.rescore(vectors, rows, queries, metric), whole)
    assert (whole[rows < 0] == search.worst(metric)).all()


def filtered_source(rows: int = 200) -> tuple[Searchable, list[dict]]:
    rng = np.random.default_rng(9)
    vectors = rng.standard_normal((rows, DIM)).astype(np.float32)
    meta = [{"shard": r % 50} for r in range(rows)]  # each value matches 1 row in 50
    ids = [f"row-{r}" for r in range(rows)]
    return Searchable(Source(vectors), ids.__getitem__, meta.__getitem__), meta


def test_a_filtered_scan_stops_at_its_row_budget() -> None:
    item, meta = filtered_source()
    seen: list[int] = []

    def accept(rows: np.ndarray) -> np.ndarray:
        seen.extend(rows.tolist())
        return np.array([meta[r]["shard"] == 7 for r in rows.tolist()])

    query = np.zeros((1, DIM), np.float32)
    with pytest.raises(ScanBudgetExceeded) as caught:
        search.search_filtered(item.source, query, 4, "l2", accept, max_examined=60)
    assert caught.value.examined > 60 and len(seen) <= 60
    scores, rows = search.search_filtered(item.source, query, 4, "l2", accept, max_examined=200)
    assert sorted(r for r in rows[0].tolist() if r >= 0) == [7, 57, 107, 157]


def test_execute_answers_too_large_for_a_filter_over_budget_and_runs_the_rest() -> None:
    item, _ = filtered_source()
    rare = req(1, 4, filter=Filter({"shard": (7,)}))
    plain = req(1, 3)
    budgets = Budgets(filter_rows=60)
    got = execute([rare, plain], [validate(rare, DIM), validate(plain, DIM)], [item], "l2", {},
                  budgets)
    assert isinstance(got[0], QueryError)
    assert got[0].code == "too_large"
    assert got[0].message.startswith("the filter examined ")
    assert got[0].message.endswith(" rows without finding k matches, over the budget of 60 "
                                   "rows per request; use a filter that more rows match or a "
                                   "smaller k")
    assert len(got[1].ids[0]) == 3
    fine = execute([rare], [validate(rare, DIM)], [item], "l2", {}, Budgets(filter_rows=200))
    assert sorted(fine[0].ids[0]) == ["row-107", "row-157", "row-57", "row-7"]


def test_metadata_past_the_reply_budget_is_too_large() -> None:
    item, _ = filtered_source()
    asked = req(2, 100, with_metadata=True)
    got = execute([asked], [validate(asked, DIM)], [item], "l2", {},
                  Budgets(reply_bytes=1024))[0]
    assert got.code == "too_large"
    assert got.message.startswith("the batch's metadata reached ")
    assert got.message.endswith(" bytes, over the budget of 1024 bytes per batch; ask for "
                                "fewer results or without metadata")
    small = execute([asked], [validate(asked, DIM)], [item], "l2", {}, Budgets())[0]
    assert [len(row) for row in small.metadata] == [100, 100]


class CountedEnds:
    """A Watermarks stand-in that answers from a dict and counts its fetches."""

    topic = "sv.t"

    def __init__(self) -> None:
        self.highs, self.calls = {0: 5}, 0
        self.gate = threading.Event()

    def fetch(self) -> dict[int, int]:
        self.gate.wait(10)
        self.calls += 1
        return dict(self.highs)


def test_log_ends_are_fetched_off_the_caller_and_shared() -> None:
    source = CountedEnds()
    ends = LogEnds(source)
    ends.start()
    try:
        first, second = ends.ask(), ends.ask()
        assert ends.answer(first) is None  # the fetch has not returned: nothing waits on it
        assert not reached(Consistency("strong"), first, {0: 9}, {}, 0.0)
        source.gate.set()
        wait_until(lambda: ends.answer(second) is not None, timeout=10, what="the log ends")
        assert ends.answer(first) == {0: 5} and source.calls == 1
        assert reached(Consistency("strong"), first, {0: 5}, {}, 0.0)
        source.highs = {0: 8}
        third = ends.ask()
        wait_until(lambda: ends.answer(third) is not None, timeout=10, what="a second fetch")
        assert (third.highs, first.highs) == ({0: 8}, {0: 5})
        assert isinstance(third, StrongArrival)
    finally:
        ends.stop()


def test_the_tail_reader_stops_reading_at_its_row_bound() -> None:
    held = [0]
    registry = CollectorRegistry()
    metrics = SearcherMetrics(registry, "t")
    settings = Settings(kafka=f"{LOOPBACK}:1", kafka_options={})
    reader = TailReader(settings, CollectionSpec("t", dim=DIM), [0], sink=None, max_rows=1500,
                        held_rows=lambda: held[0], full_gauge=metrics.labels(metrics.tail_full))
    full = ("streamvec_searcher_tail_full", {"collection": "t"})
    try:
        assert reader._room() == POLL_MESSAGES and not reader.full
        held[0] = 1000
        assert reader._room() == 500
        held[0] = 1500
        assert reader._room() == 0 and reader.full
        assert registry.get_sample_value(*full) == 1
        held[0] = 10
        assert reader._room() == POLL_MESSAGES and not reader.full
        assert registry.get_sample_value(*full) == 0
    finally:
        reader._consumer.close()
