"""``ChatGradguard``: a LangChain chat model over a local Hugging Face model whose every answer is scored."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, ChatMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import AliasChoices, ConfigDict, Field, PrivateAttr

from gradguard.integrations._core import (
    CALL_OPTIONS,
    METADATA_KEY,
    GenerationOptions,
    IntegrationError,
    LocalBackend,
    Messages,
    UnknownOptionError,
    with_system_prompt,
)
from gradguard.integrations.langchain.metadata import _validation_as, remember_result
from gradguard.result import ScoreResult
from gradguard.scorer import GradScorer

__all__ = ["ChatGradguard", "ChatInputError", "to_chat_dicts"]


class ChatInputError(IntegrationError):
    """A message, option or field value that ``ChatGradguard`` cannot use (the message says which, and the fix)."""


_ROLES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "ai": "assistant"}
_CLASSES = ((SystemMessage, "system"), (HumanMessage, "user"), (AIMessage, "assistant"))


def to_chat_dicts(messages: Sequence[BaseMessage], system_prompt: str | None = None) -> Messages:
    """LangChain messages as ``[{"role", "content"}]`` for the chat template: system, human and AI messages (or a
    ``ChatMessage`` with such a role) with text content, ``system_prompt`` first when none is a system message.
    Raises :class:`ChatInputError` for anything else."""
    out: Messages = []
    for i, message in enumerate(messages):
        if isinstance(message, AIMessage) and (message.tool_calls or message.invalid_tool_calls):
            raise ChatInputError(
                f"message {i} is an AIMessage with tool calls; ChatGradguard does not call tools: send the "
                "tool's result as a HumanMessage (see examples/langchain_agent_confidence.py)"
            )
        role = next((name for kind, name in _CLASSES if isinstance(message, kind)), None)
        if isinstance(message, ChatMessage):
            role = _ROLES.get(message.role.lower())
        if role is None:
            raise ChatInputError(
                f"message {i} is a {type(message).__name__} (type {message.type!r}); ChatGradguard takes system, "
                "human and AI messages: render tool or function results into a HumanMessage"
            )
        blocks = message.content if isinstance(message.content, list) else []
        kinds = sorted({str(b.get("type")) for b in blocks if isinstance(b, dict)} - {"text"})
        if kinds:
            raise ChatInputError(
                f"message {i} has content blocks of type {kinds}; ChatGradguard hosts a text-only model: pass text"
            )
        out.append({"role": role, "content": message.text})
    if not out:
        raise ChatInputError("no messages were given; pass at least one HumanMessage")
    return with_system_prompt(out, system_prompt)


class ChatGradguard(BaseChatModel):
    """A local Hugging Face chat model whose every answer carries its gradient-based uncertainty.

    Setup:
        ``ChatGradguard()`` hosts the embedded Qwen2.5-Coder-0.5B-Instruct; ``model=`` a Hub id in the local
        cache, a folder or a ``.gguf`` (loaded on first use); ``scorer=GradScorer(model, tokenizer)`` a loaded one.
    Invoke:
        ``chat.invoke("Who proposed natural selection?")``; greedy unless ``temperature > 0``. Per-call options:
        :data:`~gradguard.integrations._core.CALL_OPTIONS` (and ``max_tokens``); any other raises
        :class:`~gradguard.integrations._core.UnknownOptionError`. Calls are serialised by the scorer's lock.
    Stream:
        Text as it is generated; the last chunk carries the score. A consumer that stops early stops generation.
    Tools:
        none: a message with tool calls raises :class:`ChatInputError`.
    Metadata:
        ``response_metadata["gradguard"]`` is :meth:`gradguard.ScoreResult.metadata`: ``confidence`` (``None``
        when uncalibrated), ``uncertainty`` (**larger = less confident**), ``scored`` (False: unconfident), ...
        ``logprobs=True`` adds OpenAI-style ``logprobs`` (alternatives from the scoring pass: no extra pass).
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, populate_by_name=True)

    model: str | None = Field(None, description="Model source: Hub id, folder or .gguf; None = embedded default.")
    scorer: GradScorer | None = Field(None, exclude=True, description="A ready scorer (instead of `model`).")
    max_new_tokens: int = Field(
        256, validation_alias=AliasChoices("max_new_tokens", "max_tokens"), description="Most tokens to generate."
    )
    temperature: float | None = Field(None, description="Sampling temperature; None or 0 = greedy.")
    top_p: float | None = Field(None, description="Nucleus sampling mass (only with temperature > 0).")
    stop: list[str] | None = Field(None, description="Stop strings; the answer ends before the first one.")
    timeout: float | None = Field(None, description="Most seconds to spend generating (transformers' max_time).")
    system_prompt: str | None = Field(None, description="System message used when the conversation has none.")
    logprobs: bool = Field(False, description="Add OpenAI-style logprobs to response_metadata.")
    top_logprobs: int | None = Field(None, description="Alternatives per token in logprobs (0-20).")
    streaming: bool = Field(False, description="Stream by default in invoke (LangChain's flag).")
    task: str | None = Field(None, description="Calibration task ('chat', 'rag', ...); None: the profile's default.")

    _backend: LocalBackend = PrivateAttr()
    _defaults: GenerationOptions = PrivateAttr()

    def __init__(self, **kwargs: Any) -> None:
        with _validation_as(ChatGradguard, ChatInputError):  # a local model: no API key, retries, ...
            super().__init__(**kwargs)
        self._defaults = _options(GenerationOptions(), self.model_dump(include=set(CALL_OPTIONS)), None)
        self._backend = LocalBackend(self.model, self.scorer)

    @property
    def _llm_type(self) -> str:
        return "gradguard"

    @property
    def model_name(self) -> str:
        """The hosted model's name (without loading it)."""
        return self._backend.model_name

    @property
    def gradscorer(self) -> GradScorer:
        """The scorer behind this model, loaded on first use."""
        return self._backend.scorer

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, **self._defaults.model_dump(), "system_prompt": self.system_prompt}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        kwargs.setdefault("max_tokens", kwargs.get("max_new_tokens", self.max_new_tokens))
        return super()._get_ls_params(stop=stop or self.stop, **kwargs)

    def _call(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> tuple[Messages, GenerationOptions]:
        kwargs.pop("stream", None)  # LangChain's own flag
        model = kwargs.pop("model", None)
        if model not in (None, self.model, self.model_name):
            raise ChatInputError(
                f"model={model!r} per call: ChatGradguard hosts one local model ({self.model_name!r}); "
                "build another ChatGradguard(model=...) for another model"
            )
        return to_chat_dicts(messages, self.system_prompt), _options(self._defaults, kwargs, stop)

    def _scored(self, message_id: str, result: ScoreResult, options: GenerationOptions) -> dict[str, Any]:
        """The fields of the message carrying ``result`` (kept for :func:`result_for` by ``message_id``)."""
        remember_result(message_id, result)
        meta: dict[str, Any] = {METADATA_KEY: result.metadata(), "model_name": result.model or self.model_name}
        meta["finish_reason"] = result.finish_reason or "stop"
        if options.logprobs:
            meta["logprobs"] = self._backend.logprobs(result)
        usage = {"input_tokens": result.n_prompt_tokens, "output_tokens": result.n_response_tokens,
                 "total_tokens": result.n_prompt_tokens + result.n_response_tokens}
        return {"id": message_id, "response_metadata": meta, "usage_metadata": usage}

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        dicts, options = self._call(messages, stop, kwargs)
        result = self._backend.generate(dicts, options)
        message = AIMessage(content=result.response, **self._scored(f"gradguard-{uuid.uuid4().hex}", result, options))
        return ChatResult(generations=[ChatGeneration(message=message)], llm_output={"model_name": self.model_name})

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        dicts, options = self._call(messages, stop, kwargs)
        message_id = f"gradguard-{uuid.uuid4().hex}"
        for piece in self._backend.stream(dicts, options):
            if piece.result is None:
                yield ChatGenerationChunk(message=AIMessageChunk(content=piece.text, id=message_id))
            else:
                parts = self._scored(message_id, piece.result, options)
                yield ChatGenerationChunk(message=AIMessageChunk(content=piece.text, chunk_position="last", **parts))


def _options(base: GenerationOptions, call: dict[str, Any], stop: list[str] | None) -> GenerationOptions:
    try:
        return base.merged(call, owner="ChatGradguard", stop=stop)
    except UnknownOptionError:
        raise
    except IntegrationError as exc:
        raise ChatInputError(str(exc)) from None
