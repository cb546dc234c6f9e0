"""The query model shared by the protocol, the server and the engine: requests and answers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

MAX_K = 1000

Level = Literal["eventual", "bounded", "session", "strong"]


@dataclass(frozen=True, slots=True)
class Consistency:
    """How fresh an answer must be: see invariant 6 in docs/architecture.md."""

    level: Level = "eventual"
    bound_ms: int | None = None  # bounded: the tail lags the log end by at most this much
    offsets: dict[int, int] | None = None  # session: {partition: offset} from Producer.flush()

    def to_json(self) -> dict[str, Any]:
        """The JSON form carried in a request."""
        out: dict[str, Any] = {"level": self.level}
        if self.bound_ms is not None:
            out["bound_ms"] = self.bound_ms
        if self.offsets is not None:
            out["offsets"] = {str(p): o for p, o in self.offsets.items()}
        return out


@dataclass(frozen=True, slots=True)
class Filter:
    """Metadata filter: every field must equal one of its allowed values (AND of IN lists)."""

    allowed: dict[str, tuple[Any, ...]] = field(default_factory=dict)

    def matches(self, metadata: dict | None) -> bool:
        """True if `metadata` satisfies every clause."""
        if not self.allowed:
            return True
        if metadata is None:
            return False
        return all(
            name in metadata and _scalar_in(metadata[name], values)
            for name, values in self.allowed.items()
        )


def _scalar_in(value: Any, values: tuple[Any, ...]) -> bool:
    # JSON true == 1 in Python; keep booleans and numbers apart so a filter means what it says.
    return any(type(value) is type(v) and value == v for v in values) or (
        isinstance(value, (int, float)) and not isinstance(value, bool)
        and any(isinstance(v, (int, float)) and not isinstance(v, bool) and value == v
                for v in values))


@dataclass(frozen=True, slots=True)
class QueryRequest:
    """One decoded request: one or many query vectors answered together."""

    request_id: str
    collection: str
    vectors: np.ndarray  # float32 (n, dim)
    k: int
    filter: Filter | None = None
    consistency: Consistency = Consistency()
    timeout_ms: int = 5000
    with_metadata: bool = False
    reply_key: str = ""
    sent_at_ms: float | None = None


@dataclass(frozen=True, slots=True)
class QueryAnswer:
    """The answer to one request: per query vector, ids best first and their scores."""

    ids: list[list[str]]
    scores: list[list[float]]
    metadata: list[list[dict | None]] | None = None
    offsets: dict[int, int] = field(default_factory=dict)  # per partition: rows below are reflected
    timings_ms: dict[str, float] = field(default_factory=dict)
