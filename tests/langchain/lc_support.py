"""Shared helpers of the LangChain tests: a cached tiny scorer and hand-built scored messages."""

from __future__ import annotations

import functools
import math
import uuid

from langchain_core.messages import AIMessage

from gradguard import GradScorer, ScoreResult, Timings
from gradguard.integrations.langchain.metadata import remember_result
from gradguard.testing import make_tiny_model

#: Tiny families with no paper offset get one here (gemma2 has none in the family table).
_OFFSETS = {"gemma2": -2}


@functools.lru_cache(maxsize=None)
def tiny_scorer(family: str = "qwen2", seed: int = 0) -> GradScorer:
    """A scorer over a tiny config-built model (built once per process)."""
    model, tok = make_tiny_model(family, seed=seed)
    return GradScorer(model, tok, spt_offset=_OFFSETS.get(family), model_name=f"tiny-{family}-{seed}")


def make_result(
    text: str = "Paris",
    *,
    confidence: float | None = None,
    hybridgrad: float = 0.1,
    empty: bool = False,
    model: str = "hand-built",
) -> ScoreResult:
    """A ScoreResult built by hand (for exact control over confidence and scores)."""
    value = math.nan if empty else hybridgrad
    return ScoreResult(
        hybridgrad=value,
        semgrad=value,
        paragrad=value,
        exgrad=value,
        alpha=0.5,
        mean_entropy=1.0,
        g_nll=2.0,
        mean_nll=1.0,
        max_nll=1.5,
        n_response_tokens=0 if empty else 2,
        spt_offset=-3,
        spt_position=7,
        layer_span=(2, 4),
        n_prompt_tokens=10,
        timings=Timings(generate_s=None, score_s=0.0),
        response="" if empty else text,
        empty=empty,
        confidence=confidence,
        model=model,
    )


def scored_message(text: str = "Paris", **kwargs: object) -> AIMessage:
    """An AIMessage carrying a hand-built score, registered like ChatGradguard registers its answers."""
    result = make_result(text, **kwargs)  # type: ignore[arg-type]
    message = AIMessage(
        content=result.response, id=f"gradguard-{uuid.uuid4().hex}", response_metadata={"gradguard": result.metadata()}
    )
    remember_result(message.id, result)
    return message
