"""Calibration features read off one :class:`~gradguard.result.ScoreResult` (no extra model pass).

Every feature is an *uncertainty-like* quantity (larger = typically less confident),
but the calibrators learn the direction from data:

=====================  ===========================================================
``log_hybridgrad``     log HybridGrad (the paper's score; the isotonic calibrator's input)
``log_semgrad``        log SemGrad
``log_paragrad``       log ParaGrad
``mean_entropy``       mean token entropy Ĥ
``mean_nll``           length-normalised NLL
``g_nll``              G-NLL, the summed NLL of the answer
``max_nll``            the largest token NLL
``log_answer_length``  log of the number of answer tokens
=====================  ===========================================================

Gradient scores are logged because they span orders of magnitude; a zero score is
clipped to 1e-30 before the log.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from gradguard.result import ScoreResult

__all__ = ["ISOTONIC_FEATURE", "LOGISTIC_FEATURES", "ALL_FEATURES", "feature_vector", "feature_matrix"]

#: The isotonic calibrator's single input.
ISOTONIC_FEATURE = "log_hybridgrad"
#: The logistic calibrator's inputs, in order.
LOGISTIC_FEATURES: tuple[str, ...] = (
    "log_semgrad",
    "log_paragrad",
    "mean_entropy",
    "mean_nll",
    "g_nll",
    "max_nll",
    "log_answer_length",
)
ALL_FEATURES: tuple[str, ...] = (ISOTONIC_FEATURE, *LOGISTIC_FEATURES)

_TINY = 1e-30


def _log(x: float) -> float:
    return math.log(max(float(x), _TINY))


def _feature(result: ScoreResult, name: str) -> float:
    if name == "log_hybridgrad":
        return _log(result.hybridgrad)
    if name == "log_semgrad":
        return _log(result.semgrad)
    if name == "log_paragrad":
        return _log(result.paragrad)
    if name == "log_answer_length":
        return math.log(max(result.n_response_tokens, 1))
    if name in ("mean_entropy", "mean_nll", "g_nll", "max_nll"):
        return float(getattr(result, name))
    raise KeyError(f"unknown calibration feature {name!r}; known: {ALL_FEATURES}")


def feature_vector(result: ScoreResult, names: Sequence[str] = ALL_FEATURES) -> NDArray[np.float64] | None:
    """The named features of one result, or None when the result is unscored (empty answer, NaN scores)."""
    if not result.scored:
        return None
    vec = np.array([_feature(result, n) for n in names], dtype=np.float64)
    return vec if np.all(np.isfinite(vec)) else None


def feature_matrix(
    results: Sequence[ScoreResult], names: Sequence[str] = ALL_FEATURES
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """``(X, scored)``: one row per scored result (shape ``[n_scored, len(names)]``) and the mask of scored results."""
    rows: list[NDArray[np.float64]] = []
    mask = np.zeros(len(results), dtype=bool)
    for i, r in enumerate(results):
        v = feature_vector(r, names)
        if v is not None:
            rows.append(v)
            mask[i] = True
    X = np.vstack(rows) if rows else np.zeros((0, len(names)))
    return X, mask
