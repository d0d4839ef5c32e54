"""The two calibrators (scores → P(answer correct)) and their cross-validated selection.

- **isotonic**: a non-increasing step/linear map from log HybridGrad (the paper's score)
  to the probability of being correct (``sklearn.isotonic.IsotonicRegression``).
- **logistic**: an L2-regularised logistic regression over standardised features
  (:data:`~gradguard.calibration.features.LOGISTIC_FEATURES`); the regularisation
  strength ``C`` is picked by an inner stratified cross-validation on log-loss.

Both are scored by out-of-fold (stratified K-fold) predictions on the same data:
AUROC (with a bootstrap interval), Brier score, ECE and AURC. :func:`select_calibrator`
takes the higher cross-validated AUROC; when the two are within ``auroc_tolerance``
of each other the lower Brier score decides.

Fitted calibrators are plain numbers (:class:`IsotonicParams`, :class:`LogisticParams`)
so a profile stores them as JSON and applies them with numpy; scikit-learn is needed
only to fit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray

from gradguard.calibration.features import ALL_FEATURES, ISOTONIC_FEATURE, LOGISTIC_FEATURES
from gradguard.calibration.metrics import aurc, auroc, bootstrap_ci, brier, ece
from gradguard.errors import GradguardError

__all__ = [
    "CALIBRATORS",
    "CalibrationError",
    "IsotonicParams",
    "LogisticParams",
    "CVReport",
    "CalibrationFit",
    "fit_isotonic",
    "predict_isotonic",
    "fit_logistic",
    "predict_logistic",
    "cross_validated_predictions",
    "select_calibrator",
    "fit_calibrators",
]

#: The calibrator names, in the order they are reported.
CALIBRATORS: tuple[str, ...] = ("isotonic", "logistic")
_DEFAULT_CS: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)


class CalibrationError(GradguardError):
    """The calibration data cannot support a fit (too few answers, one class only, bad shapes)."""


@dataclass(frozen=True)
class IsotonicParams:
    """A fitted isotonic map: ``P(correct) = interp(log_hybridgrad, x, y)``, clipped at both ends."""

    x: tuple[float, ...]
    y: tuple[float, ...]


@dataclass(frozen=True)
class LogisticParams:
    """A fitted logistic model: ``P(correct) = σ(((X − mean) / scale) · coef + intercept)``."""

    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    C: float


@dataclass(frozen=True)
class CVReport:
    """Out-of-fold figures of one calibrator (confidences: larger = more confident)."""

    name: str
    oof: NDArray[np.float64] = field(repr=False)
    auroc: float
    auroc_ci: tuple[float, float]
    brier: float
    ece: float
    aurc: float


@dataclass(frozen=True)
class CalibrationFit:
    """Both calibrators fitted on all the data, their cross-validated figures and the chosen one."""

    isotonic: IsotonicParams
    logistic: LogisticParams
    reports: dict[str, CVReport]
    chosen: str
    folds: int
    seed: int


def _check_xy(X: NDArray[np.float64], y: NDArray[np.float64]) -> None:
    if X.shape[0] != y.shape[0]:
        raise CalibrationError(f"{X.shape[0]} feature rows but {y.shape[0]} labels; pass one label per answer")
    if X.shape[0] == 0:
        raise CalibrationError("no scored answers to calibrate on; score some questions first")
    if not np.all(np.isfinite(X)):
        raise CalibrationError("calibration features contain NaN/inf; drop unscored answers first")


def fit_isotonic(log_hybridgrad: ArrayLike, correct: ArrayLike) -> IsotonicParams:
    """Fit the non-increasing map from log HybridGrad (larger = less confident) to P(correct)."""
    from sklearn.isotonic import IsotonicRegression

    x = np.asarray(log_hybridgrad, dtype=np.float64).reshape(-1)
    y = np.asarray(correct, dtype=np.float64).reshape(-1)
    _check_xy(x[:, None], y)
    iso = IsotonicRegression(increasing=False, out_of_bounds="clip", y_min=0.0, y_max=1.0)
    iso.fit(x, y)
    return IsotonicParams(
        x=tuple(float(v) for v in iso.X_thresholds_), y=tuple(float(v) for v in iso.y_thresholds_)
    )


def predict_isotonic(params: IsotonicParams | tuple[Sequence[float], Sequence[float]], log_hybridgrad: ArrayLike) -> NDArray[np.float64]:
    """P(correct) for each log HybridGrad value (linear between the fitted knots, constant outside)."""
    xs, ys = (params.x, params.y) if isinstance(params, IsotonicParams) else params
    x = np.asarray(log_hybridgrad, dtype=np.float64)
    if len(xs) == 1:
        return np.full(x.shape, float(ys[0]))
    return np.clip(np.interp(x, np.asarray(xs), np.asarray(ys)), 0.0, 1.0)


def _standardise(X: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    mean = X.mean(axis=0)
    scale = X.std(axis=0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    return mean, scale


def _fit_lr(Z: NDArray[np.float64], y: NDArray[np.float64], C: float) -> tuple[NDArray[np.float64], float]:
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=C, solver="lbfgs", max_iter=2000)
    lr.fit(Z, y.astype(int))
    return lr.coef_[0].astype(np.float64), float(lr.intercept_[0])


def _sigmoid(z: NDArray[np.float64]) -> NDArray[np.float64]:
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(z, -500, 500))), dtype=np.float64)


def fit_logistic(
    X: ArrayLike,
    correct: ArrayLike,
    features: Sequence[str] = LOGISTIC_FEATURES,
    *,
    Cs: Sequence[float] = _DEFAULT_CS,
    inner_folds: int = 5,
    seed: int = 0,
) -> LogisticParams:
    """Fit the L2 logistic calibrator; ``C`` is chosen by inner stratified CV log-loss (ties → smaller C)."""
    from sklearn.model_selection import StratifiedKFold

    Xa = np.asarray(X, dtype=np.float64)
    y = np.asarray(correct, dtype=np.float64).reshape(-1)
    _check_xy(Xa, y)
    if Xa.ndim != 2 or Xa.shape[1] != len(features):
        raise CalibrationError(f"X has shape {Xa.shape}; expected [n, {len(features)}] for features {tuple(features)}")
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if min(n_pos, n_neg) == 0:
        raise CalibrationError(
            f"all {y.size} answers are {'correct' if n_neg == 0 else 'wrong'}; calibration needs both outcomes"
        )
    best_C = float(Cs[0])
    k = min(inner_folds, n_pos, n_neg)
    if len(Cs) > 1 and k >= 2:
        losses = []
        skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        for C in Cs:
            loss = 0.0
            for tr, te in skf.split(Xa, y):
                mean, scale = _standardise(Xa[tr])
                coef, b = _fit_lr((Xa[tr] - mean) / scale, y[tr], C)
                p = np.clip(_sigmoid(((Xa[te] - mean) / scale) @ coef + b), 1e-12, 1 - 1e-12)
                loss -= float(np.sum(y[te] * np.log(p) + (1 - y[te]) * np.log(1 - p)))
            losses.append(loss)
        best_C = float(Cs[int(np.argmin(np.round(losses, 9)))])
    mean, scale = _standardise(Xa)
    coef, b = _fit_lr((Xa - mean) / scale, y, best_C)
    return LogisticParams(
        features=tuple(features),
        mean=tuple(float(v) for v in mean),
        scale=tuple(float(v) for v in scale),
        coef=tuple(float(v) for v in coef),
        intercept=b,
        C=best_C,
    )


def predict_logistic(params: LogisticParams, X: ArrayLike) -> NDArray[np.float64]:
    """P(correct) for each row of ``X`` (columns in ``params.features`` order)."""
    Xa = np.atleast_2d(np.asarray(X, dtype=np.float64))
    z = ((Xa - np.asarray(params.mean)) / np.asarray(params.scale)) @ np.asarray(params.coef) + params.intercept
    return _sigmoid(z)


def cross_validated_predictions(
    fit_predict: Callable[[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]], NDArray[np.float64]],
    X: NDArray[np.float64],
    y: NDArray[np.float64],
    *,
    folds: int = 5,
    seed: int = 0,
) -> NDArray[np.float64]:
    """Out-of-fold predictions: ``fit_predict(X_train, y_train, X_test)`` on stratified folds."""
    from sklearn.model_selection import StratifiedKFold

    oof = np.full(y.shape[0], np.nan)
    skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for tr, te in skf.split(X, y):
        oof[te] = fit_predict(X[tr], y[tr], X[te])
    return oof


def _report(name: str, oof: NDArray[np.float64], y: NDArray[np.float64], seed: int, n_boot: int) -> CVReport:
    return CVReport(
        name=name,
        oof=oof,
        auroc=auroc(oof, y),
        auroc_ci=bootstrap_ci(auroc, oof, y, n_boot=n_boot, seed=seed),
        brier=brier(oof, y),
        ece=ece(oof, y),
        aurc=aurc(oof, y),
    )


def select_calibrator(reports: dict[str, CVReport], *, auroc_tolerance: float = 0.005) -> str:
    """The calibrator with the higher cross-validated AUROC; within ``auroc_tolerance``, the lower Brier score."""
    ranked = sorted(reports.values(), key=lambda r: -r.auroc)
    best = ranked[0]
    near = [r for r in ranked if best.auroc - r.auroc <= auroc_tolerance]
    return min(near, key=lambda r: (r.brier, CALIBRATORS.index(r.name) if r.name in CALIBRATORS else 99)).name


def fit_calibrators(
    X: ArrayLike,
    correct: ArrayLike,
    *,
    features: Sequence[str] = ALL_FEATURES,
    folds: int = 5,
    seed: int = 0,
    auroc_tolerance: float = 0.005,
    n_boot: int = 1000,
) -> CalibrationFit:
    """Cross-validate and fit both calibrators on ``X`` (columns named by ``features``) and 0/1 labels.

    ``n_boot`` bootstrap resamples give each calibrator's 95% interval on its CV AUROC.
    """
    Xa = np.asarray(X, dtype=np.float64)
    y = np.asarray(correct, dtype=np.float64).reshape(-1)
    _check_xy(Xa, y)
    names = list(features)
    missing = [f for f in (ISOTONIC_FEATURE, *LOGISTIC_FEATURES) if f not in names]
    if missing:
        raise CalibrationError(f"features {missing} are missing from X's columns {names}")
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if min(n_pos, n_neg) < folds:
        raise CalibrationError(
            f"{n_pos} correct and {n_neg} wrong answers are too few for {folds}-fold cross-validation; "
            f"calibrate on more questions (at least {folds} of each outcome, a few hundred questions in practice)"
        )
    iso_col = names.index(ISOTONIC_FEATURE)
    log_cols = [names.index(f) for f in LOGISTIC_FEATURES]

    def iso_fp(Xtr: NDArray[np.float64], ytr: NDArray[np.float64], Xte: NDArray[np.float64]) -> NDArray[np.float64]:
        return predict_isotonic(fit_isotonic(Xtr[:, iso_col], ytr), Xte[:, iso_col])

    def log_fp(Xtr: NDArray[np.float64], ytr: NDArray[np.float64], Xte: NDArray[np.float64]) -> NDArray[np.float64]:
        return predict_logistic(fit_logistic(Xtr[:, log_cols], ytr, seed=seed), Xte[:, log_cols])

    reports = {
        "isotonic": _report("isotonic", cross_validated_predictions(iso_fp, Xa, y, folds=folds, seed=seed), y, seed, n_boot),
        "logistic": _report("logistic", cross_validated_predictions(log_fp, Xa, y, folds=folds, seed=seed), y, seed, n_boot),
    }
    return CalibrationFit(
        isotonic=fit_isotonic(Xa[:, iso_col], y),
        logistic=fit_logistic(Xa[:, log_cols], y, seed=seed),
        reports=reports,
        chosen=select_calibrator(reports, auroc_tolerance=auroc_tolerance),
        folds=folds,
        seed=seed,
    )
