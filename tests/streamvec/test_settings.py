"""Settings: env parsing, librdkafka pass-through options, and secrets kept out of text."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from streamvec import probe
from streamvec.commands import settings_from_args
from streamvec.commands.errors import UsageError
from streamvec.settings import (
    LOCAL_KAFKA_PORT,
    LOCAL_REDIS_PORT,
    Settings,
    default_home,
    describe_invalid,
    parse_kafka_options,
    redact_kafka_options,
    redact_url,
)

SECRET = "s3cr3t-Pa55"  # noqa: S105 - a made-up secret that must never show up in text


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Drop the developer's STREAMVEC_* variables so that only each test's own count."""
    for name in list(os.environ):
        if name.startswith("STREAMVEC_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))


def test_defaults_point_at_the_local_stack(tmp_path):
    settings = Settings()
    assert settings.kafka == f"127.0.0.1:{LOCAL_KAFKA_PORT}"
    assert settings.redis_url == f"redis://127.0.0.1:{LOCAL_REDIS_PORT}/0"
    assert settings.kafka_options == {}
    assert settings.home == tmp_path / "xdg" / "streamvec" == default_home()
    assert settings.store == settings.home / "snapshots"


def test_env_vars_override_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("STREAMVEC_KAFKA", "  k1:9092,k2:9092 ")
    monkeypatch.setenv("STREAMVEC_REDIS", "rediss://cache.internal:6380/2")
    monkeypatch.setenv("STREAMVEC_STORE", str(tmp_path / "snaps"))
    monkeypatch.setenv("STREAMVEC_HOME", str(tmp_path / "state"))
    settings = Settings()
    assert settings.kafka == "k1:9092,k2:9092"
    assert settings.redis_url == "rediss://cache.internal:6380/2"
    assert settings.store == tmp_path / "snaps"
    assert settings.home == tmp_path / "state"


def test_arguments_win_over_env(monkeypatch):
    monkeypatch.setenv("STREAMVEC_KAFKA", "from-env:9092")
    assert Settings(kafka="from-arg:9092").kafka == "from-arg:9092"


@pytest.mark.parametrize(
    "text",
    [
        '{"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN"}',
        "security.protocol=SASL_SSL,sasl.mechanism=PLAIN",
        " security.protocol = SASL_SSL , sasl.mechanism=PLAIN ,",
    ],
)
def test_kafka_options_from_env_in_json_or_pairs(monkeypatch, text):
    monkeypatch.setenv("STREAMVEC_KAFKA_OPTIONS", text)
    settings = Settings()
    assert settings.kafka_options == {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN"}
    config = settings.kafka_config(**{"group.id": "g", "sasl.mechanism": "SCRAM-SHA-512"})
    assert config == {
        "bootstrap.servers": settings.kafka,
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "group.id": "g",
    }


def test_kafka_option_values_may_hold_equals_signs():
    assert parse_kafka_options("sasl.oauthbearer.config=a=b") == {"sasl.oauthbearer.config": "a=b"}


@pytest.mark.parametrize("text", ["no-equals-sign", "=value", "a=1,oops"])
def test_malformed_kafka_options_are_refused(monkeypatch, text):
    monkeypatch.setenv("STREAMVEC_KAFKA_OPTIONS", text)
    with pytest.raises(ValidationError, match="not of the form key=value"):
        Settings()


@pytest.mark.parametrize("value", [None, "", {}, []])
def test_empty_kafka_options(value):
    assert parse_kafka_options(value) == {}


def test_kafka_options_from_dict_and_list_become_text():
    assert parse_kafka_options({"linger.ms": 5}) == {"linger.ms": "5"}
    assert parse_kafka_options(["acks=all", "linger.ms=5"]) == {"acks": "all", "linger.ms": "5"}


keys = st.from_regex(r"[a-z][a-z.]{0,20}", fullmatch=True)
values = st.from_regex(r"[A-Za-z0-9_.:/-]{0,20}", fullmatch=True)


@given(st.dictionaries(keys, values, max_size=6))
def test_pairs_and_json_forms_agree(options):
    pairs = ",".join(f"{k}={v}" for k, v in options.items())
    assert parse_kafka_options(pairs) == options
    assert parse_kafka_options(json.dumps(options)) == options


def test_empty_kafka_is_refused():
    with pytest.raises(ValidationError, match="must not be empty"):
        Settings(kafka="   ")


@pytest.mark.parametrize("url", ["http://h:6379", "h:6379", "postgres://u:p@h/0"])
def test_redis_url_needs_a_redis_scheme(url):
    with pytest.raises(ValidationError, match="redis URL must start with redis://"):
        Settings(redis=url)


@pytest.mark.parametrize("url", ["redis://h:1/0", "rediss://u:p@h:2/1", "unix:///run/redis.sock"])
def test_redis_schemes_accepted(url):
    assert Settings(redis=url).redis_url == url


def test_redis_password_never_reaches_text(monkeypatch):
    monkeypatch.setenv("STREAMVEC_REDIS", f"rediss://app:{SECRET}@cache:6380/3")
    monkeypatch.setenv("STREAMVEC_KAFKA_OPTIONS", f"sasl.username=app,sasl.password={SECRET}")
    settings = Settings()
    described = settings.describe()
    assert described["redis"] == "rediss://app:***@cache:6380/3"
    assert '"sasl.password": "***"' in described["kafka_options"]
    assert '"sasl.username": "app"' in described["kafka_options"]
    for text in (repr(settings), str(settings), str(described)):
        assert SECRET not in text
    # The secret is still there for the code that connects.
    assert SECRET in settings.redis_url
    assert settings.kafka_config()["sasl.password"] == SECRET


def test_redis_client_uses_the_url_without_connecting():
    client = Settings(redis=f"redis://app:{SECRET}@127.0.0.1:1/4").redis_client()
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("127.0.0.1", 1, 4)
    assert (kwargs["username"], kwargs["password"]) == ("app", SECRET)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://u:pw@h/0?ssl_cert_reqs=none", "redis://u:***@h/0?ssl_cert_reqs=none"),
        ("redis://u@h:1", "redis://u@h:1"),
    ],
)
def test_redact_url(url, expected):
    assert redact_url(url) == expected


