"""Risk-controlled confidence thresholds (Learn-then-Test with exact binomial p-values).

Goal: accept an answer when its calibrated confidence is ``>= threshold``, such that the
error rate among accepted answers is at most ``epsilon`` — with probability at least
``1 - delta`` over the draw of the calibration data.

Procedure (Angelopoulos, Bates, Candès, Jordan, Lei: *Learn then Test*, fixed-sequence
testing with multiple starts):

1. The candidate thresholds are a fixed grid, λ = 1.000, 0.999, …, 0.000, chosen before
   seeing any data.
2. For each λ the null hypothesis is "the error rate among answers with confidence ≥ λ
   exceeds ε". With ``n`` accepted calibration answers and ``e`` errors among them, its
   exact p-value is ``P(Binomial(n, ε) ≤ e)``; ``p ≤ δ'`` holds exactly when the one-sided
   (1−δ') Clopper–Pearson upper bound on the accepted-answer error is ``≤ ε``.
3. ``starts`` chains (by default 10, starting at λ = 1.0, 0.9, …, 0.1) each walk down the
   grid from their start, rejecting hypotheses at level δ' = δ / starts, and stop at their
   first non-rejection. A single chain from λ = 1 would stop at once: the strictest
   thresholds accept a handful of answers, too few to certify anything.
4. The returned threshold is the loosest λ rejected by any chain (largest coverage).

Each chain is a fixed-sequence test (family-wise error ≤ δ'), and the union bound over
the chains gives family-wise error ≤ δ: with probability ≥ 1 − δ over the calibration
sample, *every* certified λ — the returned one included — has population error ≤ ε among
the answers it accepts. This assumes future questions are exchangeable with the
calibration questions (same distribution, same model, same judge); it bounds the average
error over accepted answers, not the error of any single answer. When no λ passes, no
threshold is returned.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from pydantic import BaseModel, ConfigDict, Field

from gradguard.errors import InputError
from gradguard.extras import require

__all__ = [
    "ThresholdResult",
    "task_calibration",
    "task_threshold",
    "clopper_pearson_upper",
    "binomial_p_value",
    "choose_threshold",
    "DEFAULT_GRID",
    "DEFAULT_STARTS",
]

#: The default threshold grid, strictest first.
DEFAULT_GRID: tuple[float, ...] = tuple(float(v) for v in np.round(np.linspace(1.0, 0.0, 1001), 6))
#: Number of fixed-sequence chains (starting at 1.0, 0.9, …); δ is split evenly between them.
DEFAULT_STARTS = 10


def _stats() -> Any:
    """``scipy.stats`` (the ``calibrate`` extra)."""
    return require("scipy.stats", "calibrate", "risk-controlled thresholds")


class ThresholdResult(BaseModel):
    """A confidence threshold with a finite-sample bound on the error among accepted answers.

    Accept an answer when ``confidence >= threshold``. ``feasible`` is False (and
    ``threshold`` None) when no threshold meets ``epsilon`` at level ``delta``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    threshold: float | None = Field(..., description="Accept when confidence >= threshold; None when infeasible.")
    feasible: bool
    epsilon: float = Field(..., description="Target error rate among accepted answers.")
    delta: float = Field(..., description="Allowed probability that the guarantee fails.")
    expected_coverage: float = Field(
        ..., description="Fraction of calibration questions accepted at the threshold (0 when infeasible)."
    )
    upper_bound: float | None = Field(
        ...,
        description="Certified upper bound (Clopper-Pearson at level delta/starts) on the accepted-answer error at the "
        "threshold; when infeasible, the smallest such bound anywhere on the grid (None if nothing is ever accepted).",
    )
    empirical_error: float | None = Field(..., description="Error rate among accepted calibration answers.")
    n_calibration: int = Field(..., description="Calibration questions, unscored ones included.")
    n_accepted: int
    message: str


def clopper_pearson_upper(errors: int, n: int, delta: float) -> float:
    """One-sided (1−δ) Clopper–Pearson upper confidence bound on an error rate (1.0 when n = 0)."""
    beta = _stats().beta

    if n <= 0 or errors >= n:
        return 1.0
    return float(beta.ppf(1.0 - delta, errors + 1, n - errors))


def binomial_p_value(errors: int, n: int, epsilon: float) -> float:
    """Exact p-value of "error rate > ε" given ``errors`` in ``n``: ``P(Binomial(n, ε) ≤ errors)`` (1 when n = 0)."""
    binom = _stats().binom

    if n <= 0:
        return 1.0
    return float(binom.cdf(errors, n, epsilon))


