"""Shared fixtures: tiny config-built chat models (offline, seconds)."""

from __future__ import annotations

import pytest

from gradguard import GradScorer
from gradguard.testing import make_tiny_model

#: Offsets for the tiny families; gemma2 has no family default, so it is given one.
TINY_OFFSETS = {"qwen2": None, "llama": None, "mistral": None, "gemma2": -2}


@pytest.fixture(scope="session", params=sorted(TINY_OFFSETS))
def tiny_scorer(request: pytest.FixtureRequest) -> GradScorer:
    model, tok = make_tiny_model(request.param)
    return GradScorer(model, tok, spt_offset=TINY_OFFSETS[request.param], model_name=f"tiny-{request.param}")


@pytest.fixture()
def qwen_scorer() -> GradScorer:
    model, tok = make_tiny_model("qwen2")
    return GradScorer(model, tok, model_name="tiny-qwen2")
