"""The collection spec: dimension, metric, partitions, index and seal policy, stored as JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from ingest.errors import SpecError
from ingest.names import CollectionName
from ingest.partition import KAFKA, PARTITIONERS, STREAMVEC
from ingest.record import MAX_DIM  # a collection's vectors must fit the wire format

Metric = Literal["l2", "ip", "cosine"]
METRICS: tuple[str, ...] = ("l2", "ip", "cosine")
MAX_PARTITIONS = 1024
# Bounds of the search breadth a collection or a query may ask for: HNSW efSearch, IVF nprobe.
MAX_EF = 4096
MAX_NPROBE = 65536


@dataclass(frozen=True, slots=True)
class CollectionSpec:
    """Everything a worker, searcher or producer must agree on about one collection."""

    name: str
    dim: int
    metric: Metric = "l2"
    partitions: int = 4
    index: str = "auto"
    seal_rows: int = 100_000
    seal_seconds: float = 60.0
    seal_bytes: int = 256 * 1024 * 1024
    model_version: str = ""
    # Set on a collection restored from a snapshot of this one: it serves, nothing writes it.
    restored_from: str = ""
    # Search breadth of queries that name none: HNSW efSearch and IVF nprobe (0: the engine's).
    search_ef: int = 0
    search_nprobe: int = 0
    # How ids map to the topic's partitions (ingest/partition.py). New collections use Kafka's
    # own, so any Kafka producer keys rows right; a spec stored without it is "streamvec".
    partitioner: str = KAFKA

    def __post_init__(self) -> None:
        parsed = CollectionName.parse(self.name)
        if self.restored_from:
            CollectionName.parse(self.restored_from)
        _check(isinstance(self.dim, int) and 1 <= self.dim <= MAX_DIM, f"dim must be 1..{MAX_DIM}")
        _check(self.metric in METRICS, f"metric must be one of {', '.join(METRICS)}")
        _check(
            isinstance(self.partitions, int) and 1 <= self.partitions <= MAX_PARTITIONS,
            f"partitions must be 1..{MAX_PARTITIONS}",
        )
        _check(bool(self.index.strip()), "index must be 'auto' or a FAISS index_factory string")
        _check(self.seal_rows >= 1, "seal_rows must be >= 1")
        _check(self.seal_seconds > 0, "seal_seconds must be > 0")
        _check(self.seal_bytes >= 1, "seal_bytes must be >= 1")
        _check(_whole(self.search_ef, 0, MAX_EF), f"search_ef must be 0..{MAX_EF}")
        _check(_whole(self.search_nprobe, 0, MAX_NPROBE), f"search_nprobe must be 0..{MAX_NPROBE}")
        _check(self.partitioner in PARTITIONERS,
               f"partitioner must be one of {', '.join(PARTITIONERS)}")
        if parsed.version is not None and self.model_version not in ("", parsed.version):
            raise SpecError(
                f"model_version {self.model_version!r} contradicts the name {self.name!r}, "
                f"whose version is {parsed.version!r}"
            )
        if parsed.version is not None and not self.model_version:
            # A versioned name is its model version: `products@v4` carries model_version v4.
            object.__setattr__(self, "model_version", parsed.version)

    @property
    def read_only(self) -> bool:
        """True for a restored collection: producers and indexers refuse to write it."""
        return bool(self.restored_from)

    @property
    def collection(self) -> CollectionName:
        """The parsed collection name (topics, Redis keys)."""
        return CollectionName.parse(self.name)

    def to_json(self) -> str:
        """Serialize to the canonical JSON stored in Redis."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> CollectionSpec:
        """Parse a spec from JSON, ignoring fields this version does not know."""
        try:
            raw: dict[str, Any] = json.loads(text)
        except (ValueError, TypeError) as exc:
            raise SpecError(f"stored collection spec is not valid JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise SpecError("stored collection spec is not a JSON object")
        known = {f.name for f in fields(cls)}
        # Collections created before the partitioner was a choice all used the first one.
        return cls(**{"partitioner": STREAMVEC, **{k: v for k, v in raw.items() if k in known}})


def _whole(value: Any, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise SpecError(message)
