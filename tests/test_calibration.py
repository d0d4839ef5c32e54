"""Judges, features, both calibrators and their selection, on synthetic data with known probabilities."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression

from gradguard.calibration.calibrators import (
    CalibrationError,
    fit_calibrators,
    fit_isotonic,
    fit_logistic,
    predict_isotonic,
    predict_logistic,
)
from gradguard.calibration.features import ALL_FEATURES, LOGISTIC_FEATURES, feature_matrix, feature_vector
from gradguard.calibration.judge import ContainmentJudge, TokenF1Judge, get_judge, normalize_answer, token_f1
from gradguard.calibration.metrics import auroc, ece
from gradguard.errors import GradguardError
from gradguard.result import ScoreResult, Timings


def make_result(
    hybridgrad: float = 0.01,
    semgrad: float = 0.02,
    paragrad: float = 0.005,
    mean_entropy: float = 1.0,
    mean_nll: float = 0.5,
    g_nll: float = 2.0,
    max_nll: float = 1.5,
    n: int = 4,
    empty: bool = False,
    spt_offset: int = -2,
    layer_span: tuple[int, int] = (12, 24),
) -> ScoreResult:
    nan = math.nan
    return ScoreResult(
        hybridgrad=nan if empty else hybridgrad,
        semgrad=nan if empty else semgrad,
        paragrad=nan if empty else paragrad,
        exgrad=nan if empty else paragrad / 2,
        alpha=nan if empty else math.exp(-mean_entropy),
        mean_entropy=nan if empty else mean_entropy,
        g_nll=nan if empty else g_nll,
        mean_nll=nan if empty else mean_nll,
        max_nll=nan if empty else max_nll,
        n_response_tokens=0 if empty else n,
        spt_offset=spt_offset,
        spt_position=30 + spt_offset,
        layer_span=layer_span,
        n_prompt_tokens=30,
        timings=Timings(score_s=0.1),
        empty=empty,
    )


# -- judges -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "golds", "expected"),
    [
        ("Charles Darwin proposed it.", ["darwin"], True),
        ("The Sun!", ["the sun"], True),
        ("iron-deficiency anemia", ["iron-def"], True),
        ("Nucleotides", ["nucleotide"], True),  # gold may end inside a word (plural)
        ("a lion", ["ion"], False),  # but must start at a word boundary
        ("Ångström", ["angstrom"], True),
        ("", ["darwin"], False),
        ("Lamarck", ["darwin", "wallace"], False),
        ("Alfred Wallace", ["darwin", "wallace"], True),
    ],
)
def test_containment_judge(response: str, golds: list[str], expected: bool) -> None:
    assert ContainmentJudge()(response, golds) is expected


def test_normalize_answer() -> None:
    assert normalize_answer("  The  Blood-Vessels! ") == "blood vessels"
    assert normalize_answer("An apple, a pear") == "apple pear"


def test_token_f1_judge_penalises_long_answers_that_containment_accepts() -> None:
    long = "Arteries, veins and capillaries are all examples of blood vessels in the body."
    assert ContainmentJudge()(long, ["blood vessels"])
    assert not TokenF1Judge()(long, ["blood vessels"])
    assert TokenF1Judge()("blood vessels", ["blood vessels"])
    assert token_f1("the blood vessel", "blood vessels") == pytest.approx(0.5)


def test_unknown_judge_names_the_choices() -> None:
    with pytest.raises(GradguardError, match="containment"):
        get_judge("bem")


# -- features ------------------------------------------------------------------------------------------


def test_feature_vector_values_and_unscored() -> None:
    r = make_result(hybridgrad=0.01, semgrad=0.02, paragrad=0.005, mean_entropy=1.2, n=8)
    v = feature_vector(r)
    assert v is not None
    named = dict(zip(ALL_FEATURES, v))
    assert named["log_hybridgrad"] == pytest.approx(math.log(0.01))
    assert named["log_semgrad"] == pytest.approx(math.log(0.02))
    assert named["log_answer_length"] == pytest.approx(math.log(8))
    assert named["mean_entropy"] == 1.2
    assert feature_vector(make_result(empty=True)) is None
    X, mask = feature_matrix([r, make_result(empty=True), r])
    assert X.shape == (2, len(ALL_FEATURES)) and mask.tolist() == [True, False, True]


# -- calibrators -----------------------------------------------------------------------------------------


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


def test_isotonic_matches_sklearn_and_is_non_increasing() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=400)
    y = (rng.uniform(size=400) < _sigmoid(-2 * x)).astype(int)
    params = fit_isotonic(x, y)
    ref = IsotonicRegression(increasing=False, out_of_bounds="clip", y_min=0, y_max=1).fit(x, y)
    grid = np.linspace(-4, 4, 101)
    assert np.allclose(predict_isotonic(params, grid), ref.predict(grid))
    p = predict_isotonic(params, grid)
    assert np.all(np.diff(p) <= 1e-12) and p.min() >= 0 and p.max() <= 1


def test_isotonic_recovers_known_probabilities() -> None:
    rng = np.random.default_rng(1)
    x = rng.uniform(-3, 3, size=5000)
    truth = _sigmoid(-1.5 * x)
    y = (rng.uniform(size=x.size) < truth).astype(int)
    params = fit_isotonic(x, y)
    grid = np.linspace(-2.5, 2.5, 11)
    assert np.max(np.abs(predict_isotonic(params, grid) - _sigmoid(-1.5 * grid))) < 0.08


def test_logistic_recovers_direction_and_is_calibrated() -> None:
    rng = np.random.default_rng(2)
    n = 3000
    X = rng.normal(size=(n, len(LOGISTIC_FEATURES)))
    truth = _sigmoid(-1.0 + 1.5 * X[:, 2] - 0.8 * X[:, 4])  # mean_entropy up → more correct; g_nll down
    y = (rng.uniform(size=n) < truth).astype(int)
    params = fit_logistic(X, y)
    coef = np.asarray(params.coef) / np.asarray(params.scale)
    assert coef[2] == pytest.approx(1.5, abs=0.25)
    assert coef[4] == pytest.approx(-0.8, abs=0.2)
    assert np.all(np.abs(np.delete(coef, [2, 4])) < 0.2)
    p = predict_logistic(params, X)
    assert ece(p, y) < 0.03
    assert params.C in (0.01, 0.1, 1.0, 10.0)


def _design(n: int, rng: np.random.Generator, signal: str) -> tuple[np.ndarray, np.ndarray]:
    X = rng.normal(size=(n, len(ALL_FEATURES)))
    col = ALL_FEATURES.index(signal)
    truth = _sigmoid(-1.5 - 2.0 * X[:, col])
    y = (rng.uniform(size=n) < truth).astype(int)
    return X, y


def test_selection_prefers_logistic_when_the_signal_is_not_in_hybridgrad() -> None:
    X, y = _design(600, np.random.default_rng(3), "max_nll")
    fit = fit_calibrators(X, y, n_boot=100)
    assert fit.chosen == "logistic"
    assert fit.reports["logistic"].auroc > 0.75
    assert abs(fit.reports["isotonic"].auroc - 0.5) < 0.1
    oof = fit.reports["logistic"].oof
    assert oof.shape == (600,) and np.all((oof >= 0) & (oof <= 1))


def test_selection_with_signal_in_hybridgrad_only() -> None:
    X, y = _design(600, np.random.default_rng(4), "log_hybridgrad")
    fit = fit_calibrators(X, y, n_boot=100)
    iso = fit.reports["isotonic"]
    assert iso.auroc > 0.75
    # the out-of-fold confidences are calibrated (labels drawn from known probabilities)
    assert iso.ece < 0.08
    # whichever is chosen, it is the better one by AUROC up to the tolerance
    other = "logistic" if fit.chosen == "isotonic" else "isotonic"
    assert fit.reports[fit.chosen].auroc >= fit.reports[other].auroc - 0.005
    assert auroc(fit.reports[fit.chosen].oof, y) == pytest.approx(fit.reports[fit.chosen].auroc)


def test_too_few_correct_answers_is_a_clear_error() -> None:
    rng = np.random.default_rng(5)
    X = rng.normal(size=(100, len(ALL_FEATURES)))
    y = np.zeros(100, dtype=int)
    y[:3] = 1
    with pytest.raises(CalibrationError, match="3 correct"):
        fit_calibrators(X, y, n_boot=50)


def test_calibrators_do_not_warn() -> None:
    X, y = _design(300, np.random.default_rng(6), "mean_nll")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit_calibrators(X, y, n_boot=50)
