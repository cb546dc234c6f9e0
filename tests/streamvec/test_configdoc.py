"""The configuration reference: docs/configuration.md is exactly what the settings render now."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest
from pydantic import Field, SecretStr

from streamvec import commands, configdoc
from streamvec.commands import config
from streamvec.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / configdoc.DOC_PATH


class WithNewSettings(Settings):
    """Settings plus fields of the kinds a new setting may take."""

    store_url: str | None = Field(default=None, description="Where snapshots are copied to.")
    store_token: SecretStr = Field(default=SecretStr(""), description="Token of the store.")
    plain: int = 3


def test_the_file_in_the_tree_is_what_the_settings_render():
    # A new or changed setting without `make docs` fails here.
    reason = config.stale_reason(DOC, configdoc.render(commands.build_parser()))
    assert reason is None, f"{reason}; run `{config.REGENERATE}`"


def test_every_field_has_its_row_with_env_var_and_description():
    text = DOC.read_text(encoding="utf-8")
    for name, field in Settings.model_fields.items():
        env = f"STREAMVEC_{name.upper()}"
        rows = [line for line in text.splitlines() if line.startswith(f"| `{name}` | `{env}` |")]
        assert len(rows) == 1, f"no single row for {name}"
        assert field.description and field.description.strip() in rows[0]
    assert configdoc.UNDOCUMENTED not in text


def test_rows_of_the_current_settings():
    docs = {d.name: d for d in configdoc.describe_settings(commands.build_parser())}
    assert list(docs) == list(Settings.model_fields)
    assert docs["kafka"].flags == ("`--kafka`",)
    assert docs["kafka"].default == "`127.0.0.1:39092`"
    assert (docs["redis"].secrecy, docs["redis"].type) == ("secret", "string")
    assert docs["kafka_options"].flags == ("`--kafka-option` (repeatable)",)
    assert docs["kafka_options"].secrecy == "masked keys"
    assert docs["kafka_options"].type == "mapping of string to string"
    assert docs["metrics_port"].flags == ("`--metrics-port` (`indexer`, `searcher`, `monitor`)",)
    assert docs["metrics_port"].type == "integer or unset, 0..65535"
    assert docs["metrics_port"].default == "unset"
    assert docs["home"].flags == ()
    assert docs["home"].default == ("`~/.local/share/streamvec`; `$XDG_DATA_HOME/streamvec` "
                                    "if XDG_DATA_HOME is set")
    assert docs["actor"].type == "string, 1..256 characters"
    assert docs["actor"].default == "`<OS user>`"
    assert [docs[n].secrecy for n in ("kafka", "store", "home", "actor")] == [""] * 4


def test_env_vars_read_outside_settings_are_listed():
    extras = configdoc.extra_variables(commands.build_parser())
    assert [(e.env, e.flags, e.description) for e in extras] == [
        ("STREAMVEC_LOG_FORMAT", ("`--log-format`",),
         "Text (default), or json: one JSON object per line"),
        ("STREAMVEC_LOG_LEVEL", ("`--log-level`",), "DEBUG, INFO, WARNING...")]


def test_rendering_ignores_the_environment_it_runs_in(monkeypatch):
    before = configdoc.render(commands.build_parser())
    monkeypatch.setenv("STREAMVEC_KAFKA", "elsewhere:9092")
    monkeypatch.setenv("XDG_DATA_HOME", "/srv/data")
    monkeypatch.setenv("HOME", "/home/somebody")
    monkeypatch.setenv("LOGNAME", "somebody")
    assert configdoc.render(commands.build_parser()) == before
    assert (os.environ["HOME"], os.environ["XDG_DATA_HOME"]) == ("/home/somebody", "/srv/data")


def test_a_new_field_appears_and_makes_the_file_stale():
    rendered = configdoc.render(commands.build_parser(), WithNewSettings)
    rows = {line.split(" | ")[0]: line for line in rendered.splitlines() if line.startswith("| `")}
    assert rows["| `store_url`"] == (
        "| `store_url` | `STREAMVEC_STORE_URL` | - | string or unset | unset "
        "| Where snapshots are copied to. |")
    assert rows["| `store_token`"] == (
        "| `store_token` | `STREAMVEC_STORE_TOKEN` | - | string, **secret** | empty "
        "| Token of the store. |")
    assert rows["| `plain`"] == (
        "| `plain` | `STREAMVEC_PLAIN` | - | integer | `3` | **undocumented** |")
    assert "- `STREAMVEC_STORE_TOKEN` (secret): " in rendered
    reason = config.stale_reason(DOC, rendered)
    assert reason is not None and reason.startswith(f"{DOC} differs at line ")


def test_a_flag_is_found_by_the_env_var_its_help_names():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url-of-store", help="where to copy [env STREAMVEC_STORE_URL]")
    sub = parser.add_subparsers()
    run = sub.add_parser("run")
    run.add_argument("--store-url", help="override [env STREAMVEC_STORE_URL]")
    run.add_argument("--kafka", help="a command's own --kafka names no env var: not a setting")
    run.add_argument("--fetch", help="read the store (STREAMVEC_STORE_URL) first: uses, not sets")
    run.add_argument("--trace", help="trace [env STREAMVEC_TRACE_FILE]")
    docs = {d.name: d for d in configdoc.describe_settings(parser, WithNewSettings)}
    assert docs["store_url"].flags == ("`--url-of-store`", "`--store-url` (`run`)")
    assert docs["kafka"].flags == ()
    extras = configdoc.extra_variables(parser, WithNewSettings)
    assert [(e.env, e.flags, e.description) for e in extras] == [
        ("STREAMVEC_TRACE_FILE", ("`--trace` (`run`)",), "Trace")]


def test_check_passes_on_a_fresh_file_and_fails_on_a_stale_one(tmp_path, capsys):
    fresh = tmp_path / "configuration.md"
    assert commands.main(["config", "reference", "--output", str(fresh)]) == 0
    assert fresh.read_text(encoding="utf-8") == configdoc.render(commands.build_parser())
    assert commands.main(["config", "reference", "--check", "--output", str(fresh)]) == 0
    assert capsys.readouterr().out == f"wrote {fresh}\n{fresh} is up to date\n"

    lines = fresh.read_text(encoding="utf-8").splitlines(keepends=True)
    fresh.write_text("".join(lines[:-1]), encoding="utf-8")
    assert commands.main(["config", "reference", "--check", "--output", str(fresh)]) == 1
    err = capsys.readouterr().err
    assert err == (f"streamvec: error: the configuration reference is stale: {fresh} ends after "
                   f"line {len(lines) - 1}; the settings give {len(lines)} lines; regenerate it "
                   f"with {config.REGENERATE}\n")


def test_check_of_a_missing_file_names_the_fix(tmp_path, capsys):
    missing = tmp_path / "nope.md"
    assert commands.main(["config", "reference", "--check", "--output", str(missing)]) == 1
    assert f"{missing} does not exist; regenerate it with make docs" in capsys.readouterr().err


def test_without_output_the_reference_goes_to_stdout(capsys):
    assert commands.main(["config", "reference"]) == 0
    assert capsys.readouterr().out == configdoc.render(commands.build_parser())


@pytest.mark.parametrize(("old", "new", "reason"), [
    ("a\nb\n", "a\nc\n", "differs at line 2: it has 'b', the settings give 'c'"),
    ("a\nb\nc\n", "a\nb\n", "has 1 line(s) more than the settings give"),
    ("a\r\nb\r\n", "a\nb\n", "differs from the settings in its line endings"),
])
def test_stale_reasons(tmp_path, old, new, reason):
    path = tmp_path / "doc.md"
    path.write_bytes(old.encode())
    assert config.stale_reason(path, new) == f"{path} {reason}"
