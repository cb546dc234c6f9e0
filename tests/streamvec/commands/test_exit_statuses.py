"""Each documented exit status, from real commands end to end, in text and in JSON mode.

tests/streamvec/commands/test_commands.py maps every error class to its status; these run
the command line as a script would, against a real Redis where one is needed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ingest import catalog
from ingest.spec import CollectionSpec
from streamvec import commands
from streamvec.commands.errors import ExitCode
from tests.support.cli import argv as cli


def run(capsys, argv: list[str], *, as_json: bool) -> tuple[int, str]:
    """The command's exit status and the error message it printed on stderr ('' if none)."""
    capsys.readouterr()
    code = commands.main([*argv, "--json"] if as_json else argv)
    err = capsys.readouterr().err
    if not err:
        return code, ""
    if as_json:
        doc = json.loads(err)
        assert doc["status"] == code
        return code, doc["error"]
    assert err.startswith("streamvec: error: ") and err.count("\n") == 1
    return code, err.removeprefix("streamvec: error: ").rstrip("\n")


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_ok_failed_and_usage_need_no_server(capsys, tmp_path: Path, as_json: bool) -> None:
    good = tmp_path / "configuration.md"
    assert run(capsys, ["config", "reference", "--output", str(good)], as_json=as_json) == (
        ExitCode.OK, "")
    stale = tmp_path / "stale.md"
    stale.write_text("# Configuration\n")
    code, message = run(capsys, ["config", "reference", "--check", "--output", str(stale)],
                        as_json=as_json)
    assert code == ExitCode.FAILED
    assert message.startswith(f"the configuration reference is stale: {stale} differs at line 1")
    assert run(capsys, ["collection", "drop", "products"], as_json=as_json) == (
        ExitCode.USAGE, "dropping products deletes its topics and snapshots; add --yes")


def test_a_bad_flag_is_a_usage_error_from_the_parser(capsys) -> None:
    with pytest.raises(SystemExit) as stopped:
        commands.main(["alias", "list", "--no-such-flag"])
    assert stopped.value.code == ExitCode.USAGE
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_an_unreachable_redis_is_unavailable(settings, capsys, as_json: bool) -> None:
    code, message = run(capsys, cli(settings, "alias", "list"), as_json=as_json)
    assert code == ExitCode.UNAVAILABLE
    assert message.startswith(f"Redis at {settings.describe()['redis']} failed: ")


@pytest.mark.integration
@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_not_found_and_conflict_against_redis(redis_settings, collection_name, redis_client,
                                              capsys, as_json: bool) -> None:
    catalog.claim_spec(redis_client, CollectionSpec(collection_name, dim=4, partitions=1))
    catalog.claim_spec(redis_client, CollectionSpec(f"{collection_name}@v1", dim=4,
                                                    partitions=1))
    assert run(capsys, cli(redis_settings, "alias", "get", f"{collection_name}-x"),
               as_json=as_json) == (ExitCode.NOT_FOUND,
                                    f"alias '{collection_name}-x' does not exist")
    code, message = run(capsys, cli(redis_settings, "alias", "set", collection_name,
                                    f"{collection_name}@v1"), as_json=as_json)
    assert code == ExitCode.CONFLICT
    assert message.startswith(f"'{collection_name}' is the name of a collection")
