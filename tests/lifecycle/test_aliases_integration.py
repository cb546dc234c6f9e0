"""Aliases against real Kafka, Redis, indexers and searchers: switches, rollback, the audit."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import numpy as np
import pytest

from ingest import audit
from ingest.errors import CollectionNotFound
from ingest.producer import Producer
from ingest.spec import CollectionSpec
from lifecycle import aliases, collections
from lifecycle.errors import AliasError, AliasNotFound
from searcher.client import Client
from streamvec.commands import main
from tests.support.cli import argv as cli
from tests.support.polling import wait_until
from tests.support.stack import exact_top_k, serving

pytestmark = pytest.mark.integration

DIM = 8
ROWS = 300


def as_actor(settings, actor: str):
    return settings.model_copy(update={"actor": actor})


def create(settings, name: str) -> None:
    collections.create_collection(settings, CollectionSpec(name, dim=DIM, partitions=1))


def test_set_history_rollback_and_delete_are_atomic_switches_in_the_audit(
        settings, collection_name, redis_client):
    alias, v3, v4 = collection_name, f"{collection_name}@v3", f"{collection_name}@v4"
    create(settings, v3)
    create(settings, v4)
    assert aliases.set_alias(redis_client, alias, v3, "alice") is None
    assert aliases.set_alias(redis_client, alias, v3, "alice") == v3  # no change, no entry
    assert aliases.set_alias(redis_client, alias, v4, "bob") == v3
    assert aliases.get(redis_client, alias).target == v4
    assert aliases.resolve(redis_client, alias) == v4
    assert aliases.resolve(redis_client, v3) == v3
    assert aliases.rollback(redis_client, alias, "carol") == (v4, v3)
    assert aliases.resolve(redis_client, alias) == v3
    assert aliases.rollback(redis_client, alias, "dave") == (v3, v4)  # and forward again
    assert aliases.resolve(redis_client, alias) == v4
    assert [(s.source, s.target, s.actor, s.action)
            for s in aliases.history(redis_client, alias)] == [
        (v3, v4, "dave", "rollback"), (v4, v3, "carol", "rollback"),
        (v3, v4, "bob", "set"), (None, v3, "alice", "set")]
    assert alias in [a.name for a in aliases.list_aliases(redis_client)]
    assert aliases.delete(redis_client, alias, "erin") == v4
    with pytest.raises(AliasNotFound, match=f"alias '{alias}' does not exist"):
        aliases.get(redis_client, alias)
    assert aliases.resolve(redis_client, alias) == alias  # no alias: a name is itself
    assert alias not in [a.name for a in aliases.list_aliases(redis_client)]
    assert aliases.history(redis_client, alias) == []
    entries = audit.read(redis_client, 10, collection=alias)
    assert [(e.action, e.actor, e.details) for e in entries] == [
        ("alias.set", "alice", {"target": v3, "previous": None}),
        ("alias.set", "bob", {"target": v4, "previous": v3}),
        ("alias.rollback", "carol", {"target": v3, "previous": v4}),
        ("alias.rollback", "dave", {"target": v4, "previous": v3}),
        ("alias.delete", "erin", {"target": v4})]


def test_alias_mistakes_get_clear_errors(settings, collection_name, redis_client):
    alias, v3 = collection_name, f"{collection_name}@v3"
    with pytest.raises(CollectionNotFound, match=rf"collection '{v3}' does not exist"):
        aliases.set_alias(redis_client, alias, v3, "alice")
    create(settings, v3)
    with pytest.raises(AliasError, match=r"an alias has no '@version' part"):
        aliases.set_alias(redis_client, f"{alias}@v9", v3, "alice")
    with pytest.raises(AliasNotFound, match=f"alias '{alias}' does not exist"):
        aliases.rollback(redis_client, alias, "alice")
    aliases.set_alias(redis_client, alias, v3, "alice")
    with pytest.raises(AliasError, match=f"alias '{alias}' has no earlier target to roll back"):
        aliases.rollback(redis_client, alias, "alice")
    plain = f"{collection_name}-plain"
    create(settings, plain)
    with pytest.raises(AliasError, match=f"'{plain}' is the name of a collection"):
        aliases.set_alias(redis_client, plain, v3, "alice")
    assert aliases.resolve(redis_client, plain) == plain


def test_a_collection_cannot_be_created_under_an_alias_name(settings, collection_name,
                                                             redis_client, capsys):
    alias, v3 = collection_name, f"{collection_name}@v3"
    create(settings, v3)
    aliases.set_alias(redis_client, alias, v3, "alice")
    with pytest.raises(AliasError, match=rf"cannot create collection '{alias}': an alias of "
                                         "that name exists"):
        create(settings, alias)
    capsys.readouterr()
    assert main(cli(settings, "collection", "create", alias, "--dim", "4")) == 4  # a conflict
    assert capsys.readouterr().err == (
        f"streamvec: error: cannot create collection '{alias}': an alias of that name exists "
        f"(delete it first with `streamvec alias delete {alias}`)\n")
    assert not redis_client.exists(f"sv:{{{alias}}}:spec")
    assert main(cli(settings, "collection", "create", f"{alias}@v4", "--dim", "4")) == 0


def test_the_alias_commands(settings, collection_name, redis_client, capsys):
    alias, v3, v4 = collection_name, f"{collection_name}@v3", f"{collection_name}@v4"
    create(settings, v3)
    create(settings, v4)

    def run(*args: str, code: int = 0) -> str:
        capsys.readouterr()
        assert main(cli(settings, "--actor", "ops", *args)) == code
        out = capsys.readouterr()
        return out.out if code == 0 else out.err

    assert run("alias", "set", alias, v3) == f"alias {alias} -> {v3} (new alias)\n"
    assert run("alias", "set", alias, v4) == f"alias {alias} -> {v4} (was {v3})\n"
    assert run("alias", "set", alias, v4) == f"alias {alias} already points at {v4}\n"
    got = json.loads(run("alias", "get", alias, "--json"))
    assert (got["name"], got["target"], got["actor"]) == (alias, v4, "ops")
    assert run("alias", "get", alias).startswith(f"{alias} -> {v4} (since ")
    listed = {a["name"]: a["target"] for a in json.loads(run("alias", "list", "--json"))}
    assert listed[alias] == v4
    assert run("rollback", alias) == f"alias {alias} rolled back: {v4} -> {v3}\n"
    switches = json.loads(run("alias", "history", alias, "--json"))
    assert [(s["from"], s["to"], s["action"], s["actor"]) for s in switches] == [
        (v4, v3, "rollback", "ops"), (v3, v4, "set", "ops"), (None, v3, "set", "ops")]
    table = run("alias", "history", alias, "--limit", "1").splitlines()
    assert table[1].split()[2:] == ["ops", "rollback", v4, v3]
    assert run("alias", "set", alias, "nope@v1", code=3) == (
        "streamvec: error: collection 'nope@v1' does not exist (create it first)\n")
    assert run("alias", "history", "no-such-alias", code=3) == (
        "streamvec: error: alias 'no-such-alias' does not exist\n")
    assert run("alias", "delete", alias) == f"alias {alias} deleted (it pointed at {v3})\n"
    assert run("rollback", alias, code=3) == f"streamvec: error: alias '{alias}' does not exist\n"
    assert [(e.action, e.actor) for e in audit.read(redis_client, 10, collection=alias)] == [
        ("alias.set", "ops"), ("alias.set", "ops"), ("alias.rollback", "ops"),
        ("alias.delete", "ops")]


def fill(settings, name: str, prefix: str, seed: int) -> dict[str, np.ndarray]:
    """Upsert ROWS rows and return them by id."""
    vectors = np.random.default_rng(seed).standard_normal((ROWS, DIM)).astype(np.float32)
    ids = [f"{prefix}-{i}" for i in range(ROWS)]
    with Producer(name, settings=settings) as producer:
        producer.upsert(ids, vectors)
    return dict(zip(ids, vectors, strict=True))


@contextmanager
def two_versions(settings, base: str) -> Iterator[tuple[dict, dict]]:
    """`base@v3` and `base@v4` served with different rows, fully visible to their searchers."""
    with ExitStack() as stack:
        for version in ("v3", "v4"):
            stack.enter_context(serving(settings, f"{base}@{version}", dim=DIM, partitions=2,
                                        seal_rows=100, seal_seconds=0.3))
        rows = fill(settings, f"{base}@v3", "three", 1), fill(settings, f"{base}@v4", "four", 2)
        probe = Client(settings=settings)
        for version, live in zip(("v3", "v4"), rows, strict=True):
            wait_until(lambda v=version, live=live: probe.search(
                f"{base}@{v}", next(iter(live.values())), k=1, consistency="strong"),
                timeout=60, what=f"{version} answering")
        probe.close()
        yield rows


def test_searches_follow_a_switch_and_a_rollback_gives_the_same_answers(settings,
                                                                       collection_name,
                                                                       redis_client):
    alias, v3, v4 = collection_name, f"{collection_name}@v3", f"{collection_name}@v4"
    queries = np.random.default_rng(3).standard_normal((6, DIM)).astype(np.float32)
    with two_versions(settings, collection_name) as (three, four), \
            Client(settings=settings) as client:
        aliases.set_alias(redis_client, alias, v3, "alice")
        before = client.search(alias, queries, k=5, consistency="strong")
        assert before.collection == v3
        assert [list(r) for r in before.ids] == exact_top_k(three, queries, 5)[0]
        aliases.set_alias(redis_client, alias, v4, "bob")
        after = client.search(alias, queries, k=5, consistency="strong")
        assert after.collection == v4
        assert [list(r) for r in after.ids] == exact_top_k(four, queries, 5)[0]
        aliases.rollback(redis_client, alias, "carol")
        again = client.search(alias, queries, k=5, consistency="strong")
        assert again.collection == v3
        assert np.array_equal(again.ids, before.ids)
        assert np.array_equal(again.scores, before.scores)

        expected = {v3: exact_top_k(three, queries, 5)[0], v4: exact_top_k(four, queries, 5)[0]}
        stop, answered = threading.Event(), []

        def flip() -> None:
            while not stop.is_set():
                aliases.set_alias(redis_client, alias, v4, "flipper")
                aliases.rollback(redis_client, alias, "flipper")

        flipper = threading.Thread(target=flip, daemon=True)
        flipper.start()
        try:
            for _ in range(200):  # every answer comes whole from the one collection it names
                got = client.search(alias, queries, k=5)
                assert [list(r) for r in got.ids] == expected[got.collection]
                answered.append(got.collection)
        finally:
            stop.set()
            flipper.join(30)
        assert set(answered) == {v3, v4}
