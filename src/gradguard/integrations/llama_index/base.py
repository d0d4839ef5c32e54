"""``GradguardLLM``: a LlamaIndex ``FunctionCallingLLM`` that hosts a local Hugging Face chat model and scores every
answer and every tool call."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

from llama_index.core.base.llms.generic_utils import (
    chat_to_completion_decorator,
    stream_chat_to_completion_decorator,
)
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
    TextBlock,
    ToolCallBlock,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.callbacks import CallbackManager
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection

from gradguard.integrations._core import (
    GenerationOptions,
    IntegrationError,
    LocalBackend,
    RemoteBackend,
    ToolBinding,
    ToolCall,
    ToolTurn,
    UnknownOptionError,
    with_system_prompt,
)
from gradguard.integrations._core.backend import Messages
from gradguard.integrations.llama_index.utils import (
    CapturedScore,
    GradguardLlamaIndexError,
    attach_metadata,
    has_tool_history,
    message_tool_calls,
    messages_to_dicts,
    messages_to_tool_dicts,
    publish_score,
    tool_kwargs_dict,
)
from gradguard.result import ScoreResult
from gradguard.scorer import GradScorer

__all__ = ["GradguardLLM"]

if TYPE_CHECKING:
    from llama_index.core.tools.types import BaseTool

_T = TypeVar("_T")

#: Per-call keyword arguments that carry tools rather than generation options.
_TOOL_KWARGS = ("tools", "tool_choice", "parallel_tool_calls")


class GradguardLLM(FunctionCallingLLM):
    """A local Hugging Face chat model as a LlamaIndex LLM; every answer carries its gradient uncertainty.

    Setup:
        ``pip install 'gradguard[llama-index]'``; ``GradguardLLM()`` hosts the embedded
        Qwen2.5-Coder-0.5B-Instruct, ``GradguardLLM("Qwen/Qwen2.5-1.5B-Instruct")`` a Hub id in the
        local cache, a folder or a ``.gguf`` (loaded on first use), ``GradguardLLM(scorer=GradScorer(...))``
        a model already loaded, ``GradguardLLM(base_url="http://host:8000", api_key=...)`` the model of a
        ``gradguard serve`` server (same answers, scores and metadata, computed there; docs/clients.md).

    Invoke:
        ``llm.chat(messages)``; ``llm.complete(prompt)`` is derived from ``chat`` (the prompt is
        one user turn, so roles reach the chat template intact). Per-call options:
        ``max_new_tokens``/``max_tokens``, ``temperature``, ``top_p``, ``top_k``, ``stop``,
        ``timeout``, ``logprobs``, ``top_logprobs``, ``task``; any other raises
        :class:`~gradguard.integrations._core.UnknownOptionError` naming the supported ones.

    Stream:
        ``stream_chat`` / ``stream_complete`` yield text as it is generated; the last chunk carries
        the score. A consumer that stops early stops generation and scoring at once.

    Tools:
        a ``FunctionCallingLLM``: ``FunctionAgent``, ``AgentWorkflow``, ``predict_and_call`` and
        ``chat_with_tools`` work. The tools are rendered by the model's own chat template and its calls parsed
        by the template's format (Qwen/Hermes, Llama 3.x, Mistral); ``chat(messages, tools=[...],
        tool_choice=...)`` also takes them directly (LlamaIndex tools or OpenAI tool dicts; ``tool_choice``:
        ``"auto"``, ``"none"``, ``"required"``/``"any"`` or a tool name, enforced by starting the answer with the
        call opening). Calls come back as ``ToolCallBlock`` blocks of the message (read them with
        :meth:`get_tool_calls_from_response`); malformed calls, calls to tools that are not bound and arguments
        against the schema go to ``additional_kwargs["invalid_tool_calls"]`` (``{"id", "name", "arguments",
        "error"}``) and are never returned as selections. ``chat_with_tools(...,
        allow_parallel_tool_calls=False)`` (LlamaIndex's default there) keeps only the first call;
        ``FunctionAgent`` asks for all. History with assistant calls (``ToolCallBlock`` or
        ``additional_kwargs["tool_calls"]``) and tool messages (``additional_kwargs["tool_call_id"]``) goes back
        into the template; a tool message whose id matches no call raises
        :class:`~gradguard.integrations._core.ToolMessageError`. A model whose template has no tool support
        raises :class:`~gradguard.integrations._core.ToolsUnsupportedError` at the first call with tools.

    Metadata:
        ``additional_kwargs["gradguard"]`` (chat: also ``message.additional_kwargs``) is
        :meth:`gradguard.ScoreResult.metadata` (``confidence``: calibrated P(correct) or ``None``;
        ``uncertainty``: **larger = less confident**; ``scored`` False: unconfident), shared with
        LangChain; ``response.raw`` is the full :class:`gradguard.ScoreResult`. With tools, it also holds
        ``tool_calls``: one ``{"id", "name", "confidence", "uncertainty", "in_domain", "scored"}`` per call,
        each call's own score (its span, from the name to the last argument token), calibrated by the
        ``tools`` task; ``confidence`` None means unconfident (see :class:`ConfidenceGatedTool`).
    """

    model: str | None = Field(default=None, description="Model source: None = embedded default; HF id, folder, .gguf.")
    max_new_tokens: int = Field(default=256, gt=0, description="Most tokens generated per answer.")
    context_window: int | None = Field(default=None, gt=0, description="Context window to report (None: the model's).")
    generate_kwargs: dict[str, Any] = Field(default_factory=dict, description="Default generation options.")
    task: str | None = Field(default=None, description="Calibration task ('chat', 'rag', ...); None: profile default.")
    base_url: str | None = Field(default=None, description="A `gradguard serve` server's URL (not with model/scorer).")

    _backend: LocalBackend | RemoteBackend = PrivateAttr()
    _defaults: GenerationOptions = PrivateAttr()

    def __init__(
        self,
        model: str | None = None,
        *,
        scorer: GradScorer | None = None,
        max_new_tokens: int = 256,
        system_prompt: str | None = None,
        context_window: int | None = None,
        generate_kwargs: dict[str, Any] | None = None,
        callback_manager: CallbackManager | None = None,
        task: str | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 120.0,
        **kwargs: Any,
    ) -> None:
        """Create the LLM from a ready ``scorer``, a ``model`` source (loaded lazily) or a server's ``base_url``
        (``api_key``: its key, default ``$GRADGUARD_API_KEY``; ``timeout``: seconds per request); see the class docs."""
        backend: LocalBackend | RemoteBackend
        try:
            if base_url is not None:
                given = [name for name, v in (("model", model), ("scorer", scorer)) if v is not None]
                if given:
                    raise IntegrationError(
                        f"GradguardLLM got base_url={base_url!r} and {given[0]}=...; pass only one: base_url= for a "
                        "model served by `gradguard serve`, model=/scorer= for a model in this process"
                    )
                backend = RemoteBackend(base_url, api_key=api_key, timeout=timeout)
            elif api_key is not None:
                raise IntegrationError("GradguardLLM got api_key= without base_url=: a model in this process needs no "
                                       "key; pass base_url= for a `gradguard serve` server")
            else:
                backend = LocalBackend(model, scorer)
            defaults = GenerationOptions().merged(
                {"max_new_tokens": max_new_tokens, "task": task, **(generate_kwargs or {})}, owner="GradguardLLM"
            )
        except UnknownOptionError:
            raise
        except IntegrationError as exc:
            raise GradguardLlamaIndexError(str(exc)) from None
        super().__init__(
            model=model if scorer is None else scorer.model_name,
            max_new_tokens=max_new_tokens,
            system_prompt=system_prompt,
            context_window=context_window,
            generate_kwargs=dict(generate_kwargs or {}),
            callback_manager=callback_manager,
            task=task,
            base_url=base_url,
            **kwargs,
        )
        self._backend, self._defaults = backend, defaults

    @classmethod
    def class_name(cls) -> str:
        """Name used in LlamaIndex serialization and instrumentation payloads."""
        return "GradguardLLM"

    @property
    def scorer(self) -> GradScorer:
        """The :class:`gradguard.GradScorer` (loaded from ``model`` on first access; a remote model has none here)."""
        if isinstance(self._backend, RemoteBackend):
            raise GradguardLlamaIndexError(
                f"GradguardLLM(base_url={self.base_url!r}) has no scorer in this process: the model is served by "
                "`gradguard serve`; read scores from response.additional_kwargs['gradguard'] (response.raw: the result)"
            )
        return self._backend.scorer

    @property
    def metadata(self) -> LLMMetadata:
        """LLM metadata: context window from the model config (unless given), ``is_chat_model=True``,
        ``is_function_calling_model=True``."""
        return LLMMetadata(
            context_window=self.context_window or self._backend.context_window,
            num_output=self.max_new_tokens,
            is_chat_model=True,
            is_function_calling_model=True,
            model_name=self._backend.model_name,
        )

    def _run(
        self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]
    ) -> tuple[list[dict[str, str]], GenerationOptions]:
        options = self._defaults.merged(kwargs, owner="GradguardLLM")
        return with_system_prompt(messages_to_dicts(messages), self.system_prompt), options

    def _respond(self, text: str, result: ScoreResult | None, delta: str | None = None) -> ChatResponse:
        response = ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=delta)
        if result is not None:
            response.raw = result
            metadata = result.metadata()
            attach_metadata(response, metadata)
            publish_score(CapturedScore(text=result.response, result=result, metadata=metadata, source="llm"))
        return response

    def _chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        tooling = {k: kwargs.pop(k) for k in _TOOL_KWARGS if k in kwargs}
        if _uses_tools(messages, tooling):
            return self._chat_turn(messages, kwargs, tooling)
        dicts, options = self._run(messages, kwargs)
        result = self._backend.generate(dicts, options)
        return self._respond(result.response, result)

    def _stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        tooling = {k: kwargs.pop(k) for k in _TOOL_KWARGS if k in kwargs}
        if _uses_tools(messages, tooling):
            yield from self._stream_turn(messages, kwargs, tooling)
            return
        dicts, options = self._run(messages, kwargs)
        text = ""
        for piece in self._backend.stream(dicts, options):
            text += piece.text
            yield self._respond(text, piece.result, piece.text)

    # Turns with tools bound (or a history with tool calls): the core's generate_turn / stream_turn.

    def _run_turn(
        self, messages: Sequence[ChatMessage], kwargs: dict[str, Any], tooling: dict[str, Any]
    ) -> tuple[list[dict[str, Any]], ToolBinding, GenerationOptions, bool]:
        options = self._defaults.merged(kwargs, owner="GradguardLLM")
        dicts = cast(list[dict[str, Any]], with_system_prompt(
            cast(Messages, messages_to_tool_dicts(messages)), self.system_prompt
        ))
        binding = self._backend.bind(_openai_tools(tooling.get("tools")), tooling.get("tool_choice"))
        return dicts, binding, options, tooling.get("parallel_tool_calls") is not False

    def _chat_turn(
        self, messages: Sequence[ChatMessage], kwargs: dict[str, Any], tooling: dict[str, Any]
    ) -> ChatResponse:
        dicts, binding, options, parallel = self._run_turn(messages, kwargs, tooling)
        turn = self._backend.generate_turn(dicts, binding, options)
        return self._respond_turn(turn.content, [c.call for c in turn.calls], turn, parallel)

    def _stream_turn(
        self, messages: Sequence[ChatMessage], kwargs: dict[str, Any], tooling: dict[str, Any]
    ) -> ChatResponseGen:
        dicts, binding, options, parallel = self._run_turn(messages, kwargs, tooling)
        text, calls = "", list[ToolCall]()
        for piece in self._backend.stream_turn(dicts, binding, options):
            text += piece.content
            calls.extend(piece.calls)
            if piece.turn is not None:
                text, calls = piece.turn.content, [c.call for c in piece.turn.calls]
            yield self._respond_turn(text, calls, piece.turn, parallel, piece.content)

    def _respond_turn(
        self, text: str, calls: Sequence[ToolCall], turn: ToolTurn | None, parallel: bool, delta: str | None = None
    ) -> ChatResponse:
        """A chat response for a (partial or whole) turn: text and ``ToolCallBlock`` s; the score on the whole."""
        kept = list(calls) if parallel else list(calls[:1])
        blocks: list[Any] = [TextBlock(text=text)] if text or not kept else []
        blocks += [ToolCallBlock(tool_call_id=c.id, tool_name=c.name, tool_kwargs=dict(c.arguments)) for c in kept]
        response = ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, blocks=blocks), delta=delta)
        if turn is None:
            return response
        response.raw = turn.result
        metadata = turn.metadata()
        ids = {c.id for c in kept}
        metadata["tool_calls"] = [m for m in metadata["tool_calls"] if m["id"] in ids]
        attach_metadata(response, metadata)
        if turn.invalid:
            invalid = [{"id": c.id, "name": c.name, "arguments": c.arguments, "error": c.error} for c in turn.invalid]
            response.additional_kwargs["invalid_tool_calls"] = invalid
            response.message.additional_kwargs["invalid_tool_calls"] = invalid
        publish_score(CapturedScore(text=text, result=turn.result, metadata=metadata, source="llm"))
        return response

    # FunctionCallingLLM

    def _prepare_chat_with_tools(
        self,
        tools: Sequence[BaseTool],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """The ``chat`` arguments for a turn with ``tools``: ``{"messages", "tools", "tool_choice",
        "parallel_tool_calls", **kwargs}``.

        ``tools`` become OpenAI tool dicts (``tool.metadata.to_openai_tool()``, under their own names: the
        template-safe names are mapped and mapped back by gradguard). ``tool_choice`` (a keyword, e.g.
        ``FunctionAgent(initial_tool_choice=...)``) wins; else ``tool_required=True`` -> ``"required"``, else
        ``"auto"``. ``allow_parallel_tool_calls=False`` keeps only the first call of the answer.
        """
        messages = list(chat_history or [])
        if user_msg is not None:
            messages.append(ChatMessage(role=MessageRole.USER, content=user_msg) if isinstance(user_msg, str)
                            else user_msg)
        choice = kwargs.pop("tool_choice", None) or ("required" if tool_required else "auto")
        return {
            "messages": messages,
            "tools": _openai_tools(tools),
            "tool_choice": choice,
            "parallel_tool_calls": allow_parallel_tool_calls,
            **kwargs,
        }

    def get_tool_calls_from_response(
        self, response: ChatResponse, error_on_no_tool_call: bool = True, **kwargs: Any
    ) -> list[ToolSelection]:
        """The tool calls of ``response`` (whole or a streamed chunk) as ``ToolSelection`` s.

        A streamed chunk holds the calls completed so far, so this never fails on a partial answer with
        ``error_on_no_tool_call=False`` (how ``FunctionAgent`` calls it on every chunk). With ``True``, an
        answer without a valid call raises :class:`GradguardLlamaIndexError` giving the invalid calls' reasons.
        """
        selections = [
            ToolSelection(
                tool_id=str(c["id"] or ""),
                tool_name=str(c["function"]["name"] or ""),
                tool_kwargs=tool_kwargs_dict(c["function"]["arguments"]),
            )
            for c in message_tool_calls(response.message)
        ]
        if not selections and error_on_no_tool_call:
            invalid = response.message.additional_kwargs.get("invalid_tool_calls") or []
            why = "; ".join(f"{c.get('name')!r}: {c.get('error')}" for c in invalid)
            raise GradguardLlamaIndexError(
                "expected at least one tool call, but the answer has none"
                + (f" that is valid ({why})" if why else f": {response.message.content!r}")
                + "; pass tool_choice='required' (or tool_required=True) to make the model call a tool"
            )
        return selections

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Answer the conversation ``messages`` and score the answer (``system_prompt`` is used when
        the messages have none)."""
        return self._chat(messages, **kwargs)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        """Stream the answer to ``messages``; the last chunk carries the score."""
        return self._stream_chat(messages, **kwargs)

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """Answer ``prompt`` as one user turn (derived from :meth:`chat`) and score the answer."""
        return chat_to_completion_decorator(self._chat)(prompt, **kwargs)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        """Stream the answer to ``prompt``; the last chunk carries the score."""
        return stream_chat_to_completion_decorator(self._stream_chat)(prompt, **kwargs)

    # Async: the work runs in a worker thread so the event loop stays free.

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Async :meth:`chat`."""
        return await asyncio.to_thread(self._chat, messages, **kwargs)

    @llm_chat_callback()
    async def astream_chat(
        self, messages: Sequence[ChatMessage], **kwargs: Any
    ) -> AsyncIterator[ChatResponse]:
        """Async :meth:`stream_chat`; the last chunk carries the score."""
        return _aiterate(lambda: self._stream_chat(messages, **kwargs))

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """Async :meth:`complete`."""
        return await asyncio.to_thread(chat_to_completion_decorator(self._chat), prompt, **kwargs)

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> AsyncIterator[CompletionResponse]:
        """Async :meth:`stream_complete`; the last chunk carries the score."""
        return _aiterate(lambda: stream_chat_to_completion_decorator(self._stream_chat)(prompt, **kwargs))


def _uses_tools(messages: Sequence[ChatMessage], kwargs: Mapping[str, Any]) -> bool:
    """True when a call has tools bound, a tool choice that needs them, or tool calls in its history."""
    choice = kwargs.get("tool_choice")
    return bool(kwargs.get("tools")) or choice not in (None, "auto", "none") or has_tool_history(messages)


def _openai_tools(tools: Sequence[Any] | None) -> list[Any]:
    """LlamaIndex tools as OpenAI tool dicts under their own names (other items, e.g. OpenAI dicts, as given)."""
    out: list[Any] = []
    for tool in tools or []:
        meta = getattr(tool, "metadata", None)
        if meta is not None and hasattr(meta, "to_openai_tool"):
            spec = meta.to_openai_tool(skip_length_check=True)
            spec["function"]["name"] = meta.get_name()  # LlamaIndex sanitises names; gradguard maps them itself
            out.append(spec)
        else:
            out.append(tool)
    return out


async def _aiterate(make: Callable[[], Iterator[_T]]) -> AsyncIterator[_T]:
    """Drive a blocking iterator from an async generator, one ``next`` per worker-thread call; closing
    the async generator closes the iterator (so an abandoned stream stops generating)."""
    iterator = make()
    done = object()
    try:
        while True:
            item = await asyncio.to_thread(next, iterator, done)
            if item is done:
                return
            yield item  # type: ignore[misc]
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()
