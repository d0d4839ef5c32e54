"""From cached, labelled answers to a profile's :class:`~gradguard.profiles.schema.TaskCalibration`.

1. Label every answer for its task (:func:`gradguard.calibration.labels.label_answer`).
2. Nested, grouped cross-validation (:mod:`gradguard.calibration.probe_fit`) of four feature
   sets — gradient scores only, token statistics only, the hidden-state probe only, all together —
   gives the ablation; the shipped calibrator is *all together*, refitted on every answer with
   the candidate an inner CV on all of them chooses.
3. The domain description is fitted on every answer; its edge is the 99th percentile of held-out
   distances, and its held-out fire rate is measured with edges chosen inside each training fold.
4. Every raw score's AUROC on the same answers, and the paired-bootstrap gain of the confidence over each.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from gradguard.calibration.harness import CachedRecord
from gradguard.calibration.labels import label_answer
from gradguard.calibration.metrics import aurc, auroc, bootstrap_ci, brier, ece
from gradguard.calibration.model import scalar_features
from gradguard.calibration.probe_fit import (
    CalibrationError,
    FeatureSet,
    FitData,
    NestedResult,
    candidate_configs,
    choose_config,
    fit_config,
    fit_domain,
    heldout_domain_figures,
    nested_cv,
)
from gradguard.extras import require
from gradguard.profiles.schema import (
    AurocGain,
    CalibrationData,
    CVFigures,
    TaskCalibration,
    finite_or_none,
    finite_pairs,
)
from gradguard.scores import FEATURES, GRADIENT_FEATURES, SCORES, TOKEN_FEATURES
from gradguard.tasks import Task

# Fail on import, before `gradguard calibrate` spends its long harness run, when the extra is missing.
for _module in ("sklearn", "scipy.stats"):
    require(_module, "calibrate", "fitting a calibration")

__all__ = [
    "ABLATION",
    "SHIPPED",
    "FitReport",
    "fit_calibration",
    "fit_data_from_records",
    "fit_task_calibration",
    "paired_gain",
]

#: The feature sets of the ablation, in report order; the last one is shipped.
ABLATION: tuple[FeatureSet, ...] = (
    FeatureSet("gradients", GRADIENT_FEATURES, False),
    FeatureSet("token statistics", TOKEN_FEATURES, False),
    FeatureSet("hidden-state probe", (), True),
    FeatureSet("all together", FEATURES, True),
)
SHIPPED = ABLATION[-1].name


@dataclass(frozen=True)
class FitReport:
    """What a calibration fit measured, for printing (the profile keeps the same figures)."""

    calibration: TaskCalibration
    ablation: dict[str, NestedResult]
    y: NDArray[np.float64]
    features: NDArray[np.float64]
    raw_auroc: dict[str, float]


def fit_data_from_records(
    records: Sequence[CachedRecord], task: Task, *, source: str = "the calibration data"
) -> tuple[FitData, int]:
    """``(FitData, n_unscored)``: scalar features, hidden states, labels and fold groups of the scored answers."""
    X, y, groups, hidden = [], [], [], []
    group_ids: dict[str, int] = {}
    layers: tuple[int, ...] | None = None
    n_unscored = 0
    settings = set()
    for rec in records:
        res = rec.result
        x = scalar_features(res, FEATURES) if res is not None else None
        if res is None or x is None:
            n_unscored += 1
            continue
        settings.add((res.spt_offset, tuple(res.layer_span)))
        arr = rec.hidden_array()
        if arr is not None:
            if layers is None:
                layers = rec.hidden_layers
            elif rec.hidden_layers != layers:
                raise CalibrationError(
                    f"answers in {source} kept different hidden layers; re-collect them with one setting"
                )
        hidden.append(arr)
        X.append(x)
        fixed = getattr(rec, "label", None)  # a human verdict (a review row) replaces the task's judge
        correct = fixed if fixed is not None else label_answer(task, res.response, rec.answers, rec.is_impossible)
        y.append(float(correct))
        groups.append(group_ids.setdefault(rec.group or f"index:{rec.index}", len(group_ids)))
    if not X:
        raise CalibrationError(f"none of the {len(records)} answers in {source} was scored; nothing to calibrate")
    if len(settings) != 1:
        raise CalibrationError(
            f"the answers in {source} were scored at different offsets/layer spans {sorted(settings)}"
        )
    yy = np.asarray(y)
    if yy.min() == yy.max():
        outcome = "correct" if yy[0] == 1 else "wrong"
        raise CalibrationError(
            f"all {yy.size} scored answers in {source} are {outcome} under task {task.name!r} (judge {task.judge}); "
            "calibration needs both right and wrong answers — use a mix of easier and harder questions, or check "
            "that the judge and the gold answers fit the task"
        )
    H = None
    present = [h for h in hidden if h is not None]
    if layers is not None and len(present) == len(hidden):
        H = np.stack(present).astype(np.float32)
    elif layers is not None:
        raise CalibrationError(f"some answers in {source} kept hidden states and some did not; re-collect them")
    data = FitData(
        X=np.vstack(X),
        features=FEATURES,
        H=H,
        layers=tuple(layers or ()),
        y=yy,
        groups=np.asarray(groups, dtype=np.int64),
    )
    return data, n_unscored


def paired_gain(
    conf: NDArray[np.float64], uncertainty: NDArray[np.float64], y: NDArray[np.float64], *, n_boot: int, seed: int
) -> AurocGain:
    """``AUROC(conf) − AUROC(−uncertainty)`` with a paired percentile-bootstrap 95% interval."""

    def diff(c: NDArray[np.float64], u: NDArray[np.float64], yy: NDArray[np.float64]) -> float:
        return auroc(c, yy) - auroc(-u, yy)

    lo, hi = bootstrap_ci(diff, conf, uncertainty, y, n_boot=n_boot, seed=seed)
    return AurocGain(diff=float(diff(conf, uncertainty, y)), ci=(float(lo), float(hi)))


def _figures(oof: NDArray[np.float64], y: NDArray[np.float64], *, n_boot: int, seed: int) -> CVFigures:
    return CVFigures(
        auroc=finite_or_none(auroc(oof, y)),
        auroc_ci=finite_pairs(bootstrap_ci(auroc, oof, y, n_boot=n_boot, seed=seed)),
        brier=finite_or_none(brier(oof, y)),
        ece=finite_or_none(ece(oof, y)),
        aurc=finite_or_none(aurc(oof, y)),
    )


def fit_task_calibration(
    records: Sequence[CachedRecord],
    task: Task,
    *,
    data_path: str,
    data_sha256: str | None,
    max_new_tokens: int,
    folds: int = 5,
    seed: int = 0,
    n_boot: int = 1000,
    feature_sets: Sequence[FeatureSet] = ABLATION,
    on_step: Callable[[str], None] | None = None,
) -> FitReport:
    """Fit, cross-validate and describe the calibration of ``task`` on its answers (see the module docstring)."""
    source = Path(data_path).name
    data, n_unscored = fit_data_from_records(records, task, source=source)
    scored = next(rec.result for rec in records if rec.result is not None)
    return fit_calibration(
        data,
        task,
        n_questions=len(records),
        n_unscored=n_unscored,
        spt_offset=scored.spt_offset,
        layer_span=(int(scored.layer_span[0]), int(scored.layer_span[1])),
        data_file=source,
        data_sha256=data_sha256,
        max_new_tokens=max_new_tokens,
        folds=folds,
        seed=seed,
        n_boot=n_boot,
        feature_sets=feature_sets,
        on_step=on_step,
    )


def fit_calibration(
    data: FitData,
    task: Task,
    *,
    n_questions: int,
    n_unscored: int,
    spt_offset: int,
    layer_span: tuple[int, int],
    data_file: str,
    data_sha256: str | None,
    max_new_tokens: int,
    folds: int = 5,
    seed: int = 0,
    n_boot: int = 1000,
    feature_sets: Sequence[FeatureSet] = ABLATION,
    on_step: Callable[[str], None] | None = None,
) -> FitReport:
    """Fit, cross-validate and describe a calibration of ``task`` on prepared :class:`FitData`.

    ``data`` holds one row per labelled, scored unit (an answer; for the ``tools`` task, a call);
    ``n_questions`` and ``n_unscored`` describe the data it came from (``data_file``, ``data_sha256``).
    """
    step = on_step or (lambda _msg: None)
    probes = data.H is not None
    sets = [fs if probes else FeatureSet(fs.name, fs.features, False) for fs in feature_sets]
    sets = [fs for fs in sets if fs.features or fs.probes]
    results: dict[str, NestedResult] = {}
    for fs in sets:
        step(f"nested cross-validation: {fs.name}")
        results[fs.name] = nested_cv(fs, data, layers=data.layers, outer_folds=folds, seed=seed)
    shipped = results[sets[-1].name]

    step("final fit on every answer")
    final_cfg = choose_config(candidate_configs(sets[-1], data.layers), data, seed=seed)
    calibrator = fit_config(final_cfg, data).record()

    domain = None
    fire_rate = None
    if probes:
        step("domain description")
        block_layer = final_cfg.blocks[0][1] if final_cfg.blocks else data.layers[len(data.layers) // 2]
        blocks = [("prompt_last", block_layer), ("answer_mean", block_layer)]
        heldout, fire_rate = heldout_domain_figures(data, FEATURES, blocks, folds=folds, seed=seed)
        domain = fit_domain(data, FEATURES, blocks, heldout=heldout)

    y = data.y
    raw = {s.name: auroc(-data.X[:, FEATURES.index(s.feature)], y) for s in SCORES if s.uncertainty}
    gains = {
        s.name: paired_gain(shipped.oof, data.X[:, FEATURES.index(s.feature)], y, n_boot=n_boot, seed=seed)
        for s in SCORES
        if s.uncertainty
    }
    chosen_by_fold = "; ".join(c.describe() for c in shipped.chosen)
    cal = TaskCalibration(
        task=task,
        calibrator=calibrator,
        domain=domain,
        data=CalibrationData(
            file=data_file,
            sha256=data_sha256,
            n_questions=n_questions,
            judge=task.judge,
            max_new_tokens=max_new_tokens,
            spt_offset=spt_offset,
            layer_span=layer_span,
        ),
        n=int(y.size),
        n_correct=int(y.sum()),
        n_unscored=n_unscored,
        folds=folds,
        seed=seed,
        selection=(
            f"logistic over {sets[-1].name}: {final_cfg.describe()} (inner grouped CV log-loss); outer folds chose: "
            f"{chosen_by_fold}"
        ),
        cv=_figures(shipped.oof, y, n_boot=n_boot, seed=seed),
        ablation={name: _figures(r.oof, y, n_boot=n_boot, seed=seed) for name, r in results.items()},
        baselines_auroc={k: finite_or_none(v) for k, v in raw.items()},
        gains=gains,
        domain_fire_rate=fire_rate,
        holdout_confidence=tuple(round(float(v), 6) for v in shipped.oof),
        holdout_correct=tuple(int(v) for v in y),
    )
    return FitReport(calibration=cal, ablation=results, y=y, features=data.X, raw_auroc=raw)
