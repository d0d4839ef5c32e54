"""``ConfidenceGatedTool``: hold a LlamaIndex agent's low-confidence tool call for a human before it runs.

For ``FunctionAgent`` / ``AgentWorkflow`` on :class:`~gradguard.integrations.llama_index.GradguardLLM`, which
scores every tool call on its own. The wrapper reads the confidence of the call that triggered it from the
agent's last assistant message (kept in the workflow ``Context``), and runs the real tool only when that
confidence is at least ``threshold``. Otherwise it emits a :class:`ToolApprovalRequest` (an
``InputRequiredEvent``) and waits for a ``HumanResponseEvent`` carrying the same ``tool_id``, or rejects
the call with a message the model sees. A call without a confidence (unscored, uncalibrated, made by
another LLM, or no workflow context) is held: the gate fails closed. See ``docs/llama_index.md``.
"""

# No ``from __future__ import annotations`` here: LlamaIndex finds the workflow-context parameter of a
# FunctionTool by its annotation object, which must be the Context class itself, not a string.

import hashlib
import json
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from llama_index.core.async_utils import asyncio_run
from llama_index.core.base.llms.types import MessageRole
from llama_index.core.tools import BaseTool, FunctionTool, ToolOutput, adapt_to_async_tool
from llama_index.core.workflow import Context, Event, HumanResponseEvent, InputRequiredEvent
from pydantic import Field

from gradguard.integrations._core import METADATA_KEY, find_metadata
from gradguard.integrations.llama_index.utils import GradguardLlamaIndexError, message_tool_calls, tool_kwargs_dict

__all__ = [
    "ConfidenceGatedTool", "ToolApprovalRequest", "ToolGateDecision", "guard_tools", "call_confidence",
    "OnLow", "APPROVE_WORDS", "DECLINED_KEY",
]

#: What a gated tool does with a low-confidence call: ask a human (``InputRequiredEvent``) or reject it.
OnLow = Literal["ask", "reject"]
#: Workflow-store key of the calls a reviewer declined (name and arguments), which are not asked about again.
DECLINED_KEY = "gradguard_declined_tool_calls"
#: ``HumanResponseEvent.response`` values (case and surrounding space ignored) that approve a held call.
APPROVE_WORDS = frozenset({"y", "yes", "approve", "approved", "ok", "allow", "run"})


class ToolApprovalRequest(InputRequiredEvent):
    """A held tool call, written to the workflow's event stream: answer it with
    ``handler.ctx.send_event(HumanResponseEvent(response="yes" | "no", tool_id=event.tool_id))``."""

    prefix: str = Field(description="The question to show a reviewer.")
    tool_id: str = Field(description="The call's id; the HumanResponseEvent must carry the same tool_id.")
    tool_name: str = Field(description="The tool the model called.")
    tool_kwargs: dict[str, Any] = Field(default_factory=dict, description="The call's arguments.")
    confidence: float | None = Field(None, description="The call's calibrated confidence (None: unscored).")
    threshold: float = Field(description="The confidence a call needs to run unasked.")
    reason: str = Field(description="Why the call is held.")


class ToolGateDecision(Event):
    """What a :class:`ConfidenceGatedTool` decided for one call, written to the event stream (the trail)."""

    tool_id: str
    tool_name: str
    tool_kwargs: dict[str, Any] = Field(default_factory=dict)
    confidence: float | None = None
    threshold: float
    decision: Literal["pass", "approved", "rejected"]
    reason: str


def _synthetic_id(name: str, kwargs: Mapping[str, Any]) -> str:
    """A stable id for a call whose own id is unknown (the same on a workflow step's replay)."""
    digest = hashlib.sha1(json.dumps([name, kwargs], sort_keys=True, default=str).encode()).hexdigest()
    return f"unmatched_{digest[:16]}"


async def call_confidence(
    ctx: Context, tool_name: str, tool_kwargs: Mapping[str, Any], *, scratchpad_key: str = "scratchpad"
) -> tuple[str, dict[str, Any] | None]:
    """``(tool_id, entry)``: the id and the per-call score entry (``{"id", "name", "confidence", ...}``) of the
    call ``tool_name(**tool_kwargs)`` in the agent's last assistant message with tool calls.

    ``FunctionAgent`` (alone or in an ``AgentWorkflow``) keeps the current turn's messages in
    ``ctx.store[scratchpad_key]``. When that message holds the same call more than once, the least confident
    entry is returned. ``entry`` is None when the call or its score is not found (then ``tool_id`` is a stable
    made-up id): the caller must treat the call as unconfident.
    """
    fallback = _synthetic_id(tool_name, tool_kwargs)
    messages = await ctx.store.get(scratchpad_key, default=None) or []
    for message in reversed(list(messages)):
        role = getattr(message, "role", None)
        calls = message_tool_calls(message) if role in (MessageRole.ASSISTANT, "assistant") else []
        if not calls:
            continue
        matches = [
            str(c["id"]) for c in calls
            if c["function"]["name"] == tool_name and tool_kwargs_dict(c["function"]["arguments"]) == dict(tool_kwargs)
        ]
        if not matches:
            return fallback, None
        meta = find_metadata(message.additional_kwargs, key=METADATA_KEY) or {}
        entries = {str(e.get("id")): e for e in meta.get("tool_calls") or [] if isinstance(e, Mapping)}
        found = [(i, entries.get(i)) for i in matches]
        tool_id, entry = min(found, key=lambda f: _rank(f[1]))
        return tool_id, dict(entry) if entry is not None else None
    return fallback, None


