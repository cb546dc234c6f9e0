"""Index generations: rebuild every sealed segment with another index spec, switch, roll back."""

# A generation is the same offsets built another way. `materialize` makes the registry's
# segments all live in one generation: it reuses a folder already there (a rollback is
# mostly reuse) or rebuilds it from the segment's raw vectors, then swaps the lot in one
# script. Ingest keeps registering segments meanwhile; they land in the old generation
# until the switch, so a second pass picks them up, and after the switch workers write
# straight into the new one.

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

from tqdm import tqdm

from indexer import build, publish
from indexer.errors import BuildError, SwapConflict
from indexer.registry import GenerationInfo, Registry
from indexer.segfolder import load_segment
from indexer.store import SegmentStore
from ingest import audit, catalog
from lifecycle import rewrite
from lifecycle.errors import GenerationConflict, GenerationError, GenerationNotFound
from lifecycle.lock import LifecycleLock
from streamvec.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_KEEP = 3
MAX_PASSES = 5


@dataclass(frozen=True, slots=True)
class SwitchReport:
    """What a reindex or a generation rollback did."""

    collection: str
    generation: int
    previous: int
    index: str
    built: int
    reused: int
    rows: int
    build_seconds: float
    seconds: float
    passes: int

    def to_json(self) -> dict:
        """The report as a JSON-ready dict."""
        return {"collection": self.collection, "generation": self.generation,
                "previous": self.previous, "index": self.index, "built": self.built,
                "reused": self.reused, "rows": self.rows,
                "build_seconds": round(self.build_seconds, 3),
                "seconds": round(self.seconds, 3), "passes": self.passes}


def reindex(settings: Settings, collection: str, index: str, *, keep: int = DEFAULT_KEEP,
            progress: bool = False) -> SwitchReport:
    """Rebuild every sealed segment with `index` into a new generation and switch to it."""
    client = settings.redis_client()
    spec = catalog.load_spec(client, collection)
    _check_index(index, spec.dim, spec.metric)
    registry = Registry(client, collection)
    with LifecycleLock(client, collection, "reindex") as lock:
        previous = registry.active_generation()
        known = registry.generations()
        lock.check()
        if previous not in known:  # generation 0 predates any record: note what it was
            registry.record_generation(GenerationInfo(previous, spec.index, time.time(),
                                                      settings.actor, state="active"))
        target = max([previous, *known]) + 1
        registry.record_generation(GenerationInfo(target, index, time.time(), settings.actor,
                                                  source=previous))
        report = _materialize(settings, registry, spec, target, index, previous, progress, lock)
        _retire(registry, previous, target, keep, lock)
    audit.record(client, "generation.reindex", collection, report.to_json(), settings.actor)
    return report


def rollback(settings: Settings, collection: str, *, to: int | None = None,
             progress: bool = False) -> SwitchReport:
    """Switch back to generation `to` (default: the one the active generation came from)."""
    client = settings.redis_client()
    spec = catalog.load_spec(client, collection)
    registry = Registry(client, collection)
    with LifecycleLock(client, collection, "generation-rollback") as lock:
        current = registry.active_generation()
        known = registry.generations()
        if to is None:
            info = known.get(current)
            older = [g for g in known if g < current]
            to = info.source if info is not None and info.source is not None else (
                max(older) if older else None)
            if to is None:
                raise GenerationNotFound(f"{collection} has no generation before {current} to "
                                      "roll back to")
        if to == current:
            raise GenerationConflict(f"generation {to} of {collection} is already active")
        if to not in known:
            raise GenerationNotFound(f"{collection} has no generation {to}; kept: "
                                  f"{sorted(known) or 'none'}")
        index = known[to].index
        report = _materialize(settings, registry, spec, to, index, current, progress, lock)
        _retire(registry, current, to, len(known), lock)
    audit.record(client, "generation.rollback", collection, report.to_json(), settings.actor)
    return report


def _materialize(settings: Settings, registry: Registry, spec, target: int, index: str,
                 previous: int, progress: bool, lock: LifecycleLock) -> SwitchReport:
    """Make every registered segment live in `target`, switching generations at the first swap."""
    started = time.perf_counter()
    store = SegmentStore.from_settings(settings)
    built = reused = rows = passes = 0
    build_seconds = 0.0
    for passes in range(1, MAX_PASSES + 1):  # noqa: B007 - the count goes into the report
        todo = [r for r in registry.segments() if r.generation != target]
        if not todo and registry.active_generation() == target:
            break
        made = []
        bar = tqdm(total=sum(r.rows for r in todo), unit="rows", disable=not progress,
                   desc=f"{spec.name} g{target} pass {passes}")
        for record in todo:
            lock.check()  # every folder written is one more write of the action
            item = rewrite.reuse(store, spec.name, target, record)
            if item is None:
                segment = load_segment(store.folder(record.path))
                sealed = rewrite.rows_of([segment], {})
                item = publish.write(store, spec.name, target, sealed, metric=spec.metric,
                                     index=index, hides=segment.hides)
            made.append(item)
            bar.update(record.rows)
        bar.close()
        try:
            registry.swap(todo, [m.record for m in made], kind="generation", generation=target,
                          fence=lock)
        except SwapConflict as exc:  # a segment changed under us: plan again
            log.warning("%s", exc)
            continue
        publish.mark(store, made)
        built += sum(not m.reused for m in made)
        reused += sum(m.reused for m in made)
        rows += sum(m.rows for m in made)
        build_seconds += sum(m.build_seconds for m in made)
        log.info("collection=%s generation %d: pass %d swapped %d segments (%d rebuilt)",
                 spec.name, target, passes, len(made), sum(not m.reused for m in made))
    if registry.active_generation() != target:  # every pass lost its swap: nothing switched
        raise GenerationConflict(f"the registry of {spec.name} kept changing during {passes} "
                              f"passes; generation {target} was not switched to, try again")
    return SwitchReport(spec.name, target, previous, index, built, reused, rows, build_seconds,
                        time.perf_counter() - started, passes)


def _retire(registry: Registry, previous: int, active: int, keep: int,
            lock: LifecycleLock) -> None:
    """Mark `active` active and `previous` retired; forget generations beyond the last `keep`."""
    known = registry.generations()
    lock.check()
    for gen, info in known.items():
        state = "active" if gen == active else ("retired" if info.state != "building"
                                                or gen == previous else info.state)
        if info.state != state:
            registry.record_generation(replace(info, state=state))
    for gen in sorted(known, reverse=True)[max(keep, 1):]:
        if gen != active:
            registry.forget_generation(gen)


def _check_index(index: str, dim: int, metric: str) -> None:
    """Refuse an index spec FAISS cannot make, before any work."""
    try:
        build.check_factory(index, dim, metric)
    except (BuildError, ValueError) as exc:
        raise GenerationError(str(exc)) from None
