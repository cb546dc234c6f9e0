"""A search ends in time, with SearchTimeout, when Redis stops answering or cannot be reached."""

from __future__ import annotations

import time

import numpy as np
import pytest

from searcher.client import REPLY_MARGIN_S, SOCKET_MARGIN_S, SOCKET_STEP_S, Client
from searcher.errors import SearchTimeout
from streamvec.devstack.ports import LOOPBACK, free_port
from streamvec.errors import Unavailable
from tests.support.silent import silent_server

TIMEOUT_S = 0.5
# The search's own bound, plus room for a busy machine; without socket timeouts it never ends.
BOUND_S = TIMEOUT_S + REPLY_MARGIN_S + SOCKET_MARGIN_S + SOCKET_STEP_S + 5.0


def test_a_frozen_redis_ends_a_search_with_search_timeout():
    with silent_server() as port, Client(f"redis://{LOOPBACK}:{port}/0") as client:
        started = time.monotonic()
        with pytest.raises(SearchTimeout, match="Redis did not answer a query on 'products'"):
            client.search("products", np.ones(4, np.float32), timeout=TIMEOUT_S)
        assert time.monotonic() - started < BOUND_S


def test_an_unreachable_redis_is_a_search_timeout_that_says_so():
    with Client(f"redis://{LOOPBACK}:{free_port()}/0") as client:
        with pytest.raises(SearchTimeout, match="Redis unreachable for a query on 'products'"
                           ) as caught:
            client.search("products", np.ones(4, np.float32), timeout=TIMEOUT_S)
    assert isinstance(caught.value, Unavailable)


def test_a_frozen_redis_ends_a_versioned_pick_too():
    # A per-model-version dict makes the client read the collection's spec first.
    with silent_server() as port, Client(f"redis://{LOOPBACK}:{port}/0") as client:
        started = time.monotonic()
        with pytest.raises(SearchTimeout):
            client.search("products@v2", {"v2": np.ones(4, np.float32)}, timeout=TIMEOUT_S)
        assert time.monotonic() - started < BOUND_S
