"""Scoring spans of an answer on their own (tool calls, a prefill, a reasoning section) equals the oracle with the
loss restricted to the span; parts come from the same batched pass."""

from __future__ import annotations

import pytest

from gradguard import GradScorer, ScoreResult
from gradguard.errors import InputError
from gradguard.prompting import token_span
from gradguard.scorer import SpanPlan
from gradguard.scores import SCORE_BY_NAME

SCORE_FIELDS = ("hybridgrad", "semgrad", "paragrad", "exgrad", "alpha", "mean_entropy", "g_nll", "mean_nll", "max_nll")
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
ANSWER = "It is Paris, of course, the city of light and of the Louvre."


def assert_same(fast: ScoreResult, oracle: ScoreResult) -> None:
    for field in SCORE_FIELDS:
        assert getattr(fast, field) == pytest.approx(getattr(oracle, field), rel=1e-4), field


def test_parts_match_oracle_restricted_to_their_span(tiny_scorer: GradScorer) -> None:
    ids = tiny_scorer.score(QUESTION, ANSWER).token_ids
    n = len(ids)
    parts = [(1, 4), (3, n - 1), (n - 2, n)]
    result = tiny_scorer.score(QUESTION, ANSWER, spans=lambda _ids: SpanPlan(parts=parts))
    assert [p.span for p in result.parts] == parts
    assert_same(result, tiny_scorer.oracle(QUESTION, ANSWER))  # the message-level score is unchanged
    for part, window in zip(result.parts, parts, strict=True):
        assert_same(part, tiny_scorer.oracle(QUESTION, ANSWER, window=window))
        assert part.token_ids == result.token_ids and part.n_scored_tokens == window[1] - window[0]
        oracle = tiny_scorer.oracle(QUESTION, ANSWER, window=window)
        assert part.scored_logprobs == pytest.approx(oracle.token_logprobs, abs=1e-4)


def test_parts_differ_from_the_whole(tiny_scorer: GradScorer) -> None:
    result = tiny_scorer.score(QUESTION, ANSWER, spans=lambda ids: SpanPlan(parts=[(0, 3)]))
    assert result.parts[0].semgrad != pytest.approx(result.semgrad, rel=1e-3)
    assert result.parts[0].paragrad != pytest.approx(result.paragrad, rel=1e-3)


def test_main_range_excludes_a_leading_section(tiny_scorer: GradScorer) -> None:
    """A reasoning section (or any leading text) kept out of the message-level loss: the oracle on that window."""
    n = tiny_scorer.score(QUESTION, ANSWER).n_response_tokens
    result = tiny_scorer.score(QUESTION, ANSWER, spans=lambda ids: SpanPlan(main=(4, len(ids))))
    assert result.span == (4, n)
    assert_same(result, tiny_scorer.oracle(QUESTION, ANSWER, window=(4, n)))
    assert len(result.token_logprobs) == n  # every teacher-forced token keeps its log-probability
    assert SCORE_BY_NAME["answer_length"].read(result) == n - 4
    assert SCORE_BY_NAME["first_nll"].read(result) == pytest.approx(-result.token_logprobs[4])


def test_prefill_is_teacher_forced_not_scored(tiny_scorer: GradScorer) -> None:
    prefill = "It is"
    n_prefill = len(tiny_scorer.tokenizer(prefill, add_special_tokens=False)["input_ids"])
    result = tiny_scorer.score(QUESTION, ANSWER, prefill=prefill)
    assert result.span == (n_prefill, result.n_response_tokens)
    assert_same(result, tiny_scorer.oracle(QUESTION, ANSWER, window=result.span))
    # the semantic-preserving position is taken on the prompt without the prefill
    assert result.spt_position == result.n_prompt_tokens + tiny_scorer.spt_offset


def test_generate_with_prefill_continues_it(tiny_scorer: GradScorer) -> None:
    prefill = "Paris"
    result = tiny_scorer.generate_and_score(QUESTION, max_new_tokens=6, prefill=prefill)
    forced = tiny_scorer.tokenizer(prefill, add_special_tokens=False)["input_ids"]
    assert list(result.token_ids[: len(forced)]) == forced
    if result.n_response_tokens == len(forced):
        assert result.empty  # nothing but the prefill: nothing to score
        return
    assert result.span == (len(forced), result.n_response_tokens)
    assert_same(result, tiny_scorer.oracle(QUESTION, list(result.token_ids), window=result.span))


def test_generate_with_parts_reuses_the_cache_exactly(tiny_scorer: GradScorer) -> None:
    result = tiny_scorer.generate_and_score(
        QUESTION, max_new_tokens=8, spans=lambda ids: SpanPlan(parts=[(0, len(ids))] if len(ids) > 1 else [])
    )
    if result.n_response_tokens < 2:
        pytest.skip("the tiny model ended its turn at once")
    ids = list(result.token_ids)
    assert_same(result.parts[0], tiny_scorer.oracle(QUESTION, ids))
    assert_same(result, result.parts[0])


def test_bad_plans_are_refused(tiny_scorer: GradScorer) -> None:
    with pytest.raises(InputError, match="not non-empty token ranges"):
        tiny_scorer.score(QUESTION, ANSWER, spans=lambda ids: SpanPlan(parts=[(3, 3)]))
    with pytest.raises(InputError, match="ending at the answer's last token"):
        tiny_scorer.score(QUESTION, ANSWER, spans=lambda ids: SpanPlan(main=(0, 2)))
    with pytest.raises(InputError, match="does not start with the prefill"):
        tiny_scorer.score(QUESTION, ANSWER, prefill="Lyon")


def test_token_span_covers_the_characters(tiny_scorer: GradScorer) -> None:
    tok = tiny_scorer.tokenizer
    ids = tok(ANSWER, add_special_tokens=False)["input_ids"]
    text = tok.decode(ids, skip_special_tokens=True)
    start = text.index("Paris")
    a, b = token_span(tok, ids, start, start + len("Paris"))
    assert "Paris" in tok.decode(ids[a:b]) and "Paris" not in tok.decode(ids[a + 1 : b]) + tok.decode(ids[a : b - 1])
    with pytest.raises(InputError, match="character range"):
        token_span(tok, ids, 5, 5)
