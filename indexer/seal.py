"""Seal policies: pure, named rules that say which growing segments must seal now, and why."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from ingest.spec import CollectionSpec


@dataclass(frozen=True, slots=True)
class SegmentStats:
    """What a seal policy may look at: the size and age of one growing segment."""

    rows: int
    messages: int
    nbytes: int
    age_s: float


class SealPolicy(Protocol):
    """A named rule: `reason(stats)` is why the segment must seal now, or None."""

    name: str

    def reason(self, stats: SegmentStats) -> str | None:
        """Why a segment with these stats must seal now, or None if it need not."""
        ...


@dataclass(frozen=True, slots=True)
class FullRows:
    """Seal once a segment holds `max_rows` rows (upserts and deletes alike)."""

    max_rows: int
    name: str = "full_rows"

    def reason(self, stats: SegmentStats) -> str | None:
        """The reason, e.g. "full_rows: 100000 >= 100000", or None below the limit."""
        if stats.rows >= self.max_rows:
            return f"{self.name}: {stats.rows} >= {self.max_rows}"
        return None


@dataclass(frozen=True, slots=True)
class FullBytes:
    """Seal once a segment's buffers take `max_bytes`: the memory cap."""

    max_bytes: int
    name: str = "full_bytes"

    def reason(self, stats: SegmentStats) -> str | None:
        """The reason, e.g. "full_bytes: 4096 >= 4096", or None below the limit."""
        if stats.nbytes >= self.max_bytes:
            return f"{self.name}: {stats.nbytes} >= {self.max_bytes}"
        return None


@dataclass(frozen=True, slots=True)
class Stale:
    """Seal once a segment is `max_age_s` old, so the checkpoint keeps moving on a slow stream."""

    max_age_s: float
    name: str = "stale"

    def reason(self, stats: SegmentStats) -> str | None:
        """The reason, e.g. "stale: 60.500s >= 60s", or None while younger."""
        if stats.age_s >= self.max_age_s:
            return f"{self.name}: {stats.age_s:.3f}s >= {self.max_age_s:g}s"
        return None


def full_rows(max_rows: int) -> FullRows:
    """A policy that seals at `max_rows` rows."""
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    return FullRows(int(max_rows))


def full_bytes(max_bytes: int) -> FullBytes:
    """A policy that seals at `max_bytes` buffer bytes."""
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
    return FullBytes(int(max_bytes))


def stale(max_age_s: float) -> Stale:
    """A policy that seals a segment `max_age_s` seconds after it was created."""
    if not max_age_s > 0:
        raise ValueError(f"max_age_s must be > 0, got {max_age_s}")
    return Stale(float(max_age_s))


def policies_for(spec: CollectionSpec) -> tuple[SealPolicy, ...]:
    """The collection's policies, in the order their reasons take precedence."""
    return (full_rows(spec.seal_rows), full_bytes(spec.seal_bytes), stale(spec.seal_seconds))


def select(
    stats_by_partition: Mapping[int, SegmentStats], policies: Iterable[SealPolicy]
) -> dict[int, str]:
    """Partition -> reason for each segment that must seal now; the first policy to fire wins.

    A segment that has seen no message never seals: there is no offset range to cover.
    A segment of only dead-lettered messages does seal, so the checkpoint moves past them.
    """
    ordered = tuple(policies)
    chosen: dict[int, str] = {}
    for partition in sorted(stats_by_partition):
        stats = stats_by_partition[partition]
        if stats.messages == 0:
            continue
        for policy in ordered:
            reason = policy.reason(stats)
            if reason is not None:
                chosen[partition] = reason
                break
    return chosen
