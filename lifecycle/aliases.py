"""Aliases: a stable name (`products`) that points at one collection and switches atomically.

An alias never equals a collection's name. Its key names and the stored value are the query
protocol's (searcher/routing.py), since every client reads them; this module does every write.
`sv:{ALIAS}:alias:history` lists past switches, newest first, each JSON {from, to, at, actor,
action}; `sv:aliases` lists every alias. A switch is one Lua script that checks the state it
was computed from, sets the target and pushes the history entry, so readers see the old
target or the new one and nothing in between.

On a Redis Cluster a script may touch one hash slot only. The switch script's keys all hash
the alias's name (`switch_keys`); it never touches the target collection's keys, which hash
the target's name. The steps that do span slots run in sequence, each idempotent, in the
order that leaves a safe state if the caller dies between them: the target's spec is read
before the switch (a collection dropped in that instant leaves an alias whose searches answer
`unknown_collection` until it is switched or rolled back, as a drop after the switch would),
and the alias joins `sv:aliases` after the switch and leaves it after its keys are deleted
(an alias missing from the list is listed again by its next switch).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import redis

from ingest import audit, catalog
from ingest.errors import IngestError
from ingest.names import CollectionName
from lifecycle.errors import AliasConflict, AliasError, AliasNotFound
from searcher.routing import ALIASES_KEY, Alias, alias_key, alias_name, challenge_key, history_key
from streamvec import redisconn

HISTORY_MAX = 100  # switches kept per alias; rollback needs only the latest
# Retries of a switch whose state moved between the read and the script (another operator).
SWITCH_ATTEMPTS = 5

# KEYS: alias, history, the spec key a collection of the alias's name would have.
# ARGV: expected current value ('' = none), expected history head ('' = none), new value,
# history entry, history cap. Returns 'ok', 'collection' or 'moved'.
_SWITCH = """
if redis.call('EXISTS', KEYS[3]) == 1 then return 'collection' end
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] then return 'moved' end
if (redis.call('LINDEX', KEYS[2], 0) or '') ~= ARGV[2] then return 'moved' end
redis.call('SET', KEYS[1], ARGV[3])
redis.call('LPUSH', KEYS[2], ARGV[4])
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[5]) - 1)
return 'ok'
"""


@dataclass(frozen=True, slots=True)
class Switch:
    """One past switch of an alias: from (None for the first set), to, when, who, how."""

    source: str | None
    target: str
    at: float
    actor: str
    action: str  # set, rollback or promote

    def to_json(self) -> dict[str, Any]:
        """The switch as stored in the history list."""
        return {"from": self.source, "to": self.target, "at": self.at, "actor": self.actor,
                "action": self.action}


def switch_keys(alias: str) -> list[str]:
    """The KEYS of the switch script: the alias, its history, and the spec key a collection
    of the alias's name would have; all three hash the alias's name, so they share a slot."""
    return [alias_key(alias), history_key(alias), catalog.spec_key(alias)]


def check_name(alias: str) -> CollectionName:
    """Validate an alias name: a collection base name without `@version`."""
    try:
        return alias_name(alias)
    except IngestError as exc:
        raise AliasError(str(exc)) from None


def refuse_collection_name(client: redis.Redis, name: str) -> None:
    """Raise AliasError if a collection may not be created as `name` because an alias has it."""
    parsed = CollectionName.parse(name)
    if parsed.version is None and client.exists(alias_key(parsed)):
        raise AliasConflict(f"cannot create collection {name!r}: an alias of that name exists "
                         f"(delete it first with `streamvec alias delete {name}`)")


def get(client: redis.Redis, alias: str) -> Alias:
    """The alias's current target; raise AliasNotFound if there is no such alias."""
    raw = client.get(alias_key(check_name(alias)))
    if raw is None:
        raise AliasNotFound(f"alias {alias!r} does not exist")
    return Alias.from_value(alias, raw)


def resolve(client: redis.Redis, name: str) -> str:
    """The collection a name stands for: an alias's target, else the name itself."""
    if "@" in name:
        return name  # a versioned name is never an alias
    raw = client.get(alias_key(check_name(name)))
    return name if raw is None else Alias.from_value(name, raw).target


def list_aliases(client: redis.Redis) -> list[Alias]:
    """Every alias with its target, sorted by name."""
    names = sorted(m.decode() for m in client.smembers(ALIASES_KEY))
    with client.pipeline(transaction=False) as pipe:  # one GET each: every alias has its slot
        for name in names:
            pipe.get(alias_key(name))
        values = pipe.execute() if names else []
    return [Alias.from_value(n, raw) for n, raw in zip(names, values, strict=True)
            if raw is not None]


