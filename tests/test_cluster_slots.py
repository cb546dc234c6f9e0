"""Every Lua script is Redis Cluster-safe: its KEYS share one hash slot and it names no other key.

A cluster runs a script on the node that owns its keys' slot, and refuses one whose keys span
slots or that touches a key it was not given. The first half checks the keys each caller
passes, for many collection and alias names; the second reads each script's Lua and checks
that every key it touches is a `KEYS[i]`, so no key name is built inside a script.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from indexer import registry_scripts
from indexer.registry import Registry
from ingest.catalog import spec_key
from lifecycle import aliases, challenges, evaluation, lock, shards
from searcher import calls, protocol, server
from streamvec.redisconn import same_slot, slot_of

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("streamvec", "ingest", "indexer", "searcher", "monitor", "lifecycle")

COLLECTIONS = ["a", "products", "products@v3", "t-1a2b3c4d", "x" * 64, "a_b-c@v_1-2",
               "0@dlq-not", "z" * 64 + "@" + "9" * 32, "sv", "q@r"]
ALIASES = ["a", "products", "x" * 64, "search-main", "0_9"]
# A searcher serves the whole collection (None) or a shard: a set of partitions with a tag of
# its own (`sv:{NAME~0-3}:q`), so a collection's shards spread over the masters.
LABELS = [None, "0", "0-3", "4-7,9", "0-1023"]
REQUEST_ID = "0123456789abcdef0123456789abcdef"


def nowhere() -> redis.Redis:
    """A client that is never used to connect: a Registry needs one to bind its scripts."""
    return redis.Redis(host="127.0.0.1", port=1)


def registry_keys(name: str) -> list[list[str]]:
    registry = Registry(nowhere(), name)
    fence = lock.LifecycleLock(nowhere(), name, "compact")
    return [registry.register_keys, registry.swap_keys(), registry.swap_keys(fence)]


def client_keys(name: str) -> list[list[str]]:
    # The client's submit to the whole collection's stream, checked against the map version.
    return [[spec_key(name), protocol.queue_key(name), protocol.shard_version_key(name)]]


def lifecycle_keys(name: str) -> list[list[str]]:
    return [[lock.lock_key(name)],
            [protocol.shard_map_key(name), protocol.shard_version_key(name)]]


def server_keys(name: str, label: str | None) -> list[list[str]]:
    # A searcher's read, claim, drop and retire scripts, and its reply script.
    stream = protocol.queue_key(name, label)
    return [[stream], [protocol.done_key(name, REQUEST_ID, label),
                       protocol.reply_key(name, REQUEST_ID, label), stream]]


def alias_keys(alias: str) -> list[list[str]]:
    return [aliases.switch_keys(alias), challenges.end_keys(alias),
            evaluation.apply_keys(alias, "c0ffee123456")]


@pytest.mark.parametrize("name", COLLECTIONS)
@pytest.mark.parametrize("keys_of", [registry_keys, client_keys, lifecycle_keys])
def test_collection_scripts_use_one_slot(keys_of: Callable[[str], list[list[str]]],
                                         name: str) -> None:
    for keys in keys_of(name):
        assert same_slot(keys), {k: slot_of(k) for k in keys}
        # The slot is the collection's: its registry, specs and queues live together.
        assert slot_of(keys[0]) == slot_of(spec_key(name))


@pytest.mark.parametrize("name", COLLECTIONS)
@pytest.mark.parametrize("label", LABELS)
def test_searcher_scripts_use_their_streams_slot(name: str, label: str | None) -> None:
    for keys in server_keys(name, label):
        assert {slot_of(k) for k in keys} == {slot_of(protocol.queue_key(name, label))}, keys


@pytest.mark.parametrize("alias", ALIASES)
def test_alias_scripts_use_the_alias_slot(alias: str) -> None:
    for keys in alias_keys(alias):
        assert {slot_of(k) for k in keys} == {slot_of(spec_key(alias))}, keys


def test_a_fence_of_another_collection_is_refused() -> None:
    fence = lock.LifecycleLock(nowhere(), "other", "compact")
    with pytest.raises(ValueError, match="'sv:{other}:lifecycle' is not a lock of products"):
        Registry(nowhere(), "products").swap_keys(fence)


def test_the_slot_is_the_hash_tag_crc16() -> None:
    # CRC16/XMODEM of the tag modulo 16384, as the cluster computes it ("123456789" -> 0x31C3).
    assert slot_of("sv:{123456789}:spec") == 0x31C3 % 16384
    assert slot_of("sv:{products}:ckpt") == slot_of("products")
    assert slot_of("sv:{products@v3}:q") != slot_of("sv:{products@v4}:q")


# Every script of the project, with the keys its callers pass described above.
SCRIPTS = {
    ("indexer.registry_scripts", "REGISTER"): registry_scripts.REGISTER,
    ("indexer.registry_scripts", "SWAP"): registry_scripts.SWAP,
    ("searcher.calls", "SUBMIT"): calls.SUBMIT,
    ("searcher.server", "_SIZED"): server._SIZED,  # a part of _READ and _CLAIM
    ("searcher.server", "_READ"): server._READ,
    ("searcher.server", "_CLAIM"): server._CLAIM,
    ("searcher.server", "_REPLY"): server._REPLY,
    ("searcher.server", "_DROP"): server._DROP,
    ("searcher.server", "_RETIRE"): server._RETIRE,
    ("lifecycle.lock", "_RELEASE"): lock._RELEASE,
    ("lifecycle.lock", "_EXTEND"): lock._EXTEND,
    ("lifecycle.challenges", "_END"): challenges._END,
    ("lifecycle.evaluation", "_APPLY"): evaluation._APPLY,
    ("lifecycle.aliases", "_SWITCH"): aliases._SWITCH,
    ("lifecycle.shards", "_SWITCH"): shards._SWITCH,
}
# Commands the scripts call whose first argument is a key.
KEY_FIRST = {"GET", "SET", "DEL", "EXISTS", "INCR", "PEXPIRE", "EXPIRE", "HGET", "HSET", "HDEL",
             "HEXISTS", "HINCRBYFLOAT", "RPUSH", "LPUSH", "LTRIM", "LINDEX", "XADD", "XACK",
             "XDEL", "XPENDING", "XCLAIM", "XLEN"}
# Commands that name no key: a channel (not a key; PUBLISH reaches every node) and the clock.
NO_KEY = {"PUBLISH", "TIME"}
KEY = r"KEYS\[[^\]]+\]"
_CALL = re.compile(r"redis\.call\(\s*'([A-Z]+)'\s*(?:,\s*([^,)]+))?([^)]*)\)")


def scripts_in_source() -> set[tuple[str, str]]:
    """Module-level names whose value holds Lua (a `redis.call`), found in every package."""
    found = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            tree = ast.parse(path.read_text(), str(path))
            for node in tree.body:
                if isinstance(node, ast.Assign) and "redis.call" in ast.unparse(node.value):
                    found |= {(module, t.id) for t in node.targets if isinstance(t, ast.Name)}
    return found


def test_every_script_is_checked_here() -> None:
    assert scripts_in_source() == set(SCRIPTS)


@pytest.mark.parametrize("where", sorted(SCRIPTS), ids=lambda w: f"{w[0]}.{w[1]}")
def test_every_key_a_script_touches_is_one_of_its_keys(where: tuple[str, str]) -> None:
    text = SCRIPTS[where]
    calls = _CALL.findall(text)
    assert calls, "no redis.call found"
    for command, first, rest in calls:
        if command in NO_KEY:
            continue
        if command == "XREADGROUP":
            key = re.search(r"'STREAMS'\s*,\s*([^,)]+)", rest)
            assert key and re.fullmatch(KEY, key.group(1).strip()), rest
            continue
        assert command in KEY_FIRST, f"{command}: add it to KEY_FIRST or NO_KEY"
        assert re.fullmatch(KEY, first.strip()), f"{command} {first}"
    assert "sv:" not in text  # no key name is spelled out inside a script
