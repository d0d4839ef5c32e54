"""End-to-end on the embedded Qwen2.5-Coder-0.5B-Instruct (slow: de-quantizes once, then ~2 s loads)."""

from __future__ import annotations

import json

import pytest

from gradguard import DEFAULT_MODEL, GradScorer

pytestmark = pytest.mark.embedded

PROMPTS = [
    [{"role": "user", "content": "Who proposed the theory of evolution by natural selection?"}],
    [
        {"role": "system", "content": "Answer with a short phrase."},
        {"role": "user", "content": "What is an area of land called that is wet for all or part of the year?"},
    ],
    [{"role": "user", "content": "Surface waters are heated by the radiation from?"}],
]
FIELDS = ("hybridgrad", "semgrad", "paragrad", "exgrad", "mean_entropy", "g_nll", "mean_nll", "max_nll")


@pytest.fixture(scope="module")
def scorer() -> GradScorer:
    return GradScorer.from_pretrained()


def test_default_model_identity(scorer: GradScorer) -> None:
    assert scorer.model_name == DEFAULT_MODEL
    assert scorer.model.config.model_type == "qwen2"
    # The measured built-in profile, not the Qwen family's -3 (SPS ~0.001 on this model; see docs/profiles.md).
    assert scorer.profile.kind == "measured"
    assert scorer.spt_offset == scorer.profile.spt_offset == -1
    assert scorer.layer_span == (12, 24)


@pytest.mark.parametrize("messages", PROMPTS, ids=["darwin", "wetland", "sun"])
def test_generate_and_score_matches_oracle(scorer: GradScorer, messages: list[dict[str, str]]) -> None:
    result = scorer.generate_and_score(messages, max_new_tokens=24)
    assert result.scored and result.response
    assert result.profile == scorer.profile.name
    if scorer.calibrated:
        assert result.confidence is not None and 0.0 <= result.confidence <= 1.0 and result.calibrator
    assert result.timings.score_path == "reuse"  # scored on what generation saved
    oracle = scorer.oracle(messages, list(result.token_ids))
    for field in FIELDS:
        assert getattr(result, field) == pytest.approx(getattr(oracle, field), rel=1e-4), field
    # The calibrated confidence reads hidden states (layers 12, 16, 20): the same on both paths.
    exact = scorer.score(messages, list(result.token_ids))
    assert exact.timings.score_path == "exact"
    if result.confidence is not None:
        assert result.confidence == pytest.approx(exact.confidence, abs=1e-4)
        assert result.domain_distance == pytest.approx(exact.domain_distance, rel=1e-3)


def test_cli_ask_json(capsys: pytest.CaptureFixture[str]) -> None:
    from gradguard.cli import main

    assert main(["ask", "What is the chemical symbol of gold?", "--max-new-tokens", "12", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == DEFAULT_MODEL
    assert out["scores"]["hybridgrad"] > 0 and out["timing"]["generate_s"] > 0
    assert out["task"] == "chat" and out["confidence"] is not None and out["calibration"]["task"] == "chat"


def test_the_shipped_profile_calibrates_four_tasks(scorer: GradScorer) -> None:
    cals = scorer.profile.calibrations
    assert set(cals) == {"closed-qa", "rag", "chat", "tools"} and scorer.profile.default_task == "chat"
    for name, cal in cals.items():
        least = 150 if name == "tools" else 1000  # tools: one row per call (178 calls on 221 BFCL questions)
        assert cal.n >= least and cal.cv.auroc is not None and cal.domain is not None, name
        assert all(p.hidden_size == scorer.model.config.hidden_size for p in cal.calibrator.probes)


def test_chat_confidence_ranks_a_known_fact_above_a_hallucination(scorer: GradScorer) -> None:
    darwin = scorer.generate_and_score(PROMPTS[0], max_new_tokens=64)
    mars = scorer.generate_and_score(
        [{"role": "user", "content": "Who was the first person to walk on Mars?"}], max_new_tokens=64
    )
    assert darwin.task == mars.task == "chat" and "Darwin" in darwin.response
    assert darwin.confidence is not None and mars.confidence is not None
    assert darwin.confidence > 2 * mars.confidence
    assert darwin.calibration is not None and darwin.calibration.data == "test.jsonl"
    assert darwin.in_domain is not None


def test_rag_task_scores_an_answer_from_a_context(scorer: GradScorer) -> None:
    from gradguard.tasks import builtin_task

    messages = builtin_task("rag").messages(
        "When was the company founded?", "The Quillfeather Robotics company was founded in 2011 in Tromsø, Norway."
    )
    result = scorer.generate_and_score(messages, max_new_tokens=32, task="rag")
    assert "2011" in result.response
    assert result.task == "rag" and result.confidence is not None and result.in_domain is not None
    assert result.calibration is not None and result.calibration.judge == "f1"
