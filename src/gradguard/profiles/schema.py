"""The profile: a model's semantic-preserving offset, layer span, SPS matrix and calibration.

A profile is a pydantic model saved as sorted JSON, stamped with the gradguard version
and :data:`SCHEMA_VERSION`. Loading parses JSON only (never pickle, never code). Keys a
newer gradguard wrote are ignored with a :class:`~gradguard.profiles.errors.ProfileWarning`;
a missing required key is a :class:`~gradguard.profiles.errors.ProfileError` naming it.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from gradguard.profiles.errors import CalibrationMissingError, ProfileError, ProfileMismatchError, ProfileWarning
from gradguard.result import ScoreResult

__all__ = [
    "SCHEMA_VERSION",
    "library_version",
    "SPSData",
    "SPSMatrix",
    "CVFigures",
    "IsotonicCalibrator",
    "LogisticCalibrator",
    "CalibrationData",
    "Calibration",
    "Profile",
    "load_profile",
    "save_profile",
    "model_dims",
    "profile_from_dict",
    "finite_or_none",
    "finite_pairs",
]

#: Version of the profile file format. Bumped when a key changes meaning.
SCHEMA_VERSION = 1


def library_version() -> str:
    """The installed gradguard version (``"unknown"`` when it cannot be determined)."""
    try:
        import gradguard

        version = getattr(gradguard, "__version__", None)
        if version:
            return str(version)
    except Exception:  # pragma: no cover - partially initialised package
        pass
    try:
        from importlib.metadata import version as _v

        return _v("gradguard")
    except Exception:
        return "unknown"


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
    top_half_mean: tuple[float, ...] = Field(..., description="SPS averaged over the top half of the layers, per offset.")
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
    """Cross-validated (out-of-fold) figures of one calibrator on the calibration data."""

    auroc: float | None
    auroc_ci: tuple[float, float] | None = None
    brier: float | None
    ece: float | None
    aurc: float | None


class IsotonicCalibrator(_Tolerant):
    """Non-increasing map from log HybridGrad to P(correct), linear between knots ``x`` → ``y``."""

    kind: Literal["isotonic"] = "isotonic"
    feature: Literal["log_hybridgrad"] = "log_hybridgrad"
    x: tuple[float, ...] = Field(..., min_length=1)
    y: tuple[float, ...] = Field(..., min_length=1)
    cv: CVFigures

    @model_validator(mode="after")
    def _check(self) -> IsotonicCalibrator:
        if len(self.x) != len(self.y):
            raise ValueError("isotonic x and y must have the same length")
        if any(b < a for a, b in zip(self.x, self.x[1:])):
            raise ValueError("isotonic x must be non-decreasing")
        if any(not 0 <= v <= 1 for v in self.y):
            raise ValueError("isotonic y must be probabilities in [0, 1]")
        return self


class LogisticCalibrator(_Tolerant):
    """L2 logistic model ``σ(((X − mean)/scale)·coef + intercept)`` over named features."""

    kind: Literal["logistic"] = "logistic"
    features: tuple[str, ...] = Field(..., min_length=1)
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    C: float = Field(..., gt=0, description="Inverse L2 regularisation strength chosen by inner CV.")
    cv: CVFigures

    @model_validator(mode="after")
    def _check(self) -> LogisticCalibrator:
        from gradguard.calibration.features import ALL_FEATURES

        k = len(self.features)
        if not (len(self.mean) == len(self.scale) == len(self.coef) == k):
            raise ValueError("logistic mean, scale and coef need one entry per feature")
        unknown = [f for f in self.features if f not in ALL_FEATURES]
        if unknown:
            raise ValueError(f"logistic features {unknown} are unknown; known: {ALL_FEATURES}")
        return self


class CalibrationData(_Tolerant):
    """The generation pass a calibration was fitted on (it applies only to scores made the same way)."""

    path: str
    sha256: str | None = None
    n_questions: int = Field(..., ge=1)
    system_prompt: str | None
    max_new_tokens: int
    judge: str
    spt_offset: int
    layer_span: tuple[int, int]


class Calibration(_Tolerant):
    """Calibrated P(correct): both fits, their cross-validated figures, the chosen one, and the held-out pairs.

    ``holdout_confidence``/``holdout_correct`` are the chosen calibrator's out-of-fold
    confidences on the scored calibration answers; the threshold search uses them.
    ``auroc``, ``aurc`` and ``ece`` are the chosen calibrator's cross-validated figures.
    """

    chosen: Literal["isotonic", "logistic"]
    selection_rule: str
    isotonic: IsotonicCalibrator
    logistic: LogisticCalibrator
    n: int = Field(..., ge=1, description="Scored calibration answers used in the fit.")
    n_unscored: int = Field(0, ge=0, description="Calibration questions without scores (empty answers).")
    n_correct: int = Field(..., ge=0)
    folds: int
    seed: int
    auroc: float | None
    auroc_ci: tuple[float, float] | None = None
    aurc: float | None
    ece: float | None
    baselines_auroc: dict[str, float | None] = Field(
        default_factory=dict, description="AUROC of each raw score on the same answers, for comparison."
    )
    data: CalibrationData
    holdout_confidence: tuple[float, ...]
    holdout_correct: tuple[int, ...]

    @model_validator(mode="after")
    def _check(self) -> Calibration:
        if len(self.holdout_confidence) != self.n or len(self.holdout_correct) != self.n:
            raise ValueError("holdout_confidence and holdout_correct need one entry per calibration answer (n)")
        if any(v not in (0, 1) for v in self.holdout_correct):
            raise ValueError("holdout_correct must hold 0/1")
        return self

    def applies_to(self, result: ScoreResult) -> bool:
        """True when ``result`` was scored at this calibration's offset and layer span."""
        return result.spt_offset == self.data.spt_offset and tuple(result.layer_span) == tuple(self.data.layer_span)

    def predict(self, result: ScoreResult) -> float | None:
        """The chosen calibrator's P(correct) for ``result``; None when unscored."""
        from gradguard.calibration.calibrators import IsotonicParams, LogisticParams, predict_isotonic, predict_logistic
        from gradguard.calibration.features import feature_vector

        if self.chosen == "isotonic":
            v = feature_vector(result, ("log_hybridgrad",))
            if v is None:
                return None
            return float(predict_isotonic(IsotonicParams(self.isotonic.x, self.isotonic.y), v)[0])
        lg = self.logistic
        v = feature_vector(result, lg.features)
        if v is None:
            return None
        params = LogisticParams(lg.features, lg.mean, lg.scale, lg.coef, lg.intercept, lg.C)
        return float(predict_logistic(params, v)[0])


