"""Read a collection's registered state: its segments, with every hidden row taken out."""

from __future__ import annotations

from indexer.registry import Registry
from indexer.segfolder import LoadedSegment, load_segment
from indexer.store import SegmentStore


def load_registered(registry: Registry, store: SegmentStore, *,
                    verify: bool = True) -> list[LoadedSegment]:
    """Load every registered segment, oldest first per partition."""
    return [load_segment(store.folder(rec.path), verify=verify)
            for rec in registry.segments()]


def hidden_rows(segments: list[LoadedSegment]) -> dict[str, set[int]]:
    """Collect, per segment id, the rows that a later write of their id hides.

    Latest write wins by (partition, offset): a later segment's upsert or delete of an id hides
    every earlier row of it. That is what each segment's hides list records when it is written,
    and it stays true when compaction or a generation switch replaces the segments named there.
    """
    hidden: dict[str, set[int]] = {}
    latest: dict[tuple[int, bytes], tuple[str, int]] = {}
    for seg in sorted(segments, key=lambda s: (s.manifest.partition, s.manifest.start_offset)):
        m = seg.manifest
        for key in seg.deleted_ids.tolist():
            if (old := latest.pop((m.partition, key), None)) is not None:
                hidden.setdefault(old[0], set()).add(old[1])
        for row, key in enumerate(seg.ids.tolist()):
            if (old := latest.get((m.partition, key))) is not None:
                hidden.setdefault(old[0], set()).add(old[1])
            latest[(m.partition, key)] = (m.segment_id, row)
    return hidden

