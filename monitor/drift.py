"""Embedding drift statistics: compare a reference window of vectors with a current one (no I/O).

- `mean_cosine_distance`: 1 - cosine of the two windows' mean embeddings.
- `mmd`: unbiased squared MMD, RBF kernel with the median-heuristic bandwidth, on a seeded
  Gaussian random projection, with a permutation-test p-value.
- `drifted_share`: share of dimensions whose marginal changed (two-sample Kolmogorov-Smirnov
  per dimension, Benjamini-Hochberg correction).
- `norm_shift`: KS distance between the windows' distributions of L2 norms.

`assess` runs them all. State rule: "drift" when the MMD p-value is below `mmd_alpha` or at
least two of the other three tests fire; "warning" when exactly one of them fires; else "ok".
One of those fires when its statistic exceeds its threshold in `DriftThresholds`.

Defaults, from seeded measurements. "Cone" windows: 300 unit-norm rows, d = 64, from an
8-cluster Gaussian mixture whose clusters share a common direction. "Sentences":
all-MiniLM-L6-v2 embeddings of the packaged ten-topic corpus.
- `mmd_alpha` 0.01: 1,000 same-distribution cone pairs gave p < 0.01 in 0.9% of them.
- `mean_cosine_distance` 0.1: with no drift its 99th percentile was 0.004 for cone pairs,
  0.054 (300 rows) and 0.097 (150 rows) for a mixed ten-topic sentence stream, and 0.055 for
  75-row halves of one topic; a change of topic gave 0.6 or more. Smaller windows of a mixed
  stream need a higher threshold.
- `drifted_share` 0.05 at `ks_alpha` 0.01: with no drift any dimension was flagged in 0.7% of
  1,000 cone pairs, never more than 3 of 64; a change of topic flagged 40% or more.
- `norm_shift` 0.2: unit vectors always give 0; unnormalised cone pairs with no drift gave at
  most 0.15 (99.9th percentile, 300 rows; 99th at 150 rows: 0.19); norms scaled by 5%: 0.36.

Limit: 10% of a new cluster that sits among the reference clusters (a new topic in a mixed
sentence stream) moves every statistic little more than its noise at these sizes (measured
power 10-40%); a new cluster away from the reference data is caught (99% of 1,000 cone pairs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_ROWS = 20
# Each MMD window is subsampled to this many rows so the pooled kernel (1,000 x 1,000) and
# its permutations cost tens of milliseconds; beyond this, more rows add little power.
MAX_MMD_ROWS = 500
# KS sorts every column of the pooled sample: about 50 MB at d = 384.
MAX_KS_ROWS = 2000
DEFAULT_PERMUTATIONS = 200
DEFAULT_PROJECTION_DIM = 32
# Norms are compared on a log scale rounded to 0.1%, so float32 rounding of unit vectors
# (about 1e-7) collapses into ties instead of looking like a shift.
_NORM_RESOLUTION = 1e-3
# Below this argument the alternating Kolmogorov series converges slowly; the theta-function
# form needs only a few terms there (the split Numerical Recipes uses).
_KS_SERIES_SPLIT = 1.18
_KS_TERMS = np.arange(1, 21, dtype=np.float64)
# Relabellings whose statistic ties the observed one must count despite summation order.
_TIE_TOLERANCE = 1e-12


def _validate(ref: np.ndarray, cur: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return both windows as float64 arrays, or raise ValueError saying what is wrong."""
    out = []
    for name, window in (("ref", ref), ("cur", cur)):
        arr = np.asarray(window)
        if arr.ndim != 2:
            raise ValueError(f"{name} must be 2-D (rows, dim), got shape {arr.shape}")
        if arr.shape[0] < MIN_ROWS:
            raise ValueError(f"{name} needs at least {MIN_ROWS} rows, got {arr.shape[0]}")
        if arr.shape[1] < 1:
            raise ValueError(f"{name} needs at least one column, got shape {arr.shape}")
        if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            raise ValueError(f"{name} must hold real numbers, got dtype {arr.dtype}")
        arr = arr.astype(np.float64)
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} holds NaN or infinite values")
        out.append(arr)
    if out[0].shape[1] != out[1].shape[1]:
        raise ValueError(f"ref has dim {out[0].shape[1]} but cur has dim {out[1].shape[1]}")
    return out[0], out[1]


