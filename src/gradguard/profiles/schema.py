"""The profile record: a model's semantic-preserving offset, layer span, SPS matrix and per-task calibrations.

Plain validated records only (pydantic, frozen). Reading and writing them lives in
:mod:`gradguard.profiles.io` (sorted JSON stamped with the gradguard version and
:data:`SCHEMA_VERSION`; never pickle), compatibility checks in :mod:`gradguard.profiles.compat`,
the summary in :mod:`gradguard.profiles.summary`, applying a calibration in
:mod:`gradguard.calibration.model`. Keys a newer gradguard wrote are dropped with a
:class:`~gradguard.profiles.errors.ProfileWarning`; a schema-1 profile is migrated (:func:`migrate_v1`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from gradguard.calibration.model import Calibrator, DomainDescription
from gradguard.profiles.errors import ProfileWarning
from gradguard.tasks import TASK_NAME_PATTERN, Task

__all__ = [
    "SCHEMA_VERSION",
    "library_version",
    "SPSData",
    "SPSMatrix",
    "CVFigures",
    "AurocGain",
    "CalibrationData",
    "TaskCalibration",
    "Profile",
    "migrate_v1",
    "finite_or_none",
    "finite_pairs",
]

#: Version of the profile file format. Bumped when a key changes meaning.
SCHEMA_VERSION = 2


def library_version() -> str:
    """The installed gradguard version."""
    from gradguard._version import __version__

    return __version__


class _Tolerant(BaseModel):
    """Base of every profile part: unknown keys are dropped with a warning, missing ones are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _drop_unknown_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(str(k) for k in data if k not in cls.model_fields)
            if unknown:
                warnings.warn(
                    f"profile {cls.__name__.lower()} has unknown key(s) {unknown}; they are ignored "
                    "(written by a newer gradguard?)",
                    ProfileWarning,
                    stacklevel=2,
                )
                data = {k: v for k, v in data.items() if k in cls.model_fields}
        return data


def finite_or_none(v: float | None) -> float | None:
    """``v`` as a float, or None when it is None, NaN or infinite (JSON cannot hold NaN)."""
    return None if v is None or not math.isfinite(v) else float(v)


class SPSData(_Tolerant):
    """Where an SPS matrix came from."""

    path: str = Field(..., description="The paraphrase file as given to `profile build`.")
    sha256: str = Field(..., description="SHA-256 of the paraphrase file.")
    n_queries: int = Field(..., ge=2)
    n_variants: int = Field(..., ge=2, description="Queries plus paraphrases forwarded.")
    max_paraphrases: int | None = Field(None, description="Paraphrases kept per query (None = all).")
    system_prompt: str | None = Field(None, description="System message placed before every variant.")


class SPSMatrix(_Tolerant):
    """Semantic Preservation Score for every layer (rows) and prompt offset (columns).

    ``sps[l][j] = within[l][j] - across[l][j]`` for layer ``l`` (hidden state entering
    decoder layer ``l``) and offset ``offsets[j]`` (negative, from the prompt's end).
    Higher = the hidden state keeps paraphrases together and different questions apart.
    """

    offsets: tuple[int, ...]
    sps: tuple[tuple[float, ...], ...]
    within: tuple[tuple[float, ...], ...]
    across: tuple[tuple[float, ...], ...]
    offset_tokens: tuple[str, ...] = Field(..., description="The token at each offset in the first query's prompt.")
    candidate_offsets: tuple[int, ...] = Field(
        ..., description="Offsets from the last token of the user's content to the end of the prompt."
    )
    top_half_mean: tuple[float, ...] = Field(
        ..., description="SPS averaged over the top half of the layers, per offset."
    )
    chosen_offset: int
    data: SPSData

    @model_validator(mode="after")
    def _shapes(self) -> SPSMatrix:
        k = len(self.offsets)
        for name in ("sps", "within", "across"):
            rows = getattr(self, name)
            if not rows or any(len(r) != k for r in rows):
                raise ValueError(f"{name} must have one row per layer and {k} columns (one per offset)")
        if len(self.offset_tokens) != k or len(self.top_half_mean) != k:
            raise ValueError("offset_tokens and top_half_mean need one entry per offset")
        if self.chosen_offset not in self.offsets or not set(self.candidate_offsets) <= set(self.offsets):
            raise ValueError("chosen_offset and candidate_offsets must be among offsets")
        return self

    @property
    def num_layers(self) -> int:
        """Rows of the matrix (decoder layers)."""
        return len(self.sps)


class CVFigures(_Tolerant):
    """Cross-validated (out-of-fold) figures of one confidence on its calibration data."""

    auroc: float | None
    auroc_ci: tuple[float, float] | None = None
    brier: float | None = None
    ece: float | None = None
    aurc: float | None = None


