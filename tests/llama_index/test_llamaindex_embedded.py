"""GradguardLLM() on the embedded Qwen2.5-Coder-0.5B-Instruct (slow; marked ``embedded``)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core import Document, SummaryIndex  # noqa: E402
from llama_index.core.agent.workflow import AgentOutput, FunctionAgent, ToolCallResult  # noqa: E402
from llama_index.core.tools import FunctionTool  # noqa: E402
from llama_index.core.workflow import HumanResponseEvent  # noqa: E402

from gradguard import DEFAULT_MODEL  # noqa: E402
from gradguard.integrations.llama_index import (  # noqa: E402
    ConfidenceGuardQueryEngine,
    GradguardLLM,
    ToolApprovalRequest,
    ToolGateDecision,
    guard_tools,
)
from gradguard.routing import RoutingPolicy  # noqa: E402

pytestmark = pytest.mark.embedded


def test_default_llm_hosts_the_embedded_model_and_guards_a_query() -> None:
    llm = GradguardLLM(max_new_tokens=12)
    response = llm.complete("What is the capital of France? Answer with one word.")
    meta = response.additional_kwargs["gradguard"]
    assert "Paris" in response.text
    assert (
        meta["scored"] is True and meta["model"] == DEFAULT_MODEL and meta["spt_offset"] == -1
    )  # the measured built-in profile
    assert llm.metadata.model_name == DEFAULT_MODEL and llm.metadata.context_window == 32768

    engine = SummaryIndex([Document(text="The Heron-3 robot runs for 9 hours on one charge.")]).as_query_engine(llm=llm)
    guarded = ConfidenceGuardQueryEngine(engine, RoutingPolicy.threshold(0.5)).query("How long does the Heron-3 run?")
    g = guarded.metadata["gradguard"]
    # Calibrated on closed-book SciQ, this small model's confidence stays far below 0.5: the guard abstains.
    assert g["score_source"] == "llm" and g["score"]["scored"] is True
    assert g["action"] == "abstain" and guarded.response == "I don't know."


def test_function_agent_calls_a_tool_and_gets_its_result() -> None:
    """FunctionAgent (streaming) on the embedded model: the model calls the tool through Qwen's template, the call
    carries its own score, the gate (threshold 0.5, fail closed) lets it run or asks, and the result comes back.
    The tool returns directly: a 0.5B model does not reliably write a final answer after a tool result."""
    cities: list[str] = []

    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        cities.append(city)
        return f"It is 18 degrees and sunny in {city}."

    tools = guard_tools([FunctionTool.from_defaults(get_weather, return_direct=True)], 0.5)
    agent = FunctionAgent(tools=tools, llm=GradguardLLM(max_new_tokens=32))

    async def run() -> tuple[Any, list[Any]]:
        handler = agent.run(user_msg="What is the weather in Paris?")
        events = []
        async for ev in handler.stream_events():
            events.append(ev)
            if isinstance(ev, ToolApprovalRequest):
                handler.ctx.send_event(HumanResponseEvent(response="yes", tool_id=ev.tool_id))
        return await handler, events

    result, events = asyncio.run(run())
    [output] = [e for e in events if isinstance(e, AgentOutput) and e.tool_calls]
    [call] = output.tool_calls
    assert (call.tool_name, call.tool_kwargs) == ("get_weather", {"city": "Paris"})
    [entry] = output.response.additional_kwargs["gradguard"]["tool_calls"]
    assert entry["id"] == call.tool_id and entry["scored"] is True and entry["uncertainty"]["hybridgrad"] > 0
    [decision] = [e for e in events if isinstance(e, ToolGateDecision)]
    assert decision.decision in ("pass", "approved") and decision.tool_id == call.tool_id
    [done] = [e for e in events if isinstance(e, ToolCallResult)]
    assert cities == ["Paris"] and done.tool_output.content == "It is 18 degrees and sunny in Paris."
    assert result.response.content == "It is 18 degrees and sunny in Paris."