def _confidence(entry: Mapping[str, Any] | None) -> float | None:
    """The usable confidence of a score entry, or None (missing, unscored, NaN: unconfident)."""
    if not entry or entry.get("scored") is False:
        return None
    value = entry.get("confidence")
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return None
    return float(value)


def _rank(entry: Mapping[str, Any] | None) -> float:
    confidence = _confidence(entry)
    return -1.0 if confidence is None else confidence


def _approved(event: HumanResponseEvent) -> bool:
    flag = event.get("approved")
    if isinstance(flag, bool):
        return flag
    return str(event.get("response", "")).strip().lower() in APPROVE_WORDS


class ConfidenceGatedTool(FunctionTool):
    """A tool that runs only when the agent's call to it is confident enough; otherwise a human decides.

    ``ConfidenceGatedTool(tool, threshold=0.5, on_low="ask")`` has the wrapped ``tool``'s metadata (name,
    description, schema, ``return_direct``), so the model sees the same tool. When ``FunctionAgent`` or
    ``AgentWorkflow`` calls it, it reads the call's confidence (:func:`call_confidence`: the
    ``additional_kwargs["gradguard"]["tool_calls"]`` entry :class:`GradguardLLM` put on the agent's last
    message) and:

    - confidence >= ``threshold``: runs the tool;
    - lower, or None (unscored, uncalibrated, another LLM's call, no workflow ``Context``: fail closed):
      ``on_low="ask"`` writes a :class:`ToolApprovalRequest` to the event stream and waits (``ctx.wait_for_event``,
      up to ``timeout`` seconds) for a ``HumanResponseEvent`` with the same ``tool_id``; ``response`` in
      :data:`APPROVE_WORDS` (or ``approved=True``) runs the tool, anything else rejects it. ``on_low="reject"``
      rejects at once.

    A rejected call is not run: the model gets an error tool output saying why. A call a reviewer declined is
    remembered in the workflow's store (:data:`DECLINED_KEY`): the same call (name and arguments) again in that
    context is rejected without asking. Every decision is written to the stream as a :class:`ToolGateDecision`.
    Called without a workflow ``Context`` (e.g. ``predict_and_call``), a gated tool has no way to read the score
    or to ask, so it rejects the call.
    """

    def __init__(
        self,
        tool: BaseTool | Callable[..., Any],
        threshold: float = 0.5,
        *,
        on_low: OnLow = "ask",
        timeout: float | None = 600.0,
        scratchpad_key: str = "scratchpad",
        approve: Callable[[HumanResponseEvent], bool] | None = None,
    ) -> None:
        """Wrap ``tool`` (a LlamaIndex tool or a plain function); see the class docs for the options."""
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0.0 <= threshold <= 1.0:
            raise GradguardLlamaIndexError(
                f"threshold={threshold!r} is not a confidence; pass a number in [0, 1] (e.g. threshold=0.6)"
            )
        if on_low not in ("ask", "reject"):
            raise GradguardLlamaIndexError(f"on_low={on_low!r} is not understood; use 'ask' or 'reject'")
        if timeout is not None and not timeout > 0:
            raise GradguardLlamaIndexError(f"timeout={timeout!r} must be a positive number of seconds (or None)")
        inner = tool if isinstance(tool, BaseTool) else FunctionTool.from_defaults(tool)
        self.tool = inner
        self.threshold = float(threshold)
        self.on_low: OnLow = on_low
        self.timeout = timeout
        self.scratchpad_key = scratchpad_key
        self.approve = approve or _approved
        super().__init__(async_fn=self._gate, metadata=inner.metadata)

    async def _gate(self, workflow_ctx: Context, **kwargs: Any) -> Any:  # pragma: no cover - acall is overridden
        return await self.acall(workflow_ctx=workflow_ctx, **kwargs)

    def call(self, *args: Any, **kwargs: Any) -> ToolOutput:
        """Sync :meth:`acall`."""
        return asyncio_run(self.acall(*args, **kwargs))

    async def acall(self, *args: Any, **kwargs: Any) -> ToolOutput:
        """Run the wrapped tool if the call that triggered it is confident enough or a human approves it."""
        ctx = kwargs.pop(self.ctx_param_name or "workflow_ctx", None)
        name = self.metadata.get_name()
        if not isinstance(ctx, Context):
            reason = "no workflow Context, so the call's confidence cannot be read and no one can be asked"
            return self._finish(None, _synthetic_id(name, kwargs), kwargs, None, "rejected", reason)
        tool_id, entry = await call_confidence(ctx, name, kwargs, scratchpad_key=self.scratchpad_key)
        confidence = _confidence(entry)
        if confidence is not None and confidence >= self.threshold:
            reason = f"confidence {confidence:.3f} >= threshold {self.threshold:g}"
            return await self._run(ctx, tool_id, args, kwargs, confidence, "pass", reason)
        held = (
            f"its confidence {confidence:.3f} is below the threshold {self.threshold:g}" if confidence is not None
            else "it has no confidence (unscored, uncalibrated, or not made by a scoring gradguard LLM)"
        )
        if self.on_low == "reject":
            return self._finish(ctx, tool_id, kwargs, confidence, "rejected", held)
        key = _synthetic_id(name, kwargs)
        if key in (await ctx.store.get(DECLINED_KEY, default=None) or ()):
            reason = f"{held}; a reviewer already declined the same call"
            return self._finish(ctx, tool_id, kwargs, confidence, "rejected", reason)
        request = ToolApprovalRequest(
            prefix=f"Run {name}({json.dumps(kwargs, default=str)})? The model's call is held: {held}. [yes/no] ",
            tool_id=tool_id, tool_name=name, tool_kwargs=dict(kwargs), confidence=confidence,
            threshold=self.threshold, reason=held,
        )
        try:
            answer = await ctx.wait_for_event(
                HumanResponseEvent, waiter_event=request, waiter_id=f"gradguard_tool_approval:{tool_id}",
                requirements={"tool_id": tool_id}, timeout=self.timeout,
            )
        except TimeoutError:
            return self._finish(ctx, tool_id, kwargs, confidence, "rejected", f"{held}; no reviewer answered in time")
        if self.approve(answer):
            reason = f"{held}; a reviewer approved it"
            return await self._run(ctx, tool_id, args, kwargs, confidence, "approved", reason)
        await ctx.store.set(DECLINED_KEY, [*(await ctx.store.get(DECLINED_KEY, default=None) or ()), key])
        return self._finish(ctx, tool_id, kwargs, confidence, "rejected", f"{held}; a reviewer declined it")

    async def _run(
        self, ctx: Context, tool_id: str, args: tuple[Any, ...], kwargs: dict[str, Any], confidence: float | None,
        decision: Literal["pass", "approved"], reason: str,
    ) -> ToolOutput:
        self._record(ctx, tool_id, kwargs, confidence, decision, reason)
        call_kwargs = dict(kwargs)
        if isinstance(self.tool, FunctionTool) and self.tool.requires_context and self.tool.ctx_param_name:
            call_kwargs[self.tool.ctx_param_name] = ctx
        return await adapt_to_async_tool(self.tool).acall(*args, **call_kwargs)

    def _finish(
        self, ctx: Context | None, tool_id: str, kwargs: dict[str, Any], confidence: float | None,
        decision: Literal["rejected"], reason: str,
    ) -> ToolOutput:
        self._record(ctx, tool_id, kwargs, confidence, decision, reason)
        name = self.metadata.get_name()
        return ToolOutput(
            content=f"The call {name}({json.dumps(kwargs, default=str)}) was not run: {reason}. Do not call it "
            "again; tell the user it was not done.",
            tool_name=name, raw_input={"args": (), "kwargs": dict(kwargs)},
            raw_output={"decision": decision, "reason": reason, "confidence": confidence, "tool_id": tool_id},
            is_error=True,
        )

    def _record(
        self, ctx: Context | None, tool_id: str, kwargs: dict[str, Any], confidence: float | None,
        decision: Literal["pass", "approved", "rejected"], reason: str,
    ) -> None:
        if ctx is not None:
            ctx.write_event_to_stream(ToolGateDecision(
                tool_id=tool_id, tool_name=self.metadata.get_name(), tool_kwargs=dict(kwargs), confidence=confidence,
                threshold=self.threshold, decision=decision, reason=reason,
            ))


def guard_tools(
    tools: Iterable[BaseTool | Callable[..., Any]], threshold: float = 0.5, **options: Any
) -> list[ConfidenceGatedTool]:
    """Wrap each tool in a :class:`ConfidenceGatedTool` (``options``: ``on_low``, ``timeout``, ``scratchpad_key``,
    ``approve``); tools already gated are kept as they are."""
    return [t if isinstance(t, ConfidenceGatedTool) else ConfidenceGatedTool(t, threshold, **options) for t in tools]
