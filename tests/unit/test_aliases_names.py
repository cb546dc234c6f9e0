"""Alias names and the pure parts of alias routing: what a name may be, how a record reads."""

from __future__ import annotations

import json

import pytest

from lifecycle import aliases
from lifecycle.aliases import Alias, AliasError, Switch
from lifecycle.challenges import Challenge


@pytest.mark.parametrize("name", ["products", "p", "a-b_c9", "x" * 64])
def test_valid_alias_names_are_their_own_hash_tag(name):
    assert str(aliases.check_name(name)) == name
    assert aliases.alias_key(name) == f"sv:{{{name}}}:alias"
    assert aliases.history_key(name) == f"sv:{{{name}}}:alias:history"


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
    assert aliases.parse_value("products", raw) == Alias("products", "products@v4",
                                                        1700000000.5, "alice")
    first = Switch(None, "products@v3", 1.0, "bob", "set")
    assert first.to_json() == {"from": None, "to": "products@v3", "at": 1.0, "actor": "bob",
                               "action": "set"}
    assert aliases._switch(json.dumps(first.to_json())) == first


def test_a_challenge_config_round_trips_through_json():
    config = Challenge("abc123", "products", "products@v3", "products@v4", 0.25, 12.5, "eve")
    assert Challenge.from_json(config.to_json()) == config
    assert json.loads(config.to_json())["share"] == 0.25
