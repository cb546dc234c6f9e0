"""The query server's budgets on a real Redis: too_large, byte caps, expiry, redelivery, holds."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from searcher import SearchError, protocol
from searcher.budgets import Budgets
from searcher.server import GROUP
from tests.support.polling import wait_until
from tests.support.standin import (
    DEADLINE_S,
    DIM,
    add_all,
    assert_answer,
    drained,
    raw_request,
    serving,
)

pytestmark = pytest.mark.integration


def test_an_over_budget_request_is_too_large_and_the_next_one_is_served(
        redis_settings, engine, client) -> None:
    name = engine.spec.name
    with serving(redis_settings, engine) as (_, metrics):
        with pytest.raises(SearchError) as caught:
            client.search(name, np.ones((1024, DIM)), k=1000)
        assert (caught.value.code, caught.value.message) == (
            "too_large", "1024 query vectors x k=1000 = 1024000 results, over the budget of "
            "100000 per request; send fewer vectors per request or a smaller k")
        assert client.search(name, [1, 1, 1, 1], k=2).ids.tolist() == [["h4-0", "h4-1"]]
    assert [r.request_id for r in engine.requests] == [engine.requests[0].request_id]
    assert len(engine.requests[0].vectors) == 1
    assert metrics.get("errors_total", code="too_large") == 1
    assert metrics.get("queries_total") == 2


def test_a_request_over_the_byte_budget_is_refused_unread(redis_settings, engine,
                                                          redis_client) -> None:
    name = engine.spec.name
    big = {**raw_request(name, "big", np.ones((1, DIM))), b"pad": b"x" * 10_000}
    size = sum(len(k if isinstance(k, bytes) else k.encode()) + len(v) for k, v in big.items())
    small = raw_request(name, "small", np.ones((2, DIM)))
    add_all(redis_client, name, [big, small])
    # A turn's byte budget below one request's size: each turn still takes one entry.
    with serving(redis_settings, engine, budgets=Budgets(request_bytes=4096,
                                                         read_bytes=1024)) as (_, metrics):
        _, body = redis_client.blpop([protocol.reply_key(name, "big")], DEADLINE_S)
        _, fine = redis_client.blpop([protocol.reply_key(name, "small")], DEADLINE_S)
        wait_until(lambda: drained(redis_client, name), timeout=DEADLINE_S, what="both acked")
    rid, error = protocol.decode_reply(body)
    assert (rid, error.code, error.message) == (
        "big", "too_large", f"the request is {size} bytes, over the budget of 4096 bytes per "
        "request")
    assert_answer(fine, "small", np.ones((2, DIM)), 3)
    assert [r.request_id for r in engine.requests] == ["small"]
    assert metrics.get("errors_total", code="too_large") == 1


def test_expired_requests_are_dropped_unexecuted_and_counted(redis_settings, engine,
                                                             redis_client) -> None:
    name, stream = engine.spec.name, protocol.queue_key(engine.spec.name)
    # Entry ids carry Redis's clock: these were added long before their 5 s timeout ran out.
    for i in range(3):
        redis_client.xadd(stream, raw_request(name, f"old-{i}", np.ones((1, DIM))),
                          id=f"1000-{i + 1}")
    add_all(redis_client, name, [raw_request(name, "new", np.ones((1, DIM)))])
    with serving(redis_settings, engine) as (_, metrics):
        _, body = redis_client.blpop([protocol.reply_key(name, "new")], DEADLINE_S)
        wait_until(lambda: drained(redis_client, name), timeout=DEADLINE_S, what="all removed")
    assert_answer(body, "new", np.ones((1, DIM)), 3)
    assert [r.request_id for r in engine.requests] == ["new"]
    assert [redis_client.exists(protocol.reply_key(name, f"old-{i}")) for i in range(3)] == [0] * 3
    assert metrics.get("expired_total") == 3
    assert metrics.get("queries_total") == 1


def test_a_request_redelivered_past_the_limit_is_answered_with_an_error(
        redis_settings, engine, redis_client) -> None:
    name, stream = engine.spec.name, protocol.queue_key(engine.spec.name)
    redis_client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    add_all(redis_client, name, [raw_request(name, "poison", np.ones((1, DIM))),
                                 raw_request(name, "unlucky", np.full((1, DIM), 2))])
    # Replicas that took the entries and died: "poison" three times, "unlucky" twice.
    got = redis_client.xreadgroup(GROUP, "dead", {stream: ">"}, count=2)
    poison, unlucky = [entry_id for entry_id, _ in got[0][1]]
    redis_client.xclaim(stream, GROUP, "dead", 0, [poison, unlucky])
    redis_client.xclaim(stream, GROUP, "dead", 0, [poison])
    with serving(redis_settings, engine, claim_idle_ms=200,
                 budgets=Budgets(deliveries=3)) as (_, metrics):
        _, body = redis_client.blpop([protocol.reply_key(name, "poison")], DEADLINE_S)
        _, fine = redis_client.blpop([protocol.reply_key(name, "unlucky")], DEADLINE_S)
        wait_until(lambda: drained(redis_client, name), timeout=DEADLINE_S, what="both acked")
    rid, error = protocol.decode_reply(body)
    assert (rid, error.code, error.message) == (
        "poison", "internal", "the request was delivered 4 times without being answered (the "
        "searchers that took it stopped); it is not run again (limit 3 deliveries)")
    assert_answer(fine, "unlucky", np.full((1, DIM), 2), 3)
    assert [r.request_id for r in engine.requests] == ["unlucky"]
    assert redis_client.xlen(stream) == 0  # gone: nobody can claim it again
    assert metrics.get("redelivered_total") == 1
    assert metrics.get("errors_total", code="internal") == 1


def test_the_waiting_set_is_bounded_and_the_rest_stays_on_the_stream(
        redis_settings, engine, client, redis_client) -> None:
    engine.blocked = {"strong"}
    name, stream = engine.spec.name, protocol.queue_key(engine.spec.name)
    with serving(redis_settings, engine, budgets=Budgets(waiting=2)) as (server, _), \
            ThreadPoolExecutor(3) as pool:
        held = [pool.submit(client.search, name, [i, 0, 0, 0], k=1, consistency="strong",
                            timeout=30) for i in range(3)]
        wait_until(lambda: redis_client.xlen(stream) == 3 and
                   redis_client.xpending(stream, GROUP)["pending"] == 2,
                   timeout=DEADLINE_S, what="two requests held")
        wait_until(lambda: engine.checks >= 50, timeout=DEADLINE_S, what="serving turns")
        assert len(server._waiting) == 2
        assert redis_client.xpending(stream, GROUP)["pending"] == 2  # the third is unread
        engine.blocked.clear()
        answers = sorted(f.result(DEADLINE_S).ids.tolist()[0][0] for f in held)
    assert answers == ["h0-0", "h1-0", "h2-0"]
    assert drained(redis_client, name)

