"""GradguardLLM as a LlamaIndex FunctionCallingLLM, and ConfidenceGatedTool in FunctionAgent / AgentWorkflow.

Tiny random models cannot write a useful tool call, so the model's output is scripted in two ways:
``scripted`` replaces the scorer's generation by a fixed answer that the real turn machinery streams,
parses and scores (real per-call scores, no confidence: tiny models are uncalibrated); ``scripted_turns``
replaces the backend's turns by hand-built ones with a chosen confidence per call (for the gate).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator, Sequence
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("llama_index.core")

import torch  # noqa: E402
from llama_index.core.agent.workflow import AgentWorkflow, FunctionAgent, ToolCallResult  # noqa: E402
from llama_index.core.base.llms.types import ChatMessage, ToolCallBlock  # noqa: E402
from llama_index.core.tools import FunctionTool  # noqa: E402
from llama_index.core.workflow import HumanResponseEvent, InputRequiredEvent  # noqa: E402

from gradguard import GradScorer  # noqa: E402
from gradguard.integrations._core import (  # noqa: E402
    ScoredCall,
    ToolCall,
    ToolMessageError,
    ToolsUnsupportedError,
    ToolTurn,
    TurnPiece,
)
from gradguard.integrations.llama_index import (  # noqa: E402
    METADATA_KEY,
    ConfidenceGatedTool,
    GradguardLlamaIndexError,
    GradguardLLM,
    ToolApprovalRequest,
    ToolGateDecision,
    guard_tools,
)
from gradguard.integrations.llama_index.tools import call_confidence  # noqa: E402
from gradguard.testing import make_score_result, make_tiny_model  # noqa: E402


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def weather(city: str) -> str:
    """The weather in a city."""
    return f"Sunny in {city}."


# Short descriptions: the tiny models' byte-level tokens fill their 1024-token window fast.
ADD = FunctionTool.from_defaults(add, name="math.add", description="Add.")  # a name templates reject: mapped back
WEATHER = FunctionTool.from_defaults(weather, description="Weather.")
CALL = '<tool_call>\n{"name": "math_add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'
CALL_2 = '<tool_call>\n{"name": "weather", "arguments": {"city": "Oslo"}}\n</tool_call>'


@pytest.fixture()
def llm(li_scorer: GradScorer) -> GradguardLLM:
    return GradguardLLM(scorer=li_scorer, max_new_tokens=8)


@pytest.fixture()
def scripted(monkeypatch: pytest.MonkeyPatch, li_scorer: GradScorer) -> Callable[..., list[dict[str, Any]]]:
    """``scripted(*answers)``: the model 'generates' each answer in turn (streamed token by token when asked);
    the answer is then scored by the real scorer. Returns the list of calls seen (template messages, tools)."""
    seen: list[dict[str, Any]] = []
    answers: list[str] = []
    real_score = li_scorer.score

    def generate_and_score(messages: Any, *, streamer: Any = None, cancel: Any = None, tools: Any = None,
                           prefill: str = "", spans: Any = None, task: Any = None, **_: Any) -> Any:
        answer = answers.pop(0)
        seen.append({"messages": messages, "tools": tools, "prefill": prefill, "task": task})
        assert answer.startswith(prefill), "a scripted answer must start with the turn's prefill"
        body = answer[len(prefill):]
        if streamer is not None:
            streamer.put(torch.tensor([[0]]))  # the prompt, which streamers skip
            for token in li_scorer.tokenizer(body, add_special_tokens=False)["input_ids"]:
                streamer.put(torch.tensor([token]))
            streamer.end()
        return real_score(messages, answer, tools=tools, prefill=prefill, spans=spans, task=task)

    def script(*texts: str) -> list[dict[str, Any]]:
        answers.extend(texts)
        return seen

    monkeypatch.setattr(li_scorer, "generate_and_score", generate_and_score)
    return script


def _turn(content: str, *calls: tuple[str, str, dict[str, Any], float | None]) -> ToolTurn:
    scored = [
        ScoredCall(ToolCall(i, name, args, (0, 0)), make_score_result(confidence=c, response=name))
        for i, name, args, c in calls
    ]
    return ToolTurn(make_score_result(confidence=0.8, response=content), content, scored)


@pytest.fixture()
def scripted_turns(monkeypatch: pytest.MonkeyPatch) -> Callable[..., list[list[dict[str, Any]]]]:
    """``scripted_turns(llm, *turns)``: the backend answers with these ToolTurns in order (streamed as content, then
    the calls, then the turn). Returns the template messages of each LLM call (tool ids checked by the core)."""

    def script(target: GradguardLLM, *turns: ToolTurn) -> list[list[dict[str, Any]]]:
        queue, seen = list(turns), []

        def generate_turn(messages: Any, binding: Any, options: Any, *, reasoning: bool = True) -> ToolTurn:
            seen.append(binding.template_messages(messages))
            return queue.pop(0)

        def stream_turn(messages: Any, binding: Any, options: Any, *, reasoning: bool = True) -> Iterator[TurnPiece]:
            turn = generate_turn(messages, binding, options)
            yield TurnPiece(turn.content)
            yield TurnPiece("", [c.call for c in turn.calls])
            yield TurnPiece("", (), turn)

        monkeypatch.setattr(target._backend, "generate_turn", generate_turn)
        monkeypatch.setattr(target._backend, "stream_turn", stream_turn)
        return seen

    return script


# --- the FunctionCallingLLM contract ---------------------------------------------------------------------


def test_metadata_says_function_calling(llm: GradguardLLM) -> None:
    assert llm.metadata.is_function_calling_model is True


def test_chat_with_tools_renders_parses_and_scores_each_call(llm: GradguardLLM, scripted: Any) -> None:
    seen = scripted(f"I will add.\n{CALL}")
    response = llm.chat_with_tools([ADD, WEATHER], user_msg="1+2?")
    [block] = [b for b in response.message.blocks if isinstance(b, ToolCallBlock)]
    assert (block.tool_name, block.tool_kwargs) == ("math.add", {"a": 1, "b": 2})  # the original name
    assert response.message.content == "I will add."
    assert [t["function"]["name"] for t in seen[0]["tools"]] == ["math_add", "weather"]  # safe names in the prompt
    meta = response.additional_kwargs[METADATA_KEY]
    assert meta == response.message.additional_kwargs[METADATA_KEY] and meta["task"] == "tools"
    [entry] = meta["tool_calls"]
    assert entry["id"] == block.tool_call_id and entry["name"] == "math.add" and entry["scored"] is True
    assert entry["confidence"] is None and entry["uncertainty"]["hybridgrad"] > 0  # uncalibrated tiny model
    assert response.raw is not None and response.raw.parts  # the ScoreResult, one part per call
    [selection] = llm.get_tool_calls_from_response(response)
    assert (selection.tool_id, selection.tool_name, selection.tool_kwargs) == (
        block.tool_call_id, "math.add", {"a": 1, "b": 2})


def test_predict_and_call_runs_the_tool(llm: GradguardLLM, scripted: Any) -> None:
    scripted(CALL)
    out = llm.predict_and_call([ADD], user_msg="1+2?")
    assert out.response == "3" and out.sources[0].tool_name == "math.add"


def test_parallel_calls_are_kept_only_when_allowed(llm: GradguardLLM, scripted: Any) -> None:
    scripted(f"{CALL}\n{CALL_2}", f"{CALL}\n{CALL_2}")
    one = llm.chat_with_tools([ADD, WEATHER], user_msg="both")  # LlamaIndex's default: no parallel calls
    both = llm.chat_with_tools([ADD, WEATHER], user_msg="both", allow_parallel_tool_calls=True)
    assert [s.tool_name for s in llm.get_tool_calls_from_response(one)] == ["math.add"]
    assert [e["name"] for e in one.additional_kwargs[METADATA_KEY]["tool_calls"]] == ["math.add"]
    assert [s.tool_name for s in llm.get_tool_calls_from_response(both)] == ["math.add", "weather"]
    assert len(both.additional_kwargs[METADATA_KEY]["tool_calls"]) == 2


def test_streamed_chunks_hold_the_calls_completed_so_far(llm: GradguardLLM, scripted: Any) -> None:
    scripted(f"Adding.\n{CALL}\n{CALL_2}")
    chunks = list(llm.stream_chat_with_tools([ADD, WEATHER], user_msg="both", allow_parallel_tool_calls=True))
    assert len(chunks) > 3
    counts, ids = [], None
    for chunk in chunks:  # FunctionAgent reads every chunk like this: never raises on a partial answer
        selections = llm.get_tool_calls_from_response(chunk, error_on_no_tool_call=False)
        counts.append(len(selections))
        ids = [s.tool_id for s in selections]
    assert counts == sorted(counts) and counts[0] == 0 and counts[-1] == 2
    assert all(METADATA_KEY not in c.additional_kwargs for c in chunks[:-1])
    last = chunks[-1]
    assert [e["id"] for e in last.additional_kwargs[METADATA_KEY]["tool_calls"]] == ids  # streamed ids are final
    assert "".join(c.delta or "" for c in chunks) == last.message.content == "Adding."


def test_no_call_raises_only_when_asked_and_gives_the_invalid_reasons(llm: GradguardLLM, scripted: Any) -> None:
    scripted('<tool_call>\n{"name": "rm_rf", "arguments": {}}\n</tool_call>', "Just text.")
    bad = llm.chat_with_tools([ADD], user_msg="x")
    [invalid] = bad.additional_kwargs["invalid_tool_calls"]
    assert invalid["name"] == "rm_rf" and "not bound" in invalid["error"]
    assert llm.get_tool_calls_from_response(bad, error_on_no_tool_call=False) == []
    with pytest.raises(GradguardLlamaIndexError, match="not bound"):
        llm.get_tool_calls_from_response(bad)
    plain = llm.chat_with_tools([ADD], user_msg="x")
    with pytest.raises(GradguardLlamaIndexError, match="'Just text.'"):
        llm.get_tool_calls_from_response(plain)


def test_no_tools_is_a_plain_chat(llm: GradguardLLM, scripted: Any) -> None:
    seen = scripted("Hello.", "Hello.")
    assert llm.chat_with_tools([], user_msg="hi").message.content == "Hello."  # an agent without tools
    assert [c.delta for c in llm.stream_chat_with_tools([], user_msg="hi")][-1] is not None
    assert seen[0]["tools"] is None and seen[0]["task"] is None


def test_prepare_chat_with_tools(llm: GradguardLLM) -> None:
    history = [ChatMessage(role="user", content="hi")]
    kwargs = llm._prepare_chat_with_tools([ADD], "1+2?", history, tool_required=True, max_tokens=5)
    assert len(history) == 1 and [m.content for m in kwargs["messages"]] == ["hi", "1+2?"]  # history not mutated
    assert kwargs["tools"][0]["function"]["name"] == "math.add" and kwargs["tools"][0]["type"] == "function"
    assert (kwargs["tool_choice"], kwargs["parallel_tool_calls"], kwargs["max_tokens"]) == ("required", False, 5)
    assert llm._prepare_chat_with_tools([ADD], "x", tool_choice="math.add")["tool_choice"] == "math.add"
    assert llm._prepare_chat_with_tools([ADD], "x")["tool_choice"] == "auto"


def test_tool_choice_is_enforced_by_a_prefill(llm: GradguardLLM, scripted: Any) -> None:
    seen = scripted(CALL, CALL)
    named = llm.chat_with_tools([ADD, WEATHER], user_msg="x", tool_choice="math.add")
    required = llm.chat_with_tools([ADD, WEATHER], user_msg="x", tool_required=True)
    assert seen[0]["prefill"] == '<tool_call>\n{"name": "math_add", "arguments": '
    assert seen[1]["prefill"] == '<tool_call>\n{"name": "'
    for response in (named, required):
        assert [s.tool_kwargs for s in llm.get_tool_calls_from_response(response)] == [{"a": 1, "b": 2}]


def _rendered(li_scorer: GradScorer, seen: dict[str, Any]) -> str:
    return str(li_scorer.tokenizer.apply_chat_template(
        seen["messages"], tools=seen["tools"], tokenize=False, add_generation_prompt=True))


@pytest.mark.parametrize("style", ["blocks", "additional_kwargs"])
def test_history_with_calls_and_results_goes_into_the_template(
    llm: GradguardLLM, scripted: Any, li_scorer: GradScorer, style: str
) -> None:
    if style == "blocks":  # how LlamaIndex 0.14 LLMs (this one included) return calls
        call = ChatMessage(role="assistant", blocks=[ToolCallBlock(tool_call_id="c1", tool_name="math.add",
                                                                   tool_kwargs={"a": 1, "b": 2})])
    else:  # older integrations: OpenAI dicts with JSON-string arguments
        call = ChatMessage(role="assistant", content="", additional_kwargs={"tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "math.add", "arguments": '{"a": 1, "b": 2}'}}]})
    result = ChatMessage(role="tool", content="3", additional_kwargs={"tool_call_id": "c1"})
    seen = scripted("It is 3.")
    response = llm.chat([ChatMessage(role="user", content="1+2?"), call, result], tools=[ADD])
    assert response.message.content == "It is 3." and llm.get_tool_calls_from_response(response, False) == []
    prompt = _rendered(li_scorer, seen[0])
    assert '<tool_call>\n{"name": "math_add", "arguments": {"a": 1, "b": 2}}\n</tool_call>' in prompt
    assert "<tool_response>\n3\n</tool_response>" in prompt
    # without tools bound (AgentWorkflow's early-stopping answer), the history is still rendered
    scripted("Done.")
    assert llm.chat([ChatMessage(role="user", content="1+2?"), call, result]).message.content == "Done."


def test_a_tool_message_answering_no_call_raises(llm: GradguardLLM) -> None:
    call = ChatMessage(role="assistant", blocks=[ToolCallBlock(tool_call_id="c1", tool_name="math.add",
                                                               tool_kwargs={"a": 1, "b": 2})])
    stray = ChatMessage(role="tool", content="3", additional_kwargs={"tool_call_id": "c2"})
    with pytest.raises(ToolMessageError, match=r"tool_call_id 'c2'.*known call ids: \['c1'\]"):
        llm.chat([ChatMessage(role="user", content="x"), call, stray], tools=[ADD])


def test_a_template_without_tool_support_says_so() -> None:
    model, tok = make_tiny_model("gemma2")
    llm = GradguardLLM(scorer=GradScorer(model, tok, spt_offset=-2), max_new_tokens=4)
    with pytest.raises(ToolsUnsupportedError):
        llm.chat_with_tools([ADD], user_msg="x")
    assert llm.chat([ChatMessage(role="user", content="x")]).message.content is not None  # plain chat still works


# --- FunctionAgent / AgentWorkflow --------------------------------------------------------------------


async def _run(agent: Any, msg: str, reply: Callable[[InputRequiredEvent], HumanResponseEvent] | None = None,
               ) -> tuple[Any, list[Any]]:
    handler = agent.run(user_msg=msg)
    events = []
    async for ev in handler.stream_events():
        events.append(ev)
        if isinstance(ev, InputRequiredEvent):
            assert reply is not None, f"unexpected input request {ev!r}"
            handler.ctx.send_event(reply(ev))
    return await handler, events


def _of(events: Sequence[Any], kind: type) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


@pytest.mark.parametrize("streaming", [True, False])
def test_function_agent_runs_a_tool_and_answers(llm: GradguardLLM, scripted_turns: Any, streaming: bool) -> None:
    seen = scripted_turns(llm, _turn("Adding.", ("call_1", "math.add", {"a": 1, "b": 2}, 0.9)), _turn("It is 3."))
    agent = FunctionAgent(tools=[ADD], llm=llm, streaming=streaming)
    result, events = asyncio.run(_run(agent, "1+2?"))
    [done] = _of(events, ToolCallResult)
    assert (done.tool_id, done.tool_name, done.tool_output.content) == ("call_1", "math.add", "3")
    assert result.response.content == "It is 3."
    assert seen[1][-1] == {"role": "tool", "content": "3", "tool_call_id": "call_1", "name": "math_add"}
    assert seen[1][-2]["tool_calls"][0]["function"] == {"name": "math_add", "arguments": {"a": 1, "b": 2}}


def test_function_agent_with_scripted_generation(llm: GradguardLLM, scripted: Any) -> None:
    """The whole path: streamed generation, parsing, a score per call, the tool's result back into the template."""
    seen = scripted(CALL, "It is 3.")
    result, events = asyncio.run(_run(FunctionAgent(tools=[ADD], llm=llm), "1+2?"))
    assert [e.tool_output.content for e in _of(events, ToolCallResult)] == ["3"]
    assert result.response.content == "It is 3." and "<tool_response>\n3\n</tool_response>" in _rendered(
        llm.scorer, seen[1])


