"""One place that configures logging for the `streamvec` command, and only if nobody else has.

Two formats: `text` (one readable line per record) and `json` (one JSON object per line, for
log collectors: time, level, logger, message, and the request id when one is in context).
A process that handles requests marks the code that works on one with `request_context(id)`;
every record logged inside it, in that thread or task, carries the id.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from streamvec.errors import LogConfigError

FORMATS = ("text", "json")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Libraries whose INFO lines say nothing an operator can act on: faiss's loader names each CPU
# variant it tries (the command imports faiss only once logging is set up, so they would show).
QUIET = ("faiss.loader",)

# The requests the current thread or task works on; a ContextVar, so threads never mix them.
_request_ids: ContextVar[tuple[str, ...]] = ContextVar("streamvec_request_ids", default=())
# Every attribute a plain LogRecord has: what a record holds beyond them came from `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "request_ids"}
_active: str | None = None  # the format `configure` installed, None while it installed none


@contextmanager
def request_context(*request_ids: str | None) -> Iterator[None]:
    """Within the block, records logged by this thread or task carry these request ids."""
    token = _request_ids.set(tuple(r for r in request_ids if r))
    try:
        yield
    finally:
        _request_ids.reset(token)


def current_request_ids() -> tuple[str, ...]:
    """The request ids set by the innermost `request_context`, or () outside any."""
    return _request_ids.get()


class RequestIdFilter(logging.Filter):
    """Stamps each record with the request ids in context where it is logged.

    A handler's filters run in the logging thread, so the ids are the ones of the code that
    logged, even when a formatter runs later elsewhere.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Add `request_ids` unless the record already has them; never drops a record."""
        if not hasattr(record, "request_ids"):
            record.request_ids = _request_ids.get()
        return True


def _ids(record: logging.LogRecord) -> tuple[str, ...]:
    """The record's request ids: stamped by the filter, else those in context now."""
    ids = getattr(record, "request_ids", None)
    return tuple(ids) if ids is not None else _request_ids.get()


class TextFormatter(logging.Formatter):
    """`FORMAT`, plus ` request_id=ID` (or `request_ids=A,B`) when the record has some."""

    def __init__(self) -> None:
        super().__init__(FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        """The line as `FORMAT` gives it, with the request ids appended to the first line."""
        text = super().format(record)
        ids = _ids(record)
        if not ids:
            return text
        head, newline, rest = text.partition("\n")
        key = "request_id" if len(ids) == 1 else "request_ids"
        return f"{head} {key}={','.join(ids)}{newline}{rest}"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: time, level, logger, message, then the rest.

    `request_id` when the record has one request id (`request_ids`, a list, when several),
    `exception` and `stack` when the record carries them, and every `extra=` field.
    """

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        extra = {k: v for k, v in vars(record).items() if k not in _STANDARD}
        if record.exc_info:
            extra["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            extra["stack"] = self.formatStack(record.stack_info)
        return json_line(record.levelname, record.name, record.getMessage(),
                         when=record.created, request_ids=_ids(record), **extra)


def json_line(level: str, logger: str, message: str, *, when: float | None = None,
              request_ids: tuple[str, ...] = (), **fields: Any) -> str:
    """A log line in the JSON format, for a record or for a line written without logging."""
    at = datetime.fromtimestamp(time.time() if when is None else when, tz=UTC)
    doc: dict[str, Any] = {"time": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                           "level": level, "logger": logger, "message": message}
    if len(request_ids) == 1:
        doc["request_id"] = request_ids[0]
    elif request_ids:
        doc["request_ids"] = list(request_ids)
    doc.update((k, v) for k, v in fields.items() if k not in doc)
    # default=str: an `extra=` value JSON cannot hold is shown as text, never fails the record.
    return json.dumps(doc, default=str)


def active_format() -> str | None:
    """The format `configure` installed, or None if logging was configured elsewhere."""
    return _active


def configure(level: str | None = None, fmt: str | None = None) -> None:
    """Configure the root logger once, on stderr.

    `level` or `STREAMVEC_LOG_LEVEL` (default INFO); `fmt` or `STREAMVEC_LOG_FORMAT`, one of
    FORMATS (default text). An unknown level or format raises LogConfigError; a logger
    configured already (by a host program or a test runner) is then left as it is.
    """
    global _active
    chosen = (level or os.environ.get("STREAMVEC_LOG_LEVEL") or "INFO").upper()
    if not isinstance(logging.getLevelName(chosen), int):
        raise LogConfigError(f"unknown log level {chosen!r}: use DEBUG, INFO, WARNING, ERROR "
                             "or CRITICAL")
    form = (fmt or os.environ.get("STREAMVEC_LOG_FORMAT") or "text").lower()
    if form not in FORMATS:
        raise LogConfigError(f"unknown log format {form!r}: use {' or '.join(FORMATS)}")
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if form == "json" else TextFormatter())
    handler.addFilter(RequestIdFilter())
    root.addHandler(handler)
    root.setLevel(chosen)
    _active = form
    for name in QUIET:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
