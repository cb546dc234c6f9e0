"""Drift statistics: false and true positive rates on seeded windows, real sentences, edge cases.

Synthetic windows are 300 unit-norm rows in d = 64 from an 8-cluster Gaussian mixture whose
clusters share a common direction, as embeddings of one domain do: rows of one cluster sit
near cosine 0.93, rows of two clusters near 0.64, and a window's mean has norm about 0.82.
Each scenario runs 100 seeded trials.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from monitor import drift
from streamvec import corpus
from streamvec.embed import SentenceEncoder

DIM = 64
ROWS = 300
CLUSTERS = 8
COMMON = 1.5
NOISE = 0.5
TRIALS = 100
# Added to the raw rows before normalising: 2 standard deviations of the rows along its
# direction, a quarter of their RMS distance to the mean.
SHIFT = 0.25
# A random orthogonal map of the first 8 coordinates turns the common direction's and every
# centre's part in them: those 8 marginals change and the window mean turns by about 0.5 rad.
ROTATED_COORDS = 8
NEW_CLUSTER_MASS = 0.1
# Sentences per topic: two disjoint 75-row windows each, and a 75-row window for cross pairs.
SENTENCES = 150
TOPICS = ("cooking", "astronomy", "music")
SCENARIO_SEEDS = {"null": 1, "shift": 2, "rotation": 3, "new_cluster": 4}


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _unit(x: np.ndarray) -> np.ndarray:
    """Unit-norm float32 rows, as the producer SDK sends them."""
    return _normalise(x).astype(np.float32)


def _raw(rng, n, centres, common, noise=NOISE):
    labels = rng.integers(0, len(centres), n)
    scatter = rng.standard_normal((n, centres.shape[1])) * (noise / np.sqrt(centres.shape[1]))
    return common + centres[labels] + scatter


def _mixture(rng):
    """Return (common offset, cluster centres) of one random mixture."""
    axis = rng.standard_normal(DIM)
    centres = rng.standard_normal((CLUSTERS, DIM))
    return COMMON * axis / np.linalg.norm(axis), _normalise(centres)


def _windows(scenario: str, trial: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (ref, cur) for one seeded trial of a scenario."""
    rng = np.random.default_rng([trial, SCENARIO_SEEDS[scenario]])
    common, centres = _mixture(rng)
    ref = _unit(_raw(rng, ROWS, centres, common))
    cur = _raw(rng, ROWS, centres, common)
    if scenario == "shift":
        direction = rng.standard_normal(DIM)
        cur += SHIFT * direction / np.linalg.norm(direction)
    elif scenario == "rotation":
        q, r = np.linalg.qr(rng.standard_normal((ROTATED_COORDS, ROTATED_COORDS)))
        cur[:, :ROTATED_COORDS] = cur[:, :ROTATED_COORDS] @ (q * np.sign(np.diag(r)))
    elif scenario == "new_cluster":
        # A cluster off the common direction: a new domain, cosine about 0 to the old rows.
        newcomers = round(NEW_CLUSTER_MASS * ROWS)
        centre = _normalise(rng.standard_normal((1, DIM)))
        cur[:newcomers] = _raw(rng, newcomers, centre, np.zeros(DIM))
    return ref, _unit(cur)


def _drift_count(scenario: str) -> int:
    return sum(drift.assess(*_windows(scenario, t), seed=t).state == "drift" for t in range(TRIALS))


def test_same_distribution_rarely_drifts():
    assert _drift_count("null") <= 5


@pytest.mark.parametrize("scenario", ["shift", "rotation", "new_cluster"])
def test_each_kind_of_drift_is_caught(scenario):
    assert _drift_count(scenario) >= 95


@pytest.fixture(scope="module")
def topic_vectors() -> dict[str, np.ndarray]:
    """Embed SENTENCES distinct sentences of each topic once for the module."""
    encoder = SentenceEncoder.load()
    texts = [s for topic in TOPICS for s in corpus.sentences_by_topic(topic, SENTENCES, seed=3)]
    vectors = encoder.encode(texts)
    return {t: vectors[i * SENTENCES : (i + 1) * SENTENCES] for i, t in enumerate(TOPICS)}


