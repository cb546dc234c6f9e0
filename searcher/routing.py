"""Alias routing, the read side of aliases and challenges: key names, stored values, `route`.

A client resolves every search through these keys (docs/protocol.md section 9), so they are
part of the query protocol. An alias has the grammar of a collection base name (no
`@version`) and its keys carry the alias as hash tag: `sv:{ALIAS}:alias` holds the current
target as JSON {target, since, actor} and, while a challenge runs, `sv:{ALIAS}:challenge`
holds it as JSON {id, alias, champion, challenger, share, started_at, actor}. Every write to
them (switches, history, start, stop, promote) is the model lifecycle's (lifecycle/aliases.py,
lifecycle/challenges.py).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import redis

from ingest.errors import InvalidName
from ingest.names import CollectionName

ALIASES_KEY = "sv:aliases"


def alias_name(alias: str | CollectionName) -> CollectionName:
    """Validate an alias name: a collection base name without `@version`; raise InvalidName."""
    if isinstance(alias, CollectionName):
        parsed = alias
    else:
        try:
            parsed = CollectionName.parse(alias)
        except InvalidName as exc:
            raise InvalidName(str(exc).replace("collection name", "alias")) from None
    if parsed.version is not None:
        raise InvalidName(f"invalid alias {str(alias)!r}: an alias has no '@version' part; "
                          "it points at a versioned collection instead")
    return parsed


def alias_key(alias: str | CollectionName) -> str:
    """The key holding an alias's current target: `sv:{ALIAS}:alias`."""
    return alias_name(alias).key("alias")


def history_key(alias: str | CollectionName) -> str:
    """The list of an alias's past switches, newest first: `sv:{ALIAS}:alias:history`."""
    return alias_name(alias).key("alias:history")


def challenge_key(alias: str | CollectionName) -> str:
    """The active challenge of an alias: `sv:{ALIAS}:challenge`."""
    return alias_name(alias).key("challenge")


def last_key(alias: str | CollectionName) -> str:
    """The alias's most recently ended challenge: `sv:{ALIAS}:challenge:last`."""
    return alias_name(alias).key("challenge:last")


def log_key(alias: str | CollectionName) -> str:
    """The stream of shadow comparisons: `sv:{ALIAS}:challenge:log`."""
    return alias_name(alias).key("challenge:log")


@dataclass(frozen=True, slots=True)
class Alias:
    """An alias and the collection it points at now."""

    name: str
    target: str
    since: float
    actor: str

    def to_json(self) -> dict[str, Any]:
        """The alias as a JSON-ready dict, its name included."""
        return {"name": self.name, "target": self.target, "since": self.since,
                "actor": self.actor}

    def value(self) -> str:
        """The JSON stored at `sv:{ALIAS}:alias`."""
        return json.dumps({"target": self.target, "since": self.since, "actor": self.actor},
                          sort_keys=True)

    @classmethod
    def from_value(cls, alias: str, raw: bytes | str) -> Alias:
        """Parse the JSON stored at `sv:{ALIAS}:alias`."""
        doc = json.loads(raw)
        return cls(alias, str(doc["target"]), float(doc["since"]), str(doc["actor"]))


@dataclass(frozen=True, slots=True)
class Challenge:
    """A challenger collection shadow-queried beside an alias's champion."""

    id: str
    alias: str
    champion: str
    challenger: str
    share: float
    started_at: float
    actor: str

    def to_json(self) -> str:
        """The canonical JSON stored at `sv:{ALIAS}:challenge`."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: bytes | str) -> Challenge:
        """Parse a stored challenge."""
        doc: dict[str, Any] = json.loads(raw)
        return cls(str(doc["id"]), str(doc["alias"]), str(doc["champion"]),
                   str(doc["challenger"]), float(doc["share"]), float(doc["started_at"]),
                   str(doc["actor"]))


@dataclass(frozen=True, slots=True)
class Route:
    """Where a search goes: the collection that answers, and the alias's active challenge."""

    target: str
    challenge: Challenge | None = None


def route_keys(name: str) -> list[str]:
    """The keys `route` reads for a name: an alias's target and challenge; none for a versioned
    name, which is never an alias."""
    return [] if "@" in name else [alias_key(name), challenge_key(name)]


def route_of(name: str, values: list[Any]) -> Route:
    """The route that the values of `route_keys(name)` give (read in one round trip)."""
    alias_raw, challenge_raw = values if values else (None, None)
    if alias_raw is None:
        return Route(name)
    target = Alias.from_value(name, alias_raw).target
    challenge = None if challenge_raw is None else Challenge.from_json(challenge_raw)
    if challenge is not None and challenge.challenger == target:
        challenge = None  # the alias already points at the challenger: nothing to compare
    return Route(target, challenge)


def route(client: redis.Redis, name: str) -> Route:
    """Resolve a name in one round trip: an alias's target and challenge, else the name."""
    keys = route_keys(name)
    return route_of(name, client.mget(keys) if keys else [])
