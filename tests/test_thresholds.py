"""Risk-controlled thresholds: exact bounds, feasibility, and the guarantee on synthetic data with known risk."""

from __future__ import annotations

import numpy as np
import pytest

from gradguard.calibration.thresholds import (
    ThresholdResult,
    binomial_p_value,
    choose_threshold,
    clopper_pearson_upper,
)
from gradguard.errors import GradguardError, InputError


def test_clopper_pearson_closed_form_for_zero_errors() -> None:
    # with 0 errors in n, the one-sided (1-delta) upper bound solves (1-p)^n = delta
    for n, delta in [(10, 0.1), (57, 0.05), (400, 0.2)]:
        assert clopper_pearson_upper(0, n, delta) == pytest.approx(1 - delta ** (1 / n), rel=1e-9)
    assert clopper_pearson_upper(3, 3, 0.1) == 1.0
    assert clopper_pearson_upper(0, 0, 0.1) == 1.0


@pytest.mark.parametrize("n", [5, 40, 300])
def test_p_value_and_bound_agree(n: int) -> None:
    delta = 0.1
    for errors in range(0, n + 1, max(1, n // 10)):
        bound = clopper_pearson_upper(errors, n, delta)
        for eps in (0.05, 0.2, 0.5):
            if abs(bound - eps) < 1e-9:
                continue
            assert (binomial_p_value(errors, n, eps) <= delta) == (bound <= eps)


def _synthetic(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Confidence c ~ U(0,1), correct with probability c: error among c >= t is (1 - t) / 2."""
    c = rng.uniform(size=n)
    y = (rng.uniform(size=n) < c).astype(int)
    return c, y


def test_feasible_threshold_meets_its_bound() -> None:
    c, y = _synthetic(1000, np.random.default_rng(0))
    r = choose_threshold(c, y, epsilon=0.15, delta=0.1)
    assert isinstance(r, ThresholdResult)
    assert r.feasible and r.threshold is not None
    assert r.upper_bound is not None and r.upper_bound <= 0.15
    accepted = c >= r.threshold
    assert r.n_accepted == accepted.sum()
    assert r.empirical_error == pytest.approx(1 - y[accepted].mean())
    assert r.expected_coverage == pytest.approx(accepted.mean())
    # true accepted-answer error (1 - t)/2 <= 0.15 needs t >= 0.7; coverage about 0.3 at best
    assert 0.5 < r.threshold < 0.9
    assert 0.1 < r.expected_coverage < 0.45


def test_unscored_questions_lower_coverage_only() -> None:
    c, y = _synthetic(500, np.random.default_rng(1))
    a = choose_threshold(c, y, 0.2, 0.1)
    b = choose_threshold(c, y, 0.2, 0.1, n_unscored=500)
    assert a.threshold == b.threshold
    assert b.expected_coverage == pytest.approx(a.expected_coverage / 2)
    assert b.n_calibration == 1000


def test_infeasible_target_returns_no_threshold() -> None:
    c, y = _synthetic(300, np.random.default_rng(2))
    r = choose_threshold(c, y, epsilon=0.005, delta=0.1)
    assert not r.feasible and r.threshold is None
    assert r.expected_coverage == 0.0 and r.n_accepted == 0
    assert r.upper_bound is not None and r.upper_bound > 0.005
    assert "no threshold" in r.message


def test_all_wrong_is_infeasible_and_all_right_accepts_everything() -> None:
    c = np.linspace(0.01, 0.99, 200)
    assert not choose_threshold(c, np.zeros(200), 0.3).feasible
    r = choose_threshold(c, np.ones(200), 0.05)
    assert r.feasible and r.expected_coverage == 1.0 and r.empirical_error == 0.0


def test_single_chain_from_the_strict_end_certifies_nothing() -> None:
    """Why several chains: from lambda = 1 the first thresholds accept too few answers to pass."""
    c = np.linspace(0.01, 0.99, 200)
    assert not choose_threshold(c, np.ones(200), 0.05, starts=1).feasible
    assert choose_threshold(c, np.ones(200), 0.05, starts=10).feasible


def test_guarantee_holds_on_repeated_draws() -> None:
    """Over many calibration sets the chosen threshold's true error exceeds epsilon at most ~delta of the time,
    while the naive rule (empirical error <= epsilon) fails far more often on the same draws."""
    eps, delta, n, reps = 0.2, 0.1, 1000, 300
    rng = np.random.default_rng(3)
    failures = feasible = naive_failures = 0
    for _ in range(reps):
        c, y = _synthetic(n, rng)
        r = choose_threshold(c, y, eps, delta)
        if r.feasible:
            assert r.threshold is not None
            feasible += 1
            failures += (1 - r.threshold) / 2 > eps  # true error among c >= t is (1 - t) / 2
        order = np.argsort(-c)
        emp = np.cumsum(1 - y[order]) / np.arange(1, n + 1)
        ok = np.flatnonzero(emp <= eps)
        naive_t = c[order][ok.max()]
        naive_failures += (1 - naive_t) / 2 > eps
    assert feasible >= 0.9 * reps  # the check is not vacuous
    assert failures / reps <= delta
    assert naive_failures / reps > 2 * delta


def test_bad_arguments_name_the_value() -> None:
    with pytest.raises(InputError, match="epsilon=1.5"):
        choose_threshold([0.5], [1], 1.5)
    with pytest.raises(InputError, match="delta=0"):
        choose_threshold([0.5], [1], 0.1, 0)
    with pytest.raises(GradguardError):
        choose_threshold([0.5, np.nan], [1, 0], 0.1)
