"""The searcher's log lines about a request carry its id (JSON logs: `request_id`)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest

from searcher import protocol
from streamvec import logs
from tests.support.standin import DEADLINE_S, DIM, add_all, raw_request, serving

pytestmark = pytest.mark.integration


@contextmanager
def json_lines(name: str) -> Iterator[list[dict]]:
    """The JSON log lines `name`'s logger writes within the block, as the command sets them up."""
    out, got = io.StringIO(), []
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonFormatter())
    handler.addFilter(logs.RequestIdFilter())
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield got
    finally:
        logger.removeHandler(handler)
        got.extend(json.loads(line) for line in out.getvalue().splitlines())


def test_a_failed_batch_is_logged_with_the_ids_of_its_requests(redis_settings, engine,
                                                               redis_client) -> None:
    name = engine.spec.name
    engine.failing = True
    with json_lines("searcher.server") as lines:
        with serving(redis_settings, engine):
            add_all(redis_client, name, [raw_request(name, "log-q1", np.ones((1, DIM)))])
            got = redis_client.blpop([protocol.reply_key(name, "log-q1")], DEADLINE_S)
    assert got is not None and protocol.decode_reply(got[1])[1].code == "internal"
    (failed,) = [doc for doc in lines if doc["message"].endswith("batch of 1 failed")]
    assert failed["request_id"] == "log-q1" and failed["level"] == "ERROR"
    assert failed["exception"].endswith("RuntimeError: index on fire")
