"""The typed, immutable result of scoring one (prompt, response) pair."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gradguard.scores import SCORE_LABELS, UNCERTAINTY_KEYS

__all__ = [
    "ScoreResult",
    "Timings",
    "CalibrationInfo",
    "METADATA_KEYS",
    "METADATA_SCHEMA_VERSION",
    "unscored_metadata",
    "with_messages",
    "HiddenStates",
    "HIDDEN_POSITIONS",
    "UNCERTAINTY_KEYS",
    "SCORE_LABELS",
]

#: The version of :meth:`ScoreResult.metadata`'s schema (its ``schema_version`` key). Every feature
#: that adds to the metadata adds keys (readers ignore keys they do not know) and bumps it.
METADATA_SCHEMA_VERSION = 3
# 1: the first published schema. 2: answers to a turn with tools bound add ``tool_calls`` (one entry per
# call: id, name, confidence, uncertainty, in_domain), built by the integration core. 3: ``tokens``, the
# per-token text, log-probability and entropy of the answer (what a reviewer's page shades).

#: The keys of :meth:`ScoreResult.metadata`, the schema every integration publishes
#: (:func:`unscored_metadata` adds ``error``).
METADATA_KEYS: tuple[str, ...] = (
    "schema_version",
    "confidence",
    "uncertainty",
    "task",
    "calibration",
    "in_domain",
    "domain_distance",
    "domain_percentile",
    "model",
    "profile",
    "spt_offset",
    "n_response_tokens",
    "scored",
    "tokens",
)

#: The positions whose hidden states the scoring pass can hand to a probe, in storage order:
#: ``spt`` the semantic-preserving token ``s``; ``prompt_last`` the last prompt token ``P−1``;
#: ``answer_last`` the position that predicts the last answer token ``P+T−2``; ``answer_mean`` the
#: mean over the positions that predict the answer tokens ``P−1 … P+T−2``.
HIDDEN_POSITIONS: tuple[str, ...] = ("spt", "prompt_last", "answer_last", "answer_mean")


@dataclass(frozen=True)
class HiddenStates:
    """Hidden states the scoring pass computed anyway, for a probe: ``states[position][i]`` is layer ``layers[i]``.

    Layer ``l < L`` is the residual stream entering decoder layer ``l`` (``hidden_states[l]`` in
    Hugging Face terms); layer ``L`` is the final, normed output (the LM-head input). fp32 numpy arrays
    of shape ``(len(layers), d)``, one per name in :data:`HIDDEN_POSITIONS`.
    """

    layers: tuple[int, ...]
    states: dict[str, Any]


class CalibrationInfo(BaseModel):
    """Which calibration produced a confidence: the task, the data it was fitted on, and its cross-validated AUROC."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: str
    data: str = Field(..., description="The calibration data file's name.")
    sha256: str | None = None
    n: int = Field(..., description="Scored calibration answers.")
    judge: str
    cv_auroc: float | None = Field(None, description="Nested cross-validated AUROC of the confidence for correctness.")


