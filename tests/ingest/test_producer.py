"""How the producer groups rows by partition, cuts them into messages, and gets its spec."""

from __future__ import annotations

import json
import time
from dataclasses import asdict

import numpy as np
import pytest

from ingest.errors import RecordError, SpecError, SpecUnavailable
from ingest.partition import partitions_for
from ingest.producer import Producer, _split
from ingest.spec import CollectionSpec
from streamvec.devstack.ports import LOOPBACK
from streamvec.settings import Settings
from tests.support.silent import silent_server


def test_rows_are_cut_in_order_under_the_bound():
    rows = np.arange(100) * 2
    chunks = list(_split(rows, row_bytes=100, extra=None, limit=4096 + 1000))
    assert [len(c) for c in chunks] == [10] * 10
    assert np.array_equal(np.concatenate(chunks), rows)


def test_metadata_sizes_count_and_an_oversized_row_still_goes_alone():
    rows = np.arange(5)
    extra = np.array([0, 5000, 0, 0, 0])
    chunks = list(_split(rows, row_bytes=100, extra=extra, limit=4096 + 1000))
    assert [c.tolist() for c in chunks] == [[0], [1], [2, 3, 4]]


def test_a_frozen_redis_fails_the_spec_read_in_time():
    with silent_server() as port:
        settings = Settings(redis=f"redis://{LOOPBACK}:{port}/0", kafka=f"{LOOPBACK}:1")
        started = time.monotonic()
        with pytest.raises(SpecUnavailable, match="cannot read the spec of collection "
                                                  "'products' from Redis within 0.5s"):
            Producer("products", settings=settings, spec_timeout=0.5)
        assert time.monotonic() - started < 0.5 + 5.0  # room for a busy machine


NOWHERE = Settings(redis=f"redis://{LOOPBACK}:1/0", kafka=f"{LOOPBACK}:1")


@pytest.mark.parametrize("partitioner", ["kafka", "streamvec"])
def test_rows_are_grouped_by_the_specs_partitioner(partitioner):
    spec = CollectionSpec("c", dim=4, partitions=8, partitioner=partitioner)
    producer = Producer(spec=spec, settings=NOWHERE)  # no Redis: the spec is given
    ids = [f"user-{i}" for i in range(500)]
    groups = {p: rows.tolist() for p, rows in producer._chunks(ids, None)}
    expected = partitions_for(ids, 8, partitioner)
    assert groups == {int(p): np.flatnonzero(expected == p).tolist() for p in np.unique(expected)}
    other = "streamvec" if partitioner == "kafka" else "kafka"
    assert expected.tolist() != partitions_for(ids, 8, other).tolist()


def test_the_spec_can_come_from_a_json_file(tmp_path):
    spec = CollectionSpec("c@v2", dim=4, partitions=3)
    plain = tmp_path / "spec.json"
    plain.write_text(spec.to_json())
    described = tmp_path / "described.json"  # what `streamvec collection describe --json` prints
    described.write_text(json.dumps({"spec": asdict(spec), "topic": "sv.c.v2", "partitions": []}))
    for path in (plain, str(described)):
        producer = Producer("c@v2", spec=path, settings=NOWHERE)
        assert producer.spec == spec and producer.topic == "sv.c.v2"
    assert Producer(spec=plain, settings=NOWHERE, format="json").format == "json"


def test_a_spec_that_is_not_usable_is_a_clear_error(tmp_path):
    spec = CollectionSpec("c", dim=4)
    with pytest.raises(SpecError, match="the spec given is collection 'c''s, not 'd''s"):
        Producer("d", spec=spec, settings=NOWHERE)
    with pytest.raises(SpecError, match="a Producer needs a collection name or its spec"):
        Producer(settings=NOWHERE)
    with pytest.raises(SpecError, match="cannot read the spec file"):
        Producer(spec=tmp_path / "missing.json", settings=NOWHERE)
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(SpecError, match="is not JSON"):
        Producer(spec=bad, settings=NOWHERE)
    bare = tmp_path / "bare.json"
    bare.write_text('{"name": "c", "dim": 4}')
    with pytest.raises(SpecError, match="names no partitioner"):
        Producer(spec=bare, settings=NOWHERE)
    with pytest.raises(ValueError, match="format must be one of binary, json, not 'avro'"):
        Producer(spec=spec, settings=NOWHERE, format="avro")


def test_json_format_sends_one_keyed_record_per_row_after_checking_them_all():
    spec = CollectionSpec("c@v1", dim=2, partitions=5)
    producer = Producer(spec=spec, settings=NOWHERE, format="json")
    sent: list[tuple[int, bytes, bytes]] = []
    producer._produce = lambda partition, key, value: sent.append((partition, key, value))
    cases = [
        (lambda: producer.upsert(["a", "b" * 300], np.zeros((2, 2))), "bad_id"),
        (lambda: producer.upsert(["a", "b"], [[0, 1], [0, np.inf]]), "non_finite"),
        (lambda: producer.upsert(["a"], [[0, 1]], metadata=[{"s": "x" * 70_000}]), "oversize"),
        (lambda: producer.upsert(["a"], [[0, 1, 2]]), "wrong_dim"),
        (lambda: producer.delete([]), "empty"),
        (lambda: producer.delete([7]), "bad_id"),
        (lambda: producer.delete(["\ud800"]), "bad_id"),
        (lambda: producer.delete(["a", "b"], event_time_ms=np.arange(3)), "bad_header"),
    ]
    for call, reason in cases:
        with pytest.raises(RecordError) as err:
            call()
        assert err.value.reason == reason
    assert sent == []  # a bad row stops the whole call, before its good rows go out

    ids = [f"user-{i}" for i in range(40)]
    assert producer.upsert(ids, np.ones((40, 2)), metadata=[{"i": i} for i in range(40)],
                           event_time_ms=np.arange(40)) == 40
    assert producer.delete(["user-3"], event_time_ms=99) == 1
    homes = partitions_for([*ids, "user-3"], 5, "kafka").tolist()
    assert [(p, k.decode()) for p, k, _ in sent] == list(zip(homes, [*ids, "user-3"],
                                                             strict=True))
    assert json.loads(sent[7][2]) == {"vector": [1.0, 1.0], "metadata": {"i": 7},
                                      "model_version": "v1", "event_time_ms": 7}
    assert json.loads(sent[-1][2]) == {"op": "delete", "model_version": "v1",
                                       "event_time_ms": 99}
