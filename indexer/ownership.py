"""Taking a partition over: claim the owner epoch, check retention, clean orphans, rebuild hides."""

from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from indexer.errors import CheckpointOutOfRange
from indexer.idmap import IdMap
from indexer.registry import Registry
from indexer.segment import GrowingSegment
from indexer.store import SegmentStore

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Pending:
    """A sealed segment whose build and snapshot run in the background, awaiting registration."""

    future: Future  # of rewrite.Written
    nbytes: int  # its vectors, held until it is registered


@dataclass(slots=True)
class PartitionState:
    """What a worker holds for one partition it owns."""

    partition: int
    epoch: int
    checkpoint: int
    growing: GrowingSegment
    inflight: deque[Pending] = field(default_factory=deque)

    @property
    def held_bytes(self) -> int:
        """Bytes of the growing segment plus sealed segments still building."""
        return self.growing.nbytes + sum(p.nbytes for p in self.inflight)


def take_over(
    partition: int,
    *,
    registry: Registry,
    idmap: IdMap,
    store: SegmentStore,
    collection: str,
    generation: int,
    dim: int,
    low_watermark: int,
    now: float,
) -> PartitionState:
    """Become the owner of `partition` and return the state to consume it from its checkpoint.

    Raises CheckpointOutOfRange if the records from the checkpoint on are no longer in the log.
    """
    epoch = registry.claim(partition)
    checkpoint = registry.checkpoint(partition)
    if checkpoint < low_watermark:
        raise CheckpointOutOfRange(
            f"partition {partition}: checkpoint {checkpoint} is below the log start "
            f"{low_watermark}; retention deleted records [{checkpoint}, {low_watermark}) before "
            "they were indexed. Refusing to skip them silently: raise the topic's retention, "
            "restore the records, or rebuild the collection deliberately."
        )
    removed = store.remove_orphans(collection, generation, partition, checkpoint)
    if removed:
        log.info('partition="%s[%d]" removed %s unregistered segment folder(s)',
                 collection, partition, removed)
    load_hides(partition, registry=registry, idmap=idmap, store=store)
    log.info('partition="%s[%d]" taken over epoch=%d offset="%d"',
             collection, partition, epoch, checkpoint)
    return PartitionState(partition, epoch, checkpoint,
                          GrowingSegment(partition, checkpoint, dim, now))


def load_hides(partition: int, *, registry: Registry, idmap: IdMap,
               store: SegmentStore) -> None:
    """Rebuild the id map of `partition` from its registered segments, oldest first."""
    idmap.drop_partition(partition)
    for rec in registry.segments(partition=partition):
        folder = store.folder(rec.path)  # fetched if only the object store has it
        ids = np.load(folder / "ids.npy", allow_pickle=False)
        deleted = np.load(folder / "deleted_ids.npy", allow_pickle=False)
        idmap.load(rec.segment_id, ids, deleted, partition=partition)