class Timings(BaseModel):
    """Wall-clock seconds spent on one completion."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    generate_s: float | None = Field(None, description="Generation time; None when the response was given.")
    score_s: float = Field(..., description="Time spent computing the gradient scores.")
    score_path: Literal["reuse", "exact"] = Field(
        "exact",
        description="'reuse': scoring ran on what generation saved (the SemGrad layers only, one LM-head pass); "
        "'exact': it recomputed the answer's positions (a given response, or generate settings whose saved "
        "states cannot be trusted, e.g. beam search). Both give the same scores up to float error.",
    )


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
    layer_span: tuple[int, int] = Field(
        ..., description="Half-open range [start, stop) of decoder layers used by SemGrad."
    )
    n_prompt_tokens: int
    timings: Timings
    response: str = ""
    token_ids: tuple[int, ...] = ()
    token_logprobs: tuple[float, ...] = Field((), description="log p(y_t) of each response token.")
    token_entropies: tuple[float, ...] = Field(
        (), description="Entropy H_t (nats) of the distribution that predicted each response token; larger = less sure."
    )
    token_texts: tuple[str, ...] = Field(
        (),
        description="The text each response token adds to the answer (see gradguard.token_text.token_pieces); '' for "
        "a special token or one that ends inside a multi-byte character.",
    )
    empty: bool = False
    confidence: float | None = None
    calibrator: str | None = None
    task: str | None = Field(None, description="The task whose calibration applies (see gradguard.tasks).")
    calibration: CalibrationInfo | None = None
    in_domain: bool | None = Field(
        None,
        description="False when the answer lies outside the calibration data (confidence unreliable); None if unknown.",
    )
    domain_distance: float | None = Field(None, description="Mahalanobis distance to the calibration data.")
    domain_percentile: float | None = Field(
        None, description="Share (0–100) of held-out calibration answers closer than this one; > 99 is out of domain."
    )
    model: str | None = None
    profile: str | None = None
    hidden: HiddenStates | None = Field(
        None, exclude=True, repr=False, description="Hidden states the scoring pass kept for a calibration probe."
    )
    finish_reason: Literal["stop", "length"] | None = Field(
        None,
        description="Why generation ended: 'length' when max_new_tokens ran out before an end-of-turn token or a stop "
        "string, else 'stop'; None for a given (not generated) response.",
    )
    span: tuple[int, int] | None = Field(
        None,
        description="The half-open range [a, b) of token_ids the scores cover (the loss is restricted to it: T, the "
        "entropies and alpha are taken over it); None = all of token_ids. Tokens before it (a prefill, a reasoning "
        "section) are teacher-forced but not scored.",
    )
    parts: tuple[ScoreResult, ...] = Field(
        (),
        description="Spans of the response scored on their own (e.g. one per tool call), in the order asked; each "
        "has the whole response's token_ids and its own span, scores and confidence.",
    )
    prompt_messages: tuple[dict[str, Any], ...] | None = Field(
        None,
        exclude=True,
        repr=False,
        description="The chat messages the answer replied to, as given (system prompt and retrieved context "
        "included), so a review queue can keep what a refit needs; None when not known. Not in JSON.",
    )
    top_logprobs: list[list[tuple[int, float]]] | None = Field(
        None,
        exclude=True,
        repr=False,
        description="Per response token, the k most likely (token_id, log-probability) pairs of the distribution that "
        "predicted it, most likely first (when asked for with top_logprobs=k; from the scoring pass). Not in JSON.",
    )

    @property
    def scored(self) -> bool:
        """True when every gradient score is a finite number (an answer that can be trusted or not)."""
        return not self.empty and all(
            math.isfinite(v) for v in (self.hybridgrad, self.semgrad, self.paragrad, self.exgrad)
        )

    @property
    def scored_slice(self) -> slice:
        """The slice of ``token_ids`` (and of the per-token arrays) that the scores cover."""
        return slice(*self.span) if self.span is not None else slice(0, len(self.token_ids))

    @property
    def scored_logprobs(self) -> tuple[float, ...]:
        """``token_logprobs`` of the scored tokens (see :attr:`span`)."""
        return self.token_logprobs[self.scored_slice] if self.span is not None else self.token_logprobs

    @property
    def scored_entropies(self) -> tuple[float, ...]:
        """``token_entropies`` of the scored tokens (see :attr:`span`)."""
        return self.token_entropies[self.scored_slice] if self.span is not None else self.token_entropies

    @property
    def n_scored_tokens(self) -> int:
        """How many tokens the scores cover (``n_response_tokens`` unless :attr:`span` is set)."""
        return self.span[1] - self.span[0] if self.span is not None else self.n_response_tokens

    def uncertainty(self) -> dict[str, float]:
        """The uncertainty scores as a plain dict (keys :data:`UNCERTAINTY_KEYS`)."""
        return {k: float(getattr(self, k)) for k in UNCERTAINTY_KEYS}

    def metadata(self) -> dict[str, object]:
        """The metadata schema shared by the LangChain and LlamaIndex integrations.

        ``{"schema_version", "confidence", "uncertainty": {...}, "task", "calibration": {task, data,
        sha256, n, judge, cv_auroc}, "in_domain", "domain_distance", "domain_percentile", "model",
        "profile", "spt_offset", "n_response_tokens", "scored", "tokens"}``. ``confidence`` is the calibrated
        P(correct) (``None``: uncalibrated); every ``uncertainty`` is larger when the model is **less**
        confident; ``scored`` False means no usable score (treat as unconfident). NaN scores are
        reported as ``None`` so the dict is valid JSON. ``schema_version`` is
        :data:`METADATA_SCHEMA_VERSION`.

        ``tokens`` is :meth:`token_metadata`: per answer token its text, log-probability and entropy
        (the uncertainty a reviewer's page shades token by token), ``None`` when there are none.
        """
        unc = {k: (v if math.isfinite(v) else None) for k, v in self.uncertainty().items()}
        return {
            "schema_version": METADATA_SCHEMA_VERSION,
            "confidence": self.confidence,
            "uncertainty": unc,
            "task": self.task,
            "calibration": self.calibration.model_dump() if self.calibration is not None else None,
            "in_domain": self.in_domain,
            "domain_distance": self.domain_distance,
            "domain_percentile": self.domain_percentile,
            "model": self.model,
            "profile": self.profile,
            "spt_offset": self.spt_offset,
            "n_response_tokens": self.n_response_tokens,
            "scored": self.scored,
            "tokens": self.token_metadata(),
        }

    def token_metadata(self) -> dict[str, list[Any]] | None:
        """Per answer token: ``{"text": [...], "logprob": [...], "entropy": [...], "span": [a, b]}``.

        ``logprob`` is ``log p(y_t)`` (more negative = the token was less expected) and ``entropy`` the
        entropy in nats of the distribution that predicted it (larger = the model was less sure what
        came next); both are computed by the scoring pass. ``span`` is the range of tokens the scores
        cover (tokens before it, e.g. a prefill, are teacher-forced, not scored). Non-finite values
        are ``None``; ``text`` is ``None`` entries when the texts are not known. ``None`` when the
        result has no per-token values (an empty answer).
        """
        n = len(self.token_logprobs)
        if n == 0:
            return None
        texts: list[str | None] = list(self.token_texts) if len(self.token_texts) == n else [None] * n
        entropies = list(self.token_entropies) if len(self.token_entropies) == n else [math.nan] * n
        a, b = self.span if self.span is not None else (0, n)
        return {
            "text": texts,
            "logprob": [float(v) if math.isfinite(v) else None for v in self.token_logprobs],
            "entropy": [float(v) if math.isfinite(v) else None for v in entropies],
            "span": [a, b],
        }


def with_messages(results: Sequence[ScoreResult], messages: Sequence[Mapping[str, Any]]) -> list[ScoreResult]:
    """``results`` with :attr:`ScoreResult.prompt_messages` set to a copy of ``messages`` (what they replied to)."""
    kept = tuple(dict(m) for m in messages)
    return [r.model_copy(update={"prompt_messages": kept}) for r in results]


def unscored_metadata(error: str, *, model: str | None = None) -> dict[str, Any]:
    """The metadata of an answer that has **no** score (every guard treats it as unconfident).

    The keys of :meth:`ScoreResult.metadata`, every score ``None``, ``scored`` False, and ``error``
    saying why there is no score.
    """
    meta: dict[str, Any] = dict.fromkeys(METADATA_KEYS)
    meta.update(
        schema_version=METADATA_SCHEMA_VERSION,
        uncertainty=dict.fromkeys(UNCERTAINTY_KEYS),
        model=model,
        scored=False,
        error=error,
    )
    return meta
