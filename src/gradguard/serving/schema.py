"""Request bodies of the server's endpoints (pydantic), and their translation to gradguard's inputs.

Unknown fields are accepted and ignored (as OpenAI-compatible servers do); known OpenAI fields the server
cannot honour are refused by :meth:`ChatRequest.check_supported` naming them.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gradguard.integrations._core.options import MAX_TOP_LOGPROBS
from gradguard.serving.errors import ApiError, loc_to_param
from gradguard.serving.wire import RESULT_FIELD

__all__ = [
    "ChatMessage", "ChatRequest", "ScoreRequest", "StreamOptions", "parse_body", "chat_messages", "has_tool_history",
]

Role = Literal["system", "developer", "user", "assistant", "tool"]


class ContentPart(BaseModel):
    """One part of a message's content; only ``{"type": "text", "text": ...}`` is supported."""

    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    """An OpenAI chat message (``developer`` is read as ``system``)."""

    model_config = ConfigDict(extra="allow")

    role: Role
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class StreamOptions(BaseModel):
    """``stream_options``: ``include_usage`` adds a last chunk with the usage and no choices."""

    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class _Base(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    model: str | None = None
    messages: list[ChatMessage] = Field(..., min_length=1)
    task: str | None = None
    want_result: bool = Field(False, alias=RESULT_FIELD)
    tools: list[dict[str, Any]] | None = None


class ChatRequest(_Base):
    """``POST /v1/chat/completions``: OpenAI's chat request plus ``task`` and ``gradguard_result``."""

    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=1, description="An extension (as vLLM's): sample among the k most likely.")
    score_reasoning: bool = Field(
        False, description="An extension: score a <think> section too (default: it is left out of every score)."
    )
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    stream: bool = False
    stream_options: StreamOptions | None = None
    tool_choice: Any = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError(f"at most 4 stop sequences are allowed, got {len(value)}")
        return value

    def stops(self) -> tuple[str, ...]:
        """The stop strings (empty ones dropped)."""
        values = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        return tuple(s for s in values if s)

    def check_supported(self) -> None:
        """Raise :class:`ApiError` (400, naming the field) for a known OpenAI field the server cannot honour."""
        extra = self.model_extra or {}

        def refuse(param: str, why: str) -> None:
            raise ApiError(400, f"{param} is not supported by the gradguard server: {why}", param=param,
                           code="unsupported_parameter")

        fmt = extra.get("response_format")
        if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
            refuse("response_format", "only plain text answers are generated (omit it or use {'type': 'text'})")
        if extra.get("seed") is not None:
            refuse("seed", "seeded sampling is not reproducible across batches; omit it")
        for name in ("frequency_penalty", "presence_penalty"):
            if extra.get(name) not in (None, 0, 0.0):
                refuse(name, "penalties would change the scored distribution; omit it or pass 0")
        if extra.get("repetition_penalty") not in (None, 1, 1.0):
            refuse("repetition_penalty", "a penalty would change the scored distribution; omit it or pass 1")
        if extra.get("logit_bias"):
            refuse("logit_bias", "biases would change the scored distribution; omit it")
        if extra.get("parallel_tool_calls") is False:
            refuse("parallel_tool_calls", "the model may always write several calls; omit it or pass true")
        if extra.get("audio") is not None:
            refuse("audio", "only text is generated")
        modalities = extra.get("modalities")
        if modalities is not None and modalities != ["text"]:
            refuse("modalities", "only text is generated (omit it or pass ['text'])")
        if extra.get("prediction") is not None:
            refuse("prediction", "predicted outputs are not supported")
        if self.top_logprobs and not self.logprobs:
            raise ApiError(400, "top_logprobs requires logprobs=true", param="top_logprobs")


class ScoreRequest(_Base):
    """``POST /v1/score``: score ``response`` (or each of ``responses``) as the answer to ``messages``."""

    response: str | None = None
    responses: list[str] | None = None

    def answers(self, limit: int) -> list[str]:
        """The answers to score (exactly one of ``response`` / ``responses``, at most ``limit``)."""
        if (self.response is None) == (self.responses is None):
            raise ApiError(400, "give exactly one of 'response' (a string) or 'responses' (a list of strings)",
                           param="response")
        answers = [self.response] if self.response is not None else list(self.responses or [])
        if not answers:
            raise ApiError(400, "responses is empty; give at least one answer to score", param="responses")
        if len(answers) > limit:
            raise ApiError(400, f"at most {limit} responses per request, got {len(answers)}", param="responses")
        return answers


def parse_body(raw: bytes, model: type[ChatRequest] | type[ScoreRequest]) -> Any:
    """The request ``model`` read from the JSON body ``raw`` (400 for bad JSON or a bad field, naming it)."""
    try:
        data = json.loads(raw or b"")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = loc_to_param(err.get("loc", ()))
        raise ApiError(400, f"{param}: {err.get('msg')}", param=param) from None


def has_tool_history(messages: list[ChatMessage]) -> bool:
    """True when a past message is a tool result or holds tool calls (the turn then goes through a tool binding,
    with no tools bound, so the history is rendered as the model's template writes it)."""
    return any(m.role == "tool" or m.tool_calls for m in messages)


def chat_messages(messages: list[ChatMessage], *, tools: bool) -> list[dict[str, Any]]:
    """The messages for the scorer: text contents joined, ``developer`` as ``system``; with ``tools``, the
    OpenAI fields of tool turns (``tool_calls``, ``tool_call_id``, ``name``) are kept."""
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        if isinstance(msg.content, list):
            bad = [p.type for p in msg.content if p.type != "text" or p.text is None]
            if bad:
                raise ApiError(400, f"messages[{i}].content has a {bad[0]!r} part; only text parts are supported",
                               param=f"messages[{i}].content")
            content = "".join(p.text or "" for p in msg.content)
        else:
            content = msg.content or ""
        item: dict[str, Any] = {"role": "system" if msg.role == "developer" else msg.role, "content": content}
        if tools:
            if msg.tool_calls:
                item["tool_calls"] = msg.tool_calls
            if msg.tool_call_id is not None:
                item["tool_call_id"] = msg.tool_call_id
            if msg.name is not None:
                item["name"] = msg.name
        out.append(item)
    return out