# --- ConfidenceGatedTool --------------------------------------------------------------------------------------


def _gated_agent(llm: GradguardLLM, **options: Any) -> FunctionAgent:
    return FunctionAgent(tools=guard_tools([ADD], 0.5, **options), llm=llm)


def test_a_confident_call_runs_unasked(llm: GradguardLLM, scripted_turns: Any) -> None:
    scripted_turns(llm, _turn("", ("call_1", "math.add", {"a": 1, "b": 2}, 0.9)), _turn("It is 3."))
    result, events = asyncio.run(_run(_gated_agent(llm), "1+2?"))
    [decision] = _of(events, ToolGateDecision)
    assert (decision.decision, decision.confidence, decision.tool_id) == ("pass", 0.9, "call_1")
    assert _of(events, ToolCallResult)[0].tool_output.content == "3" and not _of(events, InputRequiredEvent)


@pytest.mark.parametrize(("answer", "ran"), [("yes", True), ("no", False)])
def test_a_low_confidence_call_waits_for_a_human(
    llm: GradguardLLM, scripted_turns: Any, answer: str, ran: bool
) -> None:
    seen = scripted_turns(llm, _turn("", ("call_1", "math.add", {"a": 1, "b": 2}, 0.2)), _turn("Done."))
    result, events = asyncio.run(_run(_gated_agent(llm), "1+2?",
                                      lambda ev: HumanResponseEvent(response=answer, tool_id=ev.tool_id)))
    [request] = _of(events, ToolApprovalRequest)
    assert (request.tool_id, request.tool_name, request.tool_kwargs) == ("call_1", "math.add", {"a": 1, "b": 2})
    assert request.confidence == 0.2 and "below the threshold 0.5" in request.prefix
    [decision] = _of(events, ToolGateDecision)
    [output] = [e.tool_output for e in _of(events, ToolCallResult)]
    assert decision.decision == ("approved" if ran else "rejected")
    assert (output.content == "3") is ran and output.is_error is (not ran)
    assert seen[1][-1]["content"] == output.content  # the model sees the result, or why the call did not run
    if not ran:
        assert "was not run" in output.content and "declined" in output.content


