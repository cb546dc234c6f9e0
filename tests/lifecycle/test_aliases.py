"""Alias names and the pure parts of alias routing: what a name may be, how a record reads."""

from __future__ import annotations

import json

import pytest

from ingest.errors import InvalidName
from lifecycle import aliases
from lifecycle.aliases import Switch
from lifecycle.errors import AliasError
from searcher import routing
from searcher.routing import Alias, Challenge


@pytest.mark.parametrize("name", ["products", "p", "a-b_c9", "x" * 64])
def test_valid_alias_names_are_their_own_hash_tag(name):
    assert str(aliases.check_name(name)) == name
    assert routing.alias_key(name) == f"sv:{{{name}}}:alias"
    assert routing.history_key(name) == f"sv:{{{name}}}:alias:history"


def test_an_alias_has_no_version():
    with pytest.raises(AliasError, match=r"invalid alias 'products@v4': an alias has no "
                                         r"'@version' part"):
        aliases.check_name("products@v4")


@pytest.mark.parametrize("name", ["", "Products", "-x", "a.b", "x" * 65, "a b"])
def test_bad_alias_names_are_refused_with_the_rule(name):
    with pytest.raises(AliasError, match=r"invalid alias .*must match"):
        aliases.check_name(name)


def test_a_versioned_name_resolves_to_itself_without_redis():
    assert aliases.resolve(None, "products@v3") == "products@v3"  # type: ignore[arg-type]


def test_stored_values_parse_back():
    raw = json.dumps({"target": "products@v4", "since": 1700000000.5, "actor": "alice"})
    assert Alias.from_value("products", raw) == Alias("products", "products@v4",
                                                      1700000000.5, "alice")
    first = Switch(None, "products@v3", 1.0, "bob", "set")
    assert first.to_json() == {"from": None, "to": "products@v3", "at": 1.0, "actor": "bob",
                               "action": "set"}
    assert aliases._switch(json.dumps(first.to_json())) == first


def test_a_challenge_config_round_trips_through_json():
    config = Challenge("abc123", "products", "products@v3", "products@v4", 0.25, 12.5, "eve")
    assert Challenge.from_json(config.to_json()) == config
    assert json.loads(config.to_json())["share"] == 0.25


class Keys:
    """A stand-in for the two keys `route` reads with one MGET."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values
        self.calls = 0

    def mget(self, keys: list[str]) -> list[str | None]:
        self.calls += 1
        return [self.values.get(k) for k in keys]


def test_route_reads_the_alias_and_its_challenge_in_one_round_trip():
    config = Challenge("abc123", "products", "products@v3", "products@v4", 0.25, 12.5, "eve")
    value = Alias("products", "products@v3", 1.0, "alice").value()
    keys = Keys({routing.alias_key("products"): value,
                 routing.challenge_key("products"): config.to_json()})
    assert routing.route(keys, "products") == routing.Route("products@v3", config)
    assert keys.calls == 1
    assert routing.route(keys, "products@v4") == routing.Route("products@v4")  # no read
    assert keys.calls == 1
    assert routing.route(keys, "plain") == routing.Route("plain")  # not an alias


def test_a_challenge_whose_challenger_is_already_the_target_is_not_routed():
    config = Challenge("abc123", "products", "products@v3", "products@v4", 0.25, 12.5, "eve")
    keys = Keys({routing.alias_key("products"): Alias("products", "products@v4", 2.0,
                                                      "bob").value(),
                 routing.challenge_key("products"): config.to_json()})
    assert routing.route(keys, "products") == routing.Route("products@v4")


def test_the_stored_alias_value_keeps_its_form():
    alias = Alias("products", "products@v4", 1700000000.5, "alice")
    assert json.loads(alias.value()) == {"target": "products@v4", "since": 1700000000.5,
                                         "actor": "alice"}
    assert Alias.from_value("products", alias.value()) == alias


def test_routing_refuses_a_versioned_alias_name():
    with pytest.raises(InvalidName, match=r"an alias has no '@version' part"):
        routing.alias_key("products@v4")
    with pytest.raises(InvalidName, match=r"invalid alias .*must match"):
        routing.challenge_key("Products")
