"""Selective-prediction metrics: AUROC, AURC, PRR, ECE, Brier, with percentile-bootstrap intervals.

Conventions used throughout:

- ``confidence``: larger = more confident (a calibrated probability, or ``-uncertainty``
  for a raw score; see :func:`confidence_from_uncertainty`). A non-finite confidence
  (NaN, an unscored answer) counts as the least confident of all.
- ``correct``: 1 when the answer was judged correct, 0 otherwise.

AUROC is the probability that a random correct answer gets a higher confidence than a
random wrong one (ties count one half): 0.5 is chance, 1 is perfect.
AURC is the area under the risk–coverage curve (answers accepted in order of decreasing
confidence; risk = error rate among the accepted); lower is better. Tied confidences are
accepted together, i.e. the curve is the expectation over random orders inside a tie.
PRR (prediction rejection ratio) is ``(AURC_random - AURC) / (AURC_random - AURC_oracle)``:
0 is chance, 1 is the oracle ordering.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike, NDArray

from gradguard.extras import require

__all__ = [
    "auroc",
    "aurc",
    "prr",
    "ece",
    "brier",
    "risk_coverage_curve",
    "bootstrap_ci",
    "confidence_from_uncertainty",
]


def _prepare(confidence: ArrayLike, correct: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    c = np.asarray(confidence, dtype=np.float64).reshape(-1)
    y = np.asarray(correct, dtype=np.float64).reshape(-1)
    if c.shape != y.shape:
        raise ValueError(f"confidence has {c.size} values but correct has {y.size}; pass one label per answer")
    if y.size and not np.all((y == 0) | (y == 1)):
        raise ValueError("correct must hold only 0/1 (or booleans)")
    c = np.where(np.isfinite(c), c, -np.inf)
    return c, y


def confidence_from_uncertainty(uncertainty: ArrayLike) -> NDArray[np.float64]:
    """``-uncertainty`` with non-finite values mapped to ``-inf`` (least confident)."""
    u = np.asarray(uncertainty, dtype=np.float64)
    return np.where(np.isfinite(u), -u, -np.inf)


def auroc(confidence: ArrayLike, correct: ArrayLike) -> float:
    """Area under the ROC curve for telling correct answers from wrong ones (NaN with only one class)."""
    rankdata = require("scipy.stats", "calibrate", "AUROC").rankdata

    c, y = _prepare(confidence, correct)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(c, method="average")
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def risk_coverage_curve(confidence: ArrayLike, correct: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``(coverage, risk)`` at every acceptance count k = 1..n (coverage k/n), ties averaged.

    Answers are accepted in order of decreasing confidence; inside a group of tied
    confidences the errors accrue linearly (the expectation over random orders).
    """
    c, y = _prepare(confidence, correct)
    n = c.size
    if n == 0:
        return np.zeros(0), np.zeros(0)
    order = np.argsort(-c, kind="stable")
    cs, err = c[order], 1.0 - y[order]
    # group boundaries of equal confidence
    starts = np.flatnonzero(np.r_[True, cs[1:] != cs[:-1]])
    ends = np.r_[starts[1:], n]
    cum_err = np.empty(n)
    before = 0.0
    for a, b in zip(starts, ends, strict=True):
        g = b - a
        e = err[a:b].sum()
        cum_err[a:b] = before + e * np.arange(1, g + 1) / g
        before += e
    k = np.arange(1, n + 1, dtype=np.float64)
    return k / n, cum_err / k


def aurc(confidence: ArrayLike, correct: ArrayLike) -> float:
    """Area under the risk–coverage curve (mean risk over acceptance counts); lower is better."""
    _, risk = risk_coverage_curve(confidence, correct)
    return float(risk.mean()) if risk.size else float("nan")


def _oracle_aurc(y: NDArray[np.float64]) -> float:
    n = y.size
    n_c = int(y.sum())
    k = np.arange(1, n + 1, dtype=np.float64)
    return float((np.maximum(k - n_c, 0.0) / k).mean())


def prr(confidence: ArrayLike, correct: ArrayLike) -> float:
    """Prediction rejection ratio: 0 = chance ordering, 1 = oracle ordering (NaN with only one class)."""
    c, y = _prepare(confidence, correct)
    if y.size == 0 or y.min() == y.max():
        return float("nan")
    random = 1.0 - float(y.mean())  # expected risk at every coverage under a random order
    oracle = _oracle_aurc(y)
    return float((random - aurc(c, y)) / (random - oracle))


def ece(probability: ArrayLike, correct: ArrayLike, n_bins: int = 10) -> float:
    """Expected calibration error with ``n_bins`` equal-width bins on [0, 1]: Σ_b (n_b/n)·|mean p_b − accuracy_b|."""
    p = np.asarray(probability, dtype=np.float64).reshape(-1)
    y = np.asarray(correct, dtype=np.float64).reshape(-1)
    if p.shape != y.shape:
        raise ValueError(f"probability has {p.size} values but correct has {y.size}")
    if p.size == 0:
        return float("nan")
    if not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
        raise ValueError("ece needs probabilities in [0, 1]; calibrate the scores first")
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            total += m.sum() / p.size * abs(p[m].mean() - y[m].mean())
    return float(total)


def brier(probability: ArrayLike, correct: ArrayLike) -> float:
    """Mean squared difference between the probability of being correct and the 0/1 outcome; lower is better."""
    p = np.asarray(probability, dtype=np.float64).reshape(-1)
    y = np.asarray(correct, dtype=np.float64).reshape(-1)
    return float(np.mean((p - y) ** 2)) if p.size else float("nan")


def bootstrap_ci(
    metric: Callable[..., float],
    *arrays: ArrayLike,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``metric(*arrays)`` resampling answers with replacement.

    Resamples on which the metric is undefined (NaN, e.g. only one class) are dropped.
    Returns ``(nan, nan)`` when fewer than half of the resamples are usable.
    """
    arrs = [np.asarray(a) for a in arrays]
    n = arrs[0].shape[0]
    if any(a.shape[0] != n for a in arrs):
        raise ValueError("bootstrap_ci: all arrays must have the same length")
    if not 0 < level < 1:
        raise ValueError(f"level={level} must be in (0, 1), e.g. 0.95")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, size=n)
        v = metric(*(a[idx] for a in arrs))
        if np.isfinite(v):
            values.append(v)
    if len(values) < n_boot / 2:
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    lo, hi = np.quantile(values, [alpha, 1 - alpha])
    return float(lo), float(hi)
