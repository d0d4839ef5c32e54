"""Every optimised path equals the straightforward oracle (relative tolerance 1e-4)."""

from __future__ import annotations

import pytest

from gradguard import GradScorer, ScoreResult

SCORE_FIELDS = ("hybridgrad", "semgrad", "paragrad", "exgrad", "alpha", "mean_entropy", "g_nll", "mean_nll", "max_nll")
QUESTION = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What is the capital of France?"},
]


def assert_same_scores(fast: ScoreResult, oracle: ScoreResult) -> None:
    for field in SCORE_FIELDS:
        assert getattr(fast, field) == pytest.approx(getattr(oracle, field), rel=1e-4), field
    assert fast.n_response_tokens == oracle.n_response_tokens


def test_score_matches_oracle(tiny_scorer: GradScorer) -> None:
    for answer in ("Paris is the capital.", "Lyon", "x"):
        assert_same_scores(tiny_scorer.score(QUESTION, answer), tiny_scorer.oracle(QUESTION, answer))


def test_scores_differ_between_answers(tiny_scorer: GradScorer) -> None:
    a, b = tiny_scorer.score(QUESTION, "Paris is the capital."), tiny_scorer.score(QUESTION, "Lyon")
    assert a.semgrad != pytest.approx(b.semgrad, rel=1e-3)
    assert a.paragrad != pytest.approx(b.paragrad, rel=1e-3)


def test_batch_equals_one_by_one(tiny_scorer: GradScorer) -> None:
    answers = ["Paris is the capital.", "Lyon", "It is Paris, of course, the city of light."]
    batch = tiny_scorer.score_many(QUESTION, answers)
    for answer, result in zip(answers, batch, strict=True):
        assert_same_scores(result, tiny_scorer.oracle(QUESTION, answer))


def test_generate_and_score_reuses_cache_exactly(tiny_scorer: GradScorer) -> None:
    generated = tiny_scorer.generate_and_score(QUESTION, max_new_tokens=12)
    assert generated.timings.generate_s is not None
    if generated.empty:
        pytest.skip("the tiny model ended its turn at once")
    assert_same_scores(generated, tiny_scorer.oracle(QUESTION, list(generated.token_ids)))


def test_sampled_completions_scored_in_one_batch(tiny_scorer: GradScorer) -> None:
    results = tiny_scorer.generate_many(QUESTION, 3, max_new_tokens=8, do_sample=True, temperature=1.5)
    assert len(results) == 3
    for result in results:
        if not result.empty:
            assert_same_scores(result, tiny_scorer.oracle(QUESTION, list(result.token_ids)))


def test_custom_layer_span_matches_oracle() -> None:
    from gradguard.testing import make_tiny_model

    model, tok = make_tiny_model("llama", num_layers=6)
    scorer = GradScorer(model, tok, layer_span=(1, 4))
    assert_same_scores(scorer.score(QUESTION, "Paris"), scorer.oracle(QUESTION, "Paris"))


def test_hybridgrad_is_the_entropy_mix(tiny_scorer: GradScorer) -> None:
    r = tiny_scorer.score(QUESTION, "Paris is the capital.")
    assert r.alpha == pytest.approx(2.718281828459045 ** (-r.mean_entropy))
    assert r.hybridgrad == pytest.approx(r.alpha * r.paragrad + (1 - r.alpha) * r.semgrad)
    assert r.g_nll == pytest.approx(r.mean_nll * r.n_response_tokens)
    assert r.max_nll >= r.mean_nll
    assert len(r.token_logprobs) == r.n_response_tokens
    assert -min(r.token_logprobs) == pytest.approx(r.max_nll)