class CalibrationData(_Tolerant):
    """Where a calibration's labelled answers came from (it applies only to scores made the same way)."""

    file: str = Field(..., description="The data file's name (no folder: profiles travel).")
    sha256: str | None = None
    n_questions: int = Field(..., ge=1)
    judge: str
    max_new_tokens: int
    spt_offset: int
    layer_span: tuple[int, int]
    n_from_review: int = Field(0, ge=0, description="Labels that came from resolved review items.")
    review_url: str | None = Field(
        None, description="The review queue those labels came from (`calibrate --from-review`), password masked."
    )
    review_verdicts: dict[str, int] = Field(
        default_factory=dict, description="The review labels by verdict: approved (correct), edited, rejected (wrong)."
    )
    review_sha256: str | None = Field(None, description="SHA-256 of the review labels' sorted 'id:verdict' lines.")
    note: str = ""


class AurocGain(_Tolerant):
    """Paired-bootstrap difference ``AUROC(confidence) − AUROC(score)`` on the same answers, with its 95% interval."""

    diff: float
    ci: tuple[float, float]


class TaskCalibration(_Tolerant):
    """Calibrated P(correct) for one task: the fitted calibrator, its domain, and the figures behind it.

    ``holdout_confidence``/``holdout_correct`` are out-of-fold (nested cross-validated)
    confidences on the scored calibration answers; risk-controlled thresholds use them.
    """

    task: Task
    calibrator: Calibrator
    domain: DomainDescription | None = None
    data: CalibrationData
    n: int = Field(..., ge=1, description="Scored calibration answers used in the fit.")
    n_correct: int = Field(..., ge=0)
    n_unscored: int = Field(0, ge=0, description="Calibration questions without scores (empty answers).")
    folds: int
    seed: int
    selection: str = Field("", description="How the calibrator was chosen, and what was chosen.")
    cv: CVFigures
    ablation: dict[str, CVFigures] = Field(default_factory=dict)
    baselines_auroc: dict[str, float | None] = Field(default_factory=dict)
    gains: dict[str, AurocGain] = Field(default_factory=dict)
    domain_fire_rate: float | None = Field(
        None, description="Held-out share of this task's answers flagged out of domain."
    )
    holdout_confidence: tuple[float, ...]
    holdout_correct: tuple[int, ...]

    @model_validator(mode="after")
    def _check(self) -> TaskCalibration:
        if len(self.holdout_confidence) != self.n or len(self.holdout_correct) != self.n:
            raise ValueError("holdout_confidence and holdout_correct need one entry per calibration answer (n)")
        if any(v not in (0, 1) for v in self.holdout_correct):
            raise ValueError("holdout_correct must hold 0/1")
        return self

    def applies_to(self, spt_offset: int, layer_span: tuple[int, int]) -> bool:
        """True when answers scored at this offset and layer span are comparable with the calibration data."""
        return spt_offset == self.data.spt_offset and tuple(layer_span) == tuple(self.data.layer_span)


