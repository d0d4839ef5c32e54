"""Calibrators and the out-of-domain description as plain records, applied with numpy alone.

This is the leaf the scorer applies a calibration through: it imports numpy, pydantic and
:mod:`gradguard.result`/:mod:`gradguard.scores`, never scikit-learn (fitting lives in
:mod:`gradguard.calibration.fit`). Every parameter is a plain JSON number.

- :class:`LogisticCalibrator` — ``P(correct) = σ(Σ_i coef_i·(x_i − mean_i)/scale_i + Σ_b w_b·(h_b − m_b) + c)``
  over scalar features ``x`` (:data:`gradguard.scores.FEATURES`) and linear probes on hidden
  states ``h_b`` the scoring pass kept (:class:`ProbeBlock`, one per position and layer). The
  probes were fitted on principal components; their weights are folded back to the hidden
  space, so applying one costs a ``d``-vector dot product.
- :class:`IsotonicCalibrator` — a non-increasing map from one logged uncertainty score to P(correct).
- :class:`DomainDescription` — where the calibration data lay: a shrinkage Mahalanobis distance on
  the standardised scalar features and at most 64 principal components of hidden states; an answer
  farther than the 99th percentile of held-out calibration answers is *out of domain*.

Larger confidence = more confident. Larger distance = farther from the calibration data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Annotated, Any, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gradguard.result import HIDDEN_POSITIONS, ScoreResult
from gradguard.scores import FEATURES, feature_value

__all__ = [
    "ProbeBlock",
    "LogisticCalibrator",
    "IsotonicCalibrator",
    "Calibrator",
    "DomainDescription",
    "Prediction",
    "scalar_features",
    "hidden_vector",
    "predict",
    "required_layers",
]


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ProbeBlock(_Record):
    """A linear probe on one hidden state: contributes ``weight · (h − mean)`` to the logit."""

    position: Literal["spt", "prompt_last", "answer_last", "answer_mean"]
    layer: int = Field(..., ge=0)
    mean: tuple[float, ...] = Field(..., min_length=1)
    weight: tuple[float, ...] = Field(..., min_length=1)

    @model_validator(mode="after")
    def _shapes(self) -> ProbeBlock:
        if len(self.mean) != len(self.weight):
            raise ValueError(f"probe mean ({len(self.mean)}) and weight ({len(self.weight)}) differ in size")
        return self

    @property
    def hidden_size(self) -> int:
        """The hidden size this probe reads."""
        return len(self.mean)


class LogisticCalibrator(_Record):
    """L2 logistic regression over scalar features and hidden-state probes (see the module docstring)."""

    kind: Literal["logistic"] = "logistic"
    features: tuple[str, ...] = ()
    mean: tuple[float, ...] = ()
    scale: tuple[float, ...] = ()
    coef: tuple[float, ...] = ()
    probes: tuple[ProbeBlock, ...] = ()
    intercept: float
    C: float = Field(..., gt=0, description="Inverse L2 regularisation strength chosen by inner CV.")

    @model_validator(mode="after")
    def _check(self) -> LogisticCalibrator:
        k = len(self.features)
        if not (len(self.mean) == len(self.scale) == len(self.coef) == k):
            raise ValueError("logistic mean, scale and coef need one entry per feature")
        unknown = [f for f in self.features if f not in FEATURES]
        if unknown:
            raise ValueError(f"logistic features {unknown} are unknown; known: {FEATURES}")
        if not self.features and not self.probes:
            raise ValueError("a logistic calibrator needs at least one feature or probe")
        return self

    def logit(self, x: NDArray[np.float64], hidden: dict[tuple[str, int], NDArray[np.float64]]) -> float:
        """The logit for scalar features ``x`` (in :attr:`features` order) and hidden states by (position, layer)."""
        z = self.intercept
        if self.features:
            z += float(((x - np.asarray(self.mean)) / np.asarray(self.scale)) @ np.asarray(self.coef))
        for p in self.probes:
            z += float((hidden[(p.position, p.layer)] - np.asarray(p.mean)) @ np.asarray(p.weight))
        return z


class IsotonicCalibrator(_Record):
    """Non-increasing map from one feature (a logged uncertainty score) to P(correct), linear between knots."""

    kind: Literal["isotonic"] = "isotonic"
    feature: str = "log_hybridgrad"
    x: tuple[float, ...] = Field(..., min_length=1)
    y: tuple[float, ...] = Field(..., min_length=1)

    @model_validator(mode="after")
    def _check(self) -> IsotonicCalibrator:
        if self.feature not in FEATURES:
            raise ValueError(f"isotonic feature {self.feature!r} is unknown; known: {FEATURES}")
        if len(self.x) != len(self.y):
            raise ValueError("isotonic x and y must have the same length")
        if any(b < a for a, b in pairwise(self.x)):
            raise ValueError("isotonic x must be non-decreasing")
        if any(not 0 <= v <= 1 for v in self.y):
            raise ValueError("isotonic y must be probabilities in [0, 1]")
        return self

    def probability(self, value: float) -> float:
        """P(correct) at feature value ``value`` (constant beyond the outer knots)."""
        if len(self.x) == 1:
            return float(self.y[0])
        return float(np.clip(np.interp(value, np.asarray(self.x), np.asarray(self.y)), 0.0, 1.0))


Calibrator = Annotated[LogisticCalibrator | IsotonicCalibrator, Field(discriminator="kind")]


class DomainDescription(_Record):
    """The calibration data's region: shrinkage Mahalanobis distance on standardised features and hidden PCs.

    The vector is ``[(x − mean)/scale, components_b · (h_b − hidden_mean_b) for each block b,
    (‖residual_b‖ − residual_mean_b)/residual_scale_b for each block b]`` — the residual being the
    part of ``h_b − hidden_mean_b`` outside the principal subspace, so that a state moving in a
    direction the calibration data never varied in counts too — and the distance
    ``sqrt(vᵀ · precision · v)``. ``edge`` is the 99th percentile (``edge_quantile``) of distances of
    held-out calibration answers; ``heldout_quantiles`` are their 0th…100th percentiles.
    """

    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    blocks: tuple[tuple[str, int], ...] = Field(..., description="(position, layer) of each hidden block.")
    hidden_mean: tuple[tuple[float, ...], ...]
    components: tuple[tuple[tuple[float, ...], ...], ...] = Field(..., description="Per block, k × d principal axes.")
    residual_mean: tuple[float, ...] = Field(..., description="Per block, mean norm of the off-subspace residual.")
    residual_scale: tuple[float, ...] = Field(..., description="Per block, std of the off-subspace residual norm.")
    precision: tuple[tuple[float, ...], ...]
    edge: float = Field(..., gt=0)
    edge_quantile: float = Field(0.99, gt=0, le=1)
    heldout_quantiles: tuple[float, ...] = Field(..., min_length=2)

    @model_validator(mode="after")
    def _check(self) -> DomainDescription:
        if not (len(self.mean) == len(self.scale) == len(self.features)):
            raise ValueError("domain mean and scale need one entry per feature")
        n = len(self.blocks)
        if not (
            len(self.hidden_mean) == len(self.components) == len(self.residual_mean) == len(self.residual_scale) == n
        ):
            raise ValueError(
                "domain hidden_mean, components, residual_mean and residual_scale need one entry per block"
            )
        dim = len(self.features) + sum(len(c) for c in self.components) + n
        if len(self.precision) != dim or any(len(r) != dim for r in self.precision):
            raise ValueError(f"domain precision must be {dim} × {dim}")
        for pos, _ in self.blocks:
            if pos not in HIDDEN_POSITIONS:
                raise ValueError(f"domain block position {pos!r} is not one of {HIDDEN_POSITIONS}")
        return self

    def distance(self, x: NDArray[np.float64], hidden: dict[tuple[str, int], NDArray[np.float64]]) -> float:
        """Mahalanobis distance of one answer (scalar features ``x``, hidden states by block)."""
        parts = [(x - np.asarray(self.mean)) / np.asarray(self.scale)]
        residuals = []
        for (pos, layer), hm, comp in zip(self.blocks, self.hidden_mean, self.components, strict=True):
            centred = hidden[(pos, layer)] - np.asarray(hm)
            axes = np.asarray(comp)
            coords = axes @ centred
            parts.append(coords)
            residuals.append(float(np.linalg.norm(centred - axes.T @ coords)))
        parts.append((np.asarray(residuals) - np.asarray(self.residual_mean)) / np.asarray(self.residual_scale))
        v = np.concatenate(parts)
        return float(math.sqrt(max(float(v @ np.asarray(self.precision) @ v), 0.0)))

    def percentile(self, distance: float) -> float:
        """Share (0–100) of held-out calibration answers closer than ``distance``."""
        q = np.asarray(self.heldout_quantiles)
        return float(np.interp(distance, q, np.linspace(0.0, 100.0, len(q))))


@dataclass(frozen=True)
class Prediction:
    """A calibration applied to one result: confidence, and whether the answer lies in the calibration's domain."""

    confidence: float | None
    in_domain: bool | None
    distance: float | None
    percentile: float | None