def test_a_call_without_confidence_is_held(llm: GradguardLLM, scripted_turns: Any) -> None:
    scripted_turns(llm, _turn("", ("call_1", "math.add", {"a": 1, "b": 2}, None)), _turn("Done."))
    _, events = asyncio.run(_run(_gated_agent(llm), "1+2?",
                                 lambda ev: HumanResponseEvent(response="no", approved=True, tool_id=ev.tool_id)))
    [request] = _of(events, ToolApprovalRequest)
    assert request.confidence is None and "no confidence" in request.reason
    assert _of(events, ToolCallResult)[0].tool_output.content == "3"  # approved=True wins over the text


def test_a_declined_call_is_not_asked_about_again(llm: GradguardLLM, scripted_turns: Any) -> None:
    low = ("math.add", {"a": 1, "b": 2}, 0.2)
    seen = scripted_turns(llm, _turn("", ("c1", *low)), _turn("", ("c2", *low)), _turn("I could not add."))
    result, events = asyncio.run(_run(_gated_agent(llm), "1+2?",
                                      lambda ev: HumanResponseEvent(response="no", tool_id=ev.tool_id)))
    assert [r.tool_id for r in _of(events, ToolApprovalRequest)] == ["c1"]
    decisions = _of(events, ToolGateDecision)
    assert [d.decision for d in decisions] == ["rejected", "rejected"] and "already declined" in decisions[1].reason
    assert "Do not call it again" in seen[1][-1]["content"] and result.response.content == "I could not add."


