"""`streamvec demo`: publish sentence embeddings, index them, then answer text queries."""

from __future__ import annotations

import argparse
import logging
import threading
import time
from typing import TYPE_CHECKING

from streamvec.commands.errors import CommandError
from streamvec.settings import Settings

if TYPE_CHECKING:  # the demo drives every role: its modules load when it runs, not on --help
    import numpy as np

    from ingest.spec import CollectionSpec
    from streamvec.embed import SentenceEncoder

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `demo` command to the top-level parser."""
    demo = sub.add_parser(
        "demo",
        help="publish sentence embeddings to a demo collection",
        description="Create a collection, embed a few thousand sentences with all-MiniLM-L6-v2 "
        "(or a seeded clustered set if the model cannot load), publish them and show "
        "what landed per partition.",
    )
    demo.add_argument("--collection", default="demo", help="collection name (default demo)")
    demo.add_argument("--rows", type=int, default=3000, help="sentences to publish (default 3000)")
    demo.add_argument("--partitions", type=int, default=4, help="partitions (default 4)")
    demo.add_argument("--seed", type=int, default=0, help="corpus seed (default 0)")
    demo.add_argument("--seal-rows", type=int, default=400,
                      help="rows per sealed segment, small so sealing shows (default 400)")
    demo.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the demo end to end and print a per-partition summary."""
    from tqdm import tqdm

    from ingest.producer import Producer
    from ingest.spec import CollectionSpec
    from lifecycle import collections
    from streamvec import corpus, embed

    texts = corpus.sentences(args.rows, seed=args.seed)
    encoder = embed.load_encoder_or_none()
    vectors, source = _embed(encoder, texts)
    spec = CollectionSpec(args.collection, dim=vectors.shape[1], metric="cosine",
                          partitions=args.partitions, seal_rows=args.seal_rows, seal_seconds=2.0)
    created = collections.create_collection(settings, spec)
    print(f"collection {spec.name}: {'created' if created else 'exists'}, dim {spec.dim}, "
          f"{spec.partitions} partitions, vectors from {source}")
    ids = [f"s{args.seed}-{i:06d}" for i in range(len(texts))]
    started = time.perf_counter()
    with Producer(spec.name, settings=settings) as producer:
        step = 256
        for lo in tqdm(range(0, len(ids), step), desc="publishing", unit="batch"):
            hi = lo + step
            producer.upsert(ids[lo:hi], vectors[lo:hi],
                            metadata=[{"text": t} for t in texts[lo:hi]])
        offsets = producer.flush()
    elapsed = time.perf_counter() - started
    _print_summary(settings, spec, ids, offsets, elapsed)
    _index(settings, spec)
    _search(settings, spec, encoder)
    return 0


def _embed(encoder: SentenceEncoder | None, texts: list[str]) -> tuple[np.ndarray, str]:
    from streamvec import embed

    if encoder is None:
        print("note: the sentence model could not load; using a seeded clustered set instead")
        return embed.fallback_vectors(len(texts)), "a seeded clustered set (fallback)"
    return encoder.encode(texts, progress=True), "all-MiniLM-L6-v2"


def _print_summary(settings: Settings, spec: CollectionSpec, ids: list[str],
                   offsets: dict[int, int], elapsed: float) -> None:
    import numpy as np

    from ingest import admin
    from ingest.partition import partitions_for

    rows_per_partition = np.bincount(partitions_for(ids, spec.partitions, spec.partitioner),
                                     minlength=spec.partitions)
    print(f"published {len(ids)} rows in {elapsed:.2f}s ({len(ids) / elapsed:,.0f} rows/s)")
    print(f"{'PARTITION':>9} {'ROWS SENT':>10} {'LAST OFFSET':>12} {'LOG END':>8}")
    for info in admin.partition_offsets(settings, spec.collection.topic):
        last = offsets.get(info.partition, "-")
        print(f"{info.partition:>9} {rows_per_partition[info.partition]:>10} {last:>12} "
              f"{info.high:>8}")


def _index(settings: Settings, spec: CollectionSpec) -> None:
    """Run an indexer worker until every published row is in a registered segment."""
    from prometheus_client import CollectorRegistry
    from tqdm import tqdm

    from indexer.registry import Registry
    from indexer.worker import Worker
    from ingest import admin

    ends = {p.partition: p.high for p in admin.partition_offsets(settings, spec.collection.topic)}
    registry = Registry(settings.redis_client(), spec.name)
    worker = Worker(settings, spec.name, metrics_registry=CollectorRegistry())
    thread = threading.Thread(target=worker.run, name="demo-indexer", daemon=True)
    thread.start()
    total = sum(ends.values())
    deadline = time.monotonic() + 300
    with tqdm(total=total, desc="indexing", unit="msg") as bar:
        while (done := sum(min(registry.checkpoint(p), e) for p, e in ends.items())) < total:
            bar.update(done - bar.n)
            if not thread.is_alive() or time.monotonic() > deadline:
                raise CommandError("the demo indexer stopped before it caught up; see the log")
            time.sleep(0.1)  # progress refresh
        bar.update(done - bar.n)
    worker.stop()
    thread.join(60)
    segments = registry.segments()
    print(f"{len(segments)} segments registered; the latest per partition:")
    print(f"{'SEGMENT':<32} {'ROWS':>6} {'INDEX':<8} {'OFFSETS':>16}")
    for partition in sorted(ends):
        mine = [s for s in segments if s.partition == partition]
        for rec in mine[-2:]:
            print(f"{rec.segment_id:<32} {rec.rows:>6} {rec.factory:<8} "
                  f"{rec.start_offset:>7}..{rec.end_offset:<7}")


DEMO_QUERIES = (
    "how long should bread dough rise before baking",
    "which planets can you see without a telescope",
    "saving money for retirement with index funds",
    "the striker scored a late goal in the final",
)


def _search(settings: Settings, spec: CollectionSpec,
            encoder: SentenceEncoder | None) -> None:
    """Serve the collection in-process and answer a few text queries through Redis."""
    from prometheus_client import CollectorRegistry

    from searcher.client import Client
    from searcher.engine import Engine
    from searcher.metrics import SearcherMetrics
    from searcher.server import Server

    if encoder is None:
        print("no sentence model: skipping the text queries")
        return
    metrics = SearcherMetrics(CollectorRegistry(), spec.name)
    engine = Engine(settings, spec.name, metrics=metrics)
    engine.start()
    server = Server(settings, spec.name, engine, consumer="demo", metrics=metrics)
    thread = threading.Thread(target=server.run, name="demo-searcher", daemon=True)
    thread.start()
    try:
        client = Client(settings=settings)
        vectors = encoder.encode(list(DEMO_QUERIES))
        result = client.search(spec.name, vectors, k=3, with_metadata=True, timeout=30)
        for q, text in enumerate(DEMO_QUERIES):
            print(f"\nquery: {text}")
            for id_, score, meta in result.rows(q):
                print(f"  {score:6.3f}  {id_}  {(meta or {}).get('text', '')}")
        took = result.timings_ms.get("total")
        print(f"\n{len(DEMO_QUERIES)} queries answered in one request"
              + (f" ({took:.1f} ms in the searcher)" if took is not None else ""))
    finally:
        server.stop()
        thread.join(30)
        engine.stop()
