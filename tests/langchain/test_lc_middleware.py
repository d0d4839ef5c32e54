"""ConfidenceToolGuard on create_agent: pass, interrupt (approve / edit / reject), review, reject, fail closed, trail.

A scripted chat model plays the agent's model (no real model): each turn is an AIMessage with tool calls and the
per-call gradguard metadata, the way ChatGradguard emits them; it records what it was shown.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_type_hints

import pytest

pytest.importorskip("langchain.agents")
pytest.importorskip("langgraph")

from langchain.agents import create_agent  # noqa: E402
from langchain.agents.middleware import AgentMiddleware, AgentState  # noqa: E402
from langchain_core.language_models.chat_models import BaseChatModel  # noqa: E402
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage  # noqa: E402
from langchain_core.outputs import ChatGeneration, ChatResult  # noqa: E402
from langchain_core.tools import tool  # noqa: E402
from langgraph.checkpoint.memory import InMemorySaver  # noqa: E402
from langgraph.types import Command  # noqa: E402
from pydantic import Field  # noqa: E402

from gradguard.integrations._core import METADATA_KEY, ROUTE_KEY, IntegrationError  # noqa: E402
from gradguard.integrations.langchain.middleware import (  # noqa: E402
    CheckpointerRequiredError,
    ConfidenceToolGuard,
    ToolGuardConfigError,
    ToolGuardState,
    tool_call_scores,
)
from gradguard.review import SQLiteReviewQueue  # noqa: E402

QUESTION = "What is 2 + 3? Then email the result to bob."
ROUTE_FIELDS = {"tool_call_id", "name", "action", "reason", "confidence", "threshold"}


class ScriptedChatModel(BaseChatModel):
    """Replies with ``replies`` in order (then "done."), recording the messages of every call."""

    replies: list[AIMessage]
    seen: list[list[BaseMessage]] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any) -> Any:
        self.seen.append(list(messages))
        turn = len(self.seen) - 1
        reply = self.replies[turn] if turn < len(self.replies) else AIMessage("done.")
        return ChatResult(generations=[ChatGeneration(message=reply)])

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ScriptedChatModel:
        return self


def call(name: str, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    return {"name": name, "args": args, "id": call_id, "type": "tool_call"}


def entry(call_id: str, name: str, confidence: Any, in_domain: bool | None = True) -> dict[str, Any]:
    return {"id": call_id, "name": name, "confidence": confidence, "uncertainty": {"hybridgrad": 0.1},
            "in_domain": in_domain}


def turn(calls: list[dict[str, Any]], entries: list[dict[str, Any]] | None) -> AIMessage:
    """An AI message with ``calls`` and (unless ``entries`` is None) the per-call score metadata."""
    meta = {} if entries is None else {METADATA_KEY: {"confidence": 0.7, "tool_calls": entries}}
    return AIMessage(content="", tool_calls=calls, response_metadata=meta)


ADD = call("add", {"a": 2, "b": 3}, "c_add")
EMAIL = call("send_email", {"to": "bob", "body": "5"}, "c_email")


@pytest.fixture()
def ran() -> list[tuple[str, dict[str, Any]]]:
    return []


@pytest.fixture()
def tools(ran: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    @tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        ran.append(("add", {"a": a, "b": b}))
        return a + b

    @tool
    def send_email(to: str, body: str) -> str:
        """Send an email."""
        ran.append(("send_email", {"to": to, "body": body}))
        return f"sent to {to}"

    return [add, send_email]


def make_agent(
    replies: list[AIMessage], tools: list[Any], guard: ConfidenceToolGuard, *, checkpointer: bool = True,
    extra: Sequence[AgentMiddleware[Any, Any, Any]] = (),
) -> tuple[Any, ScriptedChatModel]:
    model = ScriptedChatModel(replies=replies)
    agent = create_agent(
        model, tools=tools, middleware=[*extra, guard], checkpointer=InMemorySaver() if checkpointer else None
    )
    return agent, model


CONFIG = {"configurable": {"thread_id": "t1"}}


def ask(agent: Any, config: dict[str, Any] | None = CONFIG) -> dict[str, Any]:
    return agent.invoke({"messages": [{"role": "user", "content": QUESTION}]}, config)


def guarded_ai(state: dict[str, Any]) -> AIMessage:
    """The first AI message of the thread (the one with the tool calls)."""
    return next(m for m in state["messages"] if isinstance(m, AIMessage) and m.tool_calls)


def tool_messages_seen(model: ScriptedChatModel) -> list[ToolMessage]:
    """The tool messages the model was shown on its last call."""
    return [m for m in model.seen[-1] if isinstance(m, ToolMessage)]


# -- confident calls ----------------------------------------------------------------------------------------------


def test_confident_calls_pass_without_interrupt(tools: list[Any], ran: list[Any]) -> None:
    guard = ConfidenceToolGuard(threshold=0.6)
    agent, model = make_agent([turn([ADD, EMAIL], [entry("c_add", "add", 0.91), entry("c_email", "send_email", 0.6)])],
                              tools, guard)
    state = ask(agent)
    assert "__interrupt__" not in state
    assert sorted(name for name, _ in ran) == ["add", "send_email"]
    assert state["messages"][-1].content == "done."
    trail = guarded_ai(state).response_metadata[ROUTE_KEY]
    assert [(r["tool_call_id"], r["action"]) for r in trail] == [("c_add", "pass"), ("c_email", "pass")]
    assert trail[0]["confidence"] == pytest.approx(0.91) and trail[0]["threshold"] == 0.6
    assert "meets the threshold 0.600" in trail[1]["reason"]  # confidence == threshold passes
    assert state[ROUTE_KEY] == trail  # the thread's trail in the agent state
    assert all(set(r) == ROUTE_FIELDS for r in trail)


def test_state_key_is_the_route_key() -> None:
    assert ROUTE_KEY in get_type_hints(ToolGuardState)


# -- on_low="interrupt" ---------------------------------------------------------------------------------------


def test_low_call_interrupts_and_approve_runs_it(tools: list[Any], ran: list[Any]) -> None:
    agent, model = make_agent([turn([ADD], [entry("c_add", "add", 0.2)])], tools, ConfidenceToolGuard(threshold=0.5))
    state = ask(agent)
    assert ran == []  # held
    (held,) = state["__interrupt__"]
    (request,) = held.value["action_requests"]
    assert request["name"] == "add" and request["args"] == {"a": 2, "b": 3}
    assert "confidence 0.200 is below the threshold 0.500" in request["description"]
    assert held.value["review_configs"] == [{"action_name": "add", "allowed_decisions": ["approve", "edit", "reject"]}]
    state = agent.invoke(Command(resume={"decisions": [{"type": "approve"}]}), CONFIG)
    assert ran == [("add", {"a": 2, "b": 3})]
    (route,) = guarded_ai(state).response_metadata[ROUTE_KEY]
    assert route["action"] == "interrupt" and route["decision"] == "approve"
    assert route["confidence"] == pytest.approx(0.2) and "below the threshold" in route["reason"]
    assert state[ROUTE_KEY] == [route]


def test_interrupt_reject_decision_tells_the_model(tools: list[Any], ran: list[Any]) -> None:
    agent, model = make_agent([turn([ADD], [entry("c_add", "add", 0.1)])], tools, ConfidenceToolGuard())
    ask(agent)
    state = agent.invoke(Command(resume={"decisions": [{"type": "reject", "message": "use a calculator"}]}), CONFIG)
    assert ran == []
    (seen,) = tool_messages_seen(model)
    assert seen.status == "error" and "use a calculator" in str(seen.content)
    assert guarded_ai(state).response_metadata[ROUTE_KEY][0]["decision"] == "reject"


def test_interrupt_edit_decision_runs_the_edited_call(tools: list[Any], ran: list[Any]) -> None:
    agent, _ = make_agent([turn([ADD], [entry("c_add", "add", 0.1)])], tools, ConfidenceToolGuard())
    ask(agent)
    edit = {"type": "edit", "edited_action": {"name": "add", "args": {"a": 2, "b": 30}}}
    state = agent.invoke(Command(resume={"decisions": [edit]}), CONFIG)
    assert ran == [("add", {"a": 2, "b": 30})]
    assert guarded_ai(state).response_metadata[ROUTE_KEY][0]["decision"] == "edit"


def test_only_low_calls_of_a_turn_are_asked_about(tools: list[Any], ran: list[Any]) -> None:
    reply = turn([ADD, EMAIL], [entry("c_add", "add", 0.95), entry("c_email", "send_email", 0.3)])
    agent, _ = make_agent([reply], tools, ConfidenceToolGuard(threshold=0.5))
    state = ask(agent)
    assert [r["name"] for r in state["__interrupt__"][0].value["action_requests"]] == ["send_email"]
    state = agent.invoke(Command(resume={"decisions": [{"type": "reject"}]}), CONFIG)
    assert ran == [("add", {"a": 2, "b": 3})]
    trail = guarded_ai(state).response_metadata[ROUTE_KEY]
    assert [(r["name"], r["action"], r.get("decision")) for r in trail] == [
        ("add", "pass", None), ("send_email", "interrupt", "reject")]


def test_interrupt_on_per_tool_config(tools: list[Any], ran: list[Any]) -> None:
    guard = ConfidenceToolGuard(
        interrupt_on={"send_email": {"allowed_decisions": ["approve", "reject"], "description": "Email check"}}
    )
    reply = turn([ADD, EMAIL], [entry("c_add", "add", 0.1), entry("c_email", "send_email", 0.1)])
    agent, _ = make_agent([reply], tools, guard)
    value = ask(agent)["__interrupt__"][0].value
    configs = {c["action_name"]: c["allowed_decisions"] for c in value["review_configs"]}
    assert configs == {"add": ["approve", "edit", "reject"], "send_email": ["approve", "reject"]}
    email = next(r for r in value["action_requests"] if r["name"] == "send_email")
    assert email["description"].startswith("Email check") and "confidence 0.100" in email["description"]
    agent.invoke(Command(resume={"decisions": [{"type": "approve"}, {"type": "approve"}]}), CONFIG)
    assert sorted(name for name, _ in ran) == ["add", "send_email"]


def test_per_call_mode_interrupts_when_the_tool_starts(tools: list[Any], ran: list[Any]) -> None:
    guard = ConfidenceToolGuard(interrupt_mode="per_call")
    agent, _ = make_agent([turn([ADD], [entry("c_add", "add", 0.2)])], tools, guard)
    state = ask(agent)
    (held,) = state["__interrupt__"]
    assert held.value["type"] == "tool_approval" and held.value["tool_call_id"] == "c_add"
    assert "confidence 0.200 is below the threshold" in held.value["description"]
    assert ran == []
    state = agent.invoke(Command(resume={held.id: {"type": "approve"}}), CONFIG)
    assert ran == [("add", {"a": 2, "b": 3})]
    (route,) = state[ROUTE_KEY]
    assert route["action"] == "interrupt" and route["decision"] is None


def test_missing_checkpointer_raises_before_the_model_runs(tools: list[Any], ran: list[Any]) -> None:
    agent, model = make_agent([turn([ADD], [entry("c_add", "add", 0.9)])], tools, ConfidenceToolGuard(),
                              checkpointer=False)
    with pytest.raises(CheckpointerRequiredError, match="no checkpointer.*InMemorySaver.*thread_id") as info:
        ask(agent, None)
    assert isinstance(info.value, IntegrationError)
    assert model.seen == [] and ran == []


@pytest.mark.parametrize("on_low", ["reject", "review"])
def test_reject_and_review_need_no_checkpointer(
    on_low: str, tools: list[Any], ran: list[Any], tmp_path: Path
) -> None:
    queue = SQLiteReviewQueue(tmp_path / "q.sqlite3") if on_low == "review" else None
    guard = ConfidenceToolGuard(on_low=on_low, review_queue=queue)  # type: ignore[arg-type]
    agent, _ = make_agent([turn([ADD], [entry("c_add", "add", 0.1)])], tools, guard, checkpointer=False)
    state = ask(agent, None)
    assert ran == [] and state["messages"][-1].content == "done."


# -- on_low="reject" / "review" -------------------------------------------------------------------------------


def test_on_low_reject_tells_the_model_value_and_threshold(tools: list[Any], ran: list[Any]) -> None:
    reply = turn([ADD, EMAIL], [entry("c_add", "add", 0.25), entry("c_email", "send_email", 0.8)])
    agent, model = make_agent([reply], tools, ConfidenceToolGuard(threshold=0.7, on_low="reject"))
    state = ask(agent)
    assert "__interrupt__" not in state
    assert ran == [("send_email", {"to": "bob", "body": "5"})]
    seen = {m.tool_call_id: m for m in tool_messages_seen(model)}
    assert seen["c_add"].status == "error"
    assert "rejected for low confidence" in seen["c_add"].content
    assert "0.250" in seen["c_add"].content and "0.700" in seen["c_add"].content
    assert seen["c_email"].status == "success"
    trail = guarded_ai(state).response_metadata[ROUTE_KEY]
    assert [(r["name"], r["action"]) for r in trail] == [("add", "reject"), ("send_email", "pass")]
    assert seen["c_add"].response_metadata[ROUTE_KEY] == trail[0]


def test_on_low_review_enqueues_and_does_not_run(tools: list[Any], ran: list[Any], tmp_path: Path) -> None:
    queue = SQLiteReviewQueue(tmp_path / "review.sqlite3")
    agent, model = make_agent([turn([EMAIL], [entry("c_email", "send_email", 0.3)])], tools,
                              ConfidenceToolGuard(threshold=0.5, on_low="review", review_queue=queue))
    state = ask(agent)
    assert ran == []
    (item,) = queue.list()
    assert item.pending and item.question == QUESTION
    assert json.loads(item.answer) == {"id": "c_email", "name": "send_email", "args": {"to": "bob", "body": "5"}}
    assert item.confidence == pytest.approx(0.3)
    assert item.metadata["threshold"] == 0.5 and item.metadata["thread_id"] == "t1"
    assert item.metadata[METADATA_KEY]["confidence"] == pytest.approx(0.3)
    assert "below the threshold 0.500" in item.metadata["reason"]
    # What a refit needs: the conversation the model answered (as chat dicts) and the route reason.
    assert item.reason == "tool_call" and item.messages is not None
    assert item.messages[-1] == {"role": "user", "content": QUESTION}
    (seen,) = tool_messages_seen(model)
    assert seen.status == "error" and item.id in seen.content and "held for human review" in seen.content
    (route,) = guarded_ai(state).response_metadata[ROUTE_KEY]
    assert route["action"] == "review" and route["review_id"] == item.id
    queue.close()


# -- fail closed --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entries", "why"),
    [
        (None, "no score for this call"),  # no gradguard metadata at all
        ([], "no score for this call"),
        ([entry("other", "add", 0.99)], "no score for this call"),  # no entry with the call's id
        ([entry("c_add", "add", None)], "not scored (confidence None)"),
        ([entry("c_add", "add", math.nan)], "not a probability"),
        ([entry("c_add", "add", "0.99")], "not a probability"),
        ([entry("c_add", "add", 1.5)], "not a probability"),
        ([entry("c_add", "send_email", 0.99)], "names the tool 'send_email'"),
        ([entry("c_add", "add", 0.99), entry("c_add", "add", 0.98)], "no score for this call"),  # ambiguous
    ],
)
def test_a_call_without_a_usable_score_never_runs(
    entries: list[dict[str, Any]] | None, why: str, tools: list[Any], ran: list[Any]
) -> None:
    guard = ConfidenceToolGuard(threshold=0.0, on_low="reject")  # even threshold 0 does not pass an unscored call
    agent, model = make_agent([turn([ADD], entries)], tools, guard)
    state = ask(agent)
    assert ran == []
    (route,) = state[ROUTE_KEY]
    assert route["action"] == "reject" and why in route["reason"] and route["confidence"] is None
    assert tool_messages_seen(model)[0].status == "error"


def test_an_unscored_call_is_held_for_approval(tools: list[Any], ran: list[Any]) -> None:
    agent, _ = make_agent([turn([ADD], [entry("c_add", "add", None)])], tools, ConfidenceToolGuard(threshold=0.0))
    state = ask(agent)
    assert "not scored" in state["__interrupt__"][0].value["action_requests"][0]["description"]
    assert ran == []


@pytest.mark.parametrize(("in_domain", "runs"), [(True, True), (False, False), (None, False)])
def test_require_in_domain(in_domain: bool | None, runs: bool, tools: list[Any], ran: list[Any]) -> None:
    guard = ConfidenceToolGuard(threshold=0.5, on_low="reject", require_in_domain=True)
    agent, _ = make_agent([turn([ADD], [entry("c_add", "add", 0.9, in_domain)])], tools, guard)
    state = ask(agent)
    assert bool(ran) is runs
    (route,) = state[ROUTE_KEY]
    assert route["action"] == ("pass" if runs else "reject")
    if not runs:
        assert "require_in_domain=True" in route["reason"] and route["confidence"] == pytest.approx(0.9)


def test_exempt_tool_runs_unscored(tools: list[Any], ran: list[Any]) -> None:
    guard = ConfidenceToolGuard(on_low="reject", exempt_tools=["add"])
    agent, _ = make_agent([turn([ADD, EMAIL], None)], tools, guard)
    state = ask(agent)
    assert ran == [("add", {"a": 2, "b": 3})]
    assert [(r["name"], r["action"]) for r in state[ROUTE_KEY]] == [("add", "pass"), ("send_email", "reject")]
    assert "exempt_tools" in state[ROUTE_KEY][0]["reason"]


class SneakCall(AgentMiddleware[AgentState[Any], Any, Any]):
    """Adds a tool call to the AI message after the guard has assessed it (listed first: its after_model runs last)."""

    def after_model(self, state: AgentState[Any], runtime: Any) -> dict[str, Any] | None:
        message = state["messages"][-1]
        if not isinstance(message, AIMessage) or not message.tool_calls or len(message.tool_calls) > 1:
            return None
        return {"messages": [message.model_copy(update={"tool_calls": [*message.tool_calls, EMAIL]})]}


def test_a_call_the_guard_never_assessed_does_not_run(tools: list[Any], ran: list[Any]) -> None:
    agent, model = make_agent([turn([ADD], [entry("c_add", "add", 0.9)])], tools,
                              ConfidenceToolGuard(on_low="reject"), extra=[SneakCall()])
    state = ask(agent)
    assert ran == [("add", {"a": 2, "b": 3})]
    seen = {m.tool_call_id: m for m in tool_messages_seen(model)}
    assert seen["c_email"].status == "error" and "never assessed" in seen["c_email"].content
    assert [r["tool_call_id"] for r in state[ROUTE_KEY]] == ["c_add"]


async def _ainvoke(agent: Any, payload: Any) -> dict[str, Any]:
    result: dict[str, Any] = await agent.ainvoke(payload, CONFIG)
    return result


def test_async_interrupt_and_approve(tools: list[Any], ran: list[Any]) -> None:
    import asyncio

    agent, _ = make_agent([turn([ADD], [entry("c_add", "add", 0.2)])], tools, ConfidenceToolGuard())
    state = asyncio.run(_ainvoke(agent, {"messages": [{"role": "user", "content": QUESTION}]}))
    assert "__interrupt__" in state and ran == []
    state = asyncio.run(_ainvoke(agent, Command(resume={"decisions": [{"type": "approve"}]})))
    assert ran == [("add", {"a": 2, "b": 3})] and state[ROUTE_KEY][0]["decision"] == "approve"


# -- reading scores ----------------------------------------------------------------------------------------------


def test_tool_call_scores() -> None:
    message = turn([ADD], [entry("a", "add", 0.5), {"name": "no id"}, "junk", entry("b", "x", 0.1),
                           entry("b", "x", 0.2)])
    assert set(tool_call_scores(message)) == {"a"}
    assert tool_call_scores(AIMessage("hi")) == {}
    assert tool_call_scores(AIMessage("hi", response_metadata={METADATA_KEY: {"tool_calls": "x"}})) == {}


# -- construction ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"threshold": 1.5}, r"threshold=1\.5.*less than or equal to 1.*e\.g\. threshold=0\.6"),
        ({"threshold": -0.1}, r"threshold=-0\.1.*greater than or equal to 0"),
        ({"threshold": math.nan}, r"threshold=nan.*finite"),
        ({"threshold": True}, r"threshold=True is not a number"),
        ({"threshold": "0.5"}, r"threshold='0\.5' is not a number"),
        ({"on_low": "ask"}, r"on_low='ask'.*'interrupt', 'review' or 'reject'"),
        ({"on_low": "review"}, r"on_low='review' needs review_queue=.*SQLiteReviewQueue"),
        ({"on_low": "reject", "review_queue": "queue"}, r"review_queue='queue' is not a ReviewQueue"),
        ({"review_queue": "REAL"}, r"review_queue is only used with on_low='review'"),
        ({"on_low": "reject", "allowed_decisions": ["approve"]}, r"\['allowed_decisions'\] only apply to"),
        ({"on_low": "review", "review_queue": "REAL", "interrupt_mode": "per_call"}, r"\['interrupt_mode'\]"),
        ({"allowed_decisions": []}, r"allowed_decisions=\(\).*at least 1"),
        ({"allowed_decisions": ["approve", "maybe"]}, r"allowed_decisions.*'maybe'"),
        ({"interrupt_mode": "later"}, r"interrupt_mode='later'.*'batched', 'per_call'"),
        ({"interrupt_on": {"add": False}}, r"interrupt_on\['add'\]=False.*exempt_tools=\['add'\]"),
        ({"interrupt_on": {"add": {"allowed_decisions": ["approve"], "when": bool}}}, r"'when' predicate"),
        ({"interrupt_on": {"add": {"allowed_decisions": []}}}, r"allowed_decisions'\]=\[\] is not a non-empty"),
        ({"interrupt_on": {"add": {"allowed_decision": ["approve"]}}}, r"unknown keys \['allowed_decision'\]"),
        ({"interrupt_on": {"add": True}, "exempt_tools": ["add"]}, r"\['add'\] are both exempt and in interrupt_on"),
        ({"require_in_domain": "yes"}, r"require_in_domain='yes'"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs: dict[str, Any], match: str, tmp_path: Path) -> None:
    if kwargs.get("review_queue") == "REAL":
        kwargs["review_queue"] = SQLiteReviewQueue(tmp_path / "q.sqlite3")
    with pytest.raises(ToolGuardConfigError, match=match) as info:
        ConfidenceToolGuard(**kwargs)
    assert isinstance(info.value, IntegrationError)
    assert str(info.value).startswith("ConfidenceToolGuard: ")


def test_good_arguments_are_kept(tmp_path: Path) -> None:
    queue = SQLiteReviewQueue(tmp_path / "q.sqlite3")
    guard = ConfidenceToolGuard(0.8, on_low="review", review_queue=queue, exempt_tools="search")
    assert (guard.threshold, guard.on_low, guard.review_queue, guard.exempt_tools) == (
        0.8, "review", queue, frozenset({"search"}))
    assert guard.interrupt_on.get("add") is None  # nothing is interrupted outside on_low="interrupt"
    held = ConfidenceToolGuard(exempt_tools=["search"])
    assert held.interrupt_on.get("add")["allowed_decisions"] == ["approve", "edit", "reject"]
    assert held.interrupt_on.get("search") is None and "search" not in held.interrupt_on


def test_structured_output_call_is_left_to_the_agent(tools: list[Any], ran: list[Any]) -> None:
    from langchain.agents.structured_output import ToolStrategy
    from pydantic import BaseModel

    class Answer(BaseModel):
        total: int

    model = ScriptedChatModel(replies=[turn([call("Answer", {"total": 5}, "c_out")], None)])
    agent = create_agent(model, tools=tools, middleware=[ConfidenceToolGuard(on_low="reject")],
                         response_format=ToolStrategy(Answer))
    state = ask(agent, None)
    assert state["structured_response"] == Answer(total=5)
    assert ROUTE_KEY not in state or state[ROUTE_KEY] == []