class Profile(_Tolerant):
    """Per-model scoring settings: the semantic-preserving offset, layer span and (optionally) calibration.

    ``kind`` is ``measured`` (built by ``gradguard profile build``), ``family-default``
    (the paper's offset for a model family) or ``manual``.
    """

    schema_version: int = SCHEMA_VERSION
    gradguard_version: str = Field(default_factory=library_version)
    name: str = Field(..., min_length=1, description="Short label reported in results, e.g. a model id or 'family:qwen2'.")
    kind: Literal["measured", "family-default", "manual"]
    model_id: str | None = None
    model_type: str
    num_layers: int | None = Field(None, ge=1)
    hidden_size: int | None = Field(None, ge=1)
    chat_template_fingerprint: str | None = None
    spt_offset: int = Field(..., le=-1, description="Semantic-preserving offset k (negative) from the prompt's end.")
    layer_span: tuple[int, int] | None = Field(None, description="Half-open decoder-layer range [start, stop); None = top half.")
    anchor_token: str | None = Field(None, description="The token expected at spt_offset (checked when resolving).")
    template_marker: str | None = Field(
        None, description="Family defaults: text the chat template must contain for the default to apply."
    )
    sps: SPSMatrix | None = None
    calibration: Calibration | None = None
    notes: str = ""

    _source: str | None = PrivateAttr(default=None)

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
        return self

    # -- derived -------------------------------------------------------------------------
    @property
    def source(self) -> str | None:
        """The file this profile was loaded from, or None."""
        return self._source

    def resolved_layer_span(self, num_layers: int) -> tuple[int, int]:
        """The layer span for a model with ``num_layers`` layers (top half when ``layer_span`` is None)."""
        if self.layer_span is not None:
            return self.layer_span
        return (num_layers - num_layers // 2, num_layers)

    # -- calibration -----------------------------------------------------------------------
    def confidence(self, result: ScoreResult) -> tuple[float | None, str | None]:
        """``(P(correct), calibrator name)`` for a scored result; ``(None, None)`` when that is not known.

        Larger = more confident. It is ``(None, None)`` when the profile has no
        calibration, when the result is unscored (empty answer, NaN scores), or when the
        result was scored at another offset or layer span than the calibration data.
        """
        cal = self.calibration
        if cal is None or not result.scored:
            return None, None
        if not cal.applies_to(result):
            warnings.warn(
                f"profile {self.name!r} was calibrated at spt_offset={cal.data.spt_offset}, layer_span="
                f"{tuple(cal.data.layer_span)}, but this result used spt_offset={result.spt_offset}, layer_span="
                f"{tuple(result.layer_span)}; confidence is None (recalibrate with these settings)",
                ProfileWarning,
                stacklevel=2,
            )
            return None, None
        p = cal.predict(result)
        return (None, None) if p is None else (p, cal.chosen)

    def threshold(self, epsilon: float, delta: float = 0.1) -> Any:
        """The risk-controlled confidence threshold (a :class:`~gradguard.calibration.thresholds.ThresholdResult`).

        Accepting answers with ``confidence >= threshold`` keeps their error rate ≤
        ``epsilon`` with probability ≥ 1 − ``delta`` (over the calibration sample), using
        the stored held-out confidences. ``feasible`` is False when no threshold does.
        """
        from gradguard.calibration.thresholds import choose_threshold

        cal = self.calibration
        if cal is None:
            raise CalibrationMissingError(
                f"profile {self.name!r} has no calibration, so no threshold can be chosen; run "
                "`gradguard calibrate --model SRC --data QA.jsonl --out PROFILE.json` first"
            )
        return choose_threshold(
            cal.holdout_confidence, cal.holdout_correct, epsilon, delta, n_unscored=cal.n_unscored
        )

    # -- compatibility -----------------------------------------------------------------------
    def check_compatible(self, model: Any, tokenizer: Any | None = None, *, strict: bool = True) -> None:
        """Raise :class:`ProfileMismatchError` when the profile was measured on a different model.

        Layer count, hidden size and ``model_type`` must match when the profile records
        them. A different chat-template fingerprint is an error with ``strict=True`` and a
        :class:`ProfileWarning` otherwise.
        """
        from gradguard.profiles.fingerprint import chat_template_fingerprint

        model_type, num_layers, hidden = model_dims(model)
        where = f" ({self._source})" if self._source else ""
        fix = "build one for this model with `gradguard profile build --model SRC --paraphrases FILE.jsonl`"
        if model_type is not None and self.model_type != model_type:
            raise ProfileMismatchError(
                f"profile {self.name!r}{where} is for model_type {self.model_type!r} but the model is "
                f"{model_type!r}; {fix}"
            )
        if self.num_layers is not None and num_layers is not None and self.num_layers != num_layers:
            raise ProfileMismatchError(
                f"profile {self.name!r}{where} was measured on {self.num_layers} layers but the model has "
                f"{num_layers}; {fix}"
            )
        if self.hidden_size is not None and hidden is not None and self.hidden_size != hidden:
            raise ProfileMismatchError(
                f"profile {self.name!r}{where} was measured with hidden size {self.hidden_size} but the model has "
                f"{hidden}; {fix}"
            )
        if self.layer_span is not None and num_layers is not None and self.layer_span[1] > num_layers:
            raise ProfileMismatchError(
                f"profile {self.name!r}{where} uses layers {self.layer_span} but the model has {num_layers}; {fix}"
            )
        if tokenizer is not None and self.chat_template_fingerprint is not None:
            fp = chat_template_fingerprint(tokenizer)
            if fp != self.chat_template_fingerprint:
                msg = (
                    f"profile {self.name!r}{where} was measured with chat template {self.chat_template_fingerprint} "
                    f"but the tokenizer's template is {fp}; the offset {self.spt_offset} may point at a different "
                    f"token. Rebuild the profile ({fix.split('with ', 1)[1]}), or pass strict=False to use it anyway"
                )
                if strict:
                    raise ProfileMismatchError(msg)
                warnings.warn(msg, ProfileWarning, stacklevel=2)

    # -- I/O -------------------------------------------------------------------------------
    def to_json(self) -> str:
        """Sorted, indented JSON stamped with the current gradguard and schema versions."""
        data = self.model_dump(mode="json")
        data["gradguard_version"] = library_version()
        data["schema_version"] = SCHEMA_VERSION
        try:
            return json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
        except ValueError as exc:
            raise ProfileError(f"profile {self.name!r} holds NaN or infinity, which JSON cannot store: {exc}") from exc

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_json` to ``path`` atomically (parent folders are created) and return the path."""
        return save_profile(self, path)

    def summary(self) -> str:
        """A few human-readable lines describing the profile."""
        span = self.layer_span if self.layer_span is not None else "top half"
        lines = [
            f"profile {self.name} ({self.kind}; model_type {self.model_type}"
            + (f", {self.num_layers} layers, hidden {self.hidden_size}" if self.num_layers else "")
            + ")",
            f"  semantic-preserving offset {self.spt_offset}"
            + (f" ({self.anchor_token!r})" if self.anchor_token else "")
            + f", layer span {span}",
        ]
        if self.sps is not None:
            cells = ", ".join(
                f"{k}{'*' if k == self.spt_offset else ''}={m:.4f}"
                for k, m, in zip(self.sps.offsets, self.sps.top_half_mean)
                if k in self.sps.candidate_offsets
            )
            lines.append(f"  SPS (top-half mean) over {self.sps.data.n_queries} queries: {cells}")
        cal = self.calibration
        if cal is None:
            lines.append("  uncalibrated (confidence: null)")
        else:
            lines.append(
                f"  calibrated on {cal.n} answers ({cal.n_correct} correct, judge {cal.data.judge}): chosen {cal.chosen}, "
                f"CV AUROC {_fmt(cal.auroc)}, AURC {_fmt(cal.aurc)}, ECE {_fmt(cal.ece)}"
            )
            for fit in (cal.isotonic, cal.logistic):
                lines.append(
                    f"    {fit.kind:9s} CV AUROC {_fmt(fit.cv.auroc)}  Brier {_fmt(fit.cv.brier)}  ECE {_fmt(fit.cv.ece)}"
                )
        return "\n".join(lines)


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def model_dims(model: Any) -> tuple[str | None, int | None, int | None]:
    """``(model_type, num_layers, hidden_size)`` from a model's (text) config; None where unknown."""
    config = getattr(model, "config", model)
    if hasattr(config, "get_text_config"):
        try:
            config = config.get_text_config()
        except Exception:  # pragma: no cover - exotic configs
            pass
    model_type = getattr(getattr(model, "config", model), "model_type", None)
    layers = getattr(config, "num_hidden_layers", None)
    hidden = getattr(config, "hidden_size", None)
    return (
        str(model_type) if model_type is not None else None,
        int(layers) if layers is not None else None,
        int(hidden) if hidden is not None else None,
    )


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "missing":
            parts.append(f"missing required key {loc!r}")
        else:
            parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def profile_from_dict(data: Any, *, source: str = "<dict>") -> Profile:
    """Validate a parsed profile; :class:`ProfileError` names each missing or invalid key."""
    if not isinstance(data, dict):
        raise ProfileError(f"profile {source} must be a JSON object, got {type(data).__name__}")
    version = data.get("schema_version")
    if isinstance(version, int) and version > SCHEMA_VERSION:
        warnings.warn(
            f"profile {source} uses schema version {version}, newer than this gradguard's {SCHEMA_VERSION}; "
            "upgrade gradguard if it fails to load or behaves unexpectedly",
            ProfileWarning,
            stacklevel=3,
        )
    try:
        profile = Profile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(
            f"profile {source} is invalid: {_validation_message(exc)}; rebuild it with "
            "`gradguard profile build --model SRC --paraphrases FILE.jsonl --out PROFILE.json`"
        ) from None
    profile._source = source
    return profile


def load_profile(source: Profile | str | os.PathLike[str]) -> Profile:
    """Load a profile from a JSON file, or a built-in profile by name (e.g. ``"family:qwen2"``).

    A :class:`Profile` is returned unchanged. Only JSON is parsed; nothing is executed.
    """
    if isinstance(source, Profile):
        return source
    text = os.fspath(source)
    path = Path(text).expanduser()
    if not path.is_file():
        from gradguard.profiles.lookup import builtin_profile_names, load_builtin_profile

        if text in builtin_profile_names():
            return load_builtin_profile(text)
        raise ProfileError(
            f"profile {text!r} is neither a file nor a built-in profile; pass a profile JSON path or one of "
            f"{sorted(builtin_profile_names())}"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ProfileError(
            f"profile {path} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
            "rebuild it with `gradguard profile build`"
        ) from None
    except OSError as exc:
        raise ProfileError(f"cannot read profile {path}: {exc}") from exc
    return profile_from_dict(data, source=str(path))


def save_profile(profile: Profile, path: str | os.PathLike[str]) -> Path:
    """Write ``profile`` as sorted JSON to ``path`` (atomically) and return the path."""
    p = Path(path).expanduser()
    p.parent.mkdir(parents=True, exist_ok=True)
    text = profile.to_json()
    tmp = p.with_name(p.name + f".tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, p)
    return p


def finite_pairs(values: Sequence[float]) -> tuple[float, float] | None:
    """``(lo, hi)`` when both are finite, else None (JSON cannot hold NaN)."""
    if len(values) != 2:
        return None
    lo, hi = (finite_or_none(v) for v in values)
    return None if lo is None or hi is None else (lo, hi)
