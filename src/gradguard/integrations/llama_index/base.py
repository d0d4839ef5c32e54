"""``GradguardLLM``: a LlamaIndex ``CustomLLM`` that hosts a local Hugging Face chat model and scores every answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, TypeVar

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
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.callbacks import CallbackManager
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM

from gradguard.integrations._core import (
    GenerationOptions,
    IntegrationError,
    LocalBackend,
    UnknownOptionError,
    with_system_prompt,
)
from gradguard.integrations.llama_index.utils import (
    CapturedScore,
    GradguardLlamaIndexError,
    attach_metadata,
    messages_to_dicts,
    publish_score,
)
from gradguard.result import ScoreResult
from gradguard.scorer import GradScorer

__all__ = ["GradguardLLM"]

_T = TypeVar("_T")


class GradguardLLM(CustomLLM):
    """A local Hugging Face chat model as a LlamaIndex LLM; every answer carries its gradient uncertainty.

    Setup:
        ``pip install 'gradguard[llama-index]'``; ``GradguardLLM()`` hosts the embedded
        Qwen2.5-Coder-0.5B-Instruct, ``GradguardLLM("Qwen/Qwen2.5-1.5B-Instruct")`` a Hub id in the
        local cache, a folder or a ``.gguf`` (loaded on first use), ``GradguardLLM(scorer=GradScorer(...))``
        a model already loaded.

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
        none: a tool message raises :class:`gradguard.errors.InputError`.

    Metadata:
        ``additional_kwargs["gradguard"]`` (chat: also ``message.additional_kwargs``) is
        :meth:`gradguard.ScoreResult.metadata` (``confidence``: calibrated P(correct) or ``None``;
        ``uncertainty``: **larger = less confident**; ``scored`` False: unconfident), shared with
        LangChain; ``response.raw`` is the full :class:`gradguard.ScoreResult`.
    """

    model: str | None = Field(default=None, description="Model source: None = embedded default; HF id, folder, .gguf.")
    max_new_tokens: int = Field(default=256, gt=0, description="Most tokens generated per answer.")
    context_window: int | None = Field(default=None, gt=0, description="Context window to report (None: the model's).")
    generate_kwargs: dict[str, Any] = Field(default_factory=dict, description="Default generation options.")
    task: str | None = Field(default=None, description="Calibration task ('chat', 'rag', ...); None: profile default.")

    _backend: LocalBackend = PrivateAttr()
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
        **kwargs: Any,
    ) -> None:
        """Create the LLM from a ready ``scorer`` or a ``model`` source (loaded lazily); see the class docs."""
        try:
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
            **kwargs,
        )
        self._backend, self._defaults = backend, defaults

    @classmethod
    def class_name(cls) -> str:
        """Name used in LlamaIndex serialization and instrumentation payloads."""
        return "GradguardLLM"

    @property
    def scorer(self) -> GradScorer:
        """The :class:`gradguard.GradScorer` (loaded from ``model`` on first access)."""
        return self._backend.scorer

    @property
    def metadata(self) -> LLMMetadata:
        """LLM metadata: context window from the model config (unless given), ``is_chat_model=True``."""
        return LLMMetadata(
            context_window=self.context_window or self._backend.context_window,
            num_output=self.max_new_tokens,
            is_chat_model=True,
            is_function_calling_model=False,
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
        dicts, options = self._run(messages, kwargs)
        result = self._backend.generate(dicts, options)
        return self._respond(result.response, result)

    def _stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        dicts, options = self._run(messages, kwargs)
        text = ""
        for piece in self._backend.stream(dicts, options):
            text += piece.text
            yield self._respond(text, piece.result, piece.text)

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
