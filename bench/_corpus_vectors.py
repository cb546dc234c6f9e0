"""Real sentence embeddings for the benchmarks: the packaged corpus, embedded once and cached.

The corpus (streamvec/corpus.py) is embedded offline with the demo's sentence model
(streamvec/embed.py, all-MiniLM-L6-v2, 384-d, unit length). On two cores that takes minutes, so
the matrix is saved under bench/out/ as a .npy named by model, corpus seed and row count, and
later runs load it. Exact ground truth is a float64 brute-force scan.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from streamvec import corpus

OUT = Path(__file__).resolve().parent / "out"
MODEL_KEY = "all-minilm-l6-v2"
DIM = 384
# Rows of float64 scores per ground-truth block: 256 queries x 100k rows is 200 MB.
TRUTH_BLOCK = 256


def available() -> int:
    """How many distinct sentences the corpus holds: the most rows `texts` can give."""
    return sum(corpus.capacity(name) for name in corpus.topics())


def texts(n: int, seed: int = 0) -> list[str]:
    """n distinct corpus sentences over every topic, as even as the topics' sizes allow.

    `corpus.sentences` balances topics exactly, which caps it at ten times the smallest
    topic; here a small topic gives all it has and the larger ones make up the rest.
    """
    names = corpus.topics()
    room = {name: corpus.capacity(name) for name in names}
    if not 0 <= n <= sum(room.values()):
        raise ValueError(f"the corpus holds {sum(room.values())} distinct sentences, asked for {n}")
    quota = dict.fromkeys(names, 0)
    left, open_ = n, sorted(names, key=lambda t: (room[t], t))
    while left:
        # Smallest topics first: each takes its fair share of what is left, or all it has.
        name = open_.pop(0)
        quota[name] = min(room[name], -(-left // (len(open_) + 1)))
        left -= quota[name]
    found = [s for name in names for s in corpus.sentences_by_topic(name, quota[name], seed)]
    order = np.random.default_rng([seed, n]).permutation(len(found))
    return [found[i] for i in order]


def cache_path(n: int, seed: int = 0, folder: Path = OUT) -> Path:
    """Where the embedding of `texts(n, seed)` is cached."""
    return folder / f"corpus-{MODEL_KEY}-seed{seed}-{n}.npy"


def load_cached(path: Path, n: int) -> np.ndarray | None:
    """The cached (n, DIM) float32 matrix at `path`, or None if missing or of another shape."""
    try:
        vectors = np.load(path, allow_pickle=False, mmap_mode=None)
    except (OSError, ValueError):
        return None
    if vectors.dtype != np.float32 or vectors.shape != (n, DIM):
        return None
    return vectors


def save_cached(path: Path, vectors: np.ndarray) -> None:
    """Write `vectors` to `path` through a temp file and a rename: never half a cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            np.save(out, np.ascontiguousarray(vectors, dtype=np.float32), allow_pickle=False)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a cache is for every user of the tree
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def embedded(n: int, seed: int = 0, folder: Path = OUT, *,
             progress: bool = True) -> tuple[np.ndarray, str]:
    """`texts(n, seed)` embedded, from the cache when it holds them; and where they came from.

    The source is "cache" or "model". Without the model or its runtime the caller gets
    EmbedderUnavailable: a benchmark of real embeddings has nothing to fall back on.
    """
    from streamvec.embed import SentenceEncoder

    path = cache_path(n, seed, folder)
    cached = load_cached(path, n)
    if cached is not None:
        return cached, "cache"
    encoder = SentenceEncoder.load()
    vectors = encoder.encode(texts(n, seed), batch_size=64, progress=progress)
    save_cached(path, vectors)
    return vectors, "model"


def unit(x: np.ndarray) -> np.ndarray:
    """Rows of `x` scaled to unit length as float32 (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def exact_top_k(data: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row numbers of each query's k nearest rows by cosine, best first, scored in float64."""
    if not 1 <= k <= len(data):
        raise ValueError(f"k must be 1..{len(data)}, got {k}")
    rows = unit(data).astype(np.float64)
    q = unit(queries).astype(np.float64)
    out = np.empty((len(q), k), dtype=np.int64)
    for lo in range(0, len(q), TRUTH_BLOCK):
        scores = q[lo:lo + TRUTH_BLOCK] @ rows.T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        picked = np.take_along_axis(scores, top, axis=1)
        # Ties go to the lower row number, so the truth does not depend on argpartition.
        order = np.lexsort((top, -picked), axis=1)
        out[lo:lo + TRUTH_BLOCK] = np.take_along_axis(top, order, axis=1)
    return out


def recall_at_k(found: Sequence[Sequence[int]], truth: np.ndarray) -> float:
    """Mean share of each query's true k nearest rows among the first k it found."""
    if len(found) > len(truth):
        raise ValueError(f"{len(found)} answers for {len(truth)} queries")
    if not found:
        return 0.0
    k = truth.shape[1]
    hits = sum(len(set(truth[q].tolist()) & set(list(rows)[:k])) for q, rows in enumerate(found))
    return hits / (k * len(found))
