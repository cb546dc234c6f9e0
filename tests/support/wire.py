"""A valid query request and its stream fields, which protocol tests vary one field at a time."""

from __future__ import annotations

import numpy as np

from searcher.protocol import encode_request
from searcher.query import QueryRequest

NAME = "products@v4"
DIM = 3


def request(**changes) -> QueryRequest:
    """A valid two-query request of NAME; keyword arguments replace its fields."""
    base = dict(request_id="req-1", collection=NAME,
                vectors=np.arange(6, dtype=np.float32).reshape(2, DIM), k=5)
    return QueryRequest(**{**base, **changes})


def wire(**changes: bytes | None) -> dict[bytes, bytes]:
    """The stream fields of `request()` as Redis returns them; None removes a field."""
    fields = {k.encode(): v for k, v in encode_request(request()).items()}
    for key, value in changes.items():
        if value is None:
            fields.pop(key.encode(), None)
        else:
            fields[key.encode()] = value
    return fields
