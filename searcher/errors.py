"""Errors of the searcher package and the stable codes of a query's error reply."""

from __future__ import annotations

from streamvec.errors import StreamvecError, Unavailable

# Stable error codes of a query reply; clients switch on these, humans read the message.
ERROR_CODES = frozenset({
    "wrong_dim",            # query vectors do not have the collection's dimension
    "not_finite",           # a query vector holds NaN or Inf
    "bad_k",                # k outside 1..MAX_K
    "unknown_collection",   # no collection or alias of that name
    "consistency_timeout",  # the consistency level could not be reached before the timeout
    "malformed",            # the request cannot be parsed (fields, types, sizes, filter)
    "too_large",            # the request is over a budget: results, values, bytes, filter scan
    "internal",             # the searcher failed; the message says how
})


class SearcherError(StreamvecError):
    """Base class of every error the searcher package raises on purpose."""


class QueryError(SearcherError):
    """A query that gets an error reply: `code` is one of ERROR_CODES."""

    def __init__(self, code: str, message: str) -> None:
        assert code in ERROR_CODES, code
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class SearchError(QueryError):
    """The searcher answered with an error: `code` is one of ERROR_CODES."""


class SearchTimeout(SearcherError, Unavailable, TimeoutError):
    """No reply came back in time: no searcher is serving the collection, or all are stuck."""
