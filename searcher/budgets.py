"""The budgets of one request, one batch and the serving loop, and their cost arithmetic."""

# A request's memory grows with its result slots (query vectors x k: FAISS result arrays,
# candidates to rescore, ids, scores and metadata in the reply) and with its query values
# (query vectors x dim). Both are known once the request's small fields are read, so a request
# over budget is refused before it runs. docs/operations.md ("Searcher memory") turns these
# budgets into the searcher's peak memory.

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from searcher.errors import QueryError
from searcher.query import QueryRequest
from streamvec.settings import Settings


@dataclass(frozen=True, slots=True)
class Budgets:
    """The searcher's caps; `from_settings` reads them from the `STREAMVEC_SEARCHER_*` settings."""

    request_results: int = 100_000
    request_values: int = 1 << 20
    request_bytes: int = 8 << 20
    batch_results: int = 262_144
    reply_bytes: int = 64 << 20
    filter_rows: int = 100_000
    waiting: int = 1024
    waiting_bytes: int = 64 << 20
    read_bytes: int = 32 << 20
    deliveries: int = 3
    tail_rows: int = 500_000

    @classmethod
    def from_settings(cls, settings: Settings) -> Budgets:
        """The budgets a searcher with these settings enforces."""
        return cls(settings.searcher_max_request_results, settings.searcher_max_request_values,
                   settings.searcher_max_request_bytes, settings.searcher_max_batch_results,
                   settings.searcher_max_reply_bytes, settings.searcher_max_filter_rows,
                   settings.searcher_max_waiting, settings.searcher_max_waiting_bytes,
                   settings.searcher_read_bytes,
                   settings.searcher_max_deliveries, settings.searcher_max_tail_rows)

    def check(self, request: QueryRequest) -> QueryError | None:
        """The too_large error a decoded request must get, or None when it fits its budgets."""
        n, dim = _shape(request)
        results = request_results(n, request.k)
        if results > self.request_results:
            return QueryError("too_large", f"{n} query vectors x k={request.k} = {results} "
                              f"results, over the budget of {self.request_results} per request; "
                              "send fewer vectors per request or a smaller k")
        if n * dim > self.request_values:
            return QueryError("too_large", f"{n} query vectors x dim {dim} = {n * dim} values, "
                              f"over the budget of {self.request_values} per request")
        return None

    def oversize(self, size: int) -> QueryError:
        """The error of a request entry over the byte budget (it is never read in full)."""
        return QueryError("too_large", f"the request is {size} bytes, over the budget of "
                          f"{self.request_bytes} bytes per request")

    def filter_exhausted(self, examined: int) -> QueryError:
        """The error of a filtered request whose scan ran past the rows it may examine."""
        return QueryError("too_large", f"the filter examined {examined} rows without finding "
                          f"k matches, over the budget of {self.filter_rows} rows per request; "
                          "use a filter that more rows match or a smaller k")

    def reply_exhausted(self, size: int) -> QueryError:
        """The error of a request whose metadata took its batch past the reply budget."""
        return QueryError("too_large", f"the batch's metadata reached {size} bytes, over the "
                          f"budget of {self.reply_bytes} bytes per batch; ask for fewer results "
                          "or without metadata")


def request_results(n: int, k: int) -> int:
    """Result slots a request asks for: query vectors x k."""
    return int(n) * int(k)


def batch_results(requests: Sequence[QueryRequest], extra_k: int = 0) -> int:
    """Result slots one engine call holds for these requests, searched with one shared k."""
    if not requests:
        return 0
    return sum(_shape(r)[0] for r in requests) * (max(r.k for r in requests) + extra_k)


def split_batch(requests: Sequence[QueryRequest], budget: int,
                extra_k: int = 0) -> list[list[int]]:
    """Indices of consecutive groups whose `batch_results` fit the budget (a lone request may
    exceed it: its own budget is `request_results`)."""
    groups: list[list[int]] = []
    current: list[int] = []
    rows = widest = 0
    for i, request in enumerate(requests):
        n, k = _shape(request)[0], request.k + extra_k
        if current and (rows + n) * max(widest, k) > budget:
            groups.append(current)
            current, rows, widest = [], 0, 0
        current.append(i)
        rows, widest = rows + n, max(widest, k)
    if current:
        groups.append(current)
    return groups


def _shape(request: QueryRequest) -> tuple[int, int]:
    """(query vectors, dim) of a request; one 1-D vector is one query."""
    shape = np.shape(request.vectors)
    if len(shape) == 1:
        return 1, shape[0]
    return (shape[0], shape[-1]) if shape else (1, 1)
