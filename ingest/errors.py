"""Errors raised by the ingest package; all derive from `IngestError`."""

from __future__ import annotations

from streamvec.errors import Conflict, InvalidInput, NotFound, StreamvecError, Unavailable


class IngestError(StreamvecError):
    """Base class of every error the ingest package raises on purpose."""


class RecordError(IngestError, InvalidInput):
    """A payload that cannot be decoded or does not validate; `reason` is a stable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class InvalidName(IngestError, InvalidInput, ValueError):
    """A collection or version name that breaks the naming rules."""


class SpecError(IngestError, InvalidInput, ValueError):
    """A collection spec with a field out of range."""


class CollectionExists(IngestError, Conflict):
    """A collection of that name exists with another spec."""


class CollectionNotFound(IngestError, NotFound):
    """No collection of that name is registered."""


class DeliveryError(IngestError, Unavailable):
    """Kafka did not accept every message the producer sent."""


class SpecUnavailable(IngestError, Unavailable):
    """A collection's spec could not be read: Redis did not answer in time."""


class ReadOnlyCollection(IngestError, Conflict):
    """A write to a collection that only serves (a restored snapshot): nothing indexes it."""
