"""Property tests of the record format: no input crashes decode, and valid batches round-trip."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ingest import record
from ingest.errors import RecordError

# Fixed seeds and no example database, so CI runs the same cases every time.
FUZZ = settings(max_examples=300, derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

ID_TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\0"),
                  min_size=1, max_size=12)
JSON_LEAF = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=6) \
    | st.floats(allow_nan=False, allow_infinity=False)
JSON_VALUE = st.recursive(JSON_LEAF, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=6)
JSON_OBJECT = st.dictionaries(st.text(max_size=6), JSON_VALUE, max_size=4)


@st.composite
def batches(draw):
    """Keyword arguments of encode for a small valid batch, plus its dim."""
    n, dim = draw(st.integers(1, 6)), draw(st.integers(1, 5))
    finite = st.floats(width=32, allow_nan=False, allow_infinity=False)
    return dim, {
        "ids": draw(st.lists(ID_TEXT, min_size=n, max_size=n)),
        "vectors": draw(arrays(np.float32, (n, dim), elements=finite)),
        "ops": draw(st.lists(st.sampled_from([0, 1]), min_size=n, max_size=n)),
        "event_time_ms": draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=n, max_size=n)),
        "metadata": draw(st.none() | st.lists(st.none() | JSON_OBJECT, min_size=n, max_size=n)),
        "model_version": draw(st.text(st.characters(exclude_categories=("Cs",)), max_size=16)),
    }


def exercise(payload: bytes) -> None:
    """Decode and use a payload the way a worker does: only RecordError may come out."""
    try:
        batch = record.decode(payload)
        batch.metadata_list()
        record.validate(batch, dim=batch.dim, model_version=batch.model_version)
    except RecordError as error:
        assert error.reason in record.REASONS
        assert error.message


def _reason(payload: bytes) -> str | None:
    """The reason decode refuses payload for, or None when it decodes."""
    try:
        record.decode(payload)
    except RecordError as error:
        return error.reason
    return None


@FUZZ
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_record_errors(payload):
    exercise(payload)


@FUZZ
@given(st.sampled_from([b"SVB\x01\x00\x00", b"SVB\x01\x01\x00"]), st.binary(max_size=120))
def test_bytes_after_a_valid_prefix_raise_only_record_errors(prefix, rest):
    exercise(prefix + rest)


@FUZZ
@given(batches(), st.data())
def test_mutated_payloads_raise_only_record_errors(batch, data):
    _, kwargs = batch
    payload = bytearray(record.encode(**kwargs))
    mutation = data.draw(st.sampled_from(["flip", "truncate", "extend"]))
    if mutation == "flip":
        for _ in range(data.draw(st.integers(1, 4))):
            at = data.draw(st.integers(0, len(payload) - 1))
            payload[at] ^= data.draw(st.integers(1, 255))
    elif mutation == "truncate":
        del payload[data.draw(st.integers(0, len(payload) - 1)) :]
    else:
        payload += data.draw(st.binary(min_size=1, max_size=16))
    exercise(bytes(payload))
    if mutation != "flip":  # the lengths in the header pin down where a payload must end
        expected = "truncated" if mutation == "truncate" else "trailing_bytes"
        assert _reason(bytes(payload)) == expected


@FUZZ
@given(batches())
def test_valid_batches_round_trip(batch):
    dim, kwargs = batch
    decoded = record.decode_valid(record.encode(**kwargs), dim=dim,
                                  model_version=kwargs["model_version"])
    ops = np.array(kwargs["ops"], np.uint8)
    upserts = ops == record.OP_UPSERT
    assert [raw.decode() for raw in decoded.ids.tolist()] == kwargs["ids"]
    assert decoded.ops.tolist() == kwargs["ops"]
    assert decoded.event_time_ms.tolist() == kwargs["event_time_ms"]
    assert np.array_equal(decoded.vectors[upserts].view(np.uint32),
                          kwargs["vectors"][upserts].view(np.uint32))
    assert not decoded.vectors[~upserts].any()
    expected = kwargs["metadata"] or [None] * len(ops)
    assert decoded.metadata_list() == expected
