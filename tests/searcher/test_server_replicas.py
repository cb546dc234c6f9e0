"""Query server replicas sharing a stream: one reply per request, claims after a crash."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from searcher import protocol
from searcher.query import Consistency
from searcher.server import GROUP, Server
from tests.support.polling import wait_until
from tests.support.standin import (
    DEADLINE_S,
    DIM,
    StandIn,
    add_all,
    assert_answer,
    drained,
    raw_request,
    replies,
    serving,
)

pytestmark = pytest.mark.integration


class DroppingServer(Server):
    """A replica that reads entries and dies before answering: it forgets what it read."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.dropped = 0

    def admit(self, entries) -> None:
        self.dropped += len(entries)


def test_two_replicas_share_the_stream(redis_settings, engine, redis_client) -> None:
    name = engine.spec.name
    queries = {f"s-{i}": np.full((1, DIM), i, np.float32) for i in range(600)}
    with serving(redis_settings, engine, consumer="a", batch_max=8) as (_, a), \
            serving(redis_settings, engine, consumer="b", batch_max=8) as (_, b):
        add_all(redis_client, name, [raw_request(name, rid, v) for rid, v in queries.items()])
        wait_until(lambda: drained(redis_client, name), timeout=DEADLINE_S, what="all answered")
    got = replies(redis_client, name, list(queries))
    for rid, vectors in queries.items():
        assert len(got[rid]) == 1
        assert_answer(got[rid][0], rid, vectors, 3)
    assert a.get("queries_total") + b.get("queries_total") == 600


def test_racing_replicas_reply_exactly_once(redis_settings, engine, redis_client,
                                            collection_name) -> None:
    """Replica a stalls mid-search, b claims and answers; a's late answers are discarded."""
    slow, fast = StandIn(collection_name, {0: 1}), StandIn(collection_name, {0: 2})
    slow.gate, name = threading.Event(), collection_name
    queries = {f"c-{i}": np.full((1, DIM), i, np.float32) for i in range(40)}
    with serving(redis_settings, slow, consumer="a", claim_idle_ms=60_000) as (_, a):
        add_all(redis_client, name, [raw_request(name, rid, v) for rid, v in queries.items()])
        assert slow.searched.wait(DEADLINE_S)
        with serving(redis_settings, fast, consumer="b", claim_idle_ms=200) as (_, b):
            wait_until(lambda: drained(redis_client, name), timeout=DEADLINE_S,
                       what="b answering what a holds")
        slow.gate.set()
        add_all(redis_client, name, [raw_request(name, "after", np.ones((1, DIM)))])
        _, body = redis_client.blpop([protocol.reply_key(name, "after")], DEADLINE_S)
        assert_answer(body, "after", np.ones((1, DIM)), 3, {0: 1})
    # a did search its stalled batch (after b had answered it), then the one request after.
    assert len(slow.requests) >= 2 and slow.requests[-1].request_id == "after"
    got = replies(redis_client, name, list(queries))
    for rid, vectors in queries.items():
        assert len(got[rid]) == 1
        assert_answer(got[rid][0], rid, vectors, 3, {0: 2})
    assert (a.get("queries_total"), b.get("queries_total")) == (1, 40)
    assert drained(redis_client, name)


def test_a_crashed_replicas_requests_are_claimed(redis_settings, engine, redis_client) -> None:
    name = engine.spec.name
    queries = {f"x-{i}": np.full((2, DIM), i, np.float32) for i in range(100)}
    with serving(redis_settings, engine, consumer="dead", server_class=DroppingServer) as (dead, _):
        add_all(redis_client, name, [raw_request(name, rid, v) for rid, v in queries.items()])
        wait_until(lambda: dead.dropped >= 100, timeout=DEADLINE_S, what="the replica reading all")
    stream = protocol.queue_key(name)
    assert redis_client.xpending(stream, GROUP)["consumers"] == [
        {"name": b"dead", "pending": 100}]
    with serving(redis_settings, engine, consumer="alive", claim_idle_ms=300) as (_, alive):
        wait_until(lambda: drained(redis_client, name), timeout=DEADLINE_S, what="claimed answers")
    got = replies(redis_client, name, list(queries))
    for rid, vectors in queries.items():
        assert len(got[rid]) == 1
        assert_answer(got[rid][0], rid, vectors, 3)
    assert alive.get("queries_total") == 100


def test_a_waiting_request_is_not_claimed_from_a_live_replica(redis_settings, redis_client,
                                                               collection_name) -> None:
    """The holder keeps resetting the entry's idle time, so the other replica leaves it alone."""
    holder, other = StandIn(collection_name), StandIn(collection_name)
    holder.blocked, name = {"strong"}, collection_name
    stream = protocol.queue_key(name)
    with serving(redis_settings, holder, consumer="a", claim_idle_ms=1000) as (_, a):
        held = raw_request(name, "held", np.ones((1, DIM)), consistency=Consistency("strong"),
                           timeout_ms=60000)
        add_all(redis_client, name, [held])
        wait_until(lambda: holder.checks >= 1, timeout=DEADLINE_S, what="a holding the request")
        with serving(redis_settings, other, consumer="b", claim_idle_ms=1000) as (_, b):
            start = holder.checks
            # Over two seconds of 20 ms steps: twice the idle time after which b would claim it.
            wait_until(lambda: holder.checks >= start + 110, timeout=DEADLINE_S, what="a's steps")
            [entry] = redis_client.xpending_range(stream, GROUP, "-", "+", 10)
            assert (entry["consumer"], entry["times_delivered"]) == (b"a", 1)
            assert entry["time_since_delivered"] < 1000
            holder.blocked.clear()
            _, body = redis_client.blpop([protocol.reply_key(name, "held")], DEADLINE_S)
    assert_answer(body, "held", np.ones((1, DIM)), 3)
    assert (a.get("queries_total"), b.get("queries_total"), other.checks) == (1, 0, 0)
