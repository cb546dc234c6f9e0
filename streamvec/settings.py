"""Settings every streamvec component reads: flags over `STREAMVEC_*` env vars over defaults."""

from __future__ import annotations

import getpass
import json
import os
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from streamvec import redisconn

# Ports of the embedded local stack (`streamvec dev up`); chosen high and unusual so that
# a developer's own Kafka or Redis on the standard ports is never touched by accident.
LOCAL_KAFKA_PORT = 39092
LOCAL_KAFKA_CONTROLLER_PORT = 39093
LOCAL_REDIS_PORT = 36379

# librdkafka options whose values must never reach a log line or a terminal.
_SECRET_KAFKA_KEYS = ("password", "secret", "key.pem", "token", "sasl.jaas")
# Object-store options (fsspec) whose values are masked: s3fs `key`/`secret`/`token`, and the
# botocore spellings (`aws_secret_access_key`, ...) that may come nested in `client_kwargs`.
_SECRET_STORAGE_KEYS = ("key", "secret", "token", "password", "credential")


def default_home() -> Path:
    """Return the folder for local state: the dev stack, caches and default snapshots."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "streamvec"


def default_actor() -> str:
    """Return the OS user name, the actor audit entries name when none is configured."""
    try:
        return getpass.getuser() or "unknown"
    except (KeyError, OSError):  # no login name in the env and no passwd entry (containers)
        return "unknown"


def parse_kafka_options(value: Any) -> dict[str, str]:
    """Parse librdkafka pass-through options from a dict, JSON object or `k=v,k=v` text."""
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        pairs = list(value)
    else:
        text = str(value).strip()
        if text.startswith("{"):
            return parse_kafka_options(json.loads(text))
        pairs = [p for p in text.split(",") if p.strip()]
    options: dict[str, str] = {}
    for pair in pairs:
        key, sep, val = str(pair).partition("=")
        if not sep or not key.strip():
            # The text itself may hold a secret (a mistyped sasl.password): name its place.
            raise ValueError(f"kafka option number {len(options) + 1} is not of the form "
                             "key=value")
        options[key.strip()] = val.strip()
    return options


def redact_url(url: str) -> str:
    """Return `url` with any password replaced by `***`, safe to log or print."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    # The hosts as written: a cluster URL lists several, which urlsplit cannot take apart.
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{user}:***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def parse_storage_options(value: Any) -> dict[str, Any]:
    """Parse object-store options for fsspec from a dict or a JSON object."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        value = json.loads(value)
    if not isinstance(value, dict):
        raise ValueError("store options must be a JSON object")
    return dict(value)


def describe_invalid(exc: ValidationError) -> str:
    """What is wrong in a settings ValidationError, one `field: why` per problem, no values.

    Pydantic's own text repeats each input value, and a value may be a secret (a Redis URL
    with its password, object-store keys): only the field and the rule reach the reader, and
    a message that quotes its input anyway has it masked.
    """
    problems = []
    for error in exc.errors(include_url=False, include_input=True):
        where = ".".join(map(str, error["loc"])) or "settings"
        message = str(error["msg"])
        for secret in _secrets_in(error.get("input")):
            message = message.replace(secret, "***")
        problems.append(f"{where}: {message}")
    return "; ".join(problems)


def _secrets_in(value: Any) -> list[str]:
    """Every text in an input value that a message could quote: the value, its parts."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, dict):
        return [t for v in value.values() for t in _secrets_in(v)]
    if isinstance(value, list | tuple):
        return [t for v in value for t in _secrets_in(v)]
    if not isinstance(value, str) or len(value) < 3:
        return []
    found = [value, *(p for p in value.replace("=", ",").split(",") if len(p) >= 3)]
    password = urlsplit(value).password if "://" in value else None
    return sorted({*found, *([password] if password else [])}, key=len, reverse=True)


def redact_storage_options(options: Any) -> Any:
    """Return object-store options with every secret value masked, nested dicts included."""
    if not isinstance(options, dict):
        return options
    return {k: ("***" if any(s in str(k).lower() for s in _SECRET_STORAGE_KEYS)
                else redact_storage_options(v)) for k, v in options.items()}


def redact_kafka_options(options: dict[str, str]) -> dict[str, str]:
    """Return the options with secret values masked."""
    return {
        k: ("***" if any(s in k.lower() for s in _SECRET_KAFKA_KEYS) else v)
        for k, v in options.items()
    }


# Env vars read under an earlier name, so deployments written for it keep working; the
# current name wins when both are set.
RENAMED_ENV = {
    "STREAMVEC_SNAPSHOTS": "store",
    "STREAMVEC_SNAPSHOT_URL": "store_url",
    "STREAMVEC_SNAPSHOT_STORAGE_OPTIONS": "store_options",
}


