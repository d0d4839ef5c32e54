"""Shared helpers of the LangChain tests: a cached tiny scorer and hand-built scored messages."""

from __future__ import annotations

import functools
import uuid

from langchain_core.messages import AIMessage

from gradguard import GradScorer, ScoreResult
from gradguard.integrations.langchain.metadata import remember_result
from gradguard.testing import make_score_result, make_tiny_model

#: Tiny families with no paper offset get one here (gemma2 has none in the family table).
_OFFSETS = {"gemma2": -2}


@functools.cache
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
    return make_score_result(confidence=confidence, hybridgrad=hybridgrad, empty=empty, response=text, model=model)


def scored_message(text: str = "Paris", **kwargs: object) -> AIMessage:
    """An AIMessage carrying a hand-built score, registered like ChatGradguard registers its answers."""
    result = make_result(text, **kwargs)  # type: ignore[arg-type]
    message = AIMessage(
        content=result.response, id=f"gradguard-{uuid.uuid4().hex}", response_metadata={"gradguard": result.metadata()}
    )
    remember_result(message.id, result)
    return message
