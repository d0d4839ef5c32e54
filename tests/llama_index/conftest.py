"""Shared fixtures for the LlamaIndex integration tests (tiny config-built models, offline)."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("llama_index.core")

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from gradguard import GradScorer, ScoreResult  # noqa: E402
from gradguard.integrations.llama_index import GradguardLLM  # noqa: E402
from gradguard.testing import make_score_result, make_tiny_model  # noqa: E402


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
    distinct = {} if empty else {"paragrad": 0.02, "exgrad": 0.005}
    return make_score_result(
        confidence=confidence, hybridgrad=hybridgrad, response=response, empty=empty, model="test-model", **distinct
    )


@pytest.fixture()
def result_factory():
    """``make_result`` as a fixture (test modules cannot import conftest reliably)."""
    return make_result
