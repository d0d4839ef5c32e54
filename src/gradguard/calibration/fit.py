"""From cached, judged answers to a profile :class:`~gradguard.profiles.schema.Calibration`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gradguard.calibration.calibrators import CalibrationError, CalibrationFit, fit_calibrators
from gradguard.calibration.features import ALL_FEATURES, feature_matrix
from gradguard.calibration.metrics import auroc, confidence_from_uncertainty
from gradguard.evaluation.harness import CachedRecord
from gradguard.evaluation.report import judge_records
from gradguard.profiles.schema import (
    Calibration,
    CalibrationData,
    CVFigures,
    IsotonicCalibrator,
    LogisticCalibrator,
    finite_or_none,
    finite_pairs,
)
from gradguard.result import UNCERTAINTY_KEYS, ScoreResult

__all__ = ["SELECTION_RULE", "calibration_from_records", "calibration_from_fit"]

SELECTION_RULE = "highest cross-validated AUROC; within 0.005 AUROC, lowest cross-validated Brier score"


def _cv(fit: CalibrationFit, name: str) -> CVFigures:
    r = fit.reports[name]
    return CVFigures(
        auroc=finite_or_none(r.auroc),
        auroc_ci=finite_pairs(r.auroc_ci),
        brier=finite_or_none(r.brier),
        ece=finite_or_none(r.ece),
        aurc=finite_or_none(r.aurc),
    )


def calibration_from_fit(
    fit: CalibrationFit,
    correct: np.ndarray,
    *,
    n_unscored: int,
    data: CalibrationData,
    baselines_auroc: dict[str, float | None],
) -> Calibration:
    """Package a :class:`CalibrationFit` (both calibrators + CV figures) for storage in a profile."""
    chosen = fit.reports[fit.chosen]
    lg = fit.logistic
    return Calibration(
        chosen=fit.chosen,  # type: ignore[arg-type]
        selection_rule=SELECTION_RULE,
        isotonic=IsotonicCalibrator(x=fit.isotonic.x, y=fit.isotonic.y, cv=_cv(fit, "isotonic")),
        logistic=LogisticCalibrator(
            features=lg.features, mean=lg.mean, scale=lg.scale, coef=lg.coef, intercept=lg.intercept, C=lg.C,
            cv=_cv(fit, "logistic"),
        ),
        n=int(correct.size),
        n_unscored=n_unscored,
        n_correct=int(correct.sum()),
        folds=fit.folds,
        seed=fit.seed,
        auroc=finite_or_none(chosen.auroc),
        auroc_ci=finite_pairs(chosen.auroc_ci),
        aurc=finite_or_none(chosen.aurc),
        ece=finite_or_none(chosen.ece),
        baselines_auroc=baselines_auroc,
        data=data,
        holdout_confidence=tuple(round(float(v), 6) for v in chosen.oof),
        holdout_correct=tuple(int(v) for v in correct),
    )


def calibration_from_records(
    records: Sequence[CachedRecord],
    *,
    judge: str = "containment",
    data_path: str,
    data_sha256: str | None,
    system_prompt: str | None,
    max_new_tokens: int,
    folds: int = 5,
    seed: int = 0,
) -> Calibration:
    """Judge the answers, cross-validate and fit both calibrators, and return the profile's calibration.

    Only scored answers enter the fit; unscored ones (empty answers) are counted in
    ``n_unscored`` (they never get a confidence, so a threshold never accepts them).
    ``baselines_auroc`` holds each raw score's AUROC on the same scored answers.
    """
    y_all = judge_records(records, judge)
    results: list[ScoreResult | None] = [r.result for r in records]
    scored_results = [r for r in results if r is not None and r.scored]
    if not scored_results:
        raise CalibrationError("none of the answers was scored; nothing to calibrate")
    offsets = {(r.spt_offset, tuple(r.layer_span)) for r in scored_results}
    if len(offsets) != 1:
        raise CalibrationError(f"the answers were scored at different offsets/layer spans {sorted(offsets)}; use one setting")
    X, mask = feature_matrix(scored_results, ALL_FEATURES)
    scored_idx = [i for i, r in enumerate(results) if r is not None and r.scored]
    keep = np.asarray(scored_idx)[mask]
    y = y_all[keep]
    fit = fit_calibrators(X, y, features=ALL_FEATURES, folds=folds, seed=seed)
    kept = [results[i] for i in keep]
    baselines = {k: finite_or_none(auroc(confidence_from_uncertainty([getattr(r, k) for r in kept]), y)) for k in UNCERTAINTY_KEYS}
    offset, span = next(iter(offsets))
    data = CalibrationData(
        path=data_path,
        sha256=data_sha256,
        n_questions=len(records),
        system_prompt=system_prompt,
        max_new_tokens=max_new_tokens,
        judge=judge,
        spt_offset=offset,
        layer_span=span,  # type: ignore[arg-type]
    )
    return calibration_from_fit(fit, y, n_unscored=len(records) - int(y.size), data=data, baselines_auroc=baselines)