def choose_threshold(
    confidence: ArrayLike,
    correct: ArrayLike,
    epsilon: float,
    delta: float = 0.1,
    *,
    n_unscored: int = 0,
    grid: tuple[float, ...] = DEFAULT_GRID,
    starts: int = DEFAULT_STARTS,
) -> ThresholdResult:
    """The loosest confidence threshold whose accepted-answer error is ≤ ``epsilon`` with probability ≥ 1−``delta``.

    ``confidence`` (larger = more confident) and ``correct`` (0/1) are held-out
    calibration pairs, e.g. the cross-validated confidences stored in a profile;
    ``n_unscored`` counts calibration questions that had no confidence (never accepted),
    which only lowers the coverage. See the module docstring for the procedure.
    """
    binom = _stats().binom

    if not 0 < epsilon < 1:
        raise InputError(
            f"epsilon={epsilon} must be in (0, 1): the tolerated error rate among accepted answers, e.g. 0.2"
        )
    if not 0 < delta < 1:
        raise InputError(f"delta={delta} must be in (0, 1): the allowed failure probability, e.g. 0.1")
    if starts < 1:
        raise InputError(f"starts={starts} must be >= 1")
    c = np.asarray(confidence, dtype=np.float64).reshape(-1)
    y = np.asarray(correct, dtype=np.float64).reshape(-1)
    if c.shape != y.shape:
        raise InputError(f"{c.size} confidences but {y.size} labels; pass one label per confidence")
    if not np.all(np.isfinite(c)):
        raise InputError("confidences must be finite; count unscored answers in n_unscored instead")
    if n_unscored < 0:
        raise InputError(f"n_unscored={n_unscored} must be >= 0")
    n_total = int(c.size + n_unscored)
    if n_total == 0:
        raise InputError("no calibration data; run `gradguard calibrate` first")
    level = delta / starts

    # accepted counts and errors at every grid point (accept when confidence >= lambda), strictest first
    lams = np.array(sorted(set(grid), reverse=True), dtype=np.float64)
    order = np.argsort(-c, kind="stable")
    cum_err = np.r_[0.0, np.cumsum(1.0 - y[order])]
    n_acc = np.searchsorted(-c[order], -lams, side="right")
    errs = cum_err[n_acc].astype(np.int64)
    pvals = np.where(n_acc > 0, binom.cdf(errs, np.maximum(n_acc, 1), epsilon), 1.0)
    rejected = pvals <= level

    # each chain certifies the run of consecutive rejections starting at its first grid point
    not_rejected = np.flatnonzero(~rejected)
    best = -1
    for s in range(starts):
        i0 = int(np.searchsorted(-lams, -(1.0 - s / starts) - 1e-12, side="left"))  # first grid point <= start
        j = int(np.searchsorted(not_rejected, i0))
        end = int(not_rejected[j]) if j < not_rejected.size else lams.size
        if end > i0:
            best = max(best, end - 1)

    if best < 0:
        nonempty = np.flatnonzero(n_acc > 0)
        if nonempty.size:
            beta = _stats().beta

            e_, n_ = errs[nonempty], n_acc[nonempty]
            bounds = np.where(e_ >= n_, 1.0, beta.ppf(1.0 - level, e_ + 1, np.maximum(n_ - e_, 1)))
            k = int(np.argmin(bounds))
            tight, ti = float(bounds[k]), int(nonempty[k])
            detail = (
                f"the tightest certifiable upper bound on the grid is {tight:.3f} (threshold {lams[ti]:.3f}, "
                f"{int(n_acc[ti])} of {n_total} accepted, {int(errs[ti])} wrong)"
            )
            if tight <= epsilon:
                detail += (
                    ", but no fixed-sequence chain reaches it: each chain must pass every stricter threshold "
                    "from its start first"
                )
        else:
            tight, detail = None, "no calibration answer has a confidence"
        return ThresholdResult(
            threshold=None,
            feasible=False,
            epsilon=epsilon,
            delta=delta,
            expected_coverage=0.0,
            upper_bound=tight,
            empirical_error=None,
            n_calibration=n_total,
            n_accepted=0,
            message=(
                f"no threshold guarantees an error rate <= {epsilon:g} among accepted answers at delta={delta:g} "
                f"on these {n_total} calibration questions: {detail}. "
                "Relax epsilon or delta, or calibrate on more questions."
            ),
        )
    lam, n, e = float(lams[best]), int(n_acc[best]), int(errs[best])
    bound = clopper_pearson_upper(e, n, level)
    coverage = n / n_total
    return ThresholdResult(
        threshold=lam,
        feasible=True,
        epsilon=epsilon,
        delta=delta,
        expected_coverage=coverage,
        upper_bound=bound,
        empirical_error=e / n,
        n_calibration=n_total,
        n_accepted=n,
        message=(
            f"accept answers with confidence >= {lam:.3f}: with probability >= {1 - delta:g} their error rate is "
            f"<= {epsilon:g} (certified upper bound {bound:.3f}); {n} of {n_total} calibration questions "
            f"({coverage:.1%}) were accepted, {e} of them wrong."
        ),
    )


def task_calibration(profile: Any, task: str | None = None) -> Any:
    """The :class:`~gradguard.profiles.schema.TaskCalibration` of ``task`` (default: the profile's default task).

    Raises :class:`~gradguard.profiles.errors.CalibrationMissingError` naming the
    ``gradguard calibrate`` command when the profile has no calibration for that task.
    """
    from gradguard.profiles.errors import CalibrationMissingError

    name = task or profile.default_task
    cal = profile.calibrations.get(name)
    if cal is None:
        have = sorted(profile.calibrations) or "none"
        raise CalibrationMissingError(
            f"profile {profile.name!r} has no calibration for task {name!r} (calibrated tasks: {have}); run "
            f"`gradguard calibrate --task {name} --data QA.jsonl --out PROFILE.json` first"
        )
    return cal


def task_threshold(profile: Any, task: str | None, epsilon: float, delta: float = 0.1) -> ThresholdResult:
    """The risk-controlled confidence threshold of one task of a calibrated profile.

    Accepting answers with ``confidence >= threshold`` keeps their error rate ≤ ``epsilon``
    with probability ≥ 1 − ``delta`` (over the calibration sample), using the stored
    out-of-fold confidences. ``feasible`` is False when no threshold does.
    """
    cal = task_calibration(profile, task)
    return choose_threshold(cal.holdout_confidence, cal.holdout_correct, epsilon, delta, n_unscored=cal.n_unscored)
