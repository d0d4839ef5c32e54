"""``GradguardLLM``: a LlamaIndex ``CustomLLM`` that hosts a local Hugging Face chat model and scores every answer."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.callbacks import CallbackManager
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM

from gradguard.integrations.llama_index.utils import (
    CapturedScore,
    GradguardLlamaIndexError,
    attach_metadata,
    messages_to_dicts,
    publish_score,
)
from gradguard.result import ScoreResult

if TYPE_CHECKING:
    from gradguard.scorer import GradScorer

__all__ = ["GradguardLLM"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
_GEN_KEYS: frozenset[str] | None = None


def _generation_keys() -> frozenset[str]:
    """Names of ``transformers`` generation options (other call kwargs are ignored, not forwarded)."""
    global _GEN_KEYS
    if _GEN_KEYS is None:
        from transformers import GenerationConfig

        reserved = {"num_return_sequences", "return_dict_in_generate", "pad_token_id", "transformers_version"}
        _GEN_KEYS = frozenset(
            k for k in GenerationConfig().to_dict() if not k.startswith("_") and k not in reserved
        )
    return _GEN_KEYS


class GradguardLLM(CustomLLM):
    """A local Hugging Face chat model as a LlamaIndex LLM; every answer carries its gradient uncertainty.

    Each response has ``additional_kwargs["gradguard"]`` (chat responses also
    ``message.additional_kwargs["gradguard"]``) in the metadata schema shared with the
    LangChain integration (:meth:`gradguard.ScoreResult.metadata`):
    ``{"confidence", "uncertainty": {"hybridgrad", "semgrad", "paragrad", "exgrad", "g_nll",
    "mean_nll", "mean_entropy"}, "model", "profile", "spt_offset", "n_response_tokens", "scored"}``.
    Every uncertainty is larger when the model is **less** confident; ``confidence`` is a
    calibrated probability of being correct (``None`` for an uncalibrated model), and
    ``scored`` False (e.g. an empty answer) means the answer must be treated as unconfident.
    ``response.raw`` is the full :class:`gradguard.ScoreResult`.

    The model is given either as a ready ``scorer=GradScorer(...)`` (not serialized) or as a
    ``model`` source (``None``: the embedded Qwen2.5-Coder-0.5B-Instruct; else a Hugging Face id
    in the local cache, a folder or a ``.gguf`` file), loaded on first use. Calls on one model
    are serialised by the scorer's lock. Streaming yields text as it is generated; the score is
    attached to the **last** chunk (it needs the whole answer).

    Example (offline, on a tiny random model):

    .. code-block:: python

        from gradguard import GradScorer
        from gradguard.testing import make_tiny_model
        from gradguard.integrations.llama_index import GradguardLLM

        model, tok = make_tiny_model("qwen2")
        llm = GradguardLLM(scorer=GradScorer(model, tok), max_new_tokens=8)
        response = llm.complete("What is the capital of France?")
        meta = response.additional_kwargs["gradguard"]
        print(repr(response.text), meta["scored"], meta["uncertainty"]["hybridgrad"])
        assert llm.metadata.is_chat_model
    """

    model: str | None = Field(
        default=None,
        description="Model source loaded on first use: None = embedded default, else a HF id, folder or .gguf path.",
    )
    max_new_tokens: int = Field(default=256, gt=0, description="Most tokens generated per answer.")
    context_window: int | None = Field(
        default=None,
        gt=0,
        description="Context window to report instead of the model config's (avoids loading the model for metadata).",
    )
    generate_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Extra transformers generation options (e.g. do_sample, temperature)."
    )
    task: str | None = Field(
        default=None,
        description="Calibration task of the confidence: 'chat', 'rag', 'closed-qa' or one the profile was calibrated "
        "for (None: the profile's default task). Per call: complete(..., task='rag').",
    )

    _scorer: Any = PrivateAttr(default=None)
    _load_lock: Any = PrivateAttr(default=None)

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
        if scorer is not None and model is not None:
            raise GradguardLlamaIndexError(
                f"GradguardLLM got both model={model!r} and scorer=...; pass only one "
                "(scorer= for a model already loaded, model= for a source to load)"
            )
        if scorer is not None and not hasattr(scorer, "generate_and_score"):
            raise GradguardLlamaIndexError(
                f"scorer={scorer!r} is not a gradguard GradScorer; build one with GradScorer(model, tokenizer) "
                "or GradScorer.from_pretrained(...)"
            )
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
            raise GradguardLlamaIndexError(
                f"max_new_tokens={max_new_tokens!r} is not a positive integer; pass e.g. max_new_tokens=256"
            )
        super().__init__(
            model=model if scorer is None else getattr(scorer, "model_name", None),
            max_new_tokens=max_new_tokens,
            system_prompt=system_prompt,
            context_window=context_window,
            generate_kwargs=dict(generate_kwargs or {}),
            callback_manager=callback_manager,
            task=task,
            **kwargs,
        )
        self._scorer = scorer
        self._load_lock = threading.Lock()

    @classmethod
    def class_name(cls) -> str:
        """Name used in LlamaIndex serialization and instrumentation payloads."""
        return "GradguardLLM"

    # ------------------------------------------------------------------ model

    @property
    def scorer(self) -> GradScorer:
        """The :class:`gradguard.GradScorer` (loaded from ``model`` on first access)."""
        if self._scorer is None:
            with self._load_lock:
                if self._scorer is None:
                    from gradguard.scorer import GradScorer

                    self._scorer = GradScorer.from_pretrained(self.model)
        return self._scorer

    @property
    def metadata(self) -> LLMMetadata:
        """LLM metadata: context window from the model config, ``is_chat_model=True``."""
        scorer = self.scorer if self.context_window is None else self._scorer
        window = self.context_window or int(scorer.context_window)
        name = getattr(scorer, "model_name", None) if scorer is not None else None
        if name is None:
            from gradguard.loading import DEFAULT_MODEL

            name = self.model or DEFAULT_MODEL
        return LLMMetadata(
            context_window=window,
            num_output=self.max_new_tokens,
            is_chat_model=True,
            is_function_calling_model=False,
            model_name=str(name),
        )

    # ------------------------------------------------------------------ helpers

    def _completion_messages(self, prompt: str) -> list[dict[str, str]]:
        messages: list[dict[str, str]] = []
        if self.system_prompt:
            messages.append({"role": "system", "content": self.system_prompt})
        messages.append({"role": "user", "content": prompt})
        return messages

    def _chat_messages(self, messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
        out = messages_to_dicts(messages)
        if self.system_prompt and not any(m["role"] == "system" for m in out):
            out.insert(0, {"role": "system", "content": self.system_prompt})
        return out

    def _generation(self, kwargs: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        gen = dict(self.generate_kwargs)
        keys = _generation_keys()
        for key, value in kwargs.items():
            if key in keys:
                gen[key] = value
            elif key not in ("formatted", "task"):
                logger.debug("GradguardLLM ignores call option %r (not a transformers generation option)", key)
        max_new = gen.pop("max_new_tokens", self.max_new_tokens)
        return int(max_new), gen

    def _generate(self, messages: list[dict[str, str]], kwargs: dict[str, Any]) -> ScoreResult:
        max_new, gen = self._generation(kwargs)
        return self.scorer.generate_and_score(messages, max_new_tokens=max_new, task=kwargs.get("task", self.task), **gen)

    @staticmethod
    def _attach_score(response: CompletionResponse | ChatResponse, result: ScoreResult) -> None:
        """Put ``result`` on the response (``raw`` and ``additional_kwargs``) and publish it for the query engine."""
        response.raw = result
        metadata = result.metadata()
        attach_metadata(response, metadata)
        publish_score(CapturedScore(text=result.response, result=result, metadata=metadata, source="llm"))

    def _stream(
        self, messages: list[dict[str, str]], kwargs: dict[str, Any]
    ) -> Iterator[tuple[str, str, ScoreResult | None]]:
        """Yield ``(text_so_far, delta, None)`` while generating, then the last piece with its score.

        Generation and scoring run in a worker thread feeding a ``TextIteratorStreamer``; the
        last text piece is held back until the score is ready so it can carry it.
        """
        from transformers import TextIteratorStreamer

        scorer = self.scorer
        max_new, gen = self._generation(kwargs)
        streamer = TextIteratorStreamer(scorer.tokenizer, skip_prompt=True, skip_special_tokens=True)
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["result"] = scorer.generate_and_score(
                    messages, max_new_tokens=max_new, streamer=streamer, task=kwargs.get("task", self.task), **gen
                )
            except BaseException as exc:  # re-raised in the consumer below
                box["error"] = exc
            finally:
                streamer.text_queue.put(streamer.stop_signal)  # never leave the consumer waiting

        thread = threading.Thread(target=work, name="gradguard-llm-stream", daemon=True)
        thread.start()
        text = ""
        held: str | None = None
        for piece in streamer:
            if not piece:
                continue
            if held is not None:
                text += held
                yield text, held, None
            held = piece
        thread.join()
        if "error" in box:
            raise box["error"]
        result: ScoreResult = box["result"]
        last = held or ""
        text += last
        yield text, last, result

    # ------------------------------------------------------------------ completion

    def _complete(self, prompt: str, **kwargs: Any) -> CompletionResponse:
        result = self._generate(self._completion_messages(prompt), kwargs)
        response = CompletionResponse(text=result.response)
        self._attach_score(response, result)
        return response

    def _stream_complete(self, prompt: str, **kwargs: Any) -> CompletionResponseGen:
        for text, delta, result in self._stream(self._completion_messages(prompt), kwargs):
            response = CompletionResponse(text=text, delta=delta)
            if result is not None:
                self._attach_score(response, result)
            yield response

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """Answer ``prompt`` (a single user turn, chat-templated by the model) and score the answer.

        ``formatted`` is accepted for LlamaIndex compatibility and ignored: the prompt is always
        sent as the user message. Call options that are transformers generation options
        (``max_new_tokens``, ``temperature``, ...) are forwarded; others are ignored.
        """
        return self._complete(prompt, **kwargs)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        """Stream the answer to ``prompt``; the last chunk carries the score (see :meth:`complete`)."""
        return self._stream_complete(prompt, **kwargs)

    # ------------------------------------------------------------------ chat

    def _chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        result = self._generate(self._chat_messages(messages), kwargs)
        response = ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=result.response))
        self._attach_score(response, result)
        return response

    def _stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        for text, delta, result in self._stream(self._chat_messages(messages), kwargs):
            response = ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=delta)
            if result is not None:
                self._attach_score(response, result)
            yield response

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Answer the conversation ``messages`` and score the answer.

        ``system_prompt`` is prepended when the messages have no system message. Only system,
        user and assistant messages can be scored; a tool message raises
        :class:`gradguard.errors.InputError`.
        """
        return self._chat(messages, **kwargs)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        """Stream the answer to ``messages``; the last chunk carries the score (see :meth:`chat`)."""
        return self._stream_chat(messages, **kwargs)

    # ------------------------------------------------------------------ async (work runs in a thread)

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """Async :meth:`complete`; generation runs in a worker thread so the event loop stays free."""
        return await asyncio.to_thread(self._complete, prompt, **kwargs)

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        """Async :meth:`stream_complete`; the last chunk carries the score."""
        return _aiterate(lambda: self._stream_complete(prompt, **kwargs))

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Async :meth:`chat`; generation runs in a worker thread so the event loop stays free."""
        return await asyncio.to_thread(self._chat, messages, **kwargs)

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        """Async :meth:`stream_chat`; the last chunk carries the score."""
        return _aiterate(lambda: self._stream_chat(messages, **kwargs))


async def _aiterate(make: Callable[[], Iterator[_T]]) -> AsyncIterator[_T]:
    """Drive a blocking iterator from an async generator, one ``next`` per worker-thread call."""
    iterator = make()
    done = object()
    while True:
        item = await asyncio.to_thread(next, iterator, done)
        if item is done:
            return
        yield item  # type: ignore[misc]

