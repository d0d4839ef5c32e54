"""A turn with tools bound: each call's own score equals the oracle with the loss restricted to the call's tokens
(from its name to its last argument token); prefill and reasoning are not scored; streaming hands out the same
calls, with the same ids, as the final turn."""

from __future__ import annotations

from typing import Any

import pytest

from gradguard import GradScorer
from gradguard.integrations._core import (
    GenerationOptions,
    ToolBinding,
    generate_turn,
    score_turn,
    stream_turn,
)
from gradguard.prompting import token_span
from gradguard.testing import make_tiny_model

SCORE_FIELDS = ("hybridgrad", "semgrad", "paragrad", "exgrad", "alpha", "mean_entropy", "g_nll", "mean_nll")
ADD = {
    "type": "function",
    "function": {
        "name": "math.add",
        "description": "Add.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}
QUESTION = [{"role": "user", "content": "1+2?"}]
CALL_1 = '{"name": "math_add", "arguments": {"a": 1, "b": 2}}'
CALL_2 = '{"name": "math_add", "arguments": {"a": 3, "b": 4}}'
ANSWER = f"Sure.\n<tool_call>\n{CALL_1}\n</tool_call>\n<tool_call>\n{CALL_2}\n</tool_call>"


@pytest.fixture(scope="module")
def scorer() -> GradScorer:
    model, tok = make_tiny_model("qwen2")
    return GradScorer(model, tok, spt_offset=-2)


def _binding(scorer: GradScorer, choice: Any = None) -> ToolBinding:
    return ToolBinding.create(scorer.tokenizer, [ADD], choice)


def test_each_call_is_scored_on_its_own_span(scorer: GradScorer) -> None:
    binding = _binding(scorer)
    turn = score_turn(scorer, QUESTION, binding, ANSWER)
    assert [c.call.name for c in turn.calls] == ["math.add", "math.add"]  # the safe name is mapped back
    assert [c.call.arguments for c in turn.calls] == [{"a": 1, "b": 2}, {"a": 3, "b": 4}]
    assert turn.content == "Sure."
    ids = list(turn.result.token_ids)
    text = scorer.tokenizer.decode(ids, skip_special_tokens=True)
    template = binding.template_messages(QUESTION)
    for scored, raw in zip(turn.calls, (CALL_1, CALL_2), strict=True):
        part = scored.result
        assert part is not None and part.span is not None
        name_at = text.index(raw) + raw.index("math_add")
        expected = token_span(scorer.tokenizer, ids, name_at, text.index(raw) + len(raw) - 1)
        assert part.span == expected  # first name token .. last argument token (the call's closing brace excluded)
        decoded = scorer.tokenizer.decode(ids[slice(*part.span)])
        assert decoded.startswith("math_add") and decoded.endswith("}")
        oracle = scorer.oracle(template, ids, tools=binding.template_tools(), window=part.span)
        for field in SCORE_FIELDS:
            assert getattr(part, field) == pytest.approx(getattr(oracle, field), rel=1e-4), field
    a, b = turn.calls
    assert a.result is not None and b.result is not None and a.result.semgrad != pytest.approx(b.result.semgrad)
    meta = turn.metadata()
    assert [e["id"] for e in meta["tool_calls"]] == [c.call.id for c in turn.calls]
    assert all(e["scored"] and set(e["uncertainty"]) >= {"hybridgrad", "semgrad"} for e in meta["tool_calls"])
    assert meta["task"] == "tools"


def test_invalid_calls_are_reported_not_scored(scorer: GradScorer) -> None:
    answer = '<tool_call>\n{"name": "math_add", "arguments": {"a": "one"}}\n</tool_call>'
    turn = score_turn(scorer, QUESTION, _binding(scorer), answer)
    assert turn.calls == [] and len(turn.invalid) == 1
    assert "math.add" in turn.invalid[0].error and turn.metadata()["tool_calls"] == []


def test_reasoning_section_is_not_scored(scorer: GradScorer) -> None:
    answer = "<think>they want a sum</think>It is 3."
    turn = score_turn(scorer, QUESTION, _binding(scorer), answer)
    ids = list(turn.result.token_ids)
    start = token_span(scorer.tokenizer, ids, 0, answer.index("It"))[1]
    assert turn.result.span == (start, len(ids))
    assert turn.reasoning == "they want a sum" and turn.content == "It is 3."
    kept = score_turn(scorer, QUESTION, _binding(scorer), answer, reasoning=False)
    assert kept.result.span is None and kept.result.semgrad != pytest.approx(turn.result.semgrad)


def test_required_tool_is_prefilled_and_the_prefill_not_scored(scorer: GradScorer) -> None:
    binding = _binding(scorer, "math.add")
    assert binding.prefill.startswith("<tool_call>") and "math_add" in binding.prefill
    turn = generate_turn(scorer, QUESTION, binding, GenerationOptions(max_new_tokens=6))
    forced = scorer.tokenizer(binding.prefill, add_special_tokens=False)["input_ids"]
    assert list(turn.result.token_ids[: len(forced)]) == forced
    assert turn.result.response.startswith(binding.prefill)
    if not turn.result.empty:
        assert turn.result.span == (len(forced), turn.result.n_response_tokens)
    # the semantic-preserving position is on the prompt without the prefill
    assert turn.result.spt_position == turn.result.n_prompt_tokens + scorer.spt_offset


def test_stream_hands_out_the_calls_of_the_final_turn(scorer: GradScorer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Scripted generation: the streamer receives the answer's tokens one by one, then the answer is scored."""
    binding = _binding(scorer)
    answer_ids = scorer.tokenizer(ANSWER, add_special_tokens=False)["input_ids"]
    real_score = scorer.score

    def scripted(messages: Any, *, streamer: Any = None, cancel: Any = None, max_new_tokens: int = 0, **kw: Any) -> Any:
        import torch

        streamer.put(torch.tensor([0]))  # the prompt
        for token in answer_ids:
            streamer.put(torch.tensor([token]))
        streamer.end()
        kw = {k: v for k, v in kw.items() if k in ("task", "tools", "prefill", "spans")}
        return real_score(messages, answer_ids, **kw)

    monkeypatch.setattr(scorer, "generate_and_score", scripted)
    pieces = list(stream_turn(scorer, QUESTION, binding, GenerationOptions(max_new_tokens=200)))
    final = pieces[-1].turn
    assert final is not None and all(p.turn is None for p in pieces[:-1])
    streamed = [c for p in pieces for c in p.calls]
    assert [(c.id, c.name, c.arguments) for c in streamed] == [
        (c.call.id, c.call.name, c.call.arguments) for c in final.calls
    ]
    assert len(streamed) == 2 and len({c.id for c in streamed}) == 2
    assert "".join(p.content for p in pieces).strip() == final.content
    assert all("<tool_call>" not in p.content and "arguments" not in p.content for p in pieces)


def test_required_with_one_tool_opens_that_tool(scorer: GradScorer) -> None:
    one = _binding(scorer, "required")
    assert one.prefill == one.fmt.opening("math_add")  # the one tool there is: the model starts at its arguments
    two = ToolBinding.create(scorer.tokenizer, [ADD, {**ADD, "function": {**ADD["function"], "name": "sub"}}], "any")
    assert two.prefill == two.fmt.opening(None) and two.prefill.endswith('{"name": "')


def test_a_prefilled_name_is_not_in_the_call_span(scorer: GradScorer) -> None:
    binding = _binding(scorer, "math.add")
    answer = binding.prefill + '{"a": 1, "b": 2}}\n</tool_call>'
    turn = score_turn(scorer, QUESTION, binding, answer)
    [call] = turn.calls
    assert call.result is not None and call.result.span is not None and turn.result.span is not None
    assert call.result.span[0] == turn.result.span[0]  # starts after the prefill, at the arguments
    assert scorer.tokenizer.decode(list(call.result.token_ids[slice(*call.result.span)])).startswith('{"a"')