def _subsample(x: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    """Return at most `cap` rows of x, chosen without replacement."""
    if x.shape[0] <= cap:
        return x
    return x[np.sort(rng.choice(x.shape[0], size=cap, replace=False))]


def mean_cosine_distance(ref: np.ndarray, cur: np.ndarray) -> float:
    """Return 1 - cosine similarity of the two windows' mean embeddings, in [0, 2]."""
    return _mean_cosine_distance(*_validate(ref, cur))


def _mean_cosine_distance(ref: np.ndarray, cur: np.ndarray) -> float:
    """`mean_cosine_distance` on validated windows."""
    a, b = ref.mean(axis=0), cur.mean(axis=0)
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norms == 0.0:
        # A zero mean has no direction: equal means agree, otherwise nothing can be said.
        return 0.0 if np.array_equal(a, b) else 1.0
    return float(1.0 - np.clip(a @ b / norms, -1.0, 1.0))


def _project(pooled: np.ndarray, dim: int, rng: np.random.Generator) -> np.ndarray:
    """Map rows to `dim` Gaussian random directions (Johnson-Lindenstrauss), if that is fewer."""
    if pooled.shape[1] <= dim:
        return pooled
    return pooled @ (rng.standard_normal((pooled.shape[1], dim)) / np.sqrt(dim))


def _rbf_kernel(z: np.ndarray) -> np.ndarray:
    """Return the RBF kernel matrix of z's rows, bandwidth = median pairwise distance."""
    sq = np.einsum("ij,ij->i", z, z)
    dist2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (z @ z.T), 0.0)
    median2 = float(np.median(dist2[np.triu_indices(z.shape[0], k=1)]))
    if median2 <= 0.0:
        # Mostly duplicate rows: any positive width keeps the statistic well defined.
        median2 = float(dist2.max()) or 1.0
    return np.exp(dist2 / (-2.0 * median2))


def _mmd_columns(kernel: np.ndarray, labels: np.ndarray, n_r: int) -> np.ndarray:
    """Unbiased MMD^2 for each column of `labels` (1.0 marks a reference row, 0.0 current)."""
    n_c = kernel.shape[0] - n_r
    row_sums = kernel.sum(axis=1)
    ref_ref = np.einsum("ij,ij->j", kernel @ labels, labels)
    ref_all = row_sums @ labels
    cur_cur = row_sums.sum() - 2.0 * ref_all + ref_ref
    # The RBF diagonal is 1, so leaving out self-pairs subtracts the window size.
    return (
        (ref_ref - n_r) / (n_r * (n_r - 1))
        + (cur_cur - n_c) / (n_c * (n_c - 1))
        - 2.0 * (ref_all - ref_ref) / (n_r * n_c)
    )


def mmd(
    ref: np.ndarray,
    cur: np.ndarray,
    *,
    projection_dim: int = DEFAULT_PROJECTION_DIM,
    permutations: int = DEFAULT_PERMUTATIONS,
    seed: int = 0,
) -> tuple[float, float]:
    """Return (unbiased squared MMD, permutation p-value); windows over MAX_MMD_ROWS are sampled."""
    if projection_dim < 1 or permutations < 1:
        raise ValueError(
            f"projection_dim and permutations must be >= 1, got {projection_dim}, {permutations}"
        )
    return _mmd(*_validate(ref, cur), projection_dim, permutations, seed)


def _mmd(
    ref: np.ndarray, cur: np.ndarray, projection_dim: int, permutations: int, seed: int
) -> tuple[float, float]:
    """`mmd` on validated windows."""
    sample_rng, project_rng, perm_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)
    )
    ref = _subsample(ref, MAX_MMD_ROWS, sample_rng)
    cur = _subsample(cur, MAX_MMD_ROWS, sample_rng)
    n_r = ref.shape[0]
    kernel = _rbf_kernel(_project(np.concatenate([ref, cur]), projection_dim, project_rng))
    # Column 0 is the observed split, the rest random relabellings: one matmul scores them all.
    labels = np.zeros((kernel.shape[0], permutations + 1))
    labels[:n_r] = 1.0
    labels[:, 1:] = perm_rng.permuted(labels[:, 1:], axis=0)
    stats = _mmd_columns(kernel, labels, n_r)
    exceed = int(np.count_nonzero(stats[1:] >= stats[0] - _TIE_TOLERANCE))
    return float(stats[0]), (1.0 + exceed) / (1.0 + permutations)