def history(client: redis.Redis, alias: str, limit: int = HISTORY_MAX) -> list[Switch]:
    """The alias's past switches, newest first."""
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    return [_switch(raw) for raw in client.lrange(history_key(check_name(alias)), 0, limit - 1)]


def set_alias(client: redis.Redis, alias: str, target: str, actor: str) -> str | None:
    """Point `alias` at the collection `target`; return the previous target (None if new)."""
    check_name(alias)
    target = str(CollectionName.parse(target))
    catalog.load_spec(client, target)  # raises CollectionNotFound with a clear message
    previous = switch(client, alias, target, actor, "set")
    if previous == target:
        return previous  # already there: nothing switched, nothing to record
    audit.record(client, "alias.set", alias, {"target": target, "previous": previous}, actor)
    return previous


def rollback(client: redis.Redis, alias: str, actor: str) -> tuple[str, str]:
    """Return the alias to its target before the last switch; return (from, to)."""
    check_name(alias)
    for _ in range(SWITCH_ATTEMPTS):
        current, head = _state(client, alias)
        if current is None:
            raise AliasNotFound(f"alias {alias!r} does not exist")
        last = _switch(head) if head else None
        if last is None or last.source is None:
            raise AliasError(f"alias {alias!r} has no earlier target to roll back to")
        if not client.exists(catalog.spec_key(last.source)):
            raise AliasError(f"cannot roll alias {alias!r} back to {last.source!r}: that "
                             "collection no longer exists")
        now = Alias.from_value(alias, current).target
        if _run(client, alias, current, head, last.source, actor, "rollback"):
            audit.record(client, "alias.rollback", alias, {"target": last.source,
                                                           "previous": now}, actor)
            return now, last.source
    raise AliasConflict(f"alias {alias!r} kept changing; try the rollback again")


def switch(client: redis.Redis, alias: str, target: str, actor: str, action: str) -> str | None:
    """Switch the alias to `target` atomically and record it in its history; no audit entry.

    Returns the previous target; an alias already at `target` is left as it is. The caller
    checks that `target` exists and audits.
    """
    check_name(alias)
    for _ in range(SWITCH_ATTEMPTS):
        current, head = _state(client, alias)
        previous = None if current is None else Alias.from_value(alias, current).target
        if previous == target:
            return previous
        if _run(client, alias, current, head, target, actor, action):
            client.sadd(ALIASES_KEY, alias)
            return previous
    raise AliasConflict(f"alias {alias!r} kept changing; try again")


def delete(client: redis.Redis, alias: str, actor: str) -> str:
    """Delete an alias, its history and its ended challenges; return the target it had."""
    current = get(client, alias)
    if client.exists(challenge_key(alias)):
        raise AliasConflict(f"alias {alias!r} has an active challenge; stop it first with "
                         f"`streamvec challenge stop {alias}`")
    client.delete(alias_key(alias), history_key(alias))
    client.srem(ALIASES_KEY, alias)
    # Every challenge key of an alias (configs, log, stats) starts with `challenge` under its
    # hash tag; none means anything once the alias is gone.
    keys = list(client.scan_iter(match=check_name(alias).key("challenge*"), count=500))
    if keys:
        client.delete(*keys)
    audit.record(client, "alias.delete", alias, {"target": current.target}, actor)
    return current.target


def _state(client: redis.Redis, alias: str) -> tuple[bytes | None, bytes | None]:
    """The alias's raw value and raw history head, read together."""
    with client.pipeline(transaction=True) as pipe:
        pipe.get(alias_key(alias))
        pipe.lindex(history_key(alias), 0)
        current, head = pipe.execute()
    return current, head


def _run(client: redis.Redis, alias: str, current: bytes | None, head: bytes | None,
         target: str, actor: str, action: str) -> bool:
    """Run the switch script; True if it switched, False if the state moved meanwhile."""
    now = round(time.time(), 3)
    previous = None if current is None else Alias.from_value(alias, current).target
    value = Alias(alias, target, now, actor).value()
    entry = json.dumps(Switch(previous, target, now, actor, action).to_json(), sort_keys=True)
    outcome = redisconn.register_script(client, _SWITCH)(
        keys=switch_keys(alias),
        args=[current or b"", head or b"", value, entry, HISTORY_MAX])
    outcome = outcome.decode() if isinstance(outcome, bytes) else str(outcome)
    if outcome == "collection":
        raise AliasConflict(f"{alias!r} is the name of a collection; an alias needs a name of "
                         "its own")
    return outcome == "ok"


def _switch(raw: bytes | str) -> Switch:
    doc = json.loads(raw)
    return Switch(doc.get("from"), str(doc["to"]), float(doc["at"]), str(doc["actor"]),
                  str(doc["action"]))
