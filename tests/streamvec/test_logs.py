"""Log formats: text or one JSON object per line, with the request id of the code that logged."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from streamvec import logs
from streamvec.errors import LogConfigError

ROOT = Path(__file__).resolve().parents[2]


def record(message: str = "batch of %d failed", *args: object, exc_info=None,
           **extra: object) -> logging.LogRecord:
    """A record as `logging.getLogger("searcher.server").error(...)` makes it."""
    made = logging.getLogger("searcher.server").makeRecord(
        "searcher.server", logging.ERROR, __file__, 1, message, args or (2,), exc_info,
        extra=extra or None)
    made.created = 1_700_000_000.25
    return made


def stamped(rec: logging.LogRecord) -> logging.LogRecord:
    """The record after a handler's RequestIdFilter has seen it."""
    assert logs.RequestIdFilter().filter(rec) is True
    return rec


def test_a_json_line_has_time_level_logger_message_and_the_request_id() -> None:
    with logs.request_context("q-1"):
        rec = stamped(record())
    line = logs.JsonFormatter().format(rec)
    assert "\n" not in line
    assert json.loads(line) == {"time": "2023-11-14T22:13:20.250Z", "level": "ERROR",
                                "logger": "searcher.server", "message": "batch of 2 failed",
                                "request_id": "q-1"}


def test_several_ids_are_a_list_and_none_leaves_the_field_out() -> None:
    with logs.request_context("q-1", None, "q-2"):  # an unusable id (None) names nothing
        both = stamped(record())
    outside = stamped(record())
    formatter = logs.JsonFormatter()
    assert json.loads(formatter.format(both))["request_ids"] == ["q-1", "q-2"]
    doc = json.loads(formatter.format(outside))
    assert "request_id" not in doc and "request_ids" not in doc
    assert logs.current_request_ids() == ()


def test_the_id_is_the_one_of_the_thread_that_logged() -> None:
    seen: dict[str, tuple[str, ...]] = {}
    ready, done = threading.Event(), threading.Event()

    def other() -> None:
        with logs.request_context("theirs"):
            ready.set()
            done.wait(5)
            seen["other"] = logs.current_request_ids()

    thread = threading.Thread(target=other)
    thread.start()
    ready.wait(5)
    with logs.request_context("mine"):
        rec = stamped(record())
    done.set()
    thread.join(5)
    assert json.loads(logs.JsonFormatter().format(rec))["request_id"] == "mine"
    assert seen["other"] == ("theirs",)


def test_exceptions_and_extra_fields_are_fields_of_the_object() -> None:
    try:
        raise RuntimeError("index on fire")
    except RuntimeError:
        rec = stamped(record(exc_info=sys.exc_info(), collection="products", took=0.5,
                             where=Path("/tmp/x")))
    doc = json.loads(logs.JsonFormatter().format(rec))
    assert doc["exception"].startswith("Traceback (most recent call last):")
    assert doc["exception"].endswith("RuntimeError: index on fire")
    assert (doc["collection"], doc["took"], doc["where"]) == ("products", 0.5, "/tmp/x")


def test_text_lines_name_the_request_after_the_message() -> None:
    formatter = logs.TextFormatter()
    with logs.request_context("q-7"):
        line = formatter.format(stamped(record()))
    assert line.endswith(" ERROR searcher.server: batch of 2 failed request_id=q-7")
    assert formatter.format(stamped(record())).endswith("searcher.server: batch of 2 failed")


@pytest.mark.parametrize(("level", "fmt", "message"), [
    ("LOUD", None, "unknown log level 'LOUD': use DEBUG, INFO, WARNING, ERROR or CRITICAL"),
    (None, "xml", "unknown log format 'xml': use text or json"),
])
def test_configure_refuses_unknown_levels_and_formats(level, fmt, message) -> None:
    with pytest.raises(LogConfigError) as caught:
        logs.configure(level, fmt)
    assert str(caught.value) == message


def streamvec(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the `streamvec` command in a fresh interpreter (logging is configured once a process)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STREAMVEC_")}
    return subprocess.run([sys.executable, "-m", "streamvec", *args], cwd=ROOT,
                          env={**clean, **env}, capture_output=True, text=True, timeout=120,
                          check=False)


@pytest.mark.parametrize("how", ["flag", "env"])
def test_every_stderr_line_of_a_json_logging_command_is_a_json_object(how) -> None:
    args = ["--log-level", "DEBUG", "collection", "drop", "products"]
    if how == "flag":
        done = streamvec("--log-format", "json", *args)
    else:
        done = streamvec(*args, STREAMVEC_LOG_FORMAT="json")
    assert done.returncode == 2 and done.stdout == ""
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    debug = [doc for doc in lines if doc["message"] == "the command failed"]
    assert len(debug) == 1 and debug[0]["level"] == "DEBUG"
    assert debug[0]["exception"].endswith(
        "UsageError: dropping products deletes its topics and snapshots; add --yes")
    last = lines[-1]
    assert (last["level"], last["logger"], last["status"]) == ("ERROR", "streamvec.commands", 2)
    assert last["message"] == "dropping products deletes its topics and snapshots; add --yes"


def test_an_unknown_log_format_in_the_environment_is_a_usage_error() -> None:
    done = streamvec("collection", "drop", "products", STREAMVEC_LOG_FORMAT="yaml")
    assert done.returncode == 2
    assert done.stderr == "streamvec: error: unknown log format 'yaml': use text or json\n"