def _ks_statistics(ref: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """Two-sample KS distance for every column at once, exact with tied values."""
    n_r, n_c = ref.shape[0], cur.shape[0]
    pooled = np.concatenate([ref, cur])
    order = np.argsort(pooled, axis=0, kind="stable")
    values = np.take_along_axis(pooled, order, axis=0)
    # Integer steps keep the gap exact, so equal ECDFs give exactly 0 rather than 1e-17.
    gap = np.cumsum(np.where(order < n_r, n_c, -n_r), axis=0)
    # The ECDFs may only be compared after the last of a run of equal values.
    run_end = np.ones(values.shape, dtype=bool)
    run_end[:-1] = values[1:] != values[:-1]
    return np.max(np.abs(gap) * run_end, axis=0) / (n_r * n_c)


def ks_pvalue(stat: np.ndarray | float, n_r: int, n_c: int) -> np.ndarray:
    """Asymptotic two-sample KS p-values: Kolmogorov distribution with Stephens' correction."""
    root_n = np.sqrt(n_r * n_c / (n_r + n_c))
    lam = np.atleast_1d((root_n + 0.12 + 0.11 / root_n) * np.asarray(stat, dtype=np.float64))
    p = np.ones_like(lam)
    big = lam >= _KS_SERIES_SPLIT
    signs = np.where(_KS_TERMS % 2 == 1, 2.0, -2.0)
    p[big] = np.sum(signs * np.exp(-2.0 * _KS_TERMS**2 * lam[big, None] ** 2), axis=1)
    small = (lam > 0.0) & ~big
    ls = lam[small, None]
    odd2 = (2.0 * _KS_TERMS - 1.0) ** 2
    theta = np.sum(np.exp(-odd2 * np.pi**2 / (8.0 * ls**2)), axis=1)
    p[small] = 1.0 - np.sqrt(2.0 * np.pi) / ls[:, 0] * theta
    return np.clip(p, 0.0, 1.0)


def _benjamini_hochberg(pvalues: np.ndarray, alpha: float) -> np.ndarray:
    """Return which hypotheses Benjamini-Hochberg rejects at false discovery rate `alpha`."""
    m = pvalues.size
    order = np.argsort(pvalues)
    below = np.flatnonzero(pvalues[order] <= alpha * np.arange(1, m + 1) / m)
    rejected = np.zeros(m, dtype=bool)
    if below.size:
        rejected[order[: below[-1] + 1]] = True
    return rejected


def drifted_share(ref: np.ndarray, cur: np.ndarray, *, alpha: float = 0.01, seed: int = 0) -> float:
    """Return the share of dimensions whose marginal changed (KS, Benjamini-Hochberg at alpha)."""
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    return _drifted_share(*_validate(ref, cur), alpha, seed)


def _drifted_share(ref: np.ndarray, cur: np.ndarray, alpha: float, seed: int) -> float:
    """`drifted_share` on validated windows; windows over MAX_KS_ROWS rows are sampled."""
    rng = np.random.default_rng(seed)
    ref, cur = _subsample(ref, MAX_KS_ROWS, rng), _subsample(cur, MAX_KS_ROWS, rng)
    pvalues = ks_pvalue(_ks_statistics(ref, cur), ref.shape[0], cur.shape[0])
    return float(np.mean(_benjamini_hochberg(pvalues, alpha)))


def norm_shift(ref: np.ndarray, cur: np.ndarray) -> float:
    """Return the KS distance, in [0, 1], between the windows' L2-norm distributions.

    Norms are compared as log-norms rounded to 0.1%, so unit vectors always give 0; 1 means
    the two windows' norms do not overlap at all (say, a producer that stopped normalising).
    """
    return _norm_shift(*_validate(ref, cur))


def _norm_shift(ref: np.ndarray, cur: np.ndarray) -> float:
    """`norm_shift` on validated windows."""
    levels = [
        np.round(np.log(np.maximum(np.linalg.norm(x, axis=1), 1e-300)) / _NORM_RESOLUTION)
        for x in (ref, cur)
    ]
    return float(_ks_statistics(levels[0][:, None], levels[1][:, None])[0])


@dataclass(frozen=True)
class DriftThresholds:
    """Limits at which each test fires; the module docstring says how they were measured."""

    mmd_alpha: float = 0.01
    mean_cosine_distance: float = 0.1
    drifted_share: float = 0.05
    ks_alpha: float = 0.01
    norm_shift: float = 0.2

    def __post_init__(self) -> None:
        """Reject levels outside (0, 1] and negative thresholds."""
        for name in ("mmd_alpha", "ks_alpha"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        for name in ("mean_cosine_distance", "drifted_share", "norm_shift"):
            if getattr(self, name) < 0.0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


DEFAULTS = DriftThresholds()


@dataclass(frozen=True)
class DriftReport:
    """Every drift statistic of one window pair, the state they imply, and which tests fired."""

    mean_cosine_distance: float
    mmd: float
    mmd_pvalue: float
    drifted_share: float
    norm_shift: float
    state: str
    reasons: tuple[str, ...]


def assess(
    ref: np.ndarray, cur: np.ndarray, thresholds: DriftThresholds = DEFAULTS, seed: int = 0
) -> DriftReport:
    """Compute every statistic and classify the pair as "ok", "warning" or "drift"."""
    ref, cur = _validate(ref, cur)
    mmd2, pvalue = _mmd(ref, cur, DEFAULT_PROJECTION_DIM, DEFAULT_PERMUTATIONS, seed)
    others = {
        "mean_cosine_distance": _mean_cosine_distance(ref, cur),
        "drifted_share": _drifted_share(ref, cur, thresholds.ks_alpha, seed),
        "norm_shift": _norm_shift(ref, cur),
    }
    fired = [name for name, value in others.items() if value > getattr(thresholds, name)]
    mmd_fired = pvalue < thresholds.mmd_alpha
    if mmd_fired or len(fired) >= 2:
        state = "drift"
    else:
        state = "warning" if fired else "ok"
    reasons = (("mmd",) if mmd_fired else ()) + tuple(fired)
    return DriftReport(mmd=mmd2, mmd_pvalue=pvalue, state=state, reasons=reasons, **others)