def test_on_low_reject_never_asks(llm: GradguardLLM, scripted_turns: Any) -> None:
    scripted_turns(llm, _turn("", ("call_1", "math.add", {"a": 1, "b": 2}, 0.1)), _turn("Done."))
    _, events = asyncio.run(_run(_gated_agent(llm, on_low="reject"), "1+2?"))
    assert not _of(events, InputRequiredEvent) and _of(events, ToolGateDecision)[0].decision == "rejected"
    assert _of(events, ToolCallResult)[0].tool_output.is_error


def test_an_unanswered_request_times_out_as_a_rejection(llm: GradguardLLM, scripted_turns: Any) -> None:
    scripted_turns(llm, _turn("", ("call_1", "math.add", {"a": 1, "b": 2}, 0.1)), _turn("Done."))
    _, events = asyncio.run(_run(_gated_agent(llm, timeout=0.2), "1+2?", lambda ev: HumanResponseEvent(
        response="yes", tool_id="another call")))  # an answer for another call does not count
    [decision] = _of(events, ToolGateDecision)
    assert decision.decision == "rejected" and "in time" in decision.reason


def test_parallel_calls_are_gated_one_by_one(llm: GradguardLLM, scripted_turns: Any) -> None:
    scripted_turns(llm, _turn("", ("c1", "math.add", {"a": 1, "b": 2}, 0.9), ("c2", "math.add", {"a": 5, "b": 5}, 0.1)),
                   _turn("Done."))
    _, events = asyncio.run(_run(_gated_agent(llm), "two sums",
                                 lambda ev: HumanResponseEvent(response="no", tool_id=ev.tool_id)))
    assert [r.tool_id for r in _of(events, ToolApprovalRequest)] == ["c2"]
    assert {d.tool_id: d.decision for d in _of(events, ToolGateDecision)} == {"c1": "pass", "c2": "rejected"}


