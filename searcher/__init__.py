"""Searcher role: segment loading, the live tail, query execution and the Redis query protocol."""

from __future__ import annotations

from typing import Any

__all__ = ["Client", "SearchError", "SearchResult", "SearchTimeout"]

_EXPORTS = {
    "Client": "searcher.client",
    "SearchError": "searcher.errors",
    "SearchResult": "searcher.client",
    "SearchTimeout": "searcher.errors",
}


def __getattr__(name: str) -> Any:
    """Import public names on first use, so `import searcher.query` stays light."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'searcher' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)
