"""The actor the audit trail names: OS user by default, then STREAMVEC_ACTOR, then --actor."""

from __future__ import annotations

import getpass
import os

import pytest
from pydantic import ValidationError

from streamvec.commands import build_parser, settings_from_args
from streamvec.settings import Settings, default_actor


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only each test's own STREAMVEC_* variables count."""
    for name in list(os.environ):
        if name.startswith("STREAMVEC_"):
            monkeypatch.delenv(name)


def test_the_default_actor_is_the_os_user() -> None:
    assert Settings().actor == default_actor() == getpass.getuser()


def test_the_default_actor_survives_a_missing_user(monkeypatch) -> None:
    def nobody() -> str:
        raise KeyError("uid not found")

    monkeypatch.setattr(getpass, "getuser", nobody)
    assert default_actor() == "unknown"


def test_env_then_flag_override_the_actor(monkeypatch) -> None:
    monkeypatch.setenv("STREAMVEC_ACTOR", "deploy-bot")
    assert Settings().actor == "deploy-bot"
    args = build_parser().parse_args(["--actor", "alice", "audit"])
    assert settings_from_args(args).actor == "alice"
    assert settings_from_args(build_parser().parse_args(["audit"])).actor == "deploy-bot"
    assert Settings(actor="bob").describe()["actor"] == "bob"


def test_an_empty_actor_is_refused() -> None:
    with pytest.raises(ValidationError):
        Settings(actor="")
