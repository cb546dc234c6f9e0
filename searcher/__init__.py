"""Searcher role: segment loading, the live tail, query execution and the Redis query protocol."""

from __future__ import annotations

from streamvec.lazy import lazy_exports

__all__ = ["AsyncClient", "Client", "ConsistencyTimeout", "GetResult", "Hit",
           "InvalidRequest", "SearchError", "SearchResult", "SearchTimeout", "UnknownCollection"]

__getattr__ = lazy_exports(__name__, {
    "AsyncClient": "searcher.aclient", "Client": "searcher.client",
    "ConsistencyTimeout": "searcher.errors", "GetResult": "searcher.calls",
    "Hit": "searcher.calls", "InvalidRequest": "searcher.errors",
    "SearchError": "searcher.errors", "SearchResult": "searcher.calls",
    "SearchTimeout": "searcher.errors", "UnknownCollection": "searcher.errors"})
