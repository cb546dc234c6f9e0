"""Searcher role: segment loading, the live tail, query execution and the Redis query protocol."""

from __future__ import annotations

from streamvec.lazy import lazy_exports

__all__ = ["Client", "SearchError", "SearchResult", "SearchTimeout"]

__getattr__ = lazy_exports(__name__, {
    "Client": "searcher.client", "SearchError": "searcher.errors",
    "SearchResult": "searcher.client", "SearchTimeout": "searcher.errors"})