def scalar_features(result: ScoreResult, names: Sequence[str]) -> NDArray[np.float64] | None:
    """The named scalar features of a scored result, or None when one is not finite (unscored answer)."""
    if not result.scored:
        return None
    v = np.array([feature_value(result, n) for n in names], dtype=np.float64)
    return v if np.all(np.isfinite(v)) else None


def hidden_vector(result: ScoreResult, position: str, layer: int) -> NDArray[np.float64] | None:
    """The hidden state a result kept at (``position``, ``layer``), or None if it did not keep it."""
    hidden = result.hidden
    if hidden is None or layer not in hidden.layers:
        return None
    return np.asarray(hidden.states[position][hidden.layers.index(layer)], dtype=np.float64)


def required_layers(
    calibrator: LogisticCalibrator | IsotonicCalibrator | None, domain: DomainDescription | None
) -> tuple[int, ...]:
    """The hidden layers a calibrator and domain description read (what the scoring pass must keep)."""
    layers: set[int] = set()
    if isinstance(calibrator, LogisticCalibrator):
        layers.update(p.layer for p in calibrator.probes)
    if domain is not None:
        layers.update(layer for _, layer in domain.blocks)
    return tuple(sorted(layers))


def _hidden_inputs(
    result: ScoreResult, keys: Sequence[tuple[str, int]]
) -> dict[tuple[str, int], NDArray[np.float64]] | None:
    out: dict[tuple[str, int], NDArray[np.float64]] = {}
    for pos, layer in keys:
        h = hidden_vector(result, pos, layer)
        if h is None:
            return None
        out[(pos, layer)] = h
    return out


