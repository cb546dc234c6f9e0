"""Ingest: the record wire format, the producer SDK and collection administration."""

from __future__ import annotations

from streamvec.lazy import lazy_exports

__all__ = ["CollectionSpec", "IngestError", "Producer", "RecordError"]

__getattr__ = lazy_exports(__name__, {
    "CollectionSpec": "ingest.spec", "IngestError": "ingest.errors",
    "Producer": "ingest.producer", "RecordError": "ingest.errors"})
