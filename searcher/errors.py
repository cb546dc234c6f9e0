"""Errors of the searcher package and the stable codes of a query's error reply."""

from __future__ import annotations

from streamvec.errors import InvalidInput, NotFound, StreamvecError, Unavailable

# Stable error codes of a query reply; clients switch on these, humans read the message.
ERROR_CODES = frozenset({
    "wrong_dim",            # query vectors do not have the collection's dimension
    "not_finite",           # a query vector holds NaN or Inf
    "bad_k",                # k outside 1..MAX_K
    "bad_params",           # search parameters (ef, nprobe) out of their bounds
    "unknown_collection",   # no collection or alias of that name
    "consistency_timeout",  # the consistency level could not be reached before the timeout
    "malformed",            # the request cannot be parsed (fields, types, sizes, filter)
    "too_large",            # the request is over a budget: results, values, bytes, filter scan
    "internal",             # the searcher failed; the message says how
})
# Codes no reply carries: a client gives them to what it found itself.
CLIENT_CODES = frozenset({
    "timeout",              # no reply came back in time (or Redis did not answer)
})
# The codes of a client's validation errors and of the searcher's refusals of a bad request.
INVALID_CODES = frozenset({"malformed", "wrong_dim", "not_finite", "bad_k", "bad_params",
                           "too_large"})


class SearcherError(StreamvecError):
    """Base class of every error the searcher package raises on purpose."""


class QueryError(SearcherError):
    """A query that gets an error reply: `code` is one of ERROR_CODES (or CLIENT_CODES)."""

    def __init__(self, code: str, message: str) -> None:
        assert code in ERROR_CODES or code in CLIENT_CODES, code
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class SearchError(QueryError):
    """A search, get or count that failed, as a client raises it: `code` says how.

    Every error a client raises on purpose is one; its subclasses say which kind (built from a
    code by `search_error`), and `internal` (the searcher failed, or its reply broke the
    protocol) is a SearchError itself.
    """


class InvalidRequest(SearchError, InvalidInput, ValueError):
    """A request refused as it stands, by the client before sending or by the searcher.

    `code` is one of INVALID_CODES; asking again the same way fails again. A ValueError too,
    so code written against the first clients' `except ValueError` keeps working, and, as a
    ValueError's, its text is the message alone.
    """

    def __init__(self, message: str, *, code: str = "malformed") -> None:
        assert code in INVALID_CODES, code
        super().__init__(code, message)
        self.args = (message,)


class RequestTooLarge(InvalidRequest):
    """A request over one of the searcher's budgets (`too_large`): ask for less."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="too_large")


class UnknownCollection(SearchError, NotFound):
    """No collection (or alias) of that name (`unknown_collection`)."""

    def __init__(self, message: str) -> None:
        super().__init__("unknown_collection", message)


class SearchTimeout(SearchError, Unavailable, TimeoutError):
    """No reply came back in time: no searcher is serving the collection, or all are stuck.

    Its code is `timeout`, and its text the message alone.
    """

    def __init__(self, message: str) -> None:
        super().__init__("timeout", message)
        self.args = (message,)


class ConsistencyTimeout(SearchTimeout):
    """The searcher answered that the request's consistency level was not reached in time."""

    def __init__(self, message: str) -> None:
        SearchError.__init__(self, "consistency_timeout", message)


class ShardTimeout(SearchTimeout):
    """One shard of a sharded collection did not answer in time; `shard` is its label."""

    def __init__(self, message: str, *, collection: str, shard: str) -> None:
        super().__init__(message)
        self.collection = collection
        self.shard = shard


def search_error(code: str, message: str) -> SearchError:
    """The client's error for an error code and its message: the subclass the code names."""
    if code == "too_large":
        return RequestTooLarge(message)
    if code in INVALID_CODES:
        return InvalidRequest(message, code=code)
    if code == "unknown_collection":
        return UnknownCollection(message)
    if code == "consistency_timeout":
        return ConsistencyTimeout(message)
    if code == "timeout":
        return SearchTimeout(message)
    return SearchError(code, message)


class ShardMapError(SearcherError, InvalidInput, ValueError):
    """A shard map, shard label or shard choice that breaks its format; the message says how."""
