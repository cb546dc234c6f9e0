"""The command line's own errors, and what any error means to it: an exit status and one line.

The statuses are documented in docs/operations.md ("Exit statuses"); scripts rely on them.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from enum import IntEnum

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from searcher.errors import QueryError
from streamvec.errors import Conflict, InvalidInput, NotFound, StreamvecError, Unavailable
from streamvec.settings import Settings


class CommandError(StreamvecError):
    """A failure the command line finds itself, reported as one line on stderr (exit status 1)."""


class UsageError(CommandError, InvalidInput):
    """A flag, argument or value the command line refuses (exit status 2)."""


class MissingDependency(CommandError):
    """A command needs a package of an optional extra that is not installed (exit status 1)."""


# Import name -> (distribution, extra) of each optional dependency. pyproject.toml's extras are
# the truth; tests/streamvec/test_packaging.py checks that this table agrees with them.
OPTIONAL_MODULES = {
    "faiss": ("faiss-cpu", "server"),
    "prometheus_client": ("prometheus-client", "server"),
    "tqdm": ("tqdm", "server"),
    "fsspec": ("fsspec", "server"),
    "s3fs": ("s3fs", "server"),
    "tokenizers": ("tokenizers", "demo"),
    "safetensors": ("safetensors", "demo"),
}
_ROLE_NAMES = {"indexer": "the indexer", "searcher": "the searcher", "monitor": "the monitor"}


@contextmanager
def optional_dependencies(command: str | None) -> Iterator[None]:
    """Turn a missing optional package into a MissingDependency that names the install to run."""
    try:
        yield
    except ModuleNotFoundError as exc:
        top = (exc.name or "").partition(".")[0]
        if top not in OPTIONAL_MODULES:
            raise
        extra = OPTIONAL_MODULES[top][1]
        # Every package of the extra that is absent, so one install fixes it in one go.
        missing = {OPTIONAL_MODULES[top][0]} | {
            dist for module, (dist, of) in OPTIONAL_MODULES.items()
            if of == extra and not _installed(module)}
        who = _ROLE_NAMES.get(command or "", f"`streamvec {command}`")
        raise MissingDependency(
            f"{who} needs {', '.join(sorted(missing))}: pip install 'streamvec[{extra}]'"
        ) from None


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or half-removed install counts as missing
        return False


class ExitCode(IntEnum):
    """The exit status of the `streamvec` command."""

    OK = 0
    FAILED = 1  # a check that found a problem, or any other failure
    USAGE = 2  # bad flags, names or values
    NOT_FOUND = 3  # a collection, alias, snapshot, generation or challenge that does not exist
    CONFLICT = 4  # a held lifecycle lock, a name clash, a registry that moved
    UNAVAILABLE = 5  # Redis, Kafka or the object store unreachable or timing out
    INTERRUPTED = 130  # Ctrl-C


# A class in two categories takes the narrower one: a missing alias is an invalid value
# too, but "not found" is what a script wants to know.
_CATEGORIES = ((NotFound, ExitCode.NOT_FOUND), (Conflict, ExitCode.CONFLICT),
               (Unavailable, ExitCode.UNAVAILABLE), (InvalidInput, ExitCode.USAGE))
# A query's error reply carries its kind as a code; the rest of the codes are bad requests.
_QUERY_CODES = {"unknown_collection": ExitCode.NOT_FOUND,
                "consistency_timeout": ExitCode.UNAVAILABLE, "timeout": ExitCode.UNAVAILABLE,
                "internal": ExitCode.FAILED}
# librdkafka's codes for a cluster that cannot be reached or does not answer in time.
_KAFKA_UNAVAILABLE = frozenset({
    "_TRANSPORT", "_ALL_BROKERS_DOWN", "_TIMED_OUT", "_MSG_TIMED_OUT", "_RESOLVE",
    "REQUEST_TIMED_OUT", "BROKER_NOT_AVAILABLE", "LEADER_NOT_AVAILABLE", "NETWORK_EXCEPTION",
})
_KAFKA_NOT_FOUND = frozenset({"_UNKNOWN_TOPIC", "UNKNOWN_TOPIC_OR_PART", "_UNKNOWN_PARTITION"})


def exit_code(exc: BaseException) -> ExitCode | None:
    """The exit status an error stands for, or None for one the command line does not expect."""
    if isinstance(exc, KeyboardInterrupt):
        return ExitCode.INTERRUPTED
    if isinstance(exc, QueryError):
        return _QUERY_CODES.get(exc.code, ExitCode.USAGE)
    if isinstance(exc, StreamvecError):
        return next((code for kind, code in _CATEGORIES if isinstance(exc, kind)),
                    ExitCode.FAILED)
    if isinstance(exc, RedisError):
        unreachable = isinstance(exc, RedisConnectionError | RedisTimeoutError)
        return ExitCode.UNAVAILABLE if unreachable else ExitCode.FAILED
    kafka = _kafka_error(exc)
    if kafka is None:
        return None
    if kafka[0] in _KAFKA_UNAVAILABLE:
        return ExitCode.UNAVAILABLE
    return ExitCode.NOT_FOUND if kafka[0] in _KAFKA_NOT_FOUND else ExitCode.FAILED


def describe(exc: BaseException, settings: Settings | None) -> str:
    """The message printed after `streamvec: error: ` for an error `exit_code` knows."""
    if isinstance(exc, RedisError):
        where = "" if settings is None else f" at {settings.describe()['redis']}"
        return f"Redis{where} failed: {exc} (is the stack up? try `streamvec dev up`)"
    kafka = _kafka_error(exc)
    return str(exc) if kafka is None else f"Kafka failed: {kafka[1]}"


def _kafka_error(exc: BaseException) -> tuple[str, str] | None:
    """(librdkafka's error name, its message) for a KafkaException, else None."""
    from confluent_kafka import KafkaError, KafkaException  # local: only failures need it

    if not isinstance(exc, KafkaException):
        return None
    error = exc.args[0] if exc.args else None
    return (error.name(), error.str()) if isinstance(error, KafkaError) else ("", str(exc))
