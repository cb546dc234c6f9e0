"""`streamvec completion SHELL` prints working shell code; the command answers completions."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from streamvec import commands
from streamvec.commands.completion import SHELLS

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("shell", SHELLS)
def test_the_script_of_each_shell_completes_streamvec(shell, capsys) -> None:
    assert commands.main(["completion", shell]) == 0
    script = capsys.readouterr().out
    assert "streamvec" in script
    hook = {"bash": "complete -o nospace -o default -o bashdefault -F _python_argcomplete "
                    "streamvec",
            "zsh": "#compdef streamvec",
            "fish": "complete --command streamvec"}[shell]
    assert hook in script


def complete(line: str, tmp_path: Path) -> list[str]:
    """What the command offers for `line`, asked as the shell code asks (argcomplete's protocol)."""
    out = tmp_path / "completions"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMVEC_")}
    env.update(_ARGCOMPLETE="1", COMP_LINE=line, COMP_POINT=str(len(line)),
               _ARGCOMPLETE_STDOUT_FILENAME=str(out))
    done = subprocess.run([sys.executable, "-m", "streamvec"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return sorted(out.read_text().split("\v"))


def test_the_command_offers_commands_verbs_flags_and_choices(tmp_path) -> None:
    assert complete("streamvec coll", tmp_path) == ["collection "]
    assert complete("streamvec collection ", tmp_path) == [
        "--help", "-h", "create", "describe", "drop", "list", "reshard", "shards"]
    assert complete("streamvec alias set --j", tmp_path) == ["--json "]
    assert complete("streamvec --log-format ", tmp_path) == ["json", "text"]


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_registers_the_completion_it_is_given(capsys) -> None:
    assert commands.main(["completion", "bash"]) == 0
    script = capsys.readouterr().out
    done = subprocess.run([shutil.which("bash"), "-c", 'eval "$SCRIPT"; complete -p streamvec'],
                          env={"SCRIPT": script, "PATH": os.environ.get("PATH", "")},
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("-F _python_argcomplete streamvec")
