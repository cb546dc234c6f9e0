"""FAISS index builds from a collection's index spec: pure functions over numpy arrays, no I/O."""

from __future__ import annotations

import logging

import faiss
import numpy as np

from indexer.errors import BuildError

logger = logging.getLogger(__name__)

# "auto" is a graph from this many rows, an exact scan below. bench/crossover.py measured where
# HNSW32, at the efSearch that reaches recall@10 0.99, gets faster than the searcher's exact
# scan (clustered rows, one thread, a shared 2-core Xeon, faiss 1.15): at 384-d below 500 rows
# for one query (the graph won at every size measured) and about 720 rows for 64 queries
# searched together; at 128-d about 850 and 1,040 rows. The crossover holds in rows, not in
# rows x dim (a graph search pays per dimension too), so one threshold serves every dim.
AUTO_GRAPH_MIN_ROWS = 1_000
# Under "auto" a segment is written with its graph only from this many rows. A graph build
# costs about a core-second per 6,000 rows at 384-d, and the searcher builds one graph over
# the small segments of every partition anyway (searcher/fold.py): writing a graph into each
# fresh seal as well doubled the CPU spent per ingested row, starved tailing and answering
# (freshness p99 534 ms at 5,000 rows/s on 2 cores) and let seals fall behind ingest. Small
# auto segments are therefore written Flat, once, and folded by the searchers; bulk loads and
# compaction write segments of this size and more, with the graph a restarted searcher then
# loads ready-made instead of folding their rows again.
AUTO_WRITTEN_GRAPH_MIN_ROWS = 20_000
AUTO_GRAPH_FACTORY = "HNSW32"
FLAT = "Flat"
# k-means and PQ training gain little past ~100k points and cost time linear in them.
TRAIN_MAX_ROWS = 100_000
TRAIN_SEED = 1234
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 64

_METRICS = {
    "l2": faiss.METRIC_L2,
    "ip": faiss.METRIC_INNER_PRODUCT,
    "cosine": faiss.METRIC_INNER_PRODUCT,
}


def resolve_factory(index: str, rows: int, dim: int) -> str:
    """The index_factory string to write into a segment of `rows` vectors of `dim`.

    "auto" writes "Flat" below AUTO_WRITTEN_GRAPH_MIN_ROWS rows (20,000) and "HNSW32" (graph,
    efConstruction 80) from there on, whatever the dim; searchers fold auto segments of 1,000
    rows and more into a graph of their own (`is_auto`, searcher/fold.py). Any other value is
    a FAISS index_factory string, returned as given (stripped).
    """
    if dim < 1 or rows < 0:
        raise ValueError(f"need dim >= 1 and rows >= 0, got dim={dim} rows={rows}")
    spec = index.strip()
    if is_auto(spec):
        return FLAT if rows < AUTO_WRITTEN_GRAPH_MIN_ROWS else AUTO_GRAPH_FACTORY
    return spec


def is_auto(index: str) -> bool:
    """Whether a collection's index spec is "auto" (any case, any surrounding space)."""
    return index.strip().lower() == "auto"


def faiss_metric(metric: str) -> int:
    """The FAISS metric constant: l2 -> METRIC_L2; ip and cosine -> METRIC_INNER_PRODUCT."""
    try:
        return _METRICS[metric]
    except KeyError:
        raise ValueError(f"metric must be one of {', '.join(_METRICS)}, got {metric!r}") from None


def prepare(vectors: np.ndarray, metric: str) -> np.ndarray:
    """Vectors as FAISS wants them: C-contiguous float32; for cosine an L2-normalised copy.

    Queries go through the same function, which makes cosine an inner product.
    """
    faiss_metric(metric)
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"vectors must be 2-D (rows, dim), got shape {x.shape}")
    x = np.ascontiguousarray(x)
    return normalize(x) if metric == "cosine" else x


def normalize(x: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of `x` with every row (last axis) scaled to unit length, same dtype.

    Zero rows stay zero (they match nothing) instead of turning into NaN.
    """
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, norms, out=np.zeros(x.shape, dtype=x.dtype), where=norms > 0)


def build_index(vectors: np.ndarray, *, metric: str, index: str) -> tuple[faiss.Index, str]:
    """Build an index over `vectors` (row i becomes id i); return it and the factory used.

    The factory is `resolve_factory(index, ...)`, except "Flat" when there are too few rows
    to train it (e.g. IVF with more lists than rows) or no rows at all; the caller records
    the returned string. Raises BuildError for a factory string FAISS cannot make.
    """
    x = prepare(vectors, metric)
    rows, dim = x.shape
    factory = resolve_factory(index, rows, dim)
    if rows == 0:
        factory = FLAT
    built = _make(dim, factory, metric)
    if not built.is_trained:
        try:
            built.train(_training_sample(x))
        except RuntimeError as exc:
            # FAISS refuses to train with fewer points than centroids (IVF lists, PQ codes).
            logger.warning("index %r cannot train on %d rows, building Flat: %s",
                           factory, rows, exc)
            factory = FLAT
            built = _make(dim, factory, metric)
    _tune_hnsw(built, HNSW_EF_CONSTRUCTION)
    try:
        built.add(x)
    except RuntimeError as exc:
        raise BuildError(f"index {factory!r} cannot add {rows} rows: {exc}") from None
    return built, factory


def check_factory(index: str, dim: int, metric: str) -> None:
    """Raise BuildError now if FAISS cannot make `index` for `dim`, before any rows are read."""
    for rows in (0, AUTO_WRITTEN_GRAPH_MIN_ROWS):  # "auto" resolves to a factory by size
        _make(dim, resolve_factory(index, rows, dim), metric)


def make_index(dim: int, factory: str, metric: str) -> faiss.Index:
    """An empty index of `factory` for `metric`, with the build's HNSW breadth if a graph."""
    made = _make(dim, factory, metric)
    _tune_hnsw(made, HNSW_EF_CONSTRUCTION)
    return made


def _make(dim: int, factory: str, metric: str) -> faiss.Index:
    try:
        return faiss.index_factory(dim, factory, faiss_metric(metric))
    except RuntimeError as exc:
        raise BuildError(f"index {factory!r} cannot be made for dim {dim}: {exc}") from None


def _training_sample(x: np.ndarray) -> np.ndarray:
    """At most TRAIN_MAX_ROWS rows, drawn with a fixed seed so rebuilds are reproducible."""
    if len(x) <= TRAIN_MAX_ROWS:
        return x
    rng = np.random.default_rng(TRAIN_SEED)
    picked = np.sort(rng.choice(len(x), TRAIN_MAX_ROWS, replace=False))
    return x[picked]


def _tune_hnsw(index: faiss.Index, ef_construction: int) -> None:
    """Set HNSW build and search breadth where the index (or the one it wraps) is a graph."""
    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexPreTransform):
        inner = faiss.downcast_index(inner.index)
    hnsw = getattr(inner, "hnsw", None)
    if hnsw is not None:
        hnsw.efConstruction = ef_construction
        hnsw.efSearch = HNSW_EF_SEARCH
