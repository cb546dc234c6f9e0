"""Waiting requests are pushed: the engine's progress wakes the request loop, nothing polls."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from ingest import catalog
from searcher import SearchError
from searcher.consistency import Progress
from searcher.consistency import reached as level_met
from searcher.query import Consistency
from tests.support.polling import wait_until
from tests.support.standin import DEADLINE_S, StandIn, serving

pytestmark = pytest.mark.integration


class PushedStandIn(StandIn):
    """The stand-in engine with a Progress: its positions meet session and strong requests."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.progress = Progress()

    def reached(self, consistency: Consistency, state: object) -> bool:
        self.checks += 1
        if consistency.level in self.blocked:
            return False
        return level_met(consistency, state, self.positions(), {}, 0.0)

    def advance(self, positions: dict[int, int]) -> None:
        """The tail moved: new positions, then the notification, as the serving state does."""
        self.now = positions
        self.progress.notify()


class TurnCounter:
    """A turn hook that counts the request loop's finished turns."""

    def __init__(self) -> None:
        self.turns = 0

    def __call__(self, name: str) -> TurnCounter:
        return self

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        self.turns += 1
        return False


@pytest.fixture
def pushed(redis_client: redis.Redis, collection_name: str) -> PushedStandIn:
    """A pushed stand-in engine for a collection registered in the catalog."""
    engine = PushedStandIn(collection_name)
    catalog.claim_spec(redis_client, engine.spec)
    return engine


def test_waiting_requests_are_answered_when_the_positions_reach_them_and_only_checked_then(
        redis_settings, pushed, client) -> None:
    name, counter = pushed.spec.name, TurnCounter()

    def turns_after(n: int) -> None:  # n more whole turns of the loop
        goal = counter.turns + n
        wait_until(lambda: counter.turns >= goal, timeout=DEADLINE_S, what=f"{n} turns")

    with serving(redis_settings, pushed, turn_hook=counter) as (_, metrics), \
            ThreadPoolExecutor(2) as pool:
        session = pool.submit(client.search, name, [1, 2, 3, 4], k=2,
                              consistency={"session": {0: 40, 1: 5}}, timeout=30)
        wait_until(lambda: pushed.checks >= 1, timeout=DEADLINE_S, what="the session check")
        strong = pool.submit(client.search, name, [2, 2, 2, 2], k=1, consistency="strong",
                             timeout=30)
        wait_until(lambda: pushed.checks >= 3, timeout=DEADLINE_S, what="the strong check")
        turns_after(2)
        checks = pushed.checks
        turns_after(5)
        assert pushed.checks == checks  # nothing moved: nobody looked again
        pushed.advance({0: 41, 1: 5})  # partition 1 has not passed offset 5 yet
        wait_until(lambda: pushed.checks > checks, timeout=DEADLINE_S, what="a check")
        turns_after(2)
        assert pushed.requests == [] and not session.done() and not strong.done()
        pushed.advance({0: 41, 1: 6})
        got = session.result(DEADLINE_S)
        assert (got.ids.tolist(), got.offsets) == ([["h10-0", "h10-1"]], {0: 41, 1: 6})
        assert not strong.done()  # it waits for the log ends seen at arrival: {0: 50, 1: 5}
        pushed.advance({0: 50, 1: 6})
        got = strong.result(DEADLINE_S)
        assert (got.ids.tolist(), got.offsets) == ([["h8-0"]], {0: 50, 1: 6})
    assert metrics.get("consistency_wait_seconds_count", level="session") == 1
    assert metrics.get("consistency_wait_seconds_count", level="strong") == 1
    assert metrics.get("queries_total") == 2


def test_a_wait_runs_out_on_its_deadline_though_nothing_moves(redis_settings, pushed,
                                                              client) -> None:
    pushed.blocked = {"session"}
    with serving(redis_settings, pushed) as (_, metrics):
        with pytest.raises(SearchError) as caught:
            client.search(pushed.spec.name, [1, 2, 3, 4],
                          consistency={"session": {0: 41, 1: 4}}, timeout=0.3)
    assert (caught.value.code, caught.value.message) == (
        "consistency_timeout", "session consistency not reached within 300 ms: waiting for "
                               "partition 0 to pass offset 41 (searcher at 37)")
    assert metrics.get("errors_total", code="consistency_timeout") == 1
    assert pushed.requests == []
