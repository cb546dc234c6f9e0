"""Collection names: the validation rules and the injective name -> topic mapping."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.errors import InvalidName
from ingest.names import CollectionName, parse

# What Kafka itself accepts as a topic name.
KAFKA_TOPIC = re.compile(r"[a-zA-Z0-9._-]{1,249}")

bases = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,63}", fullmatch=True)
versions = st.from_regex(r"[a-z0-9_-]{1,32}", fullmatch=True).filter(lambda v: v != "dlq")
names = st.one_of(bases, st.builds(lambda b, v: f"{b}@{v}", bases, versions))


@pytest.mark.parametrize(
    "text",
    [
        "a",
        "0",
        "products",
        "a" * 64,
        "a_b-c",
        "9lives",
        "products@v3",
        "p@" + "x" * 32,
        "p@_",
        "p@-",
        "p@dlq2",
        "dlq",
        "p@0",
    ],
)
def test_valid_names_parse_and_print_back(text):
    name = parse(text)
    assert str(name) == text
    assert name == CollectionName.parse(text)


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("", r"\[a-z0-9\]\[a-z0-9_-\]\{0,63\}"),
        ("Products", "must match"),
        ("-a", "must match"),
        ("_a", "must match"),
        ("a" * 65, "must match"),
        ("a.b", "must match"),
        ("a b", "must match"),
        ("caf\u00e9", "must match"),
        ("a@", r"after '@' must match \[a-z0-9_-\]\{1,32\}"),
        ("a@V1", "after '@' must match"),
        ("a@" + "x" * 33, "after '@' must match"),
        ("a@b@c", "after '@' must match"),
        ("a@b.c", "after '@' must match"),
        ("@v1", "must match"),
        ("a@dlq", "version 'dlq' is reserved"),
    ],
)
def test_invalid_names_say_which_rule_they_break(text, rule):
    with pytest.raises(InvalidName, match=rule):
        parse(text)


@pytest.mark.parametrize("value", [None, 7, b"products"])
def test_non_strings_are_refused(value):
    with pytest.raises(InvalidName, match="must be a string"):
        parse(value)


def test_invalid_name_is_a_value_error():
    with pytest.raises(ValueError):
        parse("Nope")


def test_topics_and_keys_of_a_base_name():
    name = parse("products")
    assert (name.base, name.version) == ("products", None)
    assert name.topic == "sv.products"
    assert name.dlq_topic == "sv.products.dlq"
    assert name.key_prefix == "sv:{products}:"
    assert name.key("spec") == "sv:{products}:spec"


def test_topics_and_keys_of_a_versioned_name():
    name = parse("products@v3")
    assert (name.base, name.version) == ("products", "v3")
    assert name.topic == "sv.products.v3"
    assert name.dlq_topic == "sv.products.v3.dlq"
    # The whole name is the hash tag, so every key of one version shares a cluster slot.
    assert name.key("checkpoint") == "sv:{products@v3}:checkpoint"


def test_reserved_version_would_collide_with_the_dead_letter_topic():
    # Were `a@dlq` allowed, its topic would be the base collection's dead-letter topic.
    assert parse("a").dlq_topic == "sv.a.dlq"
    with pytest.raises(InvalidName):
        parse("a@dlq")


@given(names)
def test_every_valid_name_round_trips_to_a_valid_kafka_topic(text):
    name = parse(text)
    assert str(name) == text
    assert KAFKA_TOPIC.fullmatch(name.topic)
    assert KAFKA_TOPIC.fullmatch(name.dlq_topic)


@given(names, names)
def test_topic_mapping_is_injective(a, b):
    ta, tb = parse(a), parse(b)
    if a != b:
        assert ta.topic != tb.topic
        assert ta.dlq_topic != tb.dlq_topic
        assert ta.key_prefix != tb.key_prefix
    # A data topic is never some collection's dead-letter topic, equal names included.
    assert ta.topic != tb.dlq_topic


@pytest.mark.parametrize(
    ("a", "b"), [("a@b", "a-b"), ("a@b", "a_b"), ("ab", "a@b"), ("a@b", "a@bdlq"), ("a", "a@a")]
)
def test_look_alike_names_get_distinct_topics(a, b):
    topics = {parse(a).topic, parse(a).dlq_topic, parse(b).topic, parse(b).dlq_topic}
    assert len(topics) == 4


def test_names_are_hashable_values():
    assert {parse("a"), parse("a"), parse("a@v1")} == {parse("a"), parse("a@v1")}
    with pytest.raises(AttributeError):
        parse("a").base = "b"  # type: ignore[misc]
