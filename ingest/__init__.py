"""Ingest: the record wire format, the producer SDK and collection administration."""

from __future__ import annotations

from typing import Any

__all__ = ["CollectionSpec", "IngestError", "Producer", "RecordError"]

_EXPORTS = {
    "CollectionSpec": "ingest.spec",
    "IngestError": "ingest.errors",
    "Producer": "ingest.producer",
    "RecordError": "ingest.errors",
}


def __getattr__(name: str) -> Any:
    """Import public names on first use, so `import ingest.names` stays light."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ingest' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)