class RenamedEnv(PydanticBaseSettingsSource):
    """Settings from env vars under their earlier names (`RENAMED_ENV`)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        """Unused: `__call__` reads every renamed variable at once."""
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        """The renamed variables that are set, keyed by their field."""
        return {field: os.environ[env] for env, field in RENAMED_ENV.items() if env in os.environ}


class Settings(BaseSettings):
    """Connection settings shared by every role; each field reads `STREAMVEC_<FIELD>`."""

    model_config = SettingsConfigDict(env_prefix="STREAMVEC_", frozen=True, extra="ignore")

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings],
                                   init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Flags and arguments, then env vars, then env vars under their earlier names."""
        return (init_settings, env_settings, RenamedEnv(settings_cls), dotenv_settings,
                file_secret_settings)

    kafka: str = Field(
        default=f"127.0.0.1:{LOCAL_KAFKA_PORT}",
        description="Kafka bootstrap servers (comma-separated host:port).",
    )
    redis: SecretStr = Field(
        default=SecretStr(f"redis://127.0.0.1:{LOCAL_REDIS_PORT}/0"),
        description="Redis URL: redis:// or rediss:// for one server, redis+cluster://host:port"
                    "[,host:port...] (rediss+cluster:// over TLS) for a Redis Cluster; with ACL "
                    "user and password if any.",
    )
    store: Path = Field(
        default_factory=lambda: default_home() / "snapshots",
        description="Segment store: the folder that holds sealed segment folders.",
    )
    store_url: str | None = Field(
        default=None,
        description="Object store that mirrors the segment store, e.g. s3://bucket/prefix "
                    "(fsspec URL); unset: segments are local only.",
    )
    store_options: Annotated[dict[str, Any], NoDecode] = Field(
        default_factory=dict,
        description="Options for the object store's fsspec filesystem, a JSON object "
                    '(s3: {"endpoint_url": ..., "key": ..., "secret": ...}).',
    )
    # NoDecode: the validator below reads both JSON and k=v,k=v from the env var.
    kafka_options: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="Extra librdkafka options (SASL, SSL, ...): JSON object or k=v,k=v.",
    )
    dlq_max_copy_bytes: int = Field(
        default=1 << 20, ge=0,
        description="Indexer: most payload bytes a dead letter copies of a bad message; a "
                    "longer payload is cut and its dead letter says so (header sv-truncated).",
    )
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535,
        description="Port of the /metrics endpoint of a long-running role (off if unset)",
    )
    metrics_host: str = Field(
        default="0.0.0.0",  # noqa: S104 - scraped and probed from other hosts by default
        min_length=1,
        description="Address the /metrics and health endpoint binds: 0.0.0.0 (default) "
                    "listens on every interface, 127.0.0.1 only on this machine.",
    )
    revision: str = Field(
        default="", max_length=64,
        description="Source revision this build was made from, shown as the revision label of "
                    "streamvec_build_info (the image sets it from its REVISION build argument).",
    )
    home: Path = Field(
        default_factory=default_home,
        description="Folder for local state: the dev stack's data, logs and jar cache.",
    )
    actor: str = Field(
        default_factory=default_actor, min_length=1, max_length=256,
        description="Who is acting, as the audit trail records it (default: the OS user).",
    )
    # Searcher budgets (docs/operations.md, "Searcher memory"): what one request, one batch
    # and the serving loop may hold, so that no input can exhaust a searcher's memory.
    searcher_max_request_results: int = Field(
        default=100_000, ge=1,
        description="Searcher: most result slots (query vectors x k) one request may ask for; "
                    "over it the reply is a too_large error.",
    )
    searcher_max_request_values: int = Field(
        default=1 << 20, ge=1,
        description="Searcher: most query values (query vectors x dim) in one request.",
    )
    searcher_max_request_bytes: int = Field(
        default=8 << 20, ge=1024,
        description="Searcher: most bytes of one request entry; a larger one is refused "
                    "without being read in full.",
    )
    searcher_max_batch_results: int = Field(
        default=262_144, ge=1,
        description="Searcher: most result slots (query vectors x k) searched in one engine "
                    "call; ready requests beyond it run in further calls.",
    )
    searcher_max_reply_bytes: int = Field(
        default=64 << 20, ge=1024,
        description="Searcher: most bytes of metadata gathered for the replies of one batch.",
    )
    searcher_max_filter_rows: int = Field(
        default=100_000, ge=1,
        description="Searcher: most rows whose metadata one filtered request may examine.",
    )
    searcher_max_waiting: int = Field(
        default=1024, ge=1,
        description="Searcher: most requests held at once (waiting for their consistency "
                    "level or their turn); further ones stay on the stream.",
    )
    searcher_max_waiting_bytes: int = Field(
        default=64 << 20, ge=1024,
        description="Searcher: most bytes of query vectors held in waiting requests.",
    )
    searcher_read_bytes: int = Field(
        default=32 << 20, ge=1024,
        description="Searcher: most request bytes read from the stream per turn.",
    )
    searcher_max_deliveries: int = Field(
        default=3, ge=1,
        description="Searcher: a request delivered more times than this (its searchers "
                    "stopped while holding it) is answered with an error, not run again.",
    )
    searcher_max_tail_rows: int = Field(
        default=500_000, ge=1,
        description="Searcher: most rows in the live tail; at the bound it stops reading "
                    "Kafka (and reports lagging) until segments cover its rows. Keep it above "
                    "what the indexers leave unsealed (partitions x seal_rows at most).",
    )
    search_threads: int = Field(
        default=0, ge=0, le=64,
        description="Searcher: threads that search a batch's segments in parallel, one FAISS "
                    "thread each; 0 (default) means min(4, CPUs), 1 searches inline.",
    )
    searcher_fold: bool = Field(
        default=True,
        description="Searcher: search HNSW segments through folds, one in-memory graph per "
                    "index type over the segments of every partition, built in the background "
                    "(docs/operations.md, \"Folds\"); false searches each segment's own index.",
    )
    build_nice: int = Field(
        default=0, ge=0, le=19,
        description="Niceness added to the threads that build indexes in the background "
                    "(searcher folds, automatic compaction), so that tailing and answering get "
                    "the CPU first on a shared host; 0 (default) builds at the process's "
                    "priority. Under a load that keeps every core busy a niced fold waits, and "
                    "its segments' rows are scanned meanwhile.",
    )
    searcher_fold_min_segments: int = Field(
        default=2, ge=2,
        description="Searcher: HNSW segments of one index type that start a fold; fewer are "
                    "searched with their own indexes.",
    )

    @field_validator("kafka_options", mode="before")
    @classmethod
    def _parse_options(cls, value: Any) -> dict[str, str]:
        return parse_kafka_options(value)

    @field_validator("store_options", mode="before")
    @classmethod
    def _parse_storage_options(cls, value: Any) -> dict[str, Any]:
        return parse_storage_options(value)

    @field_validator("store_url")
    @classmethod
    def _check_store_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if "://" not in value:
            raise ValueError("store URL must name its protocol, such as s3://bucket/prefix")
        return value.strip()

    @field_validator("kafka")
    @classmethod
    def _check_kafka(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("kafka bootstrap servers must not be empty")
        return value.strip()

    @field_validator("redis")
    @classmethod
    def _check_redis(cls, value: SecretStr) -> SecretStr:
        redisconn.check_url(value.get_secret_value())
        return value

    @property
    def redis_url(self) -> str:
        """The Redis URL with its secret, for connecting only."""
        return self.redis.get_secret_value()

    def kafka_config(self, **extra: Any) -> dict[str, Any]:
        """Return a librdkafka config dict: bootstrap servers, pass-through options, `extra`."""
        return {"bootstrap.servers": self.kafka, **self.kafka_options, **extra}

    def redis_client(self, *, timeout: float | None = None) -> redisconn.AnyRedis:
        """Open a Redis client for these settings (bytes in, bytes out): a server's or a cluster's.

        `timeout` bounds each connect and reply, so a server that stopped answering (paused,
        partitioned) surfaces as a TimeoutError instead of a call that never returns.
        """
        # Transient network errors are retried with backoff (a few seconds in all) before surfacing;
        # every registry write is idempotent, so re-sending one whose reply was lost is safe.
        return redisconn.connect(
            self.redis_url,
            timeout=timeout,
            health_check_interval=30,
            retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), 5),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
        )

    def child_env(self) -> dict[str, str]:
        """The environment for a child `streamvec` process with exactly these settings.

        Secrets travel in the environment, never on a command line other users can list.
        """
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMVEC_")}
        env.update(STREAMVEC_KAFKA=self.kafka, STREAMVEC_REDIS=self.redis_url,
                   STREAMVEC_STORE=str(self.store), STREAMVEC_HOME=str(self.home),
                   STREAMVEC_KAFKA_OPTIONS=json.dumps(self.kafka_options),
                   STREAMVEC_STORE_URL=self.store_url or "",
                   STREAMVEC_STORE_OPTIONS=json.dumps(self.store_options))
        return env

    def describe(self) -> dict[str, str]:
        """Return the settings as text with every secret masked, for logs and `--help` output."""
        return {
            "kafka": self.kafka,
            "redis": redact_url(self.redis_url),
            "store": str(self.store),
            "store_url": self.store_url or "",
            "store_options": json.dumps(
                redact_storage_options(self.store_options)),
            "kafka_options": json.dumps(redact_kafka_options(self.kafka_options)),
            "home": str(self.home),
            "metrics_port": str(self.metrics_port),
            "actor": self.actor,
        }

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.describe().items())
        return f"{type(self).__name__}({fields})"

    __str__ = __repr__
