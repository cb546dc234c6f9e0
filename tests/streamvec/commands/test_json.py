"""`--json` on every command that prints: one document on stdout, errors as JSON on stderr."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator

import pytest

from ingest import catalog
from ingest.errors import CollectionNotFound
from ingest.spec import CollectionSpec
from streamvec import commands
from streamvec.commands import alias, common
from tests.support.cli import argv as cli

# Leaf commands without --json, and why: none of them prints a result a script would parse.
NO_JSON = {
    "indexer": "a long-running role: it logs (--log-format json) and serves /metrics",
    "searcher": "a long-running role: it logs (--log-format json) and serves /metrics",
    "monitor": "a long-running role: it logs (--log-format json) and serves /metrics",
    "demo": "a walkthrough for people: progress bars and sample answers, driving every role",
    "completion": "prints shell code to source, a format of its own",
}


def leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
           ) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """(`command verb`, parser) of every command that runs something, walking the whole tree."""
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not groups:
        yield " ".join(path), parser
    for group in groups:
        for name, child in group.choices.items():
            yield from leaves(child, (*path, name))


def test_every_printing_command_accepts_json() -> None:
    found = dict(leaves(commands.build_parser()))
    without = {name for name, parser in found.items()
               if not any("--json" in a.option_strings for a in parser._actions)}
    assert without == set(NO_JSON), "a command that prints needs --json (common.add_json)"
    # The walk sees the nested verbs too, not just the top level.
    assert {"alias set", "drift pin-reference", "dev status", "config reference"} <= set(found)


def test_print_json_writes_one_document_with_null_for_what_json_cannot_hold(capsys) -> None:
    assert common.print_json({"a": [1.5, float("nan")], "b": (float("inf"), "x")}) == 0
    out = capsys.readouterr().out
    assert json.loads(out) == {"a": [1.5, None], "b": [None, "x"]}


def test_a_failure_in_json_mode_is_one_json_object_on_stderr(monkeypatch, capsys) -> None:
    def missing(args, settings):
        raise CollectionNotFound("collection 'nope' does not exist")

    monkeypatch.setattr(alias, "_list", missing)
    assert commands.main(["alias", "list", "--json"]) == 3
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.count("\n") == 1
    assert json.loads(out.err) == {"error": "collection 'nope' does not exist", "status": 3}


def test_an_interruption_in_json_mode_is_a_json_object_too(monkeypatch, capsys) -> None:
    def interrupted(args, settings):
        raise KeyboardInterrupt

    monkeypatch.setattr(alias, "_list", interrupted)
    assert commands.main(["alias", "list", "--json"]) == 130
    assert json.loads(capsys.readouterr().err) == {"error": "interrupted", "status": 130}


def test_status_refuses_json_with_watch(capsys) -> None:
    assert commands.main(["status", "--json", "--watch", "1"]) == 2
    assert json.loads(capsys.readouterr().err) == {
        "error": "--json prints the rows once; drop --watch (or poll the command)", "status": 2}


def test_dev_up_takes_env_or_json_not_both(capsys) -> None:
    with pytest.raises(SystemExit) as stopped:
        commands.main(["dev", "up", "--env", "--json"])
    assert stopped.value.code == 2
    assert "argument --json: not allowed with argument --env" in capsys.readouterr().err


@pytest.mark.integration
def test_alias_switches_print_one_json_document_each(redis_settings, collection_name,
                                                     redis_client, capsys) -> None:
    name, v1, v2 = collection_name, f"{collection_name}@v1", f"{collection_name}@v2"
    for version in (v1, v2):  # specs alone: aliases read nothing else of a collection
        catalog.claim_spec(redis_client, CollectionSpec(version, dim=4, partitions=1))

    def run(*args: str) -> object:
        capsys.readouterr()
        assert commands.main(cli(redis_settings, *args, "--json")) == 0
        return json.loads(capsys.readouterr().out)

    assert run("alias", "set", name, v1) == {"alias": name, "target": v1, "previous": None,
                                             "switched": True}
    assert run("alias", "set", name, v1) == {"alias": name, "target": v1, "previous": v1,
                                             "switched": False}
    assert run("alias", "set", name, v2)["previous"] == v1
    assert run("rollback", name) == {"alias": name, "from": v2, "to": v1}
    assert run("alias", "delete", name) == {"alias": name, "deleted": True, "target": v1}
    audit = run("audit", "--collection", name, "--limit", "2")
    assert [(e["action"], e["target"]) for e in audit] == [
        ("alias.rollback", name), ("alias.delete", name)]


def test_commands_that_need_no_server_print_json(settings, tmp_path, capsys) -> None:
    def run(*args: str, code: int = 0) -> object:
        capsys.readouterr()
        assert commands.main(cli(settings, *args, "--json")) == code
        return json.loads(capsys.readouterr().out)

    # The local stack listens on fixed ports: a developer's running stack answers this test
    # too, so the status and pids follow what those ports say (exit 1 unless both are up).
    capsys.readouterr()
    status = commands.main(cli(settings, "dev", "status", "--json"))
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["kafka", "redis"]
    assert status == (0 if all(r["healthy"] for r in rows) else 1)
    assert all(r["pid"] is None for r in rows if not r["healthy"])
    assert run("registry", "rebuild", "--collection", "products", "--generation", "0") == {
        "collection": "products", "generation": 0, "dry_run": True, "version": None,
        "partitions": [], "recovered": [], "ignored": [], "fetched": None}
    out = tmp_path / "configuration.md"
    assert run("config", "reference", "--output", str(out)) == {"path": str(out),
                                                                 "written": True}
    assert run("config", "reference", "--check", "--output", str(out)) == {
        "path": str(out), "up_to_date": True}
    assert run("config", "reference")["markdown"] == out.read_text()


@pytest.mark.integration
def test_challenge_verbs_and_promote_print_one_json_document_each(redis_settings,
                                                                  collection_name,
                                                                  redis_client, capsys) -> None:
    name, v1, v2 = collection_name, f"{collection_name}@v1", f"{collection_name}@v2"
    for version in (v1, v2):
        catalog.claim_spec(redis_client, CollectionSpec(version, dim=4, partitions=1))

    def run(*args: str) -> dict:
        capsys.readouterr()
        assert commands.main(cli(redis_settings, "--actor", "ops", *args, "--json")) == 0
        return json.loads(capsys.readouterr().out)

    run("alias", "set", name, v1)
    started = run("challenge", "start", name, "--challenger", v2, "--share", "0.25")
    assert {k: started[k] for k in ("alias", "champion", "challenger", "share", "actor",
                                    "active")} == {
        "alias": name, "champion": v1, "challenger": v2, "share": 0.25, "actor": "ops",
        "active": True}
    stopped = run("challenge", "stop", name)
    assert (stopped["id"], stopped["active"]) == (started["id"], False)
    again = run("challenge", name, "--challenger", v2)  # start is the default verb
    assert run("promote", name) == {"alias": name, "target": v2, "previous": v1,
                                    "challenge": again["id"]}