def test_agent_workflow_gates_too(llm: GradguardLLM, scripted_turns: Any) -> None:
    scripted_turns(llm, _turn("", ("call_1", "math.add", {"a": 1, "b": 2}, 0.3)), _turn("It is 3."))
    workflow = AgentWorkflow(agents=[FunctionAgent(name="calc", description="adds", tools=guard_tools([ADD]),
                                                   llm=llm)])
    result, events = asyncio.run(_run(workflow, "1+2?", lambda ev: HumanResponseEvent(response="yes",
                                                                                        tool_id=ev.tool_id)))
    assert _of(events, ToolGateDecision)[0].decision == "approved"
    assert _of(events, ToolCallResult)[0].tool_output.content == "3" and result.response.content == "It is 3."


def test_without_a_workflow_context_a_gated_tool_rejects() -> None:
    gated = ConfidenceGatedTool(add)
    output = asyncio.run(gated.acall(a=1, b=2))
    assert output.is_error and "no workflow Context" in output.content and gated.metadata.name == "add"
    assert gated.call(a=1, b=2).is_error


def _ctx(*messages: ChatMessage) -> Any:
    async def get(key: str, default: Any = None) -> Any:
        return list(messages) if key == "scratchpad" else default

    return SimpleNamespace(store=SimpleNamespace(get=get))