def test_redact_kafka_options_masks_every_secret_like_key():
    options = {
        "sasl.password": "a",
        "ssl.key.password": "b",
        "sasl.oauthbearer.client.secret": "c",
        "ssl.key.pem": "d",
        "sasl.jaas.config": "e",
        "sasl.oauthbearer.token": "f",
        "security.protocol": "SASL_SSL",
    }
    masked = redact_kafka_options(options)
    assert masked.pop("security.protocol") == "SASL_SSL"
    assert set(masked.values()) == {"***"}


def test_settings_are_frozen():
    settings = Settings()
    with pytest.raises(ValidationError):
        settings.kafka = "elsewhere:9092"  # type: ignore[misc]


def test_unit_tests_get_settings_that_reach_no_server(settings, tmp_path):
    # The harness gives unit tests addresses where nothing listens, and starts no server.
    assert settings.kafka == "127.0.0.1:1"
    assert settings.redis_url == "redis://127.0.0.1:1/0"
    assert settings.store == tmp_path / "snapshots"
    assert settings.home == tmp_path / "home"


def test_child_env_carries_every_connection_and_drops_stray_streamvec_vars(monkeypatch):
    monkeypatch.setenv("STREAMVEC_CRASH_AT", "build")
    settings = Settings(kafka="k:1", redis="redis://u:pw@h:2/0", store="/snap",
                        home="/home-sv", kafka_options={"sasl.password": "s"})
    env = settings.child_env()
    assert "STREAMVEC_CRASH_AT" not in env
    monkeypatch.delenv("STREAMVEC_CRASH_AT")
    for key, value in env.items():
        if key.startswith("STREAMVEC_"):
            monkeypatch.setenv(key, value)
    assert Settings() == settings


@pytest.mark.parametrize(("name", "value"), [
    ("STREAMVEC_REDIS", f"http://app:{SECRET}@cache:6379/0"),
    ("STREAMVEC_STORE_OPTIONS", f'["key", "{SECRET}"]'),
    ("STREAMVEC_STORE_OPTIONS", f'{{"secret": "{SECRET}"'),
    ("STREAMVEC_KAFKA_OPTIONS", f"sasl.username=app,sasl.password:{SECRET}"),
    ("STREAMVEC_STORE_URL", f"{SECRET}@bucket"),
])
def test_invalid_settings_are_described_without_any_input_value(monkeypatch, capsys, name,
                                                                 value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as invalid:
        Settings()
    described = describe_invalid(invalid.value)
    field = name.removeprefix("STREAMVEC_").lower()
    assert described.startswith(f"{field}: ")
    assert SECRET not in described
    # The container health check prints it; so does every command.
    assert probe.main(["--port", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"streamvec probe: invalid settings: {field}: ")
    assert SECRET not in err
    with pytest.raises(UsageError) as usage:
        settings_from_args(argparse.Namespace())
    assert str(usage.value).startswith(f"invalid settings: {field}: ")
    assert SECRET not in str(usage.value)


def test_a_mistyped_kafka_option_flag_is_not_echoed():
    args = argparse.Namespace(kafka_option=["client.id=a", f"sasl.password:{SECRET}"])
    with pytest.raises(UsageError, match="--kafka-option number 2 is not of the form"):
        settings_from_args(args)


def test_the_metrics_host_defaults_to_every_interface_and_can_be_narrowed(monkeypatch):
    assert Settings().metrics_host == "0.0.0.0"  # noqa: S104 - the documented default
    monkeypatch.setenv("STREAMVEC_METRICS_HOST", "127.0.0.1")
    assert Settings().metrics_host == "127.0.0.1"
    monkeypatch.setenv("STREAMVEC_METRICS_HOST", "")
    with pytest.raises(ValidationError, match="metrics_host"):
        Settings()