def test_a_change_of_topic_is_drift(topic_vectors):
    half = SENTENCES // 2
    for i, a in enumerate(TOPICS):
        for b in TOPICS[i + 1 :]:
            report = drift.assess(topic_vectors[a][:half], topic_vectors[b][:half])
            assert report.state == "drift", (a, b, report)
            assert report.reasons == ("mmd", "mean_cosine_distance", "drifted_share")


def test_two_halves_of_one_topic_are_ok(topic_vectors):
    half = SENTENCES // 2
    for topic in TOPICS:
        report = drift.assess(topic_vectors[topic][:half], topic_vectors[topic][half:])
        assert (report.state, report.reasons) == ("ok", ()), (topic, report)
        assert report.mmd_pvalue > 0.05 and report.norm_shift == 0.0


def test_identical_windows_give_zero_statistics():
    ref, _ = _windows("null", 0)
    report = drift.assess(ref, ref.copy())
    assert report.mean_cosine_distance == pytest.approx(0.0, abs=1e-6)
    assert abs(report.mmd) < 1e-2 and report.mmd_pvalue > 0.5
    assert report.drifted_share == 0.0 and report.norm_shift == 0.0
    assert (report.state, report.reasons) == ("ok", ())


def test_statistics_grow_with_the_shift():
    rng = np.random.default_rng(11)
    common, centres = _mixture(rng)
    raw = _raw(rng, ROWS, centres, common)
    direction = rng.standard_normal(DIM)
    direction /= np.linalg.norm(direction)
    ref = _unit(raw)
    shifted = [_unit(raw + size * direction) for size in (0.05, 0.1, 0.2, 0.4)]
    cosine = [drift.mean_cosine_distance(ref, cur) for cur in shifted]
    mmd2 = [drift.mmd(ref, cur)[0] for cur in shifted]
    share = [drift.drifted_share(ref, cur) for cur in shifted]
    assert np.all(np.diff(cosine) > 0) and np.all(np.diff(mmd2) > 0)
    assert np.all(np.diff(share) >= 0) and share[0] < share[-1]


def test_norm_shift_grows_with_the_scale():
    rng = np.random.default_rng(12)
    common, centres = _mixture(rng)
    raw = _raw(rng, ROWS, centres, common)
    shifts = [drift.norm_shift(raw, raw * scale) for scale in (1.0, 1.01, 1.03, 1.1, 2.0)]
    assert shifts[0] == 0.0 and shifts[-1] == 1.0
    assert np.all(np.diff(shifts) > 0)
    assert drift.norm_shift(_unit(raw), _unit(raw * 3.0)) == 0.0


def test_mmd_p_value_bottoms_out_at_one_over_permutations_plus_one():
    ref, cur = _windows("null", 1)
    far = cur + 1.0
    assert drift.mmd(ref, far, permutations=50)[1] == pytest.approx(1 / 51)
    assert drift.mmd(ref, far)[1] == pytest.approx(1 / (drift.DEFAULT_PERMUTATIONS + 1))


def test_mmd_samples_windows_over_the_cap_only():
    # d = 16 skips the projection, so the seed can change the value only through sampling.
    rng = np.random.default_rng(13)
    small = drift.MAX_MMD_ROWS - 100
    big_ref, big_cur = rng.standard_normal((2, 8 * drift.MAX_MMD_ROWS, 16))
    big_cur[:, 0] += 0.5
    first = drift.mmd(big_ref, big_cur, seed=5)
    assert first == drift.mmd(big_ref, big_cur, seed=5) and first[1] < 0.01
    assert first[0] != drift.mmd(big_ref, big_cur, seed=6)[0]
    value = drift.mmd(big_ref[:small], big_cur[:small], seed=5)[0]
    assert drift.mmd(big_ref[:small], big_cur[:small], seed=6)[0] == pytest.approx(value, rel=1e-9)


