"""An explicit ``spt_offset`` never fails on the profile lookup: it falls back to a manual profile."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest

from gradguard import GradScorer
from gradguard.profiles import ProfileMismatchError
from gradguard.profiles.io import save_profile
from gradguard.profiles.lookup import PROFILE_PATH_ENV
from gradguard.testing import make_tiny_model, make_tiny_profile

#: The embedded model's built-in measured profile (24 layers, hidden 896): the tiny model's dims differ.
BUILTIN_ID = "Qwen/Qwen2.5-Coder-0.5B-Instruct"
Tiny = tuple[Any, Any]
MESSAGES = [{"role": "user", "content": "What is 2+2?"}]


@pytest.fixture(scope="module")
def tiny() -> Tiny:
    return make_tiny_model("qwen2")


def test_builtin_id_with_other_dims_raises_without_an_offset(tiny: Tiny) -> None:
    model, tok = tiny
    with pytest.raises(ProfileMismatchError, match="24 layers"):
        GradScorer(model, tok, model_name=BUILTIN_ID)


def test_explicit_offset_falls_back_to_a_manual_profile_on_a_dims_mismatch(tiny: Tiny) -> None:
    model, tok = tiny
    scorer = GradScorer(model, tok, spt_offset=-2, model_name=BUILTIN_ID)
    assert scorer.profile.kind == "manual" and scorer.profile.spt_offset == -2
    assert scorer.spt_offset == -2 and scorer.layer_span == (2, 4)
    assert not scorer.calibrated
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no calibration for the task
        result = scorer.score(MESSAGES, "4")
    assert result.scored and result.spt_offset == -2 and result.confidence is None


def test_explicit_offset_falls_back_on_a_chat_template_mismatch(
    tiny: Tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, tok = tiny
    save_profile(
        make_tiny_profile(tok, model_id="test/drifted", chat_template_fingerprint="sha256:other"), tmp_path / "p.json"
    )
    monkeypatch.setenv(PROFILE_PATH_ENV, str(tmp_path))
    with pytest.raises(ProfileMismatchError, match="chat template"):
        GradScorer(model, tok, model_name="test/drifted")
    scorer = GradScorer(model, tok, spt_offset=-2, model_name="test/drifted")
    assert scorer.profile.kind == "manual" and scorer.spt_offset == -2


def test_explicit_offset_with_no_profile_at_all() -> None:
    model, tok = make_tiny_model("gemma2")  # no family default for gemma2
    scorer = GradScorer(model, tok, spt_offset=-2, model_name="tiny-gemma2")
    assert scorer.profile.kind == "manual"


def test_explicit_offset_equal_to_a_fitting_profile_keeps_it(
    tiny: Tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, tok = tiny
    save_profile(make_tiny_profile(tok), tmp_path / "p.json")
    monkeypatch.setenv(PROFILE_PATH_ENV, str(tmp_path))
    assert GradScorer(model, tok, spt_offset=-2, model_name="test/tiny-qwen2").profile.name == "tiny-qwen2"
    assert GradScorer(model, tok, spt_offset=-3, model_name="test/tiny-qwen2").profile.kind == "manual"


def test_an_explicit_profile_that_does_not_fit_still_raises(tiny: Tiny) -> None:
    model, tok = tiny
    with pytest.raises(ProfileMismatchError):
        GradScorer(model, tok, spt_offset=-2, profile=make_tiny_profile(tok, num_layers=8, layer_span=(4, 8)))
