"""Keyed JSON records from producers that are not streamvec's, indexed and searched end to end.

Kafka's own console producer (Java, default partitioner) and a librdkafka producer set up as
docs/protocol.md says write to a collection's topic, beside the SDK's binary batches; the rows
must be searchable by exact id, the deletes must hide theirs, and every malformed record must
be a dead letter with its reason.
"""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka import Producer as KafkaProducer

from ingest import jsonrecord
from ingest.partition import partition_of
from ingest.producer import Producer
from ingest.spec import CollectionSpec
from searcher.client import Client, SearchResult
from streamvec.devstack.jars import java_executable
from tests.support.polling import wait_until
from tests.support.stack import served
from tests.support.topics import read_topic
from tests.support.workers import wait_fully_indexed

pytestmark = pytest.mark.integration

DIM = 4
PARTITIONS = 3
NULL = "<null>"  # the console producer's null.marker: a key or value equal to it is null
CONSOLE_TIMEOUT_S = 180  # a cold JVM on a loaded two-core machine


@pytest.fixture
def spec(collection_name) -> CollectionSpec:
    return CollectionSpec(collection_name, dim=DIM, partitions=PARTITIONS, index="Flat",
                          seal_rows=1000, seal_seconds=0.3)


def console_produce(kafka_server, topic: str, lines: list[str]) -> None:
    """Send `key|value` lines with Kafka's console producer, run on the broker's jars."""
    argv = [java_executable(), "-cp", f"{kafka_server.libs}/*",
            "org.apache.kafka.tools.ConsoleProducer", "--bootstrap-server", kafka_server.bootstrap,
            "--topic", topic, "--property", "parse.key=true", "--property", "key.separator=|",
            "--property", f"null.marker={NULL}"]
    done = subprocess.run(argv, input="".join(f"{line}\n" for line in lines), text=True,  # noqa: S603
                          capture_output=True, timeout=CONSOLE_TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stderr[-4000:]


def json_line(id_: str, vector: np.ndarray, **fields: object) -> str:
    """A console producer line: the id, the separator, a JSON upsert of `vector`."""
    return f"{id_}|{jsonrecord.encode(vector=vector, **fields).decode()}"


def read_dead_letters(settings, topic: str, expect: int) -> dict[str, tuple[str, str, int]]:
    """The dead letters by key ("" for none, "-" for none and a null value, a tombstone's):
    (reason, error text, source partition)."""
    consumer = Consumer(settings.kafka_config(**{"group.id": f"dlq-{topic}",
                                                 "enable.auto.commit": False}))
    consumer.assign([TopicPartition(topic, 0, 0)])
    out: dict[str, tuple[str, str, int]] = {}

    def drained() -> bool:
        for msg in consumer.consume(100, timeout=0.2):
            headers = dict(msg.headers() or [])
            name = (msg.key() or b"").decode() or ("-" if msg.value() is None else "")
            out[name] = (headers["sv-reason"].decode(),
                                                headers["sv-error"].decode(),
                                                int(headers["sv-source-partition"]))
        return len(out) >= expect

    try:
        wait_until(drained, timeout=60, what=f"{expect} dead letters on {topic}")
    finally:
        consumer.close()
    assert len(out) == expect, out
    return out


def assert_searchable(settings, spec: CollectionSpec, live: dict[str, np.ndarray]) -> SearchResult:
    """Exactly the `live` ids are served, and each one's vector finds it first."""
    ids = sorted(live)
    with Client(settings=settings) as client:
        every = client.search(spec.name, np.zeros(DIM, np.float32), k=len(live) + 20,
                              consistency="strong", timeout=30)
        assert sorted(i for i in every.ids[0] if i is not None) == ids
        own = client.search(spec.name, np.stack([live[i] for i in ids]), k=1,
                            consistency="strong", timeout=30, with_metadata=True)
    assert own.ids[:, 0].tolist() == ids
    return own


def test_the_console_producer_upserts_deletes_and_dead_letters_json_records(
        settings, kafka_server, spec):
    rng = np.random.default_rng(11)
    vectors = {f"doc-{i}": rng.standard_normal(DIM).astype(np.float32) for i in range(30)}
    lines = [json_line(i, v, metadata={"n": int(i[4:])}) for i, v in vectors.items()]
    lines += [
        f"doc-3|{NULL}",  # a tombstone
        'doc-4|{"op": "delete"}',
        'doc-5| \t{"vector": [0.5, 0.5, 0.5, 0.5], "op": "upsert"}',  # the later upsert wins
        'bad-dim|{"vector": [1, 2, 3]}',
        'bad-json|{"vector": [1, 2, 3, 4]',
        'bad-nan|{"vector": [1, NaN, 3, 4]}',
        'bad-field|{"vector": [1, 2, 3, 4], "vectors": []}',
        f'{NULL}|{{"vector": [1, 2, 3, 4]}}',  # no key: no id
        f"{NULL}|{NULL}",  # a tombstone without a key
    ]
    live = {k: v for k, v in vectors.items() if k not in ("doc-3", "doc-4")}
    live["doc-5"] = np.full(DIM, 0.5, np.float32)

    with served(settings, spec):
        console_produce(kafka_server, spec.collection.topic, lines)
        assert_searchable(settings, spec, live)  # from the live tail, segments, or both
        wait_fully_indexed(settings, spec.name, spec.collection.topic, timeout=120)
        own = assert_searchable(settings, spec, live)
        assert own.metadata[sorted(live).index("doc-7")] == [{"n": 7}]

    # Java's default partitioner put every keyed record where murmur2 says.
    for msg in read_topic(settings, spec.collection.topic):
        if msg.key() is not None:
            assert msg.partition() == partition_of(msg.key(), PARTITIONS, "kafka"), msg.key()
    dead = read_dead_letters(settings, spec.collection.dlq_topic, expect=6)
    assert {k: reason for k, (reason, _, _) in dead.items()} == {
        "bad-dim": "wrong_dim", "bad-json": "bad_json", "bad-nan": "non_finite",
        "bad-field": "bad_json", "": "bad_id", "-": "bad_id"}
    assert dead["bad-dim"][1] == "json: vector has 3 numbers, the collection's dim is 4"
    assert dead["bad-field"][1].startswith("json: unknown field 'vectors'")
    assert dead[""][1] == "json: the record has no key; its key is the row's id"


def test_a_topic_of_both_formats_from_three_producers_indexes_every_row(settings, spec):
    rng = np.random.default_rng(12)
    binary = {f"bin-{i}": rng.standard_normal(DIM).astype(np.float32) for i in range(40)}
    sdk_json = {f"sdk-{i}": rng.standard_normal(DIM).astype(np.float32) for i in range(20)}
    rdkafka = {f"rdk-{i}": rng.standard_normal(DIM).astype(np.float32) for i in range(20)}
    topic = spec.collection.topic

    with served(settings, spec):
        with Producer(spec=spec, settings=settings) as producer:  # no Redis read for the spec
            producer.upsert(list(binary), np.stack(list(binary.values())))
            producer.delete(["bin-0", "bin-1"])
        with Producer(spec.name, settings=settings, format="json") as producer:
            producer.upsert(list(sdk_json), np.stack(list(sdk_json.values())),
                            metadata=[{"sdk": True}] * len(sdk_json))
            producer.delete(["sdk-0", "bin-2"])  # JSON deletes hide binary rows too
        # librdkafka with the partitioner docs/protocol.md names: no partition given here.
        raw = KafkaProducer(settings.kafka_config(partitioner="murmur2_random"))
        for id_, vector in rdkafka.items():
            raw.produce(topic, jsonrecord.encode(vector=vector), key=id_.encode())
        raw.produce(topic, None, key=b"rdk-0")  # a tombstone
        home = partition_of("misrouted", PARTITIONS, "kafka")
        raw.produce(topic, jsonrecord.encode(vector=np.ones(DIM)), key=b"misrouted",
                    partition=(home + 1) % PARTITIONS)
        assert raw.flush(30) == 0
        wait_fully_indexed(settings, spec.name, topic, timeout=120)
        gone = {"bin-0", "bin-1", "bin-2", "sdk-0", "rdk-0"}
        live = {k: v for k, v in {**binary, **sdk_json, **rdkafka}.items() if k not in gone}
        assert_searchable(settings, spec, live)

    formats = {"json": 0, "binary": 0}
    for msg in read_topic(settings, topic):
        formats["json" if msg.value() is None or jsonrecord.is_json(msg.value()) else
                "binary"] += 1
        if msg.key() != b"misrouted" and (msg.value() is None or jsonrecord.is_json(msg.value())):
            assert msg.partition() == partition_of(msg.key(), PARTITIONS, "kafka"), msg.key()
    assert formats["json"] == 20 + 2 + 20 + 1 + 1 and formats["binary"] >= 2
    dead = read_dead_letters(settings, spec.collection.dlq_topic, expect=1)
    reason, error, source = dead["misrouted"]
    assert (reason, source) == ("wrong_partition", (home + 1) % PARTITIONS)
    assert error.startswith(f"json: key 'misrouted' belongs to partition {home} under the "
                            "collection's 'kafka' partitioner")
