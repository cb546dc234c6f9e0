"""Errors raised by the ingest package; all derive from `IngestError`."""

from __future__ import annotations


class IngestError(Exception):
    """Base class of every error the ingest package raises on purpose."""


class RecordError(IngestError):
    """A payload that cannot be decoded or does not validate; `reason` is a stable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class InvalidName(IngestError, ValueError):
    """A collection or version name that breaks the naming rules."""


class CollectionExists(IngestError):
    """A collection of that name exists with another spec."""


class CollectionNotFound(IngestError):
    """No collection of that name is registered."""


class DeliveryError(IngestError):
    """Kafka did not accept every message the producer sent."""
