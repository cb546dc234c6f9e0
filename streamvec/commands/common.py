"""What the command modules share: the collection-name argument and one-line user errors."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from confluent_kafka import KafkaException
from redis.exceptions import RedisError

from indexer.errors import IndexerError
from ingest.errors import IngestError
from ingest.names import CollectionName
from streamvec.errors import CommandError

T = TypeVar("T")


def collection_arg(text: str) -> str:
    """A validated collection name from the command line, or CommandError saying what is wrong."""
    try:
        return str(CollectionName.parse(text))
    except (IngestError, ValueError) as exc:
        raise CommandError(str(exc)) from None


def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run one action, turning the failures a user can act on into a one-line CommandError."""
    try:
        return fn(*args, **kwargs)
    except (IngestError, IndexerError) as exc:
        raise CommandError(str(exc)) from None
    except RedisError as exc:
        raise CommandError(f"Redis failed: {exc} (is the stack up? try `streamvec dev up`)"
                           ) from None
    except KafkaException as exc:
        raise CommandError(f"Kafka failed: {exc.args[0].str() if exc.args else exc}") from None


def write_text_atomic(path: Path | str, text: str) -> None:
    """Replace a text file in one rename, so a reader never sees half of it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
