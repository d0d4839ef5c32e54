"""fast_scores_rows: rows with different prompts in one batched pass equal each row scored alone."""

from __future__ import annotations

import warnings
from typing import Any

import pytest

from gradguard import GradScorer
from gradguard.fast_path import RawScores, ScoreRow, fast_scores, fast_scores_rows
from gradguard.oracle import oracle_scores

REL, ABS = 1e-4, 1e-7


def ask(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def tokens(scorer: GradScorer, text: str) -> list[int]:
    return [int(i) for i in scorer.tokenizer(text, add_special_tokens=False)["input_ids"]]


def alone(scorer: GradScorer, row: ScoreRow, hidden_layers: tuple[int, ...] = (), top: int = 0) -> RawScores:
    return fast_scores(
        scorer.model,
        row.prompt_ids,
        [row.response],
        row.spt_position,
        scorer.layer_span,
        hidden_layers=hidden_layers,
        top_logprobs=top,
        windows=[row.window],
        full_stats=[row.full_stats],
    )[0]


def assert_same(got: RawScores, want: RawScores) -> None:
    for field in ("semgrad", "paragrad", "exgrad"):
        assert getattr(got, field) == pytest.approx(getattr(want, field), rel=REL, abs=ABS), field
    assert got.entropy == pytest.approx(want.entropy, rel=REL, abs=ABS)
    assert got.nll == pytest.approx(want.nll, rel=REL, abs=ABS)
    assert got.window == want.window
    assert got.window_offset == want.window_offset


def make_rows(scorer: GradScorer) -> list[ScoreRow]:
    prompts = [
        scorer.prompt_ids(ask("Hi")),
        scorer.prompt_ids(ask("What is the capital of France? Answer in one short sentence, please.")),
        scorer.prompt_ids(ask("Name three colours.")),
    ]
    others = [scorer.prompt_ids(ask(t)) for t in ("Yo", "Ok", "Hey", "No")]
    same_length = [p for p in others if len(p) == len(prompts[0])]
    assert same_length, "no prompt of the same length as the first"
    prompts.append(same_length[0] if same_length[0] != prompts[0] else same_length[-1])
    responses = [
        tokens(scorer, "Paris is the capital of France."),
        tokens(scorer, "x"),
        tokens(scorer, "Red, green and blue are three colours."),
        tokens(scorer, "Hello there"),
    ]
    assert len(responses[2]) >= 6
    pos = [scorer._spt_position(p) for p in prompts]
    return [
        ScoreRow(prompts[0], pos[0], responses[0]),
        ScoreRow(prompts[1], pos[1], responses[1]),
        ScoreRow(prompts[2], pos[2], responses[2], (1, 4), False),
        ScoreRow(prompts[2], pos[2], responses[2], (3, len(responses[2]))),  # the same response, another window
        ScoreRow(prompts[3], pos[3], responses[3]),  # a prompt exactly as long as the first one
    ]


def test_rows_equal_each_row_alone(tiny_scorer: GradScorer) -> None:
    rows = make_rows(tiny_scorer)
    assert len({len(r.prompt_ids) for r in rows}) >= 3
    got = fast_scores_rows(tiny_scorer.model, rows, tiny_scorer.layer_span)
    assert len(got) == len(rows)
    for row, raw in zip(rows, got, strict=True):
        assert_same(raw, alone(tiny_scorer, row))
    assert got[2].window == (1, 4) and got[2].window_offset == 0 and len(got[2].nll) == 3
    assert got[3].window_offset == 3 and len(got[3].nll) == len(rows[3].response)


def test_rows_with_hidden_layers_and_top_logprobs(tiny_scorer: GradScorer) -> None:
    rows = make_rows(tiny_scorer)[:3]
    n_layers = tiny_scorer.model.config.get_text_config().num_hidden_layers
    layers = (1, n_layers)
    got = fast_scores_rows(tiny_scorer.model, rows, tiny_scorer.layer_span, hidden_layers=layers, top_logprobs=3)
    for row, raw in zip(rows, got, strict=True):
        want = alone(tiny_scorer, row, hidden_layers=layers, top=3)
        assert_same(raw, want)
        assert raw.top_logprobs is not None and want.top_logprobs is not None
        assert [[t for t, _ in pos] for pos in raw.top_logprobs] == [[t for t, _ in pos] for pos in want.top_logprobs]
        assert raw.hidden is not None and want.hidden is not None
        for key, value in want.hidden.states.items():
            assert raw.hidden.states[key] == pytest.approx(value, rel=1e-3, abs=1e-5), key


def test_rows_at_position_zero_and_equal_prefixes(tiny_scorer: GradScorer) -> None:
    rows = make_rows(tiny_scorer)
    zero = [ScoreRow(rows[0].prompt_ids, 0, rows[0].response), ScoreRow(rows[1].prompt_ids, 0, rows[1].response)]
    for row, raw in zip(zero, fast_scores_rows(tiny_scorer.model, zero, tiny_scorer.layer_span), strict=True):
        assert_same(raw, alone(tiny_scorer, row))
    mixed = [zero[0], rows[1]]  # one row has no prefix at all, the other a long one
    for row, raw in zip(mixed, fast_scores_rows(tiny_scorer.model, mixed, tiny_scorer.layer_span), strict=True):
        assert_same(raw, alone(tiny_scorer, row))
    same = [rows[0], rows[0]._replace(response=rows[1].response)]  # all-equal prefixes: no padding
    for row, raw in zip(same, fast_scores_rows(tiny_scorer.model, same, tiny_scorer.layer_span), strict=True):
        assert_same(raw, alone(tiny_scorer, row))
    assert fast_scores_rows(tiny_scorer.model, [], tiny_scorer.layer_span) == []


def test_a_row_equals_the_oracle(tiny_scorer: GradScorer) -> None:
    rows = make_rows(tiny_scorer)
    got = fast_scores_rows(tiny_scorer.model, rows, tiny_scorer.layer_span)
    for k in (1, 2):  # a one-token answer; a windowed part (the oracle's statistics cover the window only)
        row = rows[k]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = oracle_scores(
                tiny_scorer.model, row.prompt_ids, row.response, row.spt_position, tiny_scorer.layer_span, row.window
            )
        for field in ("semgrad", "paragrad", "exgrad"):
            assert getattr(got[k], field) == pytest.approx(getattr(want, field), rel=REL, abs=ABS), field
        assert got[k].window_nll == pytest.approx(want.nll, rel=REL, abs=ABS)
        assert got[k].window_entropy == pytest.approx(want.entropy, rel=REL, abs=ABS)


def test_bad_rows_raise(tiny_scorer: GradScorer) -> None:
    from gradguard.errors import InputError

    row = make_rows(tiny_scorer)[0]
    with pytest.raises(InputError):
        fast_scores_rows(tiny_scorer.model, [row._replace(window=(0, 99))], tiny_scorer.layer_span)
    with pytest.raises(InputError):
        fast_scores_rows(tiny_scorer.model, [row._replace(spt_position=len(row.prompt_ids))], tiny_scorer.layer_span)
