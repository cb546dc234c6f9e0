"""Collection names and everything derived from them: Kafka topics and Redis key prefixes."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ingest.errors import InvalidName

_BASE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_VERSION = re.compile(r"[a-z0-9_-]{1,32}")
# `dlq` would make `sv.<base>.dlq` ambiguous between a version's topic and the base's
# dead-letter topic; reserving it keeps the name -> topic mapping injective.
_RESERVED_VERSIONS = frozenset({"dlq"})


@dataclass(frozen=True, slots=True)
class CollectionName:
    """A validated collection name, `base` or `base@version`."""

    base: str
    version: str | None = None

    @classmethod
    def parse(cls, text: str) -> CollectionName:
        """Validate `text` and split it into base and version; raise InvalidName with the rule."""
        if not isinstance(text, str):
            raise InvalidName(f"collection name must be a string, not {type(text).__name__}")
        base, sep, version = text.partition("@")
        if not _BASE.fullmatch(base):
            raise InvalidName(
                f"invalid collection name {text!r}: the name must match [a-z0-9][a-z0-9_-]{{0,63}}"
            )
        if not sep:
            return cls(base)
        if not _VERSION.fullmatch(version):
            raise InvalidName(
                f"invalid collection name {text!r}: the version after '@' must match "
                "[a-z0-9_-]{1,32}"
            )
        if version in _RESERVED_VERSIONS:
            raise InvalidName(f"invalid collection name {text!r}: version {version!r} is reserved")
        return cls(base, version)

    def __str__(self) -> str:
        return self.base if self.version is None else f"{self.base}@{self.version}"

    @property
    def topic(self) -> str:
        """The Kafka topic that carries this collection's records."""
        return f"sv.{self.base}" if self.version is None else f"sv.{self.base}.{self.version}"

    @property
    def dlq_topic(self) -> str:
        """The dead-letter topic for records of this collection that fail to decode or validate."""
        return f"{self.topic}.dlq"

    @property
    def key_prefix(self) -> str:
        """Prefix of this collection's Redis keys, hash-tagged so a cluster keeps them together."""
        return f"sv:{{{self}}}:"

    def key(self, suffix: str) -> str:
        """Return the Redis key `sv:{name}:<suffix>`."""
        return self.key_prefix + suffix


def parse(text: str) -> CollectionName:
    """Validate a collection name; shorthand for `CollectionName.parse`."""
    return CollectionName.parse(text)
