"""Shared fixtures for the LlamaIndex integration tests (tiny config-built models, offline)."""

from __future__ import annotations

import math
import os

import pytest

pytest.importorskip("llama_index.core")

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from gradguard import GradScorer, ScoreResult, Timings  # noqa: E402
from gradguard.integrations.llama_index import GradguardLLM  # noqa: E402
from gradguard.testing import make_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def li_scorer() -> GradScorer:
    """A scorer over a tiny random Qwen2-style chat model (shared: scoring never changes the model)."""
    model, tok = make_tiny_model("qwen2")
    return GradScorer(model, tok)


@pytest.fixture(scope="session")
def li_other_scorer() -> GradScorer:
    """A second, different tiny model (a Llama-style one), standing in for 'a larger LLM'."""
    model, tok = make_tiny_model("llama", seed=1)
    return GradScorer(model, tok)


@pytest.fixture()
def tiny_llm(li_scorer: GradScorer) -> GradguardLLM:
    return GradguardLLM(scorer=li_scorer, max_new_tokens=6)


def make_result(
    confidence: float | None = 0.9,
    *,
    hybridgrad: float = 0.01,
    response: str = "answer",
    empty: bool = False,
) -> ScoreResult:
    """A hand-built ScoreResult (tiny models are uncalibrated, so tests that need a confidence build one)."""
    nan = math.nan
    return ScoreResult(
        hybridgrad=nan if empty else hybridgrad,
        semgrad=nan if empty else hybridgrad,
        paragrad=nan if empty else 0.02,
        exgrad=nan if empty else 0.005,
        alpha=0.5,
        mean_entropy=1.0,
        g_nll=2.0,
        mean_nll=0.5,
        max_nll=1.0,
        n_response_tokens=0 if empty else 4,
        spt_offset=-3,
        spt_position=10,
        layer_span=(2, 4),
        n_prompt_tokens=13,
        timings=Timings(generate_s=None, score_s=0.01),
        response=response,
        empty=empty,
        confidence=confidence,
        model="test-model",
    )


@pytest.fixture()
def result_factory():
    """``make_result`` as a fixture (test modules cannot import conftest reliably)."""
    return make_result
