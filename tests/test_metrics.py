"""Selective-prediction metrics against independent computations (sklearn, brute force, closed forms)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from gradguard.calibration.metrics import (
    aurc,
    auroc,
    bootstrap_ci,
    brier,
    confidence_from_uncertainty,
    ece,
    prr,
    risk_coverage_curve,
)


def test_auroc_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    c = np.round(rng.normal(size=300) + y, 1)  # rounding creates many ties
    assert auroc(c, y) == pytest.approx(roc_auc_score(y, c), abs=1e-12)


def test_auroc_extremes_and_single_class() -> None:
    y = np.array([0, 0, 1, 1])
    assert auroc([0.1, 0.2, 0.8, 0.9], y) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], y) == 0.0
    assert np.isnan(auroc([0.1, 0.2], [1, 1]))


def test_non_finite_confidence_is_least_confident() -> None:
    y = np.array([1, 1, 0, 0])
    c = np.array([0.9, 0.8, np.nan, 0.1])
    # NaN ranks below everything, so the wrong answer with NaN is rejected first
    assert auroc(c, y) == 1.0
    assert np.all(confidence_from_uncertainty([1.0, np.nan, np.inf]) == np.array([-1.0, -np.inf, -np.inf]))


def _brute_aurc(c: np.ndarray, y: np.ndarray) -> float:
    """Average AURC over every ordering consistent with the confidences (ties permuted)."""
    n = len(c)
    values = []
    for perm in itertools.permutations(range(n)):
        cs = c[list(perm)]
        if any(cs[i] < cs[i + 1] for i in range(n - 1)):
            continue
        err = 1 - y[list(perm)]
        values.append(np.mean(np.cumsum(err) / np.arange(1, n + 1)))
    return float(np.mean(values))


def test_aurc_averages_over_ties() -> None:
    c = np.array([0.9, 0.5, 0.5, 0.5, 0.1, 0.1])
    y = np.array([1, 0, 1, 0, 1, 0])
    assert aurc(c, y) == pytest.approx(_brute_aurc(c, y), abs=1e-12)


def test_risk_coverage_curve_without_ties() -> None:
    cov, risk = risk_coverage_curve([0.9, 0.1, 0.5], [1, 0, 0])
    assert np.allclose(cov, [1 / 3, 2 / 3, 1])
    assert np.allclose(risk, [0, 0.5, 2 / 3])


def test_prr_oracle_random_and_reversed() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 2000)
    assert prr(y.astype(float), y) == pytest.approx(1.0)
    assert prr(-y.astype(float), y) < -0.9
    assert abs(prr(rng.normal(size=2000), y)) < 0.1


def test_ece_known_values() -> None:
    p = np.full(100, 0.9)
    y = np.r_[np.ones(50), np.zeros(50)]
    assert ece(p, y) == pytest.approx(0.4)
    rng = np.random.default_rng(2)
    p = rng.uniform(size=20000)
    y = (rng.uniform(size=20000) < p).astype(int)  # perfectly calibrated by construction
    assert ece(p, y) < 0.02
    with pytest.raises(ValueError):
        ece([1.5], [1])


def test_brier() -> None:
    assert brier([1.0, 0.0, 0.5], [1, 0, 1]) == pytest.approx(0.25 / 3)


def test_bootstrap_ci_contains_estimate_and_shrinks() -> None:
    rng = np.random.default_rng(3)

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 2, n)
        return rng.normal(size=n) + y, y

    c, y = sample(200)
    lo, hi = bootstrap_ci(auroc, c, y, n_boot=300)
    assert lo < auroc(c, y) < hi
    c2, y2 = sample(3000)
    lo2, hi2 = bootstrap_ci(auroc, c2, y2, n_boot=300)
    assert hi2 - lo2 < (hi - lo) / 2


def test_length_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="one label per answer"):
        auroc([0.1, 0.2], [1])