def _message(calls: list[tuple[str, dict[str, Any]]], confidences: list[float | None] | None) -> ChatMessage:
    blocks = [ToolCallBlock(tool_call_id=f"c{i}", tool_name="add", tool_kwargs=args) for i, (_, args) in
              enumerate(calls)]
    extra = {} if confidences is None else {METADATA_KEY: {"tool_calls": [
        {"id": f"c{i}", "name": "add", "confidence": c, "scored": c is not None} for i, c in enumerate(confidences)]}}
    return ChatMessage(role="assistant", blocks=blocks, additional_kwargs=extra)


def test_call_confidence_reads_the_last_message_with_calls() -> None:
    args = {"a": 1, "b": 2}
    older = _message([("add", args)], [0.99])
    assert asyncio.run(call_confidence(_ctx(older, _message([("add", args)], [0.7])), "add", args))[1] == {
        "id": "c0", "name": "add", "confidence": 0.7, "scored": True}
    twice = _message([("add", args), ("add", args)], [0.9, 0.4])
    assert asyncio.run(call_confidence(_ctx(twice), "add", args))[0] == "c1"  # the least confident of equal calls
    other_llm = _message([("add", args)], None)  # a message without gradguard scores
    tool_id, entry = asyncio.run(call_confidence(_ctx(other_llm), "add", args))
    assert tool_id == "c0" and entry is None
    tool_id, entry = asyncio.run(call_confidence(_ctx(older), "add", {"a": 9, "b": 9}))  # not the call in the message
    assert tool_id.startswith("unmatched_") and entry is None
    assert asyncio.run(call_confidence(_ctx(), "add", args))[1] is None


def test_gate_options_are_checked() -> None:
    with pytest.raises(GradguardLlamaIndexError, match="threshold=1.5"):
        ConfidenceGatedTool(ADD, 1.5)
    with pytest.raises(GradguardLlamaIndexError, match="on_low='review'"):
        ConfidenceGatedTool(ADD, on_low="review")  # type: ignore[arg-type]
    with pytest.raises(GradguardLlamaIndexError, match="timeout=0"):
        ConfidenceGatedTool(ADD, timeout=0)
    gated = guard_tools([ADD, add], 0.7)
    assert [g.metadata.name for g in gated] == ["math.add", "add"] and gated[0].tool is ADD
    assert guard_tools(gated) == gated  # already gated: kept
    assert json.loads(json.dumps(gated[0].metadata.to_openai_tool()))["function"]["parameters"]["required"] == [
        "a", "b"]
