"""Helpers shared by the LlamaIndex components: metadata on responses, message conversion, score capture, signals."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import Any, ClassVar

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    CompletionResponse,
    MessageRole,
    ToolCallBlock,
)
from pydantic import BaseModel, ConfigDict, Field

from gradguard.errors import InputError
from gradguard.integrations._core import METADATA_KEY, IntegrationError, find_metadata, unscored_metadata
from gradguard.integrations._core import attach_metadata as _attach
from gradguard.integrations._core.deprecation import deprecated_names
from gradguard.result import ScoreResult
from gradguard.routing import GuardSignal, GuardSignalError
from gradguard.routing.signal import SIGNALS, SignalFn

__all__ = [
    "METADATA_KEY", "GradguardLlamaIndexError", "CapturedScore", "SIGNALS", "Signal", "SignalConfigError",
    "SignalFn", "missing_score_metadata", "attach_metadata", "read_metadata", "read_result", "messages_to_dicts",
    "messages_to_tool_dicts", "has_tool_history", "message_tool_calls", "tool_kwargs_dict", "capture_scores",
    "publish_score", "same_answer",
]


class GradguardLlamaIndexError(IntegrationError):
    """A LlamaIndex component of gradguard was configured or called wrongly."""


#: The unscored metadata (every score ``None``, ``scored`` False, ``error`` says why).
missing_score_metadata = unscored_metadata


def attach_metadata(response: CompletionResponse | ChatResponse, metadata: dict[str, Any]) -> None:
    """Put ``metadata`` in ``response.additional_kwargs["gradguard"]`` (and in the message's, for chat)."""
    _attach(response.additional_kwargs, metadata)
    if isinstance(response, ChatResponse):
        _attach(response.message.additional_kwargs, metadata)


def read_metadata(response: Any) -> dict[str, Any] | None:
    """The gradguard metadata attached to an LLM response or query ``Response``, or ``None``."""
    message = getattr(response, "message", None)
    return find_metadata(
        getattr(response, "additional_kwargs", None),
        getattr(response, "metadata", None),
        getattr(message, "additional_kwargs", None),
    )


def read_result(response: Any) -> ScoreResult | None:
    """The :class:`~gradguard.ScoreResult` carried in ``response.raw`` by :class:`GradguardLLM`, or ``None``."""
    raw = getattr(response, "raw", None)
    return raw if isinstance(raw, ScoreResult) else None


_ROLE_MAP = {
    MessageRole.SYSTEM.value: "system",
    MessageRole.DEVELOPER.value: "system",
    MessageRole.USER.value: "user",
    MessageRole.ASSISTANT.value: "assistant",
    MessageRole.MODEL.value: "assistant",
    MessageRole.CHATBOT.value: "assistant",
}


def messages_to_dicts(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    """LlamaIndex chat messages as ``[{"role", "content"}]`` (system/developer -> system;
    assistant/model/chatbot -> assistant). Tool and function messages raise :class:`InputError`."""
    out: list[dict[str, str]] = []
    for i, message in enumerate(messages):
        role = message.role.value if isinstance(message.role, MessageRole) else str(message.role)
        mapped = _ROLE_MAP.get(role)
        if mapped is None:
            raise InputError(
                f"message {i} has role {role!r}, which gradguard cannot score; "
                "use only system, user and assistant messages (tool calls are not supported)"
            )
        out.append({"role": mapped, "content": message.content or ""})
    if not out:
        raise InputError("messages is empty; pass at least one user message")
    return out


_TOOL_ROLES = (MessageRole.TOOL.value, MessageRole.FUNCTION.value)


def _role(message: ChatMessage) -> str:
    return message.role.value if isinstance(message.role, MessageRole) else str(message.role)


def message_tool_calls(message: ChatMessage) -> list[dict[str, Any]]:
    """The tool calls of an assistant message as OpenAI dicts ``{"id", "type", "function": {"name", "arguments"}}``.

    Read from its ``ToolCallBlock`` blocks (how LlamaIndex 0.14 LLMs, gradguard's included, return calls) or,
    for messages from older integrations, from ``additional_kwargs["tool_calls"]`` (OpenAI dicts or objects with
    ``id`` and ``function.name``/``function.arguments``). Arguments stay as given (a dict or a JSON string).
    """
    calls: list[dict[str, Any]] = [
        {"id": b.tool_call_id, "type": "function", "function": {"name": b.tool_name, "arguments": b.tool_kwargs}}
        for b in message.blocks
        if isinstance(b, ToolCallBlock)
    ]
    if calls:
        return calls
    for tc in message.additional_kwargs.get("tool_calls") or []:
        if isinstance(tc, Mapping):
            fn: Mapping[str, Any] = tc["function"] if isinstance(tc.get("function"), Mapping) else tc
            calls.append({"id": tc.get("id"), "type": "function",
                          "function": {"name": fn.get("name"), "arguments": fn.get("arguments", {})}})
        else:  # e.g. openai's ChatCompletionMessageToolCall
            obj = getattr(tc, "function", None)
            calls.append({"id": getattr(tc, "id", None), "type": "function",
                          "function": {"name": getattr(obj, "name", None), "arguments": getattr(obj, "arguments", {})}})
    return calls


def has_tool_history(messages: Sequence[ChatMessage]) -> bool:
    """True when ``messages`` hold a tool (or function) message or an assistant message with tool calls."""
    return any(_role(m) in _TOOL_ROLES or message_tool_calls(m) for m in messages)


def messages_to_tool_dicts(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """LlamaIndex chat messages as the OpenAI-style dicts of a turn with tools (see
    :meth:`~gradguard.integrations._core.ToolBinding.template_messages`): roles as in :func:`messages_to_dicts`,
    assistant messages with their ``tool_calls`` (:func:`message_tool_calls`), and tool (or function) messages as
    ``{"role": "tool", "content", "tool_call_id"}`` with the id from ``additional_kwargs["tool_call_id"]``."""
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        role = _role(message)
        if role in _TOOL_ROLES:
            extra = message.additional_kwargs
            tool: dict[str, Any] = {"role": "tool", "content": message.content or "",
                                    "tool_call_id": extra.get("tool_call_id")}
            if "name" in extra:
                tool["name"] = extra["name"]
            out.append(tool)
            continue
        mapped = _ROLE_MAP.get(role)
        if mapped is None:
            raise InputError(f"message {i} has role {role!r}, which gradguard cannot render; use system, user, "
                             "assistant and tool messages")
        entry: dict[str, Any] = {"role": mapped, "content": message.content or ""}
        calls = message_tool_calls(message) if mapped == "assistant" else []
        if calls:
            entry["tool_calls"] = calls
        out.append(entry)
    if not out:
        raise InputError("messages is empty; pass at least one user message")
    return out


def tool_kwargs_dict(arguments: Any) -> dict[str, Any]:
    """Tool-call arguments as a dict (a JSON object string is decoded; anything else that is not a dict -> {})."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            return {}
    return dict(arguments) if isinstance(arguments, Mapping) else {}


def same_answer(a: str | None, b: str | None) -> bool:
    """True when two answer texts are the same up to surrounding whitespace."""
    return a is not None and b is not None and " ".join(a.split()) == " ".join(b.split())


class CapturedScore(BaseModel):
    """One scored LLM answer published while a capture (see :func:`capture_scores`) was open."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    text: str = Field(..., description="The answer text that was scored.")
    result: ScoreResult | None = Field(None, description="The score; None when scoring failed (unconfident).")
    metadata: dict[str, Any] = Field(..., description="The shared metadata dict attached to the response.")
    source: str = Field(..., description="Who scored it: 'llm' (GradguardLLM) or 'handler' (GradguardEventHandler).")


_CAPTURES: ContextVar[tuple[list[CapturedScore], ...]] = ContextVar("gradguard_llama_index_captures", default=())
_CAPTURE_LOCK = threading.Lock()


@contextlib.contextmanager
def capture_scores() -> Iterator[list[CapturedScore]]:
    """Collect every score published by gradguard LLMs/handlers in this context (threads and tasks
    started inside it included, as they copy the context); captures nest."""
    sink: list[CapturedScore] = []
    token = _CAPTURES.set((*_CAPTURES.get(), sink))
    try:
        yield sink
    finally:
        _CAPTURES.reset(token)


def publish_score(captured: CapturedScore) -> None:
    """Hand a score to every capture open in the current context (no-op when none is open)."""
    sinks = _CAPTURES.get()
    with _CAPTURE_LOCK:
        for sink in sinks:
            sink.append(captured)


class SignalConfigError(GradguardLlamaIndexError, GuardSignalError):
    """A :class:`Signal` was configured wrongly (also a :class:`gradguard.routing.GuardSignalError`)."""


class Signal(GuardSignal):
    """:class:`gradguard.routing.GuardSignal` (the same class as LangChain's ``GuardSignal``), raising
    :class:`SignalConfigError` on bad options: ``Signal.confidence()`` (default; calibrated),
    ``Signal.uncertainty("hybridgrad", max_value)`` (larger = **less** confident), ``Signal.from_function(fn)``.

    >>> Signal.uncertainty("hybridgrad", 0.02).describe()
    'hybridgrad <= 0.02'
    """

    _error: ClassVar[type[GuardSignalError]] = SignalConfigError


__getattr__ = deprecated_names(__name__, {
    "apply_signal": (lambda: lambda signal, result: Signal.from_options(signal).confidence_of(result),
                     "use Signal.from_options(signal).confidence_of(result)"),
    "describe_signal": (lambda: lambda signal: Signal.from_options(signal).describe(),
                        "use Signal.from_options(signal).describe()"),
})