def predict(
    calibrator: LogisticCalibrator | IsotonicCalibrator, domain: DomainDescription | None, result: ScoreResult
) -> Prediction:
    """Apply a calibration to ``result``. Unscored answers, or missing hidden states, give all-None."""
    none = Prediction(None, None, None, None)
    if isinstance(calibrator, IsotonicCalibrator):
        x = scalar_features(result, (calibrator.feature,))
        if x is None:
            return none
        confidence: float | None = calibrator.probability(float(x[0]))
    else:
        x = scalar_features(result, calibrator.features)
        hidden = _hidden_inputs(result, [(p.position, p.layer) for p in calibrator.probes])
        if x is None or hidden is None:
            return none
        z = calibrator.logit(x, hidden)
        confidence = float(1.0 / (1.0 + math.exp(-max(min(z, 500.0), -500.0))))
    if domain is None:
        return Prediction(confidence, None, None, None)
    xd = scalar_features(result, domain.features)
    hd = _hidden_inputs(result, domain.blocks)
    if xd is None or hd is None:
        return Prediction(confidence, None, None, None)
    distance = domain.distance(xd, hd)
    return Prediction(confidence, distance <= domain.edge, distance, domain.percentile(distance))


def as_plain(values: Any) -> Any:
    """Numpy arrays and scalars as nested tuples of Python floats (for the records above)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 0:
        return float(arr)
    if arr.ndim == 1:
        return tuple(float(v) for v in arr)
    return tuple(as_plain(row) for row in arr)
