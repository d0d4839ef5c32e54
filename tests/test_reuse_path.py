"""Scoring on what generation saved equals the exact path and the oracle; untrustworthy saves fall back.

The reuse path (``timings.score_path == "reuse"``) runs only the SemGrad layers on the layer inputs saved
during ``generate`` and reads the LM head once with the saved log-sum-exps and entropies. Every case here is
checked against the straightforward oracle at relative 1e-4; settings under which the saved states cannot be
trusted (beam search, assisted decoding that crops the cache, a sliding window that dropped positions) must
take the exact path, never give a wrong score.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest
import torch

from gradguard import GradScorer, ScoreResult
from gradguard.batching import GenerationRequest, generate_batch
from gradguard.capture import GenerationCapture
from gradguard.fast_path import decoder_layers
from gradguard.testing import make_tiny_model

SCORE_FIELDS = ("hybridgrad", "semgrad", "paragrad", "exgrad", "alpha", "mean_entropy", "g_nll", "mean_nll", "max_nll")
QUESTION = [{"role": "user", "content": "What is the capital of France? Say a little about it."}]


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # uncalibrated-task warnings of the tiny models
        yield


def assert_matches_oracle(scorer: GradScorer, messages: list[dict[str, str]], result: ScoreResult) -> None:
    assert not result.empty
    oracle = scorer.oracle(messages, list(result.token_ids), window=result.span)
    for field in SCORE_FIELDS:
        assert getattr(result, field) == pytest.approx(getattr(oracle, field), rel=1e-4), field


def test_generation_reuses_its_states_and_matches_the_oracle(tiny_scorer: GradScorer) -> None:
    result = tiny_scorer.generate_and_score(QUESTION, max_new_tokens=10)
    assert result.timings.score_path == "reuse"
    assert_matches_oracle(tiny_scorer, QUESTION, result)
    exact = tiny_scorer.score(QUESTION, list(result.token_ids))
    assert exact.timings.score_path == "exact"
    assert result.token_logprobs == pytest.approx(exact.token_logprobs, rel=1e-4, abs=1e-6)
    assert result.token_entropies == pytest.approx(exact.token_entropies, rel=1e-4, abs=1e-6)


def test_prefill_and_top_logprobs_on_the_reuse_path(qwen_scorer: GradScorer) -> None:
    result = qwen_scorer.generate_and_score(QUESTION, max_new_tokens=8, prefill="Well,", top_logprobs=3)
    assert result.timings.score_path == "reuse"
    assert result.span is not None and result.span[0] > 0  # the prefill is teacher-forced, not scored
    assert_matches_oracle(qwen_scorer, QUESTION, result)
    exact = qwen_scorer.score(QUESTION, list(result.token_ids), prefill="Well,", top_logprobs=3)
    assert result.top_logprobs is not None and exact.top_logprobs is not None
    assert len(result.top_logprobs) == len(exact.top_logprobs) == result.n_response_tokens
    for mine, theirs in zip(result.top_logprobs, exact.top_logprobs, strict=True):
        assert [t for t, _ in mine] == [t for t, _ in theirs]
        assert [lp for _, lp in mine] == pytest.approx([lp for _, lp in theirs], abs=1e-4)


def test_sampled_completions_keep_the_reuse_path(qwen_scorer: GradScorer) -> None:
    results = qwen_scorer.generate_many(QUESTION, 3, max_new_tokens=8, do_sample=True, temperature=1.5)
    assert [r.timings.score_path for r in results] == ["reuse"] * 3
    for result in results:
        if not result.empty:
            assert_matches_oracle(qwen_scorer, QUESTION, result)


def test_left_padded_batch_of_different_prompts_keeps_the_reuse_path(qwen_scorer: GradScorer) -> None:
    requests = [
        GenerationRequest(messages=[{"role": "user", "content": "Hi"}], max_new_tokens=6),
        GenerationRequest(messages=QUESTION, max_new_tokens=9, prefill="Well"),
        GenerationRequest(messages=[{"role": "user", "content": "Name a colour."}], max_new_tokens=4),
    ]
    for request, result in zip(requests, generate_batch(qwen_scorer, requests), strict=True):
        assert isinstance(result, ScoreResult), result
        assert result.timings.score_path == "reuse"
        assert_matches_oracle(qwen_scorer, request.messages, result)


def test_beam_search_falls_back_to_the_exact_path(qwen_scorer: GradScorer) -> None:
    result = qwen_scorer.generate_and_score(QUESTION, max_new_tokens=8, num_beams=3)
    assert result.timings.score_path == "exact"
    assert_matches_oracle(qwen_scorer, QUESTION, result)


def test_assisted_decoding_falls_back_to_the_exact_path(qwen_scorer: GradScorer) -> None:
    result = qwen_scorer.generate_and_score(QUESTION, max_new_tokens=8, prompt_lookup_num_tokens=2)
    assert result.timings.score_path == "exact"
    assert_matches_oracle(qwen_scorer, QUESTION, result)


def test_a_cropped_cache_is_caught_while_generating(qwen_scorer: GradScorer, monkeypatch: pytest.MonkeyPatch) -> None:
    # Let the hooks in despite the settings: the shapes they see (several positions per step, a cropped
    # cache) must still make the saved states untrusted.
    monkeypatch.setattr("gradguard.scorer.untrusted_settings", lambda model, kwargs: None)
    result = qwen_scorer.generate_and_score(
        [{"role": "user", "content": "Repeat: a b c a b c a b c a b c"}], max_new_tokens=8, prompt_lookup_num_tokens=3
    )
    assert result.timings.score_path == "exact"
    assert_matches_oracle(qwen_scorer, [{"role": "user", "content": "Repeat: a b c a b c a b c a b c"}], result)


def test_a_sliding_window_that_dropped_positions_falls_back() -> None:
    model, tok = make_tiny_model("gemma2")
    model.config.sliding_window = 8  # the prompt is far longer: the sliding layers' cache drops positions
    scorer = GradScorer(model, tok, spt_offset=-2)
    result = scorer.generate_and_score(QUESTION, max_new_tokens=8)
    assert result.timings.score_path == "exact"
    assert_matches_oracle(scorer, QUESTION, result)


def test_probe_layers_below_the_span_are_saved_too() -> None:
    model, tok = make_tiny_model("llama", num_layers=6)
    scorer = GradScorer(model, tok, layer_span=(3, 6))
    scorer.hidden_layers = (1, 3, 6)  # 1 lies below the span: generation must save its input
    result = scorer.generate_and_score(QUESTION, max_new_tokens=8)
    assert result.timings.score_path == "reuse" and result.hidden is not None
    exact = scorer.score(QUESTION, list(result.token_ids))
    assert exact.hidden is not None
    for key, states in exact.hidden.states.items():
        torch.testing.assert_close(
            torch.as_tensor(result.hidden.states[key]), torch.as_tensor(states), rtol=1e-4, atol=1e-5
        )


def test_nothing_is_left_behind_when_generation_fails(qwen_scorer: GradScorer, monkeypatch: pytest.MonkeyPatch) -> None:
    model = qwen_scorer.model

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("generation failed")

    monkeypatch.setattr(model, "generate", boom)
    with pytest.raises(RuntimeError, match="generation failed"):
        qwen_scorer.generate_and_score(QUESTION, max_new_tokens=4)
    for module in model.modules():
        assert not module._forward_pre_hooks and not module._forward_hooks


def test_skipped_layers_are_restored_when_the_scoring_pass_fails(
    qwen_scorer: GradScorer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("head pass failed")

    monkeypatch.setattr("gradguard.fast_path.head_gradients_rows", boom)
    with pytest.raises(RuntimeError, match="head pass failed"):
        qwen_scorer.generate_and_score(QUESTION, max_new_tokens=4)
    monkeypatch.undo()
    assert all("forward" not in layer.__dict__ for layer in decoder_layers(qwen_scorer.model))
    assert qwen_scorer.generate_and_score(QUESTION, max_new_tokens=4).timings.score_path == "reuse"


def test_capture_checks_every_call_shape() -> None:
    model, tok = make_tiny_model("qwen2")
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    capture = GenerationCapture(model, [2], first_col=3, input_width=5, batch=1)
    with capture, torch.no_grad():
        model(input_ids=ids)  # the prefill
        model(input_ids=ids[:, :2])  # two positions in one step: what a verification step or a crop looks like
    states = capture.states(None, torch.ones_like(ids))
    assert not states.trusted and "expected (1, 1)" in (states.reason or "")


def test_a_window_after_the_answer_start_and_per_part_windows_match_the_exact_path(qwen_scorer: GradScorer) -> None:
    from gradguard.scorer import SpanPlan

    def spans(ids: list[int]) -> SpanPlan:  # e.g. a reasoning section before the scored answer, and one tool call
        return SpanPlan(main=(2, len(ids)), parts=[(0, 3)])

    result = qwen_scorer.generate_and_score(QUESTION, max_new_tokens=8, spans=spans)
    exact = qwen_scorer.score(QUESTION, list(result.token_ids), spans=spans)
    assert result.timings.score_path == "reuse" and exact.timings.score_path == "exact"
    for mine, theirs in ((result, exact), *zip(result.parts, exact.parts, strict=True)):
        for field in SCORE_FIELDS:
            assert getattr(mine, field) == pytest.approx(getattr(theirs, field), rel=1e-4), field
    assert result.token_logprobs == pytest.approx(exact.token_logprobs, rel=1e-4, abs=1e-6)


#: Half-precision weights (softmax, entropy and norms stay fp32): the documented tolerance against the fp32 oracle
#: of the same weights, measured at ≤ 9e-3 (bf16) and ≤ 1.4e-3 (fp16) on these tiny models.
HALF_PRECISION_RTOL = {torch.bfloat16: 2e-2, torch.float16: 5e-3}


@pytest.mark.parametrize("dtype", sorted(HALF_PRECISION_RTOL, key=str), ids=str)
@pytest.mark.parametrize("family", ["qwen2", "gemma2"])
def test_half_precision_stays_within_its_documented_tolerance(dtype: torch.dtype, family: str) -> None:
    import copy

    model, tok = make_tiny_model(family, dtype=dtype)
    offset = -2 if family == "gemma2" else None
    scorer = GradScorer(model, tok, spt_offset=offset)
    full = GradScorer(copy.deepcopy(model).float(), tok, spt_offset=offset)
    result = scorer.generate_and_score(QUESTION, max_new_tokens=10)
    assert result.timings.score_path == "reuse" and not result.empty
    oracle = full.oracle(QUESTION, list(result.token_ids))
    for scored in (result, scorer.score(QUESTION, list(result.token_ids))):
        for field in SCORE_FIELDS:
            assert getattr(scored, field) == pytest.approx(getattr(oracle, field), rel=HALF_PRECISION_RTOL[dtype]), (
                field
            )


@pytest.mark.parametrize("path", ["reuse", "exact"])
def test_checkpointed_layers_give_the_same_scores(
    tiny_scorer: GradScorer, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    import gradguard.fast_path as fast_path

    result = tiny_scorer.generate_and_score(QUESTION, max_new_tokens=10, top_logprobs=2)
    plain = tiny_scorer.score(QUESTION, list(result.token_ids), top_logprobs=2)
    monkeypatch.setattr(fast_path, "CHECKPOINT_ABOVE", 0)  # every segment recomputes its layers in the backward
    import torch.utils.checkpoint as checkpointing

    calls: list[int] = []
    real = checkpointing.checkpoint

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(checkpointing, "checkpoint", counting)
    if path == "reuse":
        again = tiny_scorer.generate_and_score(QUESTION, max_new_tokens=10, top_logprobs=2)
        assert again.token_ids == result.token_ids and again.timings.score_path == "reuse"
    else:
        again = tiny_scorer.score(QUESTION, list(result.token_ids), top_logprobs=2)
    for field in SCORE_FIELDS:
        assert getattr(again, field) == pytest.approx(getattr(plain, field), rel=1e-5), field
    assert_matches_oracle(tiny_scorer, QUESTION, again)
    start, _ = tiny_scorer.layer_span
    assert len(calls) >= len(decoder_layers(tiny_scorer.model)) - start  # every SemGrad layer was checkpointed
    assert all("forward" not in layer.__dict__ for layer in decoder_layers(tiny_scorer.model))