def test_drifted_share_counts_exactly_the_moved_dimensions():
    rng = np.random.default_rng(14)
    ref = rng.standard_normal((400, 20))
    cur = rng.standard_normal((400, 20))
    cur[:, [2, 7, 11, 19]] += 1.0
    assert drift.drifted_share(ref, cur) == pytest.approx(4 / 20)
    assert drift.drifted_share(ref, rng.standard_normal((400, 20))) == 0.0


def test_ks_pvalue_matches_the_kolmogorov_distribution():
    # Q(lambda) = 2 sum (-1)^(j-1) exp(-2 j^2 lambda^2), summed to 200 terms in plain Python.
    lam = np.array([0.0, 0.3, 0.5, 1.0, 1.36, 1.63, 2.0])
    expected = [
        1.0,
        0.999990694,
        0.963945244,
        0.269999672,
        0.0494858768,
        0.00984636489,
        6.70925256e-4,
    ]
    n = 2_000_000
    root_n = np.sqrt(n / 2)
    stat = lam / (root_n + 0.12 + 0.11 / root_n)
    np.testing.assert_allclose(drift.ks_pvalue(stat, n, n), expected, rtol=1e-6)


def test_state_rule():
    ref, cur = _windows("null", 2)
    base = drift.assess(ref, cur)
    assert base.state == "ok"
    one = drift.DriftThresholds(mean_cosine_distance=0.0)
    assert drift.assess(ref, cur, one).reasons == ("mean_cosine_distance",)
    assert drift.assess(ref, cur, one).state == "warning"
    two = drift.DriftThresholds(mean_cosine_distance=0.0, drifted_share=0.0, ks_alpha=1.0)
    report = drift.assess(ref, cur, two)
    assert (report.state, report.reasons) == ("drift", ("mean_cosine_distance", "drifted_share"))
    mmd_only = drift.assess(ref, cur, drift.DriftThresholds(mmd_alpha=1.0))
    assert (mmd_only.state, mmd_only.reasons) == ("drift", ("mmd",))


def test_thresholds_are_frozen_and_validated():
    with pytest.raises(dataclasses.FrozenInstanceError):
        drift.DEFAULTS.mmd_alpha = 0.5  # type: ignore[misc]
    with pytest.raises(ValueError, match="mmd_alpha must be in"):
        drift.DriftThresholds(mmd_alpha=0.0)
    with pytest.raises(ValueError, match="norm_shift must be >= 0"):
        drift.DriftThresholds(norm_shift=-0.1)


@pytest.mark.parametrize(
    ("ref", "cur", "message"),
    [
        (np.zeros(30), np.zeros((30, 4)), r"ref must be 2-D \(rows, dim\), got shape \(30,\)"),
        (np.zeros((30, 4)), np.zeros((19, 4)), "cur needs at least 20 rows, got 19"),
        (np.zeros((30, 4)), np.zeros((30, 5)), "ref has dim 4 but cur has dim 5"),
        (np.zeros((30, 0)), np.zeros((30, 0)), "ref needs at least one column"),
        (np.full((30, 4), "a"), np.zeros((30, 4)), "ref must hold real numbers"),
        (np.zeros((30, 4)), np.full((30, 4), np.nan), "cur holds NaN or infinite values"),
        (np.full((30, 4), np.inf), np.zeros((30, 4)), "ref holds NaN or infinite values"),
    ],
)
def test_bad_windows_are_rejected(ref, cur, message):
    for statistic in (
        drift.assess,
        drift.mmd,
        drift.mean_cosine_distance,
        drift.drifted_share,
        drift.norm_shift,
    ):
        with pytest.raises(ValueError, match=message):
            statistic(ref, cur)


def test_bad_parameters_are_rejected():
    ref, cur = np.zeros((30, 4)), np.ones((30, 4))
    with pytest.raises(ValueError, match="alpha must be in"):
        drift.drifted_share(ref, cur, alpha=0.0)
    with pytest.raises(ValueError, match="projection_dim and permutations must be >= 1"):
        drift.mmd(ref, cur, permutations=0)