class Profile(_Tolerant):
    """Per-model scoring settings: the semantic-preserving offset, layer span and per-task calibrations.

    ``kind`` is ``measured`` (built by ``gradguard profile build``), ``family-default``
    (the paper's offset for a model family) or ``manual``. ``calibrations`` maps a task name
    to its :class:`TaskCalibration`; ``default_task`` is the task used when a caller names none.
    """

    schema_version: int = SCHEMA_VERSION
    gradguard_version: str = Field(default_factory=library_version)
    name: str = Field(
        ..., min_length=1, description="Short label reported in results, e.g. a model id or 'family:qwen2'."
    )
    kind: Literal["measured", "family-default", "manual"]
    model_id: str | None = None
    model_type: str
    num_layers: int | None = Field(None, ge=1)
    hidden_size: int | None = Field(None, ge=1)
    chat_template_fingerprint: str | None = None
    spt_offset: int = Field(..., le=-1, description="Semantic-preserving offset k (negative) from the prompt's end.")
    layer_span: tuple[int, int] | None = Field(
        None, description="Half-open decoder-layer range [start, stop); None = top half."
    )
    anchor_token: str | None = Field(None, description="The token expected at spt_offset (checked when resolving).")
    template_marker: str | None = Field(
        None, description="Family defaults: text the chat template must contain for the default to apply."
    )
    sps: SPSMatrix | None = None
    calibrations: dict[str, TaskCalibration] = Field(default_factory=dict)
    default_task: str = Field("chat", pattern=TASK_NAME_PATTERN)
    notes: str = ""

    _source: str | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _migrate(cls, data: Any) -> Any:
        if isinstance(data, dict) and "calibration" in data:
            data = migrate_v1(data)
        return data

    @model_validator(mode="after")
    def _check(self) -> Profile:
        if self.layer_span is not None:
            a, b = self.layer_span
            if not 0 <= a < b:
                raise ValueError(f"layer_span {self.layer_span} must satisfy 0 <= start < stop")
            if self.num_layers is not None and b > self.num_layers:
                raise ValueError(f"layer_span {self.layer_span} exceeds num_layers={self.num_layers}")
        if self.sps is not None:
            if self.num_layers is not None and self.sps.num_layers != self.num_layers:
                raise ValueError(f"the SPS matrix has {self.sps.num_layers} layers but num_layers={self.num_layers}")
            if self.spt_offset not in self.sps.offsets:
                raise ValueError(f"spt_offset {self.spt_offset} is not among the SPS offsets {self.sps.offsets}")
        for name, cal in self.calibrations.items():
            if cal.task.name != name:
                raise ValueError(f"calibrations[{name!r}] holds a calibration of task {cal.task.name!r}")
            for probe in getattr(cal.calibrator, "probes", ()):
                if self.hidden_size is not None and probe.hidden_size != self.hidden_size:
                    raise ValueError(
                        f"the {name!r} probe reads hidden size {probe.hidden_size} but the profile's model has "
                        f"{self.hidden_size}; recalibrate with `gradguard calibrate --task {name}`"
                    )
                if self.num_layers is not None and probe.layer > self.num_layers:
                    raise ValueError(
                        f"the {name!r} probe reads layer {probe.layer} but the model has {self.num_layers} layers; "
                        f"recalibrate with `gradguard calibrate --task {name}`"
                    )
        return self

    @property
    def source(self) -> str | None:
        """The file this profile was loaded from, or None."""
        return self._source

    def resolved_layer_span(self, num_layers: int) -> tuple[int, int]:
        """The layer span for a model with ``num_layers`` layers (top half when ``layer_span`` is None)."""
        if self.layer_span is not None:
            return self.layer_span
        return (num_layers - num_layers // 2, num_layers)


def migrate_v1(data: dict[str, Any]) -> dict[str, Any]:
    """A schema-1 profile (one ``calibration``, fitted on short answers) as schema 2: it becomes ``closed-qa``.

    Warns once per load. The chosen calibrator is kept; the other one, and figures schema 2 has
    no place for, are dropped.
    """
    data = dict(data)
    old = data.pop("calibration")
    warnings.warn(
        f"profile {data.get('name', '?')!r} uses schema version {data.get('schema_version', 1)}: its one calibration "
        "is read as the 'closed-qa' task's (short answers); re-save it to update the file",
        ProfileWarning,
        stacklevel=4,
    )
    data["schema_version"] = SCHEMA_VERSION
    if not old:
        return data
    chosen = old.get("chosen", "logistic")
    fit = dict(old[chosen])
    cv = fit.pop("cv", {})
    calibrator = (
        {k: fit[k] for k in ("kind", "features", "mean", "scale", "coef", "intercept", "C") if k in fit}
        if chosen == "logistic"
        else {"kind": "isotonic", "feature": fit.get("feature", "log_hybridgrad"), "x": fit["x"], "y": fit["y"]}
    )
    od = old["data"]
    task = {
        "name": "closed-qa",
        "description": "a short answer from the model's own knowledge (migrated from a schema-1 profile)",
        "system_prompt": od.get("system_prompt"),
        "judge": od.get("judge", "containment"),
        "max_new_tokens": od.get("max_new_tokens", 24),
    }
    data["calibrations"] = {
        "closed-qa": {
            "task": task,
            "calibrator": calibrator,
            "data": {
                "file": Path(str(od.get("path", "unknown"))).name,
                "sha256": od.get("sha256"),
                "n_questions": od["n_questions"],
                "judge": od.get("judge", "containment"),
                "max_new_tokens": od.get("max_new_tokens", 24),
                "spt_offset": od["spt_offset"],
                "layer_span": od["layer_span"],
            },
            "n": old["n"],
            "n_correct": old["n_correct"],
            "n_unscored": old.get("n_unscored", 0),
            "folds": old.get("folds", 5),
            "seed": old.get("seed", 0),
            "selection": f"{chosen} (schema-1 calibration)",
            "cv": {k: cv.get(k) for k in ("auroc", "auroc_ci", "brier", "ece", "aurc")},
            "baselines_auroc": old.get("baselines_auroc", {}),
            "holdout_confidence": old["holdout_confidence"],
            "holdout_correct": old["holdout_correct"],
        }
    }
    data.setdefault("default_task", "closed-qa")
    return data


def finite_pairs(values: Sequence[float]) -> tuple[float, float] | None:
    """``(lo, hi)`` when both are finite, else None (JSON cannot hold NaN)."""
    if len(values) != 2:
        return None
    lo, hi = (finite_or_none(v) for v in values)
    return None if lo is None or hi is None else (lo, hi)
