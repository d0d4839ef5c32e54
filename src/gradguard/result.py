"""The typed, immutable result of scoring one (prompt, response) pair."""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ScoreResult", "Timings", "UNCERTAINTY_KEYS", "SCORE_LABELS"]

#: The uncertainty scores reported in every integration's metadata, in this order.
UNCERTAINTY_KEYS: tuple[str, ...] = (
    "hybridgrad",
    "semgrad",
    "paragrad",
    "exgrad",
    "g_nll",
    "mean_nll",
    "mean_entropy",
)

#: Display names of the uncertainty scores, for tables and plots.
SCORE_LABELS: dict[str, str] = {
    "hybridgrad": "HybridGrad",
    "semgrad": "SemGrad",
    "paragrad": "ParaGrad",
    "exgrad": "ExGrad",
    "g_nll": "G-NLL",
    "mean_nll": "mean NLL",
    "mean_entropy": "mean entropy",
}


class Timings(BaseModel):
    """Wall-clock seconds spent on one completion."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    generate_s: float | None = Field(None, description="Generation time; None when the response was given.")
    score_s: float = Field(..., description="Time spent computing the gradient scores.")


class ScoreResult(BaseModel):
    """Gradient-based uncertainty of one response to one prompt.

    Every score is an *uncertainty*: **larger means less confident**.

    - ``semgrad``: mean |∂ℓ_w/∂h_l[s]| over the top half of the layers at the
      semantic-preserving position ``s`` (how hard the model's understanding of
      the question would have to move to make this answer likely).
    - ``paragrad``: mean |∂ℓ_w/∂W_head| (how hard the output layer would have to move).
    - ``hybridgrad``: ``alpha * paragrad + (1 - alpha) * semgrad`` with
      ``alpha = exp(-mean_entropy)``; the paper's headline score.
    - ``exgrad``: like ``paragrad`` without the entropy weights (baseline).
    - ``g_nll``, ``mean_nll``, ``max_nll``, ``mean_entropy``: single-pass baselines.

    ``confidence`` is a calibrated probability that the answer is correct
    (larger = more confident); it is ``None`` when no calibration is available,
    never a made-up number.

    When the response is empty after tokenization, ``empty`` is True and all
    scores are NaN; :attr:`scored` is then False and consumers must treat the
    answer as unconfident.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    hybridgrad: float
    semgrad: float
    paragrad: float
    exgrad: float
    alpha: float
    mean_entropy: float
    g_nll: float
    mean_nll: float
    max_nll: float
    n_response_tokens: int
    spt_offset: int = Field(..., description="Semantic-preserving offset k (negative) from the prompt's end.")
    spt_position: int = Field(..., description="Absolute token position s = P + k.")
    layer_span: tuple[int, int] = Field(..., description="Half-open range [start, stop) of decoder layers used by SemGrad.")
    n_prompt_tokens: int
    timings: Timings
    response: str = ""
    token_ids: tuple[int, ...] = ()
    token_logprobs: tuple[float, ...] = Field((), description="log p(y_t) of each response token.")
    empty: bool = False
    confidence: float | None = None
    calibrator: str | None = None
    model: str | None = None
    profile: str | None = None

    @property
    def scored(self) -> bool:
        """True when every gradient score is a finite number (an answer that can be trusted or not)."""
        return not self.empty and all(
            math.isfinite(v) for v in (self.hybridgrad, self.semgrad, self.paragrad, self.exgrad)
        )

    def uncertainty(self) -> dict[str, float]:
        """The uncertainty scores as a plain dict (keys :data:`UNCERTAINTY_KEYS`)."""
        return {k: float(getattr(self, k)) for k in UNCERTAINTY_KEYS}

    def metadata(self) -> dict[str, object]:
        """The metadata schema shared by the LangChain and LlamaIndex integrations.

        ``{"confidence", "uncertainty": {...}, "model", "profile", "spt_offset",
        "n_response_tokens", "scored"}``. NaN scores are reported as ``None`` so the
        dict is valid JSON.
        """
        unc = {k: (v if math.isfinite(v) else None) for k, v in self.uncertainty().items()}
        return {
            "confidence": self.confidence,
            "uncertainty": unc,
            "model": self.model,
            "profile": self.profile,
            "spt_offset": self.spt_offset,
            "n_response_tokens": self.n_response_tokens,
            "scored": self.scored,
        }
