"""The command line's one error path: each kind of failure has its exit status and one line."""

from __future__ import annotations

import pkgutil

import pytest
import redis
from confluent_kafka import KafkaError, KafkaException

from indexer.errors import CorruptSegment, RemoteStoreError, SwapConflict
from ingest.errors import CollectionExists, CollectionNotFound, InvalidName, SpecError
from lifecycle.errors import AliasNotFound, LifecycleBusy, SnapshotNotFound
from searcher.errors import QueryError, SearchTimeout
from streamvec import commands
from streamvec.commands import alias, collection, generation, indexer, monitor, snapshot
from streamvec.commands.errors import CommandError, ExitCode, UsageError, describe, exit_code
from streamvec.errors import EmbedderUnavailable, ListenError, StreamvecError


@pytest.mark.parametrize(("error", "code"), [
    (CommandError("the demo indexer stopped before it caught up"), ExitCode.FAILED),
    (CorruptSegment("g0/p0/p0000-0-10", "ids.npy", "sha256 differs"), ExitCode.FAILED),
    (QueryError("internal", "the searcher failed"), ExitCode.FAILED),
    (UsageError("--limit must be >= 1"), ExitCode.USAGE),
    (InvalidName("invalid collection name 'Bad'"), ExitCode.USAGE),
    (SpecError("dim must be 1..65536"), ExitCode.USAGE),
    (QueryError("bad_k", "k must be 1..1000, got 0"), ExitCode.USAGE),
    (CollectionNotFound("collection 'x' does not exist"), ExitCode.NOT_FOUND),
    (AliasNotFound("alias 'x' does not exist"), ExitCode.NOT_FOUND),
    (SnapshotNotFound("x has no snapshot 'a'"), ExitCode.NOT_FOUND),
    (QueryError("unknown_collection", "collection 'x' does not exist"), ExitCode.NOT_FOUND),
    (LifecycleBusy("sv:{x}:lifecycle is held by a running reindex"), ExitCode.CONFLICT),
    (CollectionExists("collection x exists with another spec"), ExitCode.CONFLICT),
    (SwapConflict("x: segment changed during the compaction"), ExitCode.CONFLICT),
    (ListenError("cannot serve /metrics and health on 0.0.0.0:9100"), ExitCode.CONFLICT),
    (redis.ConnectionError("Connection refused"), ExitCode.UNAVAILABLE),
    (redis.TimeoutError("Timeout reading from socket"), ExitCode.UNAVAILABLE),
    (KafkaException(KafkaError(KafkaError._TRANSPORT)), ExitCode.UNAVAILABLE),
    (RemoteStoreError("s3://bucket: unreachable"), ExitCode.UNAVAILABLE),
    (SearchTimeout("no searcher answered a query on 'x' within 5s"), ExitCode.UNAVAILABLE),
    (EmbedderUnavailable("the tokenizers library is missing"), ExitCode.UNAVAILABLE),
    (KeyboardInterrupt(), ExitCode.INTERRUPTED),
])
def test_each_kind_of_failure_has_its_exit_status(error: BaseException, code: ExitCode) -> None:
    assert exit_code(error) == code


def test_an_unexpected_error_keeps_its_traceback() -> None:
    assert exit_code(ValueError("a bug")) is None
    assert exit_code(KeyError("segments")) is None


def test_the_statuses_are_the_documented_numbers() -> None:
    assert [int(c) for c in ExitCode] == [0, 1, 2, 3, 4, 5, 130]


def test_a_library_error_is_never_a_command_line_error() -> None:
    for kind in (CollectionNotFound, LifecycleBusy, EmbedderUnavailable, RemoteStoreError):
        assert issubclass(kind, StreamvecError) and not issubclass(kind, CommandError)


def test_redis_and_kafka_failures_read_as_one_line(settings) -> None:
    refused = describe(redis.ConnectionError("Connection refused."), settings)
    assert refused == (f"Redis at {settings.describe()['redis']} failed: Connection refused. "
                       "(is the stack up? try `streamvec dev up`)")
    down = describe(KafkaException(KafkaError(KafkaError._ALL_BROKERS_DOWN, "all down")), None)
    assert down == "Kafka failed: all down"


@pytest.mark.parametrize(("error", "code", "line"), [
    (CollectionNotFound("collection 'nope' does not exist"), 3,
     "streamvec: error: collection 'nope' does not exist\n"),
    (LifecycleBusy("sv:{a}:lifecycle is held by a running gc"), 4,
     "streamvec: error: sv:{a}:lifecycle is held by a running gc\n"),
    (KeyboardInterrupt(), 130, "streamvec: interrupted\n"),
])
def test_main_prints_one_line_and_returns_the_status(monkeypatch, capsys, error, code, line):
    def failing(args, settings):
        raise error

    monkeypatch.setattr(alias, "_list", failing)
    assert commands.main(["alias", "list"]) == code
    assert capsys.readouterr().err == line


def test_main_lets_a_bug_through_with_its_traceback(monkeypatch) -> None:
    def broken(args, settings):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(alias, "_list", broken)
    with pytest.raises(ZeroDivisionError):
        commands.main(["alias", "list"])


def test_every_command_module_is_registered() -> None:
    shared = {"common", "errors", "role"}  # what the command modules use, no command of its own
    found = {name for _, name, _ in pkgutil.iter_modules(commands.__path__)} - shared
    assert found == {m.__name__.rsplit(".", 1)[1] for m in commands.COMMAND_MODULES}


def test_the_flags_show_the_libraries_defaults() -> None:
    """The command modules name these defaults so that `--help` loads no role package."""
    from indexer.worker import DEFAULT_MAX_HELD_BYTES
    from ingest.partition import PARTITIONERS
    from ingest.spec import METRICS, CollectionSpec
    from lifecycle import gc, generations
    from monitor.reference import DEFAULT_ROWS, SOURCES
    from monitor.service import MonitorOptions

    assert indexer.DEFAULT_MAX_HELD_MB * 2**20 == DEFAULT_MAX_HELD_BYTES
    assert collection.METRICS == METRICS
    assert sorted(collection.PARTITIONERS) == sorted(PARTITIONERS)
    assert CollectionSpec("x", dim=1).partitioner == "kafka"  # the flag's default
    assert generation.DEFAULT_KEEP == generations.DEFAULT_KEEP
    assert (snapshot.DEFAULT_GRACE_S, snapshot.DEFAULT_KEEP_GENERATIONS) == (
        gc.DEFAULT_GRACE_S, gc.DEFAULT_KEEP_GENERATIONS)
    options = MonitorOptions()
    assert monitor.DEFAULT_OPTIONS == {name: getattr(options, name)
                                       for name in monitor.DEFAULT_OPTIONS}
    assert (monitor.DEFAULT_REFERENCE_ROWS, monitor.REFERENCE_SOURCES) == (DEFAULT_ROWS, SOURCES)
