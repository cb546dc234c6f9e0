"""Property tests of the query protocol: no input makes decode raise anything but QueryError."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from searcher import protocol
from searcher.errors import ERROR_CODES, QueryError
from searcher.protocol import decode_request
from tests.support.wire import DIM, NAME, wire

# Fixed seeds and no example database, so CI runs the same cases every time.
FUZZ = settings(max_examples=400, derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
FIELDS = ("v", "id", "reply", "k", "dim", "n", "vectors", "filter", "consistency",
          "timeout_ms", "meta", "sent_ms")


def check_only_query_errors(fields) -> None:
    """Decode like the server does: the outcome is a request or a QueryError, nothing else."""
    try:
        got = decode_request(NAME, fields, dim=DIM)
    except QueryError as error:
        assert error.code in ERROR_CODES and error.message
        return
    assert got.vectors.shape == (len(got.vectors), DIM) and 1 <= got.k <= 1000
    assert got.reply_key == protocol.reply_key(NAME, got.request_id)


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["level", "bound_ms", "offsets", "in", "0", "a"]) | st.text(max_size=3),
        inner, max_size=3),
    max_leaves=8).map(lambda v: json.dumps(v).encode())
VALUES = st.binary(max_size=40) | JSONISH | st.integers(-2, 2000).map(lambda i: str(i).encode())


@FUZZ
@given(st.dictionaries(st.binary(max_size=12) | st.sampled_from([f.encode() for f in FIELDS]),
                       VALUES, max_size=14))
def test_fuzz_arbitrary_field_maps(fields) -> None:
    check_only_query_errors(fields)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(FIELDS), st.none() | VALUES), min_size=1, max_size=4))
def test_fuzz_valid_requests_with_fields_replaced_or_dropped(edits) -> None:
    check_only_query_errors(wire(**dict(edits)))


@FUZZ
@given(st.none() | st.integers() | st.binary() | st.lists(st.binary()) | st.dictionaries(
    st.integers() | st.binary(max_size=3), st.integers() | st.none() | st.binary(max_size=3)))
def test_fuzz_inputs_that_are_not_field_maps(fields) -> None:
    check_only_query_errors(fields)
